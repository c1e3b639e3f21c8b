r"""Validate an XLNet implementation against the reference, stage by stage, and name where it first departs.

"The logits differ" says nothing about *where*. This module runs the golden cases (cases.py: one and
two streams, memory, segments, padding, bi_data, float16, same_length, untie_r, clamp_len, a
generation step, gradients) through the implementation under test (an adapter, adapters.py),
compares every stage with the reference's (compare.py), and names the first stage that fails: the
positional table, the shift, the segment term, the query stream's mask, the memory, a gradient, ...

Expected values come from the reference model, run live, or from saved golden files (golden.py).
The command line is cli.py (``python -m xlnet_ref.validate``); docs/validate.md is the walkthrough.

Judging a case:

- a case the reference refuses passes only if the implementation refuses it in the documented way
  (ValueError / TypeError, or ``{"refused": why}``); another exception is a crash, a failure;
- otherwise every stage the reference has is compared with what the adapter returned (``logits``
  required; a stage not returned is "not provided", not a failure); a stage name the validator does
  not know is a failure, with the closest known name (a typo would otherwise hide a comparison).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .adapters import AdapterRun, load_adapter, run_adapter  # noqa: F401 — re-exported for adapters' authors
from .cases import Case
from .compare import REFUSED, StageResult, hidden_keys, huge_threshold
from .compare import compare_stage as _compare_arrays
from .golden import DEFAULT_DIR, read_cases, with_reference_outputs
from .reference import build_reference, reference_adapter, reference_stages  # noqa: F401 — notebook 07 imports these here
from .stages import STAGES, closest_stage, is_known_stage, stage_description, stage_layout  # noqa: F401
from .transformers_adapter import hf_adapter  # noqa: F401


def _numpy(x) -> np.ndarray | None:
    """A torch tensor (any device, with or without grad; bfloat16 widened) or array-like -> numpy."""
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        return (x.float() if x.dtype == torch.bfloat16 else x).numpy()
    return np.asarray(x)


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
    two_stream: bool | None = None,
    length_first: bool = False,
) -> StageResult:
    """One stage (torch or numpy on either side), by the rule of compare.py, with the stage's layout."""
    if two_stream is None and name == "logits":
        two_stream = valid_rows is not None
    return _compare_arrays(
        name,
        _numpy(expected),
        _numpy(actual),
        rtol=rtol,
        atol=atol,
        huge=huge,
        valid_rows=_numpy(valid_rows),
        skip=_numpy(skip),
        layout=stage_layout(name, two_stream=two_stream),
        length_first=length_first,
    )


@dataclass
class CaseResult:
    case: Case
    stages: list[StageResult]
    outputs: dict | None = None  # what the implementation returned (detached)
    traceback: str = ""  # the adapter's traceback when it raised

    @property
    def first_failure(self) -> StageResult | None:
        return next((s for s in self.stages if s.failed), None)

    @property
    def passed(self) -> bool:
        return self.first_failure is None


def expected_outputs(case: Case) -> Case:
    """The case with ``expected`` filled: from disk if read from a golden directory, else by the reference."""
    return case if case.expected is not None else with_reference_outputs(case)


def _judge_refusal(case: Case, run: AdapterRun) -> CaseResult:
    """A case the reference refuses: only a documented refusal passes."""
    if run.refusal is not None:
        return CaseResult(case, [StageResult("input_check", "pass", note=run.refusal[:120])])
    if run.error is not None:
        note = (
            f"crashed instead of refusing: {type(run.error).__name__}: {str(run.error)[:150]} (refuse with "
            f"ValueError/TypeError or return {{'{REFUSED}': why}})"
        )
        return CaseResult(case, [StageResult("input_check", "FAIL", note=note)], traceback=run.traceback)
    return CaseResult(
        case,
        [
            StageResult(
                "input_check", "FAIL", note=f"returned results; the reference refuses it ({case.expect_error[:100]})"
            )
        ],
        run.outputs,
    )


