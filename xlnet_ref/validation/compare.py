#!/usr/bin/env python
r"""Compare an XLNet implementation's outputs with the golden stages. Needs numpy and safetensors only.

    python golden/compare.py OUTPUTS [--golden DIR] [--case NAME ...] [--layout batch_first|length_first]
                             [--rtol R --atol A] [--stage-tol STAGE=R[,A] ...] [--failures | --verbose]

OUTPUTS is a .safetensors or .npz file holding your implementation's tensors under keys
``<case>/<stage>`` (``two_stream/logits``, ``memory/layer0.content.bd``, ...): stage names, layouts
and meanings are in golden/README.md and in manifest.json. Only ``logits`` is required for each
case you run; every other stage you write is compared too and narrows a failure down. A case the
reference refuses (``expect_error`` in the manifest) passes if you write ``<case>/refused`` (any
value) and nothing else for it. Cases missing from OUTPUTS are listed as skipped.

A stage passes iff ``max|actual - expected| <= rtol * max|expected| + atol`` over its entries (the
case's tolerances from manifest.json unless overridden); bool stages (masks, seg_diff) must be equal;
entries with ``|expected| >= huge`` (masked scores: -1e30, set or subtracted; 65500 in float16) must be that
large in the actual too; the query stream's score rows of padding targets (all-zero rows of
``target_mapping``) are not compared, nor are position scores ``bd`` of keys the mask hides (in
'uni' they may lie past the table's end). ``--layout length_first`` accepts the original code's layouts
(``[i, b, m]``, ``[i, j, b, n]``, ...); an axis of size 1 where the golden stage has a larger one
(a mask or table broadcast over the batch, ``[1, i, j]``, ``[r, 1, m]``) is expanded.

Exit status: 0 every compared stage passes, 1 a mismatch (the case, its first diverging stage and
where in the tensor the worst error sits), 2 a usage or file error (one line, no traceback).

This file exists twice, byte for byte: golden/compare.py, beside the golden files, so that a porter
can copy that folder and nothing else; and xlnet_ref/validation/compare.py, where the validator
(``python -m xlnet_ref.validate``) imports its comparison from. ``python -m xlnet_ref.golden write``
copies it; a test checks that the two are the same.
"""

from __future__ import annotations

import argparse
import difflib
import fnmatch
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT = "xlnet_ref-golden"
FORMAT_VERSION = 1
REFUSED = "refused"  # an adapter or outputs file declares "my implementation refuses this input"

_HERE = Path(__file__).resolve().parent
# golden/compare.py: its own folder; xlnet_ref/validation/compare.py: the repository's golden/
DEFAULT_GOLDEN = _HERE if (_HERE / "manifest.json").is_file() else _HERE.parents[1] / "golden"

AXES = {
    "b": "batch row",
    "n": "head",
    "i": "query position",
    "j": "key",
    "k": "target",
    "r": "table row",
    "m": "feature",
    "d": "head feature",
    "V": "vocabulary id",
    "t": "memory position",
    "f": "inner feature",
    "s": "segment relation",
}
POSITION_AXES = "ijkrt"
QUERY_SCORE = re.compile(r"layer\d+\.query\.(ac|bd_raw|bd|ef|score|prob)$")
POSITION_SCORE = re.compile(r"(layer\d+\.(?:content|query))\.bd$")


class UsageError(ValueError):
    """A usage or file error: reported in one line, exit status 2."""


@dataclass
class StageResult:
    stage: str
    status: str  # "pass", "FAIL", "not provided", "not measurable"
    shape: list | None = None
    max_abs: float | None = None
    max_rel: float | None = None
    note: str = ""
    where: str = ""  # where the worst (or first) error sits, e.g. "batch row 1, head 0, query position 3, key 5"

    @property
    def failed(self) -> bool:
        return self.status == "FAIL"


def huge_threshold(dtype: str) -> float:
    """|score| above this is a masked entry: -1e30 in float32 (set, or 1e30 subtracted), -65500 in float16."""
    return 3e4 if dtype == "float16" else 1e15


def length_first_layout(layout: str) -> str:
    """The original code's layout of a batch-first one: position axes first, then b, then the rest.
    'b i m' -> 'i b m', 'b n i j' -> 'i j b n', 'b i n d' -> 'i b n d', 'b n i r' -> 'i r b n'."""
    axes = layout.split()
    if "b" not in axes:
        return layout
    pos = [a for a in axes if a in POSITION_AXES]
    return " ".join(pos + ["b"] + [a for a in axes if a not in POSITION_AXES and a != "b"])


