"""Checkpoints: safetensors for every tensor, JSON for everything else, never pickle.

A checkpoint is a folder:

    config.json              format tag + model class + XLNetConfig.to_dict()
    model.safetensors        the weights (safetensors.torch.save_model: the LM head's weight is tied to
                             the word embedding, and a shared tensor is written once)
    training_state.json      step, scheduler state, optimizer hyper-parameters, and `extra` (the
                             trainer's own JSON: its config, the data position, the history)
    optimizer.safetensors    the optimizer's per-parameter tensors (AdamW's exp_avg, exp_avg_sq, step)
    rng.safetensors          RNG states: torch CPU, every CUDA device, and named torch.Generators
    mems.safetensors         the memory carried to the next batch, one [b, mlen, m] tensor per layer
    xlnet_ref_tokenizer.json (+ spiece.model)  the tokenizer, when one is given
    manifest.json            the SHA-256 and size of every other file, written last

``save_model``/``load_model`` use the first two only (weights to share); ``save_checkpoint``/
``load_checkpoint`` add the training state that an exact resume needs: with the optimizer, the
scheduler, every RNG and the memory restored, N steps + resume + M steps give the same weights, bit
for bit on a CPU, as N + M steps in one go.

Integrity: every load first checks each file against ``manifest.json`` (a changed byte anywhere, a
truncated or a missing file is refused, naming the file); ``verify=False`` skips this for a folder
edited on purpose. Independently of the manifest, every safetensors file of ``save_checkpoint``
records the step in its own metadata, and the loader refuses a file whose step differs from
``training_state.json``'s. Writing is atomic: the files go into a hidden temporary sibling folder,
are flushed to disk, and the folder is renamed into place in one step, so a crash (or a full disk)
while saving leaves the previous checkpoint as it was and never a half-written one under the final
name; a failed write removes the temporary folder and raises :class:`CheckpointWriteError` naming it.

Every failure names the file and says what was expected: a missing file, a file that is not valid
safetensors / JSON (corrupt or truncated), or a saved config that does not match the model (each field
with the expected and the found value).

``export_hf`` writes a transformers ``save_pretrained`` folder (via :func:`xlnet_ref.interop.to_hf`) and
``load_hf`` reads one back (via ``from_hf``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from safetensors.torch import load_model as _st_load_model
from safetensors.torch import save_model as _st_save_model

from ..config import XLNetConfig
from ..heads import HEAD_CLASS_NAMES

FORMAT = "xlnet_ref"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "training_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
RNG_FILE = "rng.safetensors"
MEMS_FILE = "mems.safetensors"
MANIFEST_FILE = "manifest.json"
MODEL_CLASSES = ("XLNetLMHeadModel", "XLNetModel", *HEAD_CLASS_NAMES)  # heads: fine-tuning checkpoints


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: corrupt, incomplete, or made for a different model."""


class CheckpointWriteError(OSError):
    """Writing a checkpoint failed (a full disk, a folder that cannot be written); nothing was replaced."""


# ------------------------------------------------------------------------------------- checksums
def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_manifest(folder: Path) -> None:
    """SHA-256 and size of every file in ``folder`` (the manifest itself excepted), written last."""
    files = {
        p.name: {"sha256": file_sha256(p), "bytes": p.stat().st_size}
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != MANIFEST_FILE
    }
    (folder / MANIFEST_FILE).write_text(
        json.dumps(
            {"format": FORMAT, "format_version": FORMAT_VERSION, "algorithm": "sha256", "files": files}, indent=2
        )
        + "\n"
    )