def validate_case(case: Case, adapter: Callable, *, length_first: bool = False) -> CaseResult:
    """Run the adapter on one case and compare each of the reference's stages, in order."""
    case = expected_outputs(case)
    run = run_adapter(adapter, case)
    if case.expect_error is not None:
        return _judge_refusal(case, run)
    if run.refused is not None:
        return CaseResult(
            case,
            [StageResult("input_check", "FAIL", note=f"refused an input the reference accepts: {run.refused[:100]}")],
        )
    if run.error is not None:
        note = f"{type(run.error).__name__}: {str(run.error)[:200]}"
        return CaseResult(case, [StageResult("run", "FAIL", note=note)], traceback=run.traceback)
    tol = case.tolerances
    huge = huge_threshold(case.dtype)
    tm = case.inputs.get("target_mapping")
    valid_rows = tm.sum(-1) > 0 if tm is not None else None
    results = []
    golden = {k: _numpy(v) for k, v in case.expected.items() if k.endswith(".score")}
    for name, expected in case.expected.items():
        if name in run.not_measurable:
            results.append(StageResult(name, "not measurable", list(expected.shape), note=run.not_measurable[name]))
            continue
        result = compare_stage(
            name,
            expected,
            run.outputs.get(name),
            rtol=tol["rtol"],
            atol=tol["atol"],
            huge=huge,
            valid_rows=valid_rows,
            skip=hidden_keys(name, golden, huge),
            two_stream=tm is not None,
            length_first=length_first and not name.endswith("new_mem_grad"),
        )  # ours: batch-first
        if name == "logits" and result.status == "not provided":
            result.status, result.note = "FAIL", "the adapter must return 'logits'"
        results.append(result)
    for name in run.outputs:
        if name not in case.expected and not is_known_stage(name):
            close = closest_stage(name, case.expected)
            results.append(
                StageResult(
                    name,
                    "FAIL",
                    note="unknown stage name" + (f" (did you mean {close!r}?)" if close else "; see docs/validate.md"),
                )
            )
    return CaseResult(case, results, run.outputs)


def validate(adapter: Callable, cases: list[Case], *, length_first: bool = False) -> list[CaseResult]:
    return [validate_case(case, adapter, length_first=length_first) for case in cases]


def first_departure(results: list[CaseResult]) -> tuple[CaseResult, StageResult] | None:
    """The first failing stage of the first failing case (cases in order, stages in forward order)."""
    for r in results:
        if r.first_failure is not None:
            return r, r.first_failure
    return None


# ---------------------------------------------------------------------------------------------------
# report


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.2e}"


def _detail(s: StageResult) -> str:
    text = "; ".join(x for x in (s.note, s.where) if x)
    return f"  [{text}]" if text else ""


def _description(name: str) -> str:
    return stage_description(name) if name in STAGES or is_known_stage(name) else "(not a stage of the reference)"


def format_case(result: CaseResult, *, brief: bool = False, show_traceback: bool = False) -> str:
    case = result.case
    tol = case.tolerances
    lines = [f"case {case.name}: {case.description}  [{case.dtype}, rtol {tol['rtol']:g}, atol {tol['atol']:g}]"]
    shown = [s for s in result.stages if s.failed] if brief else result.stages
    width = max([26] + [len(s.stage) for s in shown])  # gradient stages have long names
    if shown:
        header = f"{'stage':<{width}} {'shape':<16} {'max abs err':>11} {'max rel err':>11}  {'result':<14} what it is"
        lines.append("  " + header)
    for s in shown:
        shape = "-" if s.shape is None else str(s.shape).replace(" ", "")
        lines.append(
            f"  {s.stage:<{width}} {shape:<16} {_num(s.max_abs):>11} {_num(s.max_rel):>11}  {s.status:<14} "
            f"{_description(s.stage)}{_detail(s)}"
        )
    if show_traceback and result.traceback:
        lines += ["  adapter traceback:"] + ["    " + x for x in result.traceback.rstrip().splitlines()]
    counts = {
        status: sum(s.status == status for s in result.stages)
        for status in ("pass", "FAIL", "not provided", "not measurable")
    }
    summary = ", ".join(f"{n} {status}" for status, n in counts.items() if n)
    first = result.first_failure
    verdict = "PASS" if first is None else f"FAIL at {first.stage} — {_description(first.stage)}"
    lines.append(f"  => {verdict}  ({summary})")
    return "\n".join(lines)


def _names(stages: list[str], limit: int = 8) -> str:
    return ", ".join(stages[:limit]) + (f", ... ({len(stages) - limit} more)" if len(stages) > limit else "")


