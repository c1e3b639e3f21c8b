"""A training run is never lost or silently corrupted (issue 14): output folders of other runs are not
touched, checkpoints are checksummed and cross-checked, Ctrl-C / SIGTERM save, a bad --out or a full
disk is a one-line error, a kill leaves nothing behind, the corpus path resumes from anywhere.

Each test reproduces what the old code did wrong (deleted another run's checkpoints and exited 0,
accepted a changed byte, lost the run on Ctrl-C, ...). Sizes are tiny; the two subprocess tests use
one thread and a timeout.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import micro_train_config

from xlnet_ref.training import checkpoint as ckpt
from xlnet_ref.training.corpus import default_corpus_text
from xlnet_ref.training.train import PRESETS, TrainConfig, main, train

REPO = Path(__file__).resolve().parents[1]


def micro(corpus, **overrides) -> TrainConfig:
    """4 steps, no evaluation: these tests are about the run folder, not about learning."""
    return micro_train_config(
        corpus, **{"steps": 4, "warmup_steps": 1, "eval_every": 0, "eval_batches": 1, **overrides}
    )


def run(cfg, out, **kw):
    return train(cfg, out_dir=out, progress=False, log=None, **kw)


def fingerprint(folder: Path) -> dict:
    """name -> bytes of every file under folder (to show nothing was touched)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def cli(args, capsys) -> tuple[int, str, str]:
    code = main([*args, "--no-progress"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def stopped(corpus_file, tmp_path):
    """A run of 4 steps stopped after 2: tmp_path/run/checkpoint-0000002."""
    run(micro(corpus_file), tmp_path / "run", stop_at=2)
    return tmp_path / "run" / "checkpoint-0000002"


# ------------------------------------------------------------------ 1. other runs' checkpoints
def test_resume_into_another_runs_folder_is_refused(corpus_file, tmp_path, capsys):
    run(micro(corpus_file), tmp_path / "A", stop_at=2)
    run(micro(corpus_file, seed=7), tmp_path / "B", stop_at=3)
    before = fingerprint(tmp_path / "B")
    code, out, err = cli(["--resume", str(tmp_path / "A"), "--out", str(tmp_path / "B")], capsys)
    assert code == 2 and "checkpoint-0000003" in err and str(tmp_path / "B") in err and "another run" in err
    assert fingerprint(tmp_path / "B") == before  # nothing deleted, nothing written
    code, out, err = cli(["--resume", str(tmp_path / "A"), "--out", str(tmp_path / "B"), "--overwrite"], capsys)
    assert code == 0, err
    assert [p.name for p in sorted((tmp_path / "B").glob("checkpoint-*"))] == ["checkpoint-0000004"]
    assert (tmp_path / "A" / "checkpoint-0000002").is_dir()  # the source is never touched


def test_resuming_an_older_checkpoint_does_not_overwrite_later_ones(corpus_file, tmp_path, capsys):
    run(micro(corpus_file, steps=6, checkpoint_every=2, keep_checkpoints=3), tmp_path)
    final = fingerprint(tmp_path / "checkpoint-0000006")
    code, out, err = cli(["--resume", str(tmp_path / "checkpoint-0000002"), "--steps", "8"], capsys)
    assert code == 2 and "checkpoint-0000004" in err and "checkpoint-0000006" in err and "later than step 2" in err
    assert fingerprint(tmp_path / "checkpoint-0000006") == final
    # with --overwrite the later ones go first, and the run continues from step 2
    code, out, err = cli(["--resume", str(tmp_path / "checkpoint-0000002"), "--steps", "8", "--overwrite"], capsys)
    assert code == 0, err
    assert [p.name for p in sorted(tmp_path.glob("checkpoint-*"))] == [
        "checkpoint-0000002",
        "checkpoint-0000004",
        "checkpoint-0000006",
        "checkpoint-0000008",
    ][-3:]


def test_rotation_deletes_only_this_runs_checkpoints(corpus_file, tmp_path):
    """keep_checkpoints=1 in a folder that already holds the run being continued and nothing else."""
    run(micro(corpus_file, steps=6, checkpoint_every=2, keep_checkpoints=1), tmp_path / "A", stop_at=2)
    train(resume=tmp_path / "A", out_dir=tmp_path / "C", progress=False, log=None)
    assert [p.name for p in (tmp_path / "C").glob("checkpoint-*")] == ["checkpoint-0000006"]
    assert [p.name for p in (tmp_path / "A").glob("checkpoint-*")] == ["checkpoint-0000002"]


# ------------------------------------------------------------------ 2. checksums and cross-checks
def flip_byte(path: Path, index: int) -> None:
    data = bytearray(path.read_bytes())
    data[index] ^= 0x01
    path.write_bytes(bytes(data))


def data_offset(path: Path, tensor: str) -> int:
    """Where a tensor's bytes start in a safetensors file (8-byte header length, JSON header, data)."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return 8 + n + json.loads(raw[8 : 8 + n])[tensor]["data_offsets"][0]


@pytest.mark.parametrize(
    "name, tensor",
    [
        ("model.safetensors", "transformer.mask_emb"),
        ("optimizer.safetensors", "state.0.exp_avg"),
        ("mems.safetensors", "mems.1"),
        ("rng.safetensors", "data_now"),
    ],
)
def test_a_changed_byte_is_refused_naming_the_file(stopped, capsys, name, tensor):
    path = stopped / name
    flip_byte(path, data_offset(path, tensor) + 3)
    code, out, err = cli(["--resume", str(stopped)], capsys)
    assert code == 2 and f"{name}' is corrupt" in err and "SHA-256" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_a_changed_step_is_refused_with_and_without_checksums(stopped, capsys):
    state = stopped / "training_state.json"
    text = state.read_text()
    assert '"step": 2,' in text
    state.write_text(text.replace('"step": 2,', '"step": 3,'))  # one bit: 0b10 -> 0b11
    code, out, err = cli(["--resume", str(stopped)], capsys)
    assert code == 2 and "training_state.json' is corrupt" in err
    # an edit on purpose (--no-verify): the step each safetensors file recorded still disagrees
    code, out, err = cli(["--resume", str(stopped), "--no-verify"], capsys)
    assert code == 2 and "written at step 2, but training_state.json says step 3" in err
    assert not (stopped.parent / "checkpoint-0000003").exists() and not (stopped.parent / "checkpoint-0000004").exists()


def test_a_missing_rng_file_is_named(stopped, capsys):
    (stopped / "rng.safetensors").unlink()
    for extra in ([], ["--no-verify"]):
        code, out, err = cli(["--resume", str(stopped), *extra], capsys)
        assert code == 2 and "rng.safetensors' is missing" in err, extra


def test_a_damaged_memory_header_is_named(stopped, capsys):
    path = stopped / "mems.safetensors"
    raw = path.read_bytes()
    path.write_bytes(raw.replace(b'"mems.1"', b'"mems.9"', 1))  # same length: the header still parses
    code, out, err = cli(["--resume", str(stopped)], capsys)
    assert code == 2 and "mems.safetensors' is corrupt" in err
    code, out, err = cli(["--resume", str(stopped), "--no-verify"], capsys)
    assert code == 2 and "mems.safetensors' is corrupt: expected the tensors ['mems.0', 'mems.1']" in err


def test_changed_rng_data_is_blamed_on_the_file(stopped, capsys):
    path = stopped / "rng.safetensors"
    flip_byte(path, data_offset(path, "data_now") + 100)
    code, out, err = cli(["--resume", str(stopped), "--no-verify"], capsys)
    assert code == 2 and "rng.safetensors" in err and "altered" in err


# ------------------------------------------------------------------ 3. interrupt, periodic checkpoints
def test_every_preset_checkpoints_periodically():
    for name, make in PRESETS.items():
        config = make()
        assert 0 < config.checkpoint_every < config.steps, name


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_in_a_step_finishes_it_and_saves(corpus_file, tmp_path, signum):
    """In-process and deterministic: the signal arrives during step 1 (from the evaluation's log line)."""
    from xlnet_ref.training.interrupt import TrainingInterrupted

    def log(line, *args, **kwargs):
        if line.startswith("step 1:"):
            os.kill(os.getpid(), signum)

    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(TrainingInterrupted) as info:
        train(micro(corpus_file, eval_every=1), out_dir=tmp_path, progress=False, log=log)
    assert info.value.step == 1 and info.value.checkpoint == tmp_path / "checkpoint-0000001"
    assert info.value.exit_code == 128 + signum and f"--resume {tmp_path}" in str(info.value)
    assert ckpt.read_training_state(tmp_path / "checkpoint-0000001")["step"] == 1
    assert {s: signal.getsignal(s) for s in handlers} == handlers  # put back
    resumed = train(resume=tmp_path, progress=False, log=None)
    assert [r["step"] for r in resumed.history if r["kind"] == "train"] == [1, 2, 3, 4]


def test_a_second_signal_or_one_before_the_loop_stops_at_once():
    from xlnet_ref.training.interrupt import StopRequests

    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN in a shell's background job
    with StopRequests() as stop:
        with pytest.raises(KeyboardInterrupt, match="before the first training step"):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler runs in the main thread at the next bytecode
        stop.armed = True
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        assert stop.signal == signal.SIGINT  # recorded, nothing raised: the step goes on
        with pytest.raises(KeyboardInterrupt, match="second SIGINT"):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    assert signal.getsignal(signal.SIGINT) is before  # put back


def test_ctrl_c_in_the_cli_saves_and_exits_130(tmp_path):
    """The real thing: a subprocess running the CLI gets SIGINT a moment after training starts."""
    signum = signal.SIGINT
    corpus = tmp_path / "text.txt"
    corpus.write_text(default_corpus_text()[:40_000], encoding="utf-8")
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable,
        "-m",
        "xlnet_ref.train",
        "--preset",
        "tiny",
        "--corpus",
        str(corpus),
        "--steps",
        "400",
        "--batch-size",
        "2",
        "--eval-every",
        "0",
        "--out",
        str(out),
        "--no-progress",
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        line = ""
        while not line.startswith("training tiny") and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, proc.stderr.read()
        time.sleep(0.5)  # a few steps in
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err and f"interrupted by {signal.Signals(signum).name}" in err
    assert f"--resume {out}" in err
    saved = sorted(out.glob("checkpoint-*"))
    assert len(saved) == 1
    step = ckpt.read_training_state(saved[0])["step"]
    assert 0 < step < 400 and f"after step {step} of 400" in err
    ckpt.verify_checkpoint(saved[0])
    resumed = train(resume=out, stop_at=step + 1, progress=False, log=None)  # and it continues from there
    assert [r["step"] for r in resumed.history if r["kind"] == "train"] == list(range(1, step + 2))


# ------------------------------------------------------------------ 4. bad --out, full disk
def test_an_unwritable_out_or_export_folder_is_refused_before_training(corpus_file, tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    for args, what in (
        (["--out", str(a_file / "run")], "--out"),
        (["--out", str(a_file)], "--out"),
        (["--out", str(tmp_path / "run"), "--export-hf", str(a_file / "hf")], "--export-hf"),
    ):
        code, out, err = cli(["--preset", "tiny", "--corpus", str(corpus_file), "--steps", "50", *args], capsys)
        assert code == 2 and what in err and len(err.strip().splitlines()) == 1, err
        assert "training tiny" not in out  # refused before the first step (no wall-clock bound: machines differ)
    assert not list((tmp_path / "run").glob("checkpoint-*"))


def test_a_full_disk_keeps_the_previous_checkpoint(stopped, capsys, monkeypatch):
    real_save_file = ckpt.save_file

    def save_file_on_a_full_disk(tensors, filename, metadata=None):
        real_save_file(dict(list(tensors.items())[:1]), filename, metadata=metadata)  # a partial file, then
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)

    monkeypatch.setattr(ckpt, "save_file", save_file_on_a_full_disk)
    code, out, err = cli(["--resume", str(stopped)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "No space left on device" in err and "checkpoint-0000004" in err
    assert sorted(p.name for p in stopped.parent.iterdir()) == [
        "checkpoint-0000002",
        "history.json",
    ]  # no partial folder
    ckpt.verify_checkpoint(stopped)


# ------------------------------------------------------------------ 5. leftovers of a kill, history.json
def test_leftovers_of_a_killed_save_are_removed_on_the_next_start(stopped):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftovers = [
        ".checkpoint-0000004.tmp-3fj2k_9",
        f".checkpoint-0000002.old-{int(dead.stdout)}",
        f".checkpoint-0000004.tmp-{int(dead.stdout)}-abc",
    ]
    for name in leftovers:
        (stopped.parent / name).mkdir()
        (stopped.parent / name / "model.safetensors").write_bytes(b"\0" * 1_000_000)
    (stopped.parent / f".history.json.tmp-{int(dead.stdout)}").write_text("[{")
    train(resume=stopped.parent, stop_at=3, progress=False, log=None)
    assert sorted(p.name for p in stopped.parent.iterdir()) == [
        "checkpoint-0000002",
        "checkpoint-0000003",
        "history.json",
    ]


def test_a_checkpoint_left_only_as_old_is_renamed_back(tmp_path):
    """A kill between moving checkpoint-N aside and moving the new one in must not lose checkpoint-N."""
    from xlnet_ref.training.run_folder import remove_stale_temporaries

    (tmp_path / ".checkpoint-0000005.old-4194999").mkdir()
    (tmp_path / ".checkpoint-0000005.old-4194999" / "model.safetensors").write_bytes(b"weights")
    (tmp_path / ".checkpoint-0000005.tmp-4194999-x1y2").mkdir()
    done = remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-0000005"] and len(done) == 2
    assert (tmp_path / "checkpoint-0000005" / "model.safetensors").read_bytes() == b"weights"


def test_history_json_is_never_left_half_written(stopped, monkeypatch):
    history = stopped.parent / "history.json"
    before = json.loads(history.read_text())
    real_write_text = Path.write_text

    def write_text_killed_halfway(self, text, *args, **kwargs):
        if "history.json" in self.name:
            real_write_text(self, text[: len(text) // 2], *args, **kwargs)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real_write_text(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text_killed_halfway)
    with pytest.raises(OSError):
        train(resume=stopped.parent, stop_at=3, progress=False, log=None)
    assert json.loads(history.read_text()) == before  # the previous, complete history
    assert not [p.name for p in stopped.parent.iterdir() if p.name.startswith(".")]


# ------------------------------------------------------------------ 6. corpus path
def test_a_relative_corpus_resumes_from_another_directory(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "text.txt").write_text(default_corpus_text()[:1300], encoding="utf-8")
    monkeypatch.chdir(tmp_path / "a")
    run(micro("text.txt", steps=6), tmp_path / "run", stop_at=2)
    monkeypatch.chdir(tmp_path / "b")
    train(resume=tmp_path / "run", stop_at=3, progress=False, log=None)  # the saved path is absolute
    # the same file named absolutely is the same corpus, not a config change
    train(micro(tmp_path / "a" / "text.txt", steps=6), resume=tmp_path / "run", stop_at=4, progress=False, log=None)
    (tmp_path / "a" / "text.txt").write_text(default_corpus_text()[1:1301], encoding="utf-8")
    with pytest.raises(ckpt.CheckpointError, match="corpus text differs"):
        train(resume=tmp_path / "run", progress=False, log=None)


# ------------------------------------------------------------------ clear errors up front
def test_absurd_settings_and_nothing_to_do_are_refused(stopped, corpus_file, capsys):
    for args, message in (
        (["--lr", "inf"], "learning_rate"),
        (["--lr", "50"], "learning_rate"),
        (["--device", "meta"], "device: expected"),
        (["--seq-len", "20"], "seq_len"),
    ):
        code, out, err = cli(
            ["--preset", "tiny", "--corpus", str(corpus_file), *args, "--out", str(stopped.parent / "x")], capsys
        )
        assert code == 2 and message in err and "training tiny" not in out, (args, err)
    code, out, err = cli(["--resume", str(stopped), "--stop-at", "2"], capsys)
    assert code == 2 and "already at or past stop_at=2" in err
    run(micro(corpus_file), stopped.parent / "done")
    code, out, err = cli(["--resume", str(stopped.parent / "done")], capsys)
    assert code == 2 and "is at step 4, already at or past steps=4" in err and "--steps" in err