def verify_checkpoint(directory: str | Path, names: list[str] | None = None) -> None:
    """Check files of a checkpoint folder against its manifest.json: each must exist, have the recorded
    size and SHA-256. names: only these files (those the manifest lists); None: every listed file.

    Raises CheckpointError naming the first file that differs, is missing, or a manifest that is
    missing or unreadable (pass ``verify=False`` to the loaders to skip this for a deliberate edit).
    """
    directory = Path(directory)
    path = directory / MANIFEST_FILE
    if not path.is_file():
        if not directory.is_dir():
            raise FileNotFoundError(f"checkpoint: {str(directory)!r} is not a folder; expected a checkpoint folder")
        if (directory / CONFIG_FILE).is_file():
            read_config(directory)  # a transformers folder (or another format) is named as such first
        raise CheckpointError(
            f"{str(path)!r} is missing: the checksums of this checkpoint's files cannot be checked "
            "(a folder written before checksums existed, or a damaged one); load it with verify=False "
            "(--no-verify) if you trust it"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        files = manifest["files"]
        if not isinstance(files, dict) or not all(
            isinstance(v, dict) and "sha256" in v and "bytes" in v for v in files.values()
        ):
            raise TypeError("files: expected {name: {sha256, bytes}}")
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
        raise CheckpointError(
            f"{str(path)!r} is corrupt: expected JSON with the checksum of every file ({err})"
        ) from None
    for name in names if names is not None else sorted(files):
        if name not in files:
            continue  # an optional file this checkpoint does not have; its loader says if it is needed
        file = directory / name
        if not file.is_file():
            raise FileNotFoundError(
                f"checkpoint: {str(file)!r} is missing, but {MANIFEST_FILE} lists it (the checkpoint is incomplete)"
            )
        size, recorded = file.stat().st_size, files[name]
        if size != recorded["bytes"]:
            raise CheckpointError(
                f"{str(file)!r} is corrupt: {size} bytes, {MANIFEST_FILE} recorded {recorded['bytes']} "
                "when it was written (truncated or changed)"
            )
        if file_sha256(file) != recorded["sha256"]:
            raise CheckpointError(
                f"{str(file)!r} is corrupt: its SHA-256 differs from the one {MANIFEST_FILE} recorded "
                "when it was written (a changed byte); load with verify=False (--no-verify) only "
                "if you edited it on purpose"
            )


def _safetensors_step(path: Path) -> str | None:
    """The step a safetensors file of save_checkpoint recorded in its own metadata (None: not recorded)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("step")
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(
            f"{str(path)!r} is corrupt: expected a safetensors file, reading it failed with: {err}"
        ) from None


@dataclass
class TrainingState:
    """What :func:`load_checkpoint` hands back besides the tensors it loads in place."""

    step: int
    extra: dict = field(default_factory=dict)  # the trainer's own JSON
    rng: dict = field(default_factory=dict)  # name -> uint8 state tensor (see capture_rng_state)
    mems: list | None = None  # n_layer tensors [b, mlen, m], or None


# ----------------------------------------------------------------------------------------------- JSON
def _to_json(obj):
    """JSON that keeps tuples (AdamW's betas) as tuples on the way back; torch scalars become numbers."""
    if isinstance(obj, tuple):
        return {"__tuple__": [_to_json(x) for x in obj]}
    if isinstance(obj, list):
        return [_to_json(x) for x in obj]
    if isinstance(obj, dict):
        bad = [k for k in obj if not isinstance(k, str)]
        if bad:
            # optimizer state is keyed by int; JSON keys must be str, so say so instead of a silent str()
            raise TypeError(f"_to_json: expected str keys, got {bad[:3]}")
        return {k: _to_json(v) for k, v in obj.items()}
    if isinstance(obj, torch.Tensor):
        if obj.numel() != 1:
            raise TypeError(
                f"_to_json: expected a scalar tensor, got shape {list(obj.shape)}; tensors go to safetensors"
            )
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"_to_json: cannot store a {type(obj).__name__} as JSON")


def _from_json(obj):
    if isinstance(obj, dict):
        if set(obj) == {"__tuple__"}:
            return tuple(_from_json(x) for x in obj["__tuple__"])
        return {k: _from_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_from_json(x) for x in obj]
    return obj


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(_to_json(obj), indent=2, allow_nan=True) + "\n")