def to_batch_first(actual, layout: str, shape, *, length_first: bool = False) -> np.ndarray:
    """An actual tensor in the golden stage's batch-first layout: transposed from the length-first layout
    if asked, trailing size-1 axes beyond the golden rank dropped ([i, j, b, 1] masks), and axes of
    size 1 broadcast to the golden size ([1, i, j], [r, 1, m])."""
    a = np.asarray(actual)
    shape = tuple(shape)
    while a.ndim > len(shape) and a.shape[-1] == 1:
        a = a[..., 0]
    axes = layout.split()
    if length_first and "b" in axes and a.ndim == len(axes) == len(shape):
        lf = length_first_layout(layout).split()
        a = np.transpose(a, [lf.index(x) for x in axes])
    if a.ndim == len(shape) and a.shape != shape and all(s in (1, e) for s, e in zip(a.shape, shape)):
        a = np.broadcast_to(a, shape)
    return a


def locate(index, layout: str) -> str:
    """(1, 0, 3, 5) with 'b n i j' -> 'batch row 1, head 0, query position 3, key 5'."""
    index = [int(x) for x in index]
    if not index:
        return "the scalar"
    axes = layout.split()
    if len(axes) != len(index):
        return f"index {tuple(index)}"
    return ", ".join(f"{AXES.get(a, a)} {x}" for a, x in zip(axes, index) if a != "1") or "the scalar"


def hidden_keys(name: str, golden: dict, huge: float):
    """For ``layer{L}.{stream}.bd``: True where the golden score of that stream is masked, else None.

    A masked key's position score has no effect; in 'uni' attention its column may even lie past the
    table's end (keys after the query), where implementations differ (clamped or read from the next
    row). So those entries of bd are not compared. ``golden``: stage name -> array."""
    m = POSITION_SCORE.match(name)
    score = golden.get(f"{m.group(1)}.score") if m else None
    if score is None:
        return None
    score = np.asarray(score, dtype=np.float64)
    return np.isfinite(score) & (np.abs(np.where(np.isfinite(score), score, 0)) >= huge)


def compare_stage(
    name: str,
    expected,
    actual,
    *,
    rtol: float,
    atol: float,
    huge: float,
    valid_rows=None,
    skip=None,
    layout: str = "",
    length_first: bool = False,
) -> StageResult:
    """One stage: shape, then exact equality (bool) or max abs / rel error (float) against the tolerance.

    expected: the golden array (batch-first); actual: array-like (numpy, or anything np.asarray reads);
    valid_rows: [b, k] bool, False for padding targets (their query-stream score rows are not compared);
    skip: bool array of the stage's shape, True where an entry is not compared (:func:`hidden_keys`);
    layout: the stage's axis letters ('b n i j'), used to transpose, expand and say where the error is.
    """
    expected = np.asarray(expected)
    shape = list(expected.shape)
    if actual is None:
        return StageResult(name, "not provided", shape)
    a = to_batch_first(actual, layout, shape, length_first=length_first)
    if list(a.shape) != shape:
        note = f"shape {list(a.shape)}, expected {shape} ({layout or '?'})"
        if "r" in layout.split():
            note += "; r = klen + qlen ('bi') or klen + 1 ('uni') distances, klen = mlen + qlen"
        elif "j" in layout.split():
            note += "; j runs over klen = mlen + qlen keys, memory first"
        return StageResult(name, "FAIL", shape, note=note)
    keep = np.ones(expected.shape, dtype=bool)
    if valid_rows is not None and QUERY_SCORE.match(name) and expected.ndim == 4:
        keep = np.broadcast_to(np.asarray(valid_rows, dtype=bool)[:, None, :, None], expected.shape)
    if skip is not None and np.shape(skip) == expected.shape:
        keep = keep & ~np.asarray(skip, dtype=bool)
    if expected.dtype == np.bool_:
        differ = ((a != 0) != expected) & keep
        if differ.any():
            where = locate(np.argwhere(differ)[0], layout)
            return StageResult(
                name,
                "FAIL",
                shape,
                note=f"{int(differ.sum())} of {int(keep.sum())} entries differ",
                where=f"first at {where}",
            )
        return StageResult(name, "pass", shape, 0.0, 0.0)
    e, a = expected.astype(np.float64), a.astype(np.float64)
    fin_e, fin_a = np.isfinite(e), np.isfinite(a)
    bad = (fin_e != fin_a) & keep
    if bad.any():
        return StageResult(
            name,
            "FAIL",
            shape,
            float("nan"),
            float("nan"),
            note=f"{int(bad.sum())} entries are nan/inf in one and finite in the other",
            where=f"first at {locate(np.argwhere(bad)[0], layout)}",
        )
    huge_e = fin_e & (np.abs(np.where(fin_e, e, 0)) >= huge)
    huge_a = fin_a & (np.abs(np.where(fin_a, a, 0)) >= huge)
    bad = (huge_e != huge_a) & keep
    if bad.any():
        return StageResult(
            name,
            "FAIL",
            shape,
            note=f"{int(bad.sum())} entries masked in one and not in the other",
            where=f"first at {locate(np.argwhere(bad)[0], layout)}",
        )
    regular = fin_e & ~huge_e & keep
    if not regular.any():
        return StageResult(name, "pass", shape, 0.0, 0.0, note="all entries masked")
    diff = np.zeros_like(e)
    np.subtract(a, e, out=diff, where=regular)  # only where both are regular: no inf - inf
    diff = np.abs(diff)
    worst = np.unravel_index(int(np.argmax(diff)), diff.shape)
    max_abs, scale = float(diff[worst]), float(np.abs(e[regular]).max())
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    status = "pass" if max_abs <= rtol * scale + atol else "FAIL"
    where = f"worst at {locate(worst, layout)}" if status == "FAIL" and expected.ndim else ""
    return StageResult(name, status, shape, max_abs, max_rel, where=where)


