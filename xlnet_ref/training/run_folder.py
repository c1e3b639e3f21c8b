"""The run folder (``--out``): checked before training, never mixed with another run, tidied after a kill.

A run folder holds ``checkpoint-NNNNNNN/`` folders (checkpoint.py) and ``history.json``. The rules:

* before the first step, the folder must be creatable and writable (:func:`check_writable`), so a
  bad ``--out`` is found in a second, not after all the training;
* a new run never writes into a folder that holds another run's checkpoints, and a resumed run never
  into one that holds checkpoints later than its starting point (it would overwrite or rotate them
  away): :func:`plan_run_folder` refuses both unless ``overwrite`` is given, naming what is there;
* rotation (``keep_checkpoints``) deletes only checkpoints of this run: the ones it wrote and, when it
  continues in its own folder, the earlier ones of the run it continues (:class:`RunFolder`);
* hidden leftovers of a kill in the middle of a save (``.checkpoint-*.tmp-<pid>-*``,
  ``.checkpoint-*.old-<pid>``, ``.history.json.tmp-<pid>``) are removed on the next start, unless
  the process that made them is still alive (:func:`remove_stale_temporaries`);
* ``history.json`` is replaced atomically (:func:`atomic_write_text`): a kill leaves the old or the
  new file, never a half-written one.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
# what a save in flight leaves: checkpoint.py's temporary and replaced folders, atomic_write_text's file;
# group 1 is the writer's pid (absent in temporary folders of before the pid was added)
TEMPORARY_PATTERNS = (
    re.compile(r"^\.checkpoint-\d+\.tmp-(?:(\d+)-)?"),
    re.compile(r"^\.checkpoint-\d+\.old-(\d+)$"),
    re.compile(r"^\.history\.json\.tmp-(\d+)$"),
)


def checkpoint_step(path: Path) -> int | None:
    """7 for ``checkpoint-0000007``; None for any other name."""
    match = CHECKPOINT_PATTERN.match(Path(path).name)
    return int(match.group(1)) if match else None


def checkpoints_in(folder: Path) -> list[Path]:
    """The ``checkpoint-N`` folders directly in ``folder``, by step."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=checkpoint_step)


def check_writable(folder: str | Path, *, what: str) -> Path:
    """Create ``folder`` if needed and write (then delete) a probe file in it; ValueError if either fails.

    what: how the user named it, e.g. "--out", for the message.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{what} {str(folder)!r}: expected a folder, got an existing file")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ValueError(
            f"{what} {str(folder)!r}: cannot write there ({err.strerror or err}); choose a writable folder"
        ) from None
    return folder


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # nothing of ours is in flight when a run starts
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def remove_stale_temporaries(folder: Path) -> list[str]:
    """Delete what a killed save left behind in ``folder``; returns what was done, one line per entry.

    One exception: a kill between the two renames of checkpoint._commit_folder leaves the previous
    checkpoint only as ``.checkpoint-N.old-<pid>``; with no ``checkpoint-N`` beside it, it is renamed back.
    """
    removed = []
    if not folder.is_dir():
        return removed
    for p in sorted(folder.iterdir()):
        match = next((m for m in (pattern.match(p.name) for pattern in TEMPORARY_PATTERNS) if m), None)
        if not match:
            continue
        pid = match.group(1)
        if pid is not None and _alive(int(pid)):
            continue  # another live process may be writing it
        final = folder / p.name[1:].split(".old-")[0]
        if ".old-" in p.name and p.is_dir() and not final.exists():
            os.replace(p, final)
            removed.append(f"{p.name} (renamed back to {final.name})")
            continue
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p.name)
    return removed


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to a hidden temporary file next to ``path``, flush it to disk, rename it over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        raise OSError(f"writing {str(path)!r} failed ({err.strerror or err}); the previous file is kept") from err
    finally:
        tmp.unlink(missing_ok=True)


class RunFolder:
    """The checkpoints this run may rotate away, and the ones it must not touch."""

    def __init__(self, folder: Path, *, own: list[Path], foreign: list[Path]):
        self.folder = folder
        self.own = list(own)  # this run's checkpoints, oldest first
        self.foreign = list(foreign)  # checkpoints that --overwrite allowed to delete before the first step

    def clear_foreign(self, log) -> None:
        for p in self.foreign:
            shutil.rmtree(p)
        if self.foreign:
            log(f"--overwrite: removed {', '.join(p.name for p in self.foreign)} from {str(self.folder)!r}")
        self.foreign = []

    def wrote(self, path: Path, *, keep: int) -> None:
        """Record a new checkpoint of this run and delete its oldest ones beyond ``keep`` (the new one always stays)."""
        self.own = [p for p in self.own if p != path] + [path]
        older = self.own[:-1]
        for p in older[: max(0, len(older) - max(0, keep - 1))]:
            shutil.rmtree(p, ignore_errors=True)
            self.own.remove(p)


def plan_run_folder(folder: Path, *, resume_from: Path | None, resume_step: int | None, overwrite: bool) -> RunFolder:
    """Decide which checkpoints in ``folder`` belong to this run; refuse (FileExistsError) any other
    checkpoint there unless ``overwrite``, naming the folder and what it holds."""
    existing = checkpoints_in(folder)
    continuing_here = resume_from is not None and resume_from.parent.resolve() == folder.resolve()
    if continuing_here:
        own = [p for p in existing if checkpoint_step(p) <= resume_step]
        foreign = [p for p in existing if checkpoint_step(p) > resume_step]
        why = (
            f"checkpoints later than step {resume_step}, the one being resumed ({', '.join(p.name for p in foreign)}); "
            "continuing from an older checkpoint would overwrite or rotate them away"
        )
    else:
        own, foreign = [], existing
        whose = "another run" if resume_from is not None else "a run"
        why = f"checkpoints of {whose} ({', '.join(p.name for p in foreign)})"
    if foreign and not overwrite:
        hint = (
            "continue it with resume (--resume), or "
            if resume_from is None
            else "resume the latest one, write to another folder (--out), or "
        )
        raise FileExistsError(
            f"train: out_dir {str(folder)!r} already holds {why}; expected an empty or new folder: "
            f"{hint}pass overwrite=True (--overwrite) to delete them and start there"
        )
    return RunFolder(folder, own=own, foreign=foreign if overwrite else [])
