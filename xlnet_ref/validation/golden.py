r"""The golden files: the built-in cases with every reference stage saved, and reading them back safely.

On disk (``golden/``, format in golden/README.md): one ``manifest.json`` and one ``<case>.safetensors``
per case, with tensors named ``weights/<name>``, ``inputs/<name>`` (``inputs/mems.0``, ...) and
``stages/<stage>``; beside them ``compare.py`` (numpy + safetensors only) and ``README.md``.

    python -m xlnet_ref.golden write [--dir golden]   # regenerate (writing twice on one machine: same bytes)
    python -m xlnet_ref.golden check [--dir golden]   # does the reference reproduce them within tolerance?

What the files promise: the reference reproduces every stage within the case's tolerances, on any
machine. Not equal bits: float rounding depends on the CPU, the kernels torch picks for it, the BLAS
build and the thread count, so bits are compared only between two writes on one machine.

Reading checks the folder against the golden set the code defines (cases.SPECS and
cases.expected_stage_names), not against the folder's own manifest: a folder that lost a case, a
stage, a file or a tensor, or holds a damaged file, is refused with a :class:`GoldenError` naming the
file and what is wrong (the command lines turn it into one line and exit status 2).
"""

from __future__ import annotations

import json
import platform
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from . import compare
from .adapters import run_adapter
from .cases import INPUT_MEANINGS, SPECS, Case, builtin_cases, expected_stage_names
from .compare import FORMAT, FORMAT_VERSION, UsageError
from .reference import reference_adapter
from .stages import stage_description, stage_layout

DEFAULT_DIR = compare.DEFAULT_GOLDEN


class GoldenError(UsageError):
    """A golden folder that is missing, incomplete or damaged (a ValueError: exit status 2)."""


def with_reference_outputs(case: Case) -> Case:
    """Run the reference on the case: fills ``expected`` (or the refusal message in ``expect_error``)."""
    run = run_adapter(reference_adapter, case)
    if case.expect_error is not None:
        if run.error is None:
            raise AssertionError(f"case {case.name}: expected the reference to refuse the input, but it ran")
        return replace(case, expect_error=f"{type(run.error).__name__}: {run.error}", expected={})
    if run.error is not None:
        raise run.error
    return replace(case, expected=run.outputs)


# ---------------------------------------------------------------------------------------------------
# writing and reading