# ---------------------------------------------------------------------------------------------------
# reading the golden folder and an outputs file (numpy + safetensors)


def read_manifest(directory) -> dict:
    """manifest.json of a golden folder, checked for its format; UsageError naming the file otherwise."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UsageError(f"golden folder {directory}: no such folder")
    path = directory / "manifest.json"
    if not path.is_file():
        raise UsageError(
            f"{path}: no such file ({directory} is not a golden folder; "
            "write one with `python -m xlnet_ref.golden write`)"
        )
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UsageError(f"{path}: not valid JSON ({error}): the file is damaged or truncated") from None
    if (
        not isinstance(manifest, dict)
        or manifest.get("format") != FORMAT
        or manifest.get("format_version") != FORMAT_VERSION
    ):
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise UsageError(f"{path}: expected format {FORMAT!r} version {FORMAT_VERSION}, got {got!r}")
    cases = manifest.get("cases")
    if not isinstance(cases, list) or not cases:
        raise UsageError(f"{path}: expected a non-empty list of cases, got {cases!r:.60}")
    for entry in cases:
        if not isinstance(entry, dict) or not {"name", "file", "dtype", "tolerances", "stages"} <= entry.keys():
            raise UsageError(f"{path}: a case entry lacks name/file/dtype/tolerances/stages: {str(entry):.80}")
    return manifest


def read_case_file(directory, entry: dict) -> dict[str, np.ndarray]:
    """Every tensor of one case file, as numpy; UsageError if the file or a tensor the manifest lists is missing."""
    path = Path(directory) / entry["file"]
    if not path.is_file():
        raise UsageError(f"{path}: no such file (manifest.json lists it for case {entry['name']!r})")
    from safetensors.numpy import load_file

    try:
        tensors = load_file(str(path))
    except Exception as error:  # noqa: BLE001 — safetensors raises its own error types
        raise UsageError(
            f"{path}: not a readable safetensors file ({str(error).splitlines()[0][:120]}): damaged or truncated"
        ) from None
    listed = [s["file"] for s in entry["stages"]]
    for item in entry.get("inputs", []):
        listed += item.get("files", [item.get("file")])
    missing = [f for f in listed if f not in tensors]
    if missing:
        raise UsageError(f"{path}: no tensor {missing[0]!r} (manifest.json lists it; {len(missing)} missing)")
    for s in entry["stages"]:
        if list(tensors[s["file"]].shape) != s["shape"]:
            raise UsageError(
                f"{path}: tensor {s['file']!r} has shape {list(tensors[s['file']].shape)}, "
                f"manifest.json says {s['shape']}"
            )
    return tensors


def read_outputs(path) -> dict[str, np.ndarray]:
    """An outputs file (.safetensors or .npz) as {key: array}."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        if path.suffix == ".safetensors":
            from safetensors.numpy import load_file

            return load_file(str(path))
    except Exception as error:  # noqa: BLE001 — numpy / zipfile / safetensors errors alike
        raise UsageError(
            f"{path}: cannot read it as {path.suffix[1:]} "
            f"({type(error).__name__}: {str(error).splitlines()[0][:120] if str(error) else ''})"
        ) from None
    raise UsageError(f"{path}: expected a .safetensors or .npz file, got {path.suffix or 'no suffix'!r}")