def format_report(results: list[CaseResult], *, against: str, brief: bool = False, show_traceback: bool = False) -> str:
    blocks = [f"xlnet_ref.validate: {against} against the reference, {len(results)} case(s)\n"]
    blocks += [format_case(r, brief=brief, show_traceback=show_traceback) + "\n" for r in results]
    departure = first_departure(results)
    if departure is None:
        stages = [s for r in results for s in r.stages]
        passed = sum(s.status == "pass" for s in stages)
        blocks.append(
            f"ALL PASS: {passed} stages compared in {len(results)} cases"
            + (f" ({len(stages) - passed} not provided or not measurable)." if passed < len(stages) else ".")
        )
        return "\n".join(blocks)
    r, s = departure
    failing = [x.case.name for x in results if not x.passed]
    lines = [
        f"FAILED ({len(failing)} of {len(results)} cases: {', '.join(failing)}).",
        f"First departure from the reference: case '{r.case.name}', stage '{s.stage}'",
        f"  = {_description(s.stage)}{_detail(s)}",
    ]
    index = r.stages.index(s)
    before = [x.stage for x in r.stages[:index] if x.status == "not provided"]
    if before:
        lines.append(f"  ({len(before)} earlier stages not provided by the adapter; return them to narrow this down)")
    # so that one bug does not hide another: what still agrees after it, and where the other cases depart
    later_pass = [x.stage for x in r.stages[index + 1 :] if x.status == "pass"]
    later_fail = [x.stage for x in r.stages[index + 1 :] if x.failed]
    if later_pass:
        lines.append(f"  Later stages of this case that still agree ({len(later_pass)}): {_names(later_pass)}")
    if later_fail:
        lines.append(f"  Later stages of this case that fail too ({len(later_fail)}): {_names(later_fail)}")
    others = [f"{x.case.name} at {x.first_failure.stage}" for x in results if not x.passed and x is not r]
    if others:
        lines.append(f"  First departure in each other failing case: {_names(others, 12)}")
    blocks.append("\n".join(lines))
    return "\n".join(blocks)


# ---------------------------------------------------------------------------------------------------
# golden reproduction (python -m xlnet_ref.golden check)


def check_reproduction(directory=DEFAULT_DIR, *, out=print) -> int:
    """Run the reference on the saved cases and check the golden files' one promise: every stage within
    its case's tolerances (``rtol``, ``atol`` in the manifest), on any machine. Returns the exit status
    (0 / 1); a missing, incomplete or damaged folder raises golden.GoldenError (a ValueError).

    Whether a case is also equal bit for bit is printed, for information only: float rounding depends on
    the CPU, the kernels torch picks for it (``ATEN_CPU_CAPABILITY``), the BLAS build and the thread
    count, none of which the files can record well enough to promise equal bits on another machine.
    """
    cases = read_cases(directory)
    out(
        "promise checked: every stage within its case's tolerances (bit-for-bit equality is not promised "
        "across machines)"
    )
    status, exact_cases, compared = 0, 0, 0
    for case in cases:
        result = validate_case(case, reference_adapter)
        exact = result.outputs is not None and all(
            torch.equal(result.outputs[k], v) for k, v in case.expected.items() if k in result.outputs
        )
        worst = max((s.max_rel or 0.0 for s in result.stages if s.max_rel is not None), default=0.0)
        tol = f"rtol {case.tolerances['rtol']:g}, atol {case.tolerances['atol']:g}"
        if not result.passed:
            verdict = f"FAIL ({tol})"
            status = 1
        elif case.expect_error is not None:
            verdict = "refused, as the saved case expects"
        else:
            compared += 1
            exact_cases += exact
            verdict = f"within tolerance ({tol}; max rel err {worst:.1e}" + ("; bit for bit here)" if exact else ")")
        out(f"{case.name:<24} {verdict}")
        if not result.passed:
            out(format_case(result, brief=True))
    refusals = sum(1 for c in cases if c.expect_error is not None)
    out(
        f"{'FAILED' if status else 'OK'}: {compared} of {len(cases) - refusals} cases within tolerance, "
        f"{refusals} refusal case(s); {exact_cases} of {compared} also bit for bit on this machine "
        "(information, not checked)"
    )
    return status