def environment() -> dict:
    """Where the files were generated, recorded in the manifest for information: nothing is promised from
    it (two CPUs with the same entries can still round differently)."""
    return {
        "torch": torch.__version__,
        "machine": platform.machine(),
        "system": platform.system(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def _describe_tensor(name: str, t: torch.Tensor) -> dict:
    return {"name": name, "shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", "")}


def case_tensors(case: Case) -> dict[str, torch.Tensor]:
    """Every tensor of a case under its file name: weights/..., inputs/..., stages/..."""
    tensors = {f"weights/{k}": v for k, v in case.weights.items()}
    for k, v in case.inputs.items():
        if k == "mems":
            tensors.update({f"inputs/mems.{layer}": m for layer, m in enumerate(v)})
        else:
            tensors[f"inputs/{k}"] = v
    tensors.update({f"stages/{k}": v for k, v in (case.expected or {}).items()})
    return {k: v.detach().contiguous() for k, v in tensors.items()}


def case_manifest(case: Case) -> dict:
    two_stream = "target_mapping" in case.inputs
    inputs = []
    for k, v in case.inputs.items():
        if k == "mems":
            inputs.append(
                {
                    "name": "mems",
                    "files": [f"inputs/mems.{layer}" for layer in range(len(v))],
                    "shape": list(v[0].shape),
                    "dtype": str(v[0].dtype).replace("torch.", ""),
                    "meaning": INPUT_MEANINGS[k],
                }
            )
        else:
            inputs.append({**_describe_tensor(k, v), "file": f"inputs/{k}", "meaning": INPUT_MEANINGS[k]})
    stages = [
        {
            **_describe_tensor(k, v),
            "file": f"stages/{k}",
            "layout": stage_layout(k, two_stream=two_stream),
            "meaning": stage_description(k),
        }
        for k, v in (case.expected or {}).items()
    ]
    return {
        "name": case.name,
        "description": case.description,
        "file": f"{case.name}.safetensors",
        "dtype": case.dtype,
        "config": case.config,
        "tolerances": case.tolerances,
        "expect_error": case.expect_error,
        "gradients": case.gradients,
        "inputs": inputs,
        "stages": stages,
    }


def write_golden(directory: str | Path = DEFAULT_DIR, cases: list[Case] | None = None) -> Path:
    """Generate the cases, run the reference, write manifest.json + one safetensors file per case, and
    copy compare.py beside them (the folder is all a porter needs)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cases = [with_reference_outputs(c) for c in (cases if cases is not None else builtin_cases())]
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "about": "XLNet reference stages from xlnet_ref; format, layouts and meanings: README.md in this folder; "
        "compare an implementation's outputs with compare.py",
        "comparison": "a stage passes iff max|actual - expected| <= rtol * max|expected| + atol over its entries; "
        "masks and seg_diff must be equal; entries with |expected| >= huge (masked scores) must be "
        "masked in the actual too; rows of query.* for all-zero target_mapping rows are not compared",
        "generated_on": environment(),
        "cases": [case_manifest(c) for c in cases],
    }
    for case in cases:
        save_file(case_tensors(case), str(directory / f"{case.name}.safetensors"), metadata={"case": case.name})
    (directory / "manifest.json").write_text(to_json(manifest) + "\n")
    shutil.copyfile(compare.__file__, directory / "compare.py")
    return directory


def to_json(obj, indent: str = "") -> str:
    """JSON with every object or list that fits in 240 characters on one line (readable diffs, small file)."""
    flat = json.dumps(obj)
    if len(flat) + len(indent) <= 240 or not isinstance(obj, (dict, list)) or not obj:
        return flat
    inner = indent + " "
    if isinstance(obj, dict):
        items = [f"{inner}{json.dumps(k)}: {to_json(v, inner)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    return "[\n" + ",\n".join(inner + to_json(v, inner) for v in obj) + "\n" + indent + "]"


def read_manifest(directory: str | Path) -> dict:
    """manifest.json, checked for its format (GoldenError naming the file otherwise)."""
    try:
        return compare.read_manifest(directory)
    except UsageError as error:
        raise GoldenError(str(error)) from None


def check_manifest(manifest: dict, directory: str | Path, names: list[str] | None = None) -> None:
    """Does the manifest hold every case (or the named ones) of the golden set, each with every stage?

    The golden set is the code's (SPECS, expected_stage_names), so a manifest that lost entries is caught.
    """
    path = Path(directory) / "manifest.json"
    entries = {e["name"]: e for e in manifest["cases"]}
    builtin = {s.name: s for s in SPECS}
    for n in names or []:
        if n not in entries:
            raise GoldenError(f"{path}: no case {n!r} (it lists {list(entries)})")
    wanted = names if names is not None else list(builtin)
    missing = [n for n in wanted if n in builtin and n not in entries]
    if missing:
        raise GoldenError(
            f"{path}: lists {len(entries)} cases, the golden set has {len(builtin)}: missing "
            f"{missing[:4]}{' ...' if len(missing) > 4 else ''} (regenerate: python -m xlnet_ref.golden write)"
        )
    for n in wanted:
        if n not in builtin:
            continue
        spec, entry = builtin[n], entries[n]
        if bool(spec.expect_error) != bool(entry.get("expect_error")):
            raise GoldenError(
                f"{path}: case {n!r}: expected expect_error {'set' if spec.expect_error else 'empty'}, "
                f"got {entry.get('expect_error')!r}"
            )
        listed = [s["name"] for s in entry["stages"]]
        want = expected_stage_names(spec)
        lost = [s for s in want if s not in listed]
        extra = [s for s in listed if s not in want]
        if lost or extra:
            what = f"missing {lost[:3]}{' ...' if len(lost) > 3 else ''}" if lost else f"unexpected {extra[:3]}"
            raise GoldenError(f"{path}: case {n!r} lists {len(listed)} stages, the golden set has {len(want)}: {what}")
        if listed != want:  # the order is the forward (then backward) order: it decides the first departure
            raise GoldenError(f"{path}: case {n!r} lists its stages out of order (expected {want[:3]} ...)")


def read_cases(directory: str | Path = DEFAULT_DIR, names: list[str] | None = None) -> list[Case]:
    """Read golden cases from disk, checked against the golden set. Needs safetensors and torch only: no
    model is built. GoldenError (a ValueError) names the file and what is wrong."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    check_manifest(manifest, directory, names)
    cases = []
    for entry in manifest["cases"]:
        if names is not None and entry["name"] not in names:
            continue
        try:
            arrays = compare.read_case_file(directory, entry)
        except UsageError as error:
            raise GoldenError(str(error)) from None
        tensors = {k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}
        weights = {k[len("weights/") :]: v for k, v in tensors.items() if k.startswith("weights/")}
        inputs: dict = {}
        for item in entry["inputs"]:
            if item["name"] == "mems":
                inputs["mems"] = [tensors[f] for f in item["files"]]
            else:
                inputs[item["name"]] = tensors[item["file"]]
        expected = {s["name"]: tensors[s["file"]] for s in entry["stages"]}  # manifest order = forward order
        cases.append(
            Case(
                name=entry["name"],
                description=entry["description"],
                config=entry["config"],
                dtype=entry["dtype"],
                weights=weights,
                inputs=inputs,
                tolerances=entry["tolerances"],
                expect_error=entry["expect_error"],
                expected=expected,
                gradients=bool(entry.get("gradients", False)),
            )
        )
    return cases


def golden_size(directory: str | Path = DEFAULT_DIR) -> dict[str, int]:
    """File name -> bytes, for the files of a golden directory."""
    return {p.name: p.stat().st_size for p in sorted(Path(directory).iterdir()) if p.is_file()}