# ---------------------------------------------------------------------------------------------------
# the command line


def _stage_tolerance(text: str) -> tuple[str, float, float | None]:
    try:
        pattern, value = text.split("=", 1)
        parts = [float(x) for x in value.split(",")]
        if len(parts) not in (1, 2) or not pattern:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected STAGE=RTOL or STAGE=RTOL,ATOL, got {text!r}") from None
    return pattern, parts[0], parts[1] if len(parts) == 2 else None


def tolerance(stage: str, case_tol: dict, args) -> tuple[float, float]:
    """The case's (rtol, atol), then --rtol/--atol, then the last --stage-tol whose pattern matches."""
    rtol = case_tol["rtol"] if args.rtol is None else args.rtol
    atol = case_tol["atol"] if args.atol is None else args.atol
    base = stage.rsplit(".", 1)[-1]
    for pattern, r, a in args.stage_tol:
        if fnmatch.fnmatchcase(stage, pattern) or pattern == base:
            rtol, atol = r, (atol if a is None else a)
    return rtol, atol


def compare_case(entry: dict, golden: dict, given: dict, args, known_anywhere: set) -> tuple[list, list]:
    """(stage results in the golden order, notes) for one case; ``given`` = {stage: array} from OUTPUTS."""
    notes = []
    if entry.get("expect_error"):
        others = sorted(set(given) - {REFUSED})
        if REFUSED in given and not others:
            return [StageResult("input_check", "pass", note="refused, as the reference does")], notes
        return [
            StageResult(
                "input_check",
                "FAIL",
                note=f"the reference refuses this input ({entry['expect_error']:.80}); "
                f"write '{entry['name']}/{REFUSED}' and no stages",
            )
        ], notes
    if REFUSED in given:
        return [StageResult("input_check", "FAIL", note="refused an input the reference accepts")], notes
    tm = golden.get("inputs/target_mapping")
    valid_rows = tm.sum(-1) > 0 if tm is not None else None
    huge = huge_threshold(entry["dtype"])
    results = []
    names = [s["name"] for s in entry["stages"]]
    by_name = {s["name"]: golden[s["file"]] for s in entry["stages"]}
    for s in entry["stages"]:
        rtol, atol = tolerance(s["name"], entry["tolerances"], args)
        r = compare_stage(
            s["name"],
            golden[s["file"]],
            given.get(s["name"]),
            rtol=rtol,
            atol=atol,
            huge=huge,
            valid_rows=valid_rows,
            skip=hidden_keys(s["name"], by_name, huge),
            layout=s.get("layout", ""),
            length_first=args.layout == "length_first",
        )
        if s["name"] == "logits" and r.status == "not provided":
            r.status, r.note = "FAIL", "logits are required"
        results.append(r)
    for name in sorted(set(given) - set(names)):
        if name in known_anywhere:
            notes.append(f"{name}: the reference has no such stage in this case (not compared)")
            continue
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        results.append(StageResult(name, "FAIL", note=f"unknown stage name{hint}"))
    return results, notes


def _num(x) -> str:
    return "-" if x is None else f"{x:.2e}"


def _detail(r: StageResult) -> str:
    text = "; ".join(x for x in (r.note, r.where) if x)
    return f"  [{text}]" if text else ""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit status 2 (argparse would also print the usage)
        print(f"error: {message} (python compare.py --help)", file=sys.stderr)
        sys.exit(2)