def _read_json(path: Path) -> dict:
    _require(path)
    try:
        return _from_json(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{str(path)!r} is corrupt: expected valid JSON, the parser says: {err}") from None


def _require(path: Path) -> None:
    if not path.is_file():
        folder = path.parent
        what = (
            "the folder does not exist"
            if not folder.is_dir()
            else f"it holds {sorted(p.name for p in folder.iterdir())}"
        )
        raise FileNotFoundError(
            f"checkpoint: {str(path)!r} is missing ({what}); expected an xlnet_ref checkpoint "
            f"folder written by save_model / save_checkpoint"
        )


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    _require(path)
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(
            f"{str(path)!r} is corrupt: expected a safetensors file, reading it failed with: {err}"
        ) from None


# ------------------------------------------------------------------------------------ config checking
def config_mismatches(expected: XLNetConfig, found: dict) -> list[tuple[str, object, object]]:
    """(field, expected value, found value) for every XLNetConfig field that differs, in field order."""
    expected_dict = expected.to_dict()
    return [(k, v, found.get(k, "<absent>")) for k, v in expected_dict.items() if found.get(k, "<absent>") != v] + [
        (k, "<absent>", found[k]) for k in found if k not in expected_dict
    ]


def check_config(expected: XLNetConfig, found: dict, *, source: str = "the checkpoint") -> None:
    """Raise CheckpointError naming every field whose saved value differs from the model's config."""
    diffs = config_mismatches(expected, found)
    if diffs:
        lines = "; ".join(f"{name}: the model has {want!r}, {source} has {got!r}" for name, want, got in diffs)
        raise CheckpointError(f"config mismatch in {len(diffs)} field(s): {lines}")


def read_config(directory: str | Path) -> tuple[str, XLNetConfig]:
    """(model class name, XLNetConfig) from a checkpoint folder's config.json."""
    path = Path(directory) / CONFIG_FILE
    meta = _read_json(path)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{str(path)!r}: expected format {FORMAT!r}, got {meta.get('format') if isinstance(meta, dict) else meta!r}"
            " (a transformers folder? use load_hf)"
        )
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{str(path)!r}: format_version: expected {FORMAT_VERSION}, got {meta.get('format_version')!r}"
        )
    if meta.get("model_class") not in MODEL_CLASSES:
        raise CheckpointError(
            f"{str(path)!r}: model_class: expected one of {MODEL_CLASSES}, got {meta.get('model_class')!r}"
        )
    try:
        config = XLNetConfig.from_dict(meta["config"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{str(path)!r}: config: not a valid XLNetConfig ({err})") from None
    return meta["model_class"], config


# ---------------------------------------------------------------------------------- weights only
def _atomic_folder(directory: Path):
    """A temporary sibling folder to write into; _commit_folder moves it into place in one rename, so a
    crash while saving never leaves a half-written checkpoint under the final name."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    # the pid in the name lets a later run tell a dead process's leftover from a live one's (run_folder.py)
    return Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-{os.getpid()}-", dir=directory.parent))


def _flush_to_disk(folder: Path) -> None:
    """fsync every file and the folder, so that the rename below never publishes unwritten data."""
    for p in folder.iterdir():
        if not p.is_file():
            continue
        with open(p, "rb") as f:
            os.fsync(f.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _commit_folder(tmp: Path, directory: Path) -> None:
    _write_manifest(tmp)
    _flush_to_disk(tmp)
    if directory.exists():
        old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
        os.replace(directory, old)
        os.replace(tmp, directory)
        shutil.rmtree(old)
    else:
        os.replace(tmp, directory)


def _write_failed(directory: Path, err: OSError) -> CheckpointWriteError:
    reason = err.strerror or str(err)
    return CheckpointWriteError(
        f"checkpoint: writing {str(directory)!r} failed ({reason}); nothing was replaced "
        "(an earlier checkpoint is kept) and the partial folder was removed"
    )


def _write_model_files(folder: Path, model: torch.nn.Module, *, step: int | None = None) -> None:
    name = type(model).__name__
    if name not in MODEL_CLASSES or not isinstance(getattr(model, "config", None), XLNetConfig):
        raise ValueError(f"model: expected an xlnet_ref XLNetLMHeadModel or XLNetModel, got {name}")
    _write_json(
        folder / CONFIG_FILE,
        {"format": FORMAT, "format_version": FORMAT_VERSION, "model_class": name, "config": model.config.to_dict()},
    )
    # save_model (not save_file) because lm_loss.weight IS word_embedding.weight: it writes one copy
    metadata = {"format": FORMAT} if step is None else {"format": FORMAT, "step": str(step)}
    _st_save_model(model, str(folder / WEIGHTS_FILE), metadata=metadata)


def save_model(directory: str | Path, *, model: torch.nn.Module, tokenizer=None) -> Path:
    """Write config.json + model.safetensors (+ the tokenizer) into ``directory``; returns it."""
    directory = Path(directory)
    try:
        tmp = _atomic_folder(directory)
        try:
            _write_model_files(tmp, model)
            if tokenizer is not None:
                tokenizer.save(tmp)
            _commit_folder(tmp, directory)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as err:
        raise _write_failed(directory, err) from err
    return directory


def load_weights(directory: str | Path, *, model: torch.nn.Module, verify: bool = True) -> None:
    """Load a checkpoint's weights into ``model`` in place, after checking the files' checksums
    (verify=False: skip) and that the configs agree."""
    directory = Path(directory)
    if verify:
        verify_checkpoint(directory, [CONFIG_FILE, WEIGHTS_FILE])
    model_class, saved_config = read_config(directory)
    if type(model).__name__ != model_class:
        raise CheckpointError(
            f"{str(directory / CONFIG_FILE)!r}: model_class: the model is a {type(model).__name__}, "
            f"the checkpoint holds a {model_class}"
        )
    check_config(model.config, saved_config.to_dict(), source=f"{str(directory / CONFIG_FILE)!r}")
    path = directory / WEIGHTS_FILE
    _require(path)
    device = next(model.parameters()).device
    try:
        missing, unexpected = _st_load_model(model, str(path), strict=False, device=str(device))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(
            f"{str(path)!r} is corrupt: expected a safetensors file, reading it failed with: {err}"
        ) from None
    except RuntimeError as err:  # shape mismatch inside load_state_dict
        raise CheckpointError(f"{str(path)!r}: the tensors do not fit the model ({err})") from None
    # safetensors' load_model already fills the tied copy (lm_loss.weight) from the one stored tensor,
    # so anything reported missing here really is missing
    if missing or unexpected:
        raise CheckpointError(
            f"{str(path)!r}: expected exactly the model's tensors; missing {missing}, unexpected {unexpected}"
        )


def load_model(directory: str | Path, *, device: str | torch.device = "cpu", verify: bool = True) -> torch.nn.Module:
    """Build the model that config.json describes and load model.safetensors into it (eval mode)."""
    from .. import model as model_module

    if verify:
        verify_checkpoint(directory, [CONFIG_FILE, WEIGHTS_FILE])
    model_class, config = read_config(directory)
    model = getattr(model_module, model_class)(config).to(device)
    load_weights(directory, model=model, verify=False)
    return model.eval()


# --------------------------------------------------------------------------------- RNG states
def capture_rng_state(generators: dict[str, torch.Generator] | None = None) -> dict[str, torch.Tensor]:
    """Every RNG a training step draws from: torch's CPU RNG, each CUDA device's (once CUDA is in use),
    the MPS one, and the named Generators (e.g. the data pipeline's)."""
    states = {"torch.cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            states[f"torch.cuda.{i}"] = s
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        states["torch.mps"] = torch.mps.get_rng_state()
    for name, gen in (generators or {}).items():
        states[f"generator.{name}"] = gen.get_state()
    return states


def restore_rng_state(states: dict[str, torch.Tensor], generators: dict[str, torch.Generator] | None = None) -> None:
    """Put back what capture_rng_state took; a named generator absent from ``states`` is an error."""
    if "torch.cpu" not in states:
        raise CheckpointError(f"rng: expected the CPU RNG state 'torch.cpu' in {RNG_FILE}, it has {sorted(states)}")
    try:
        torch.set_rng_state(states["torch.cpu"])
    except (RuntimeError, TypeError) as err:
        raise CheckpointError(f"rng: the CPU RNG state in {RNG_FILE} is not a valid state ({err})") from None
    cuda = sorted((int(k.rsplit(".", 1)[1]), v) for k, v in states.items() if k.startswith("torch.cuda."))
    if cuda and torch.cuda.is_available():
        if len(cuda) != torch.cuda.device_count():
            raise CheckpointError(
                f"rng: the checkpoint has {len(cuda)} CUDA RNG states, this machine has "
                f"{torch.cuda.device_count()} devices; an exact resume needs the same count"
            )
        torch.cuda.set_rng_state_all([v for _, v in cuda])
    if "torch.mps" in states and getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        torch.mps.set_rng_state(states["torch.mps"])
    for name, gen in (generators or {}).items():
        key = f"generator.{name}"
        if key not in states:
            raise CheckpointError(f"rng: expected a state for generator {name!r}, the checkpoint has {sorted(states)}")
        gen.set_state(states[key])


# --------------------------------------------------------------------------------- full training state
def _optimizer_to_files(optimizer: torch.optim.Optimizer) -> tuple[dict, dict[str, torch.Tensor]]:
    """Optimizer.state_dict() split into JSON (hyper-parameters, non-tensor state) and tensors."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{key}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    return {"param_groups": sd["param_groups"], "scalars": scalars}, tensors


def _optimizer_from_files(meta: dict, tensors: dict[str, torch.Tensor]) -> dict:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    for index, values in meta.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    directory: str | Path,
    *,
    model: torch.nn.Module,
    step: int,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler=None,
    rng: dict[str, torch.Tensor] | None = None,
    mems: list[torch.Tensor] | None = None,
    extra: dict | None = None,
    tokenizer=None,
) -> Path:
    """Everything an exact resume needs, written atomically into ``directory`` (replacing it if present).

    rng: from :func:`capture_rng_state`; mems: the memory the next batch would receive; extra: any JSON
    the trainer wants back (its config, the data position, the history).
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"save_checkpoint: step: expected an int >= 0, got {step!r}")
    directory = Path(directory)
    meta = {"format": FORMAT, "step": str(step)}  # each file's own record of the step, cross-checked on load
    try:
        tmp = _atomic_folder(directory)
        try:
            _write_model_files(tmp, model, step=step)
            state = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "step": step,
                "extra": extra or {},
                "has_optimizer": optimizer is not None,
                "has_rng": rng is not None,
                "has_mems": mems is not None,
                "n_mems": None if mems is None else len(mems),
            }
            if optimizer is not None:
                state["optimizer"], tensors = _optimizer_to_files(optimizer)
                save_file(tensors, str(tmp / OPTIMIZER_FILE), metadata=meta)
            if scheduler is not None:
                state["scheduler"] = scheduler.state_dict()
            if rng is not None:
                save_file({k: v.contiguous() for k, v in rng.items()}, str(tmp / RNG_FILE), metadata=meta)
            if mems is not None:
                save_file(
                    {f"mems.{i}": m.detach().to("cpu").contiguous() for i, m in enumerate(mems)},
                    str(tmp / MEMS_FILE),
                    metadata=meta,
                )
            _write_json(tmp / STATE_FILE, state)
            if tokenizer is not None:
                tokenizer.save(tmp)
            _commit_folder(tmp, directory)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as err:
        raise _write_failed(directory, err) from err
    return directory


def read_training_state(directory: str | Path, *, verify: bool = True) -> dict:
    """training_state.json of a checkpoint folder (step, extra, ...), without loading any tensor
    (its checksum checked against manifest.json unless verify=False)."""
    path = Path(directory) / STATE_FILE
    if verify and path.is_file():
        verify_checkpoint(directory, [STATE_FILE])
    state = _read_json(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT or not isinstance(state.get("step"), int):
        raise CheckpointError(f"{str(path)!r}: expected an {FORMAT} training state with an int 'step'")
    return state


def load_checkpoint(
    directory: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler=None,
    verify: bool = True,
) -> TrainingState:
    """Load weights (+ optimizer, scheduler) in place; return step, extra, RNG states and mems.

    verify: first check every file against manifest.json (False: skip, for a folder edited on purpose).
    Either way, the step each safetensors file recorded must equal training_state.json's.
    The RNG states are returned, not applied: the caller decides when (see restore_rng_state), because
    building the model or the data after loading would otherwise draw from the restored RNG.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(
            f"checkpoint: {str(directory)!r} is not a folder; expected a checkpoint folder "
            f"holding {CONFIG_FILE}, {WEIGHTS_FILE} and {STATE_FILE}"
        )
    if verify and (directory / STATE_FILE).is_file():
        verify_checkpoint(directory)
    state = read_training_state(directory, verify=False)
    step = state["step"]
    for name, present in (
        (WEIGHTS_FILE, True),
        (OPTIMIZER_FILE, state.get("has_optimizer")),
        (RNG_FILE, state.get("has_rng")),
        (MEMS_FILE, state.get("has_mems")),
    ):
        if present:
            _require(directory / name)
            recorded = _safetensors_step(directory / name)
            if recorded is not None and recorded != str(step):
                raise CheckpointError(
                    f"{str(directory / name)!r} was written at step {recorded}, but {STATE_FILE} says "
                    f"step {step}: the files do not belong together (an edited or mixed checkpoint)"
                )
    load_weights(directory, model=model, verify=False)
    device = next(model.parameters()).device
    if optimizer is not None:
        if not state.get("has_optimizer"):
            raise CheckpointError(
                f"{str(directory)!r}: an optimizer was given but the checkpoint holds no optimizer state"
            )
        tensors = _read_safetensors(directory / OPTIMIZER_FILE)
        try:
            optimizer.load_state_dict(_optimizer_from_files(state["optimizer"], tensors))
        except (KeyError, ValueError, RuntimeError) as err:
            raise CheckpointError(
                f"{str(directory / OPTIMIZER_FILE)!r}: the optimizer state does not fit this optimizer ({err})"
            ) from None
    if scheduler is not None:
        if "scheduler" not in state:
            raise CheckpointError(
                f"{str(directory)!r}: a scheduler was given but the checkpoint holds no scheduler state"
            )
        scheduler.load_state_dict(state["scheduler"])
    # has_rng is absent in checkpoints of before the manifest: there an rng file was optional
    rng = _read_safetensors(directory / RNG_FILE) if state.get("has_rng", (directory / RNG_FILE).exists()) else {}
    mems = None
    if state.get("has_mems"):
        saved = _read_safetensors(directory / MEMS_FILE)
        n = state.get("n_mems", len(saved))
        expected = [f"mems.{i}" for i in range(n)]
        if sorted(saved) != sorted(expected):
            raise CheckpointError(
                f"{str(directory / MEMS_FILE)!r} is corrupt: expected the tensors {expected} "
                f"(one per layer), it holds {sorted(saved)}"
            )
        mems = [saved[name].to(device) for name in expected]
    return TrainingState(step=state["step"], extra=state.get("extra", {}), rng=rng, mems=mems)


# -------------------------------------------------------------------------------- transformers
def export_hf(source, out_dir: str | Path, *, tokenizer=None) -> Path:
    """Write a transformers ``save_pretrained`` folder from a model or an xlnet_ref checkpoint folder.

    The result loads with ``transformers.XLNetLMHeadModel.from_pretrained(out_dir)`` (or XLNetModel).
    A SentencePiece tokenizer is also written as transformers' ``XLNetTokenizer`` (same pieces, same ids);
    the byte tokenizer has no transformers counterpart and is copied as xlnet_ref_tokenizer.json.
    """
    from ..interop import to_hf

    if isinstance(source, (str, Path)):
        if tokenizer is None and (Path(source) / "xlnet_ref_tokenizer.json").is_file():
            from .tokenizer import load_tokenizer

            tokenizer = load_tokenizer(source)
        source = load_model(source)
    out_dir = Path(out_dir)  # (the CLI checks that it can be written before training: run_folder.check_writable)
    hf = to_hf(source)  # copies tensor by tensor onto a new CPU model; ``source`` is left where it is
    hf.save_pretrained(str(out_dir))
    if tokenizer is not None:
        tokenizer.save(out_dir)
        if getattr(tokenizer, "kind", None) == "sentencepiece":
            from transformers import XLNetTokenizer

            # transformers 5 builds XLNetTokenizer from the unigram pieces and their scores (it no longer
            # reads spiece.model itself); the segmentation is the same as SentencePiece's.
            pieces = [(tokenizer.sp.id_to_piece(i), tokenizer.sp.get_score(i)) for i in range(tokenizer.vocab_size)]
            XLNetTokenizer(vocab=pieces, unk_id=tokenizer.unk_id).save_pretrained(str(out_dir))
    return out_dir


def load_hf(directory: str | Path, *, lm_head: bool = True):
    """An xlnet_ref model from a transformers folder (``from_pretrained`` then ``interop.from_hf``), eval mode."""
    import transformers

    from ..interop import from_hf

    directory = Path(directory)
    _require(directory / "config.json")
    hf_class = transformers.XLNetLMHeadModel if lm_head else transformers.XLNetModel
    return from_hf(hf_class.from_pretrained(str(directory))).eval()