def main(argv=None, out=print) -> int:
    parser = _Parser(prog="compare.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("outputs", metavar="OUTPUTS", help=".safetensors or .npz with keys <case>/<stage>")
    parser.add_argument("--golden", default=str(DEFAULT_GOLDEN), help="golden folder (default: %(default)s)")
    parser.add_argument("--case", action="append", metavar="NAME", help="only this case (repeatable)")
    parser.add_argument("--layout", choices=["batch_first", "length_first"], default="batch_first")
    parser.add_argument("--rtol", type=float, help="relative tolerance for every stage (default: the case's)")
    parser.add_argument("--atol", type=float, help="absolute tolerance for every stage (default: the case's)")
    parser.add_argument(
        "--stage-tol",
        type=_stage_tolerance,
        action="append",
        default=[],
        metavar="STAGE=R[,A]",
        help="tolerance for stages matching STAGE (a name, a base name like 'prob', or a glob)",
    )
    parser.add_argument("--failures", action="store_true", help="print every failing stage of each case")
    parser.add_argument("--verbose", action="store_true", help="print every stage of each case")
    args = parser.parse_args(argv)
    try:
        return _run(args, out)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _run(args, out) -> int:
    manifest = read_manifest(args.golden)
    outputs = read_outputs(args.outputs)
    entries = {e["name"]: e for e in manifest["cases"]}
    for name in args.case or []:
        if name not in entries:
            raise UsageError(f"--case: expected one of {list(entries)}, got {name!r}")
    given: dict[str, dict] = {}
    for key, value in outputs.items():
        if "/" not in key:
            raise UsageError(f"{args.outputs}: key {key!r}: expected '<case>/<stage>', e.g. 'one_stream/logits'")
        case, stage = key.split("/", 1)
        given.setdefault(case, {})[stage] = value
    known_anywhere = {s["name"] for e in manifest["cases"] for s in e["stages"]}
    selected = args.case or list(entries)
    out(f"compare.py: {args.outputs} against {args.golden} ({len(selected)} case(s), layout {args.layout})")
    failed, compared, departure, totals = [], 0, None, {"pass": 0, "not provided": 0}
    for case in sorted(set(given) - set(entries)):
        close = difflib.get_close_matches(case, list(entries), n=1, cutoff=0.6)
        out(f"unknown case {case!r} in OUTPUTS" + (f" (did you mean {close[0]!r}?)" if close else ""))
        failed.append(case)
    for name in selected:
        entry = entries[name]
        if name not in given:
            out(f"case {name:<24} skipped: no '{name}/...' keys in OUTPUTS")
            continue
        compared += 1
        results, notes = compare_case(entry, read_case_file(args.golden, entry), given[name], args, known_anywhere)
        counts = {st: sum(r.status == st for r in results) for st in ("pass", "FAIL", "not provided")}
        totals["pass"] += counts["pass"]
        totals["not provided"] += counts["not provided"]
        first = next((r for r in results if r.failed), None)
        summary = ", ".join(f"{n} {st}" for st, n in counts.items() if n)
        out(
            f"case {name:<24} {'PASS' if first is None else 'FAIL at ' + first.stage}  ({summary})"
            + ("" if first is None else _detail(first))
        )
        for r in results:
            if args.verbose or (args.failures and r.failed):
                out(f"  {r.stage:<40} {r.status:<13} max abs {_num(r.max_abs)}  max rel {_num(r.max_rel)}" + _detail(r))
        for note in notes:
            out(f"  note: {note}")
        if first is not None:
            failed.append(name)
            if departure is None:
                meaning = next((s.get("meaning", "") for s in entry["stages"] if s["name"] == first.stage), "")
                later = results[results.index(first) + 1 :]
                departure = (name, first, meaning, sum(r.status == "pass" for r in later), sum(r.failed for r in later))
    if compared == 0 and not failed:
        raise UsageError(
            f"{args.outputs}: no keys for any selected golden case (expected '<case>/<stage>' with "
            f"case one of {selected[:3]}...)"
        )
    if not failed:
        skipped = len(selected) - compared
        out(
            f"ALL PASS: {totals['pass']} stages compared in {compared} case(s)"
            + (f"; {totals['not provided']} stages not provided" if totals["not provided"] else "")
            + (f"; {skipped} case(s) skipped (not in OUTPUTS)" if skipped else "")
        )
        return 0
    out(f"FAILED: {', '.join(failed)}")
    if departure is not None:
        name, r, meaning, agree, fail = departure
        out(f"First departure from the reference: case '{name}', stage '{r.stage}'")
        out(f"  = {meaning or r.stage}{_detail(r)}")
        out(f"  after it in this case: {agree} stages still agree, {fail} fail too (--failures lists them)")
    return 1


if __name__ == "__main__":
    sys.exit(main())
