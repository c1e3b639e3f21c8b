r"""Feedback a student can act on: which case failed, expected vs got, and a hint naming the mistake.

Every graded cell of the labs calls a checker in :mod:`xlnet_ref.labs.graders`, which calls
:func:`compare` once per case. :func:`compare` is silent when the answer is right; otherwise it raises
:class:`LabCheckFailed` (an ``AssertionError``, so nbgrader takes the cell's points away) whose
message reads, for example::

    rel_shift_by_index: wrong on case 'qlen 3, mlen 2 (bd[i, c] = 10 i + c)'
      expected [3, 5]:
        [[ 3.,  4.,  5.,  6.,  7.], ...]
      got [3, 5]:
        [[ 0.,  1.,  2.,  3.,  4.], ...]
      first difference at [0, 0]: expected 3, got 0 (max abs error 3)
      hint: you read the first klen columns as they are (no shift) ...

A *known mistake* is a wrong answer computed on the same case by a deliberately wrong function
(often one of the mutants of :mod:`xlnet_ref.validation.mutants`); when the student's answer equals
one of them, its hint is printed. Small tensors are printed whole, large ones summarised.

Functions that check set ``__tracebackhide__ = True``: IPython then leaves their frames out of the
traceback a student sees, which ends with the message above instead of the graders' internals.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

PRINT_LIMIT = 48  # tensors with at most this many numbers are printed whole


class LabCheckFailed(AssertionError):
    """A graded check failed; the message says which case, expected vs got, and a hint."""


def describe(value) -> str:
    """A tensor printed whole when small, else summarised (shape, dtype, min/mean/max); other values by repr."""
    if not isinstance(value, torch.Tensor):
        return repr(value)
    shape = list(value.shape)
    if value.numel() <= PRINT_LIMIT:
        with torch.no_grad():
            body = repr(value.detach().cpu()).replace("\n", "\n    ")
        return f"{shape}:\n    {body}"
    v = value.detach().float()
    finite = v[torch.isfinite(v)]
    stats = (
        f"min {finite.min().item():.4g}, mean {finite.mean().item():.4g}, max {finite.max().item():.4g}"
        if finite.numel()
        else "no finite entries"
    )
    return f"{shape} {value.dtype} ({stats})"


def first_difference(expected: torch.Tensor, got: torch.Tensor, *, atol: float, rtol: float) -> str:
    """Where two same-shaped tensors first disagree beyond the tolerance, and the largest error."""
    e, g = expected.detach().double(), got.detach().double()
    bad = ~torch.isclose(g, e, atol=atol, rtol=rtol, equal_nan=False)
    index = [int(x) for x in torch.nonzero(bad)[0]]
    err = (g - e).abs()
    max_err = err[torch.isfinite(err)].max().item() if torch.isfinite(err).any() else float("nan")
    return (
        f"first difference at {index}: expected {e[tuple(index)].item():.6g}, "
        f"got {g[tuple(index)].item():.6g} (max abs error {max_err:.3g})"
    )


def matches(got, expected, *, atol: float = 1e-5, rtol: float = 1e-4) -> bool:
    """Same shape and close (bool tensors: equal). Anything that is not a tensor of that shape does not match."""
    if not isinstance(got, torch.Tensor) or not isinstance(expected, torch.Tensor):
        return False
    if tuple(got.shape) != tuple(expected.shape):
        return False
    if expected.dtype == torch.bool or got.dtype == torch.bool:
        return torch.equal(got.bool(), expected.bool())
    return bool(torch.allclose(got.detach().double(), expected.detach().double(), atol=atol, rtol=rtol))


def compare(
    name: str,
    got,
    expected: torch.Tensor,
    *,
    case: str,
    known_mistakes: dict[str, torch.Tensor] | list[tuple[str, torch.Tensor]] | None = None,
    otherwise: str = "",
    atol: float = 1e-5,
    rtol: float = 1e-4,
) -> None:
    """Raise :class:`LabCheckFailed` unless ``got`` matches ``expected``.

    known_mistakes: hint -> the wrong answer that mistake gives on this case (a dict, or a list of
    (hint, wrong answer) pairs when two mistakes share a hint). The first one ``got`` matches is
    named in the message; ``otherwise`` is printed when none matches.
    """
    __tracebackhide__ = True
    if matches(got, expected, atol=atol, rtol=rtol):
        return
    lines = [f"{name}: wrong on case {case!r}", f"  expected {describe(expected)}", f"  got      {describe(got)}"]
    if not isinstance(got, torch.Tensor):
        lines.append(f"  expected a torch.Tensor, got {type(got).__name__}")
    elif tuple(got.shape) != tuple(expected.shape):
        lines.append(f"  shape: expected {list(expected.shape)}, got {list(got.shape)}")
    elif expected.dtype != torch.bool:
        lines.append("  " + first_difference(expected, got, atol=atol, rtol=rtol))
    pairs = (known_mistakes or {}).items() if isinstance(known_mistakes, (dict, type(None))) else known_mistakes
    hint = next((h for h, wrong in pairs if wrong is not None and matches(got, wrong, atol=atol, rtol=rtol)), None)
    if hint is not None:
        lines.append(f"  hint: {hint}")
    elif otherwise:
        lines.append(f"  hint: {otherwise}")
    raise LabCheckFailed("\n".join(lines))


def compare_value(
    name: str, got, expected, *, case: str, known_mistakes: dict[str, object] | None = None, otherwise: str = ""
) -> None:
    """:func:`compare` for plain Python values (numbers, strings, lists): equality, then known mistakes."""
    __tracebackhide__ = True
    if got == expected:
        return
    lines = [f"{name}: wrong on case {case!r}", f"  got {got!r}"]
    hint = next((h for h, wrong in (known_mistakes or {}).items() if got == wrong), None)
    if hint is not None:
        lines.append(f"  hint: {hint}")
    elif otherwise:
        lines.append(f"  hint: {otherwise}")
    raise LabCheckFailed("\n".join(lines))


def call(name: str, fn: Callable, *args, case: str, **kwargs):
    """Call the student's function; turn a stub or a crash into feedback that names the case."""
    __tracebackhide__ = True
    if not callable(fn):
        raise LabCheckFailed(f"{name}: expected a function, got {type(fn).__name__}")
    try:
        return fn(*args, **kwargs)
    except NotImplementedError:
        raise LabCheckFailed(
            f"{name}: not written yet (it raises NotImplementedError): replace the stub in the cell that defines it"
        ) from None
    except Exception as error:  # the student's code crashed: say where, keep the message
        raise LabCheckFailed(f"{name}: raised {type(error).__name__} on case {case!r}: {error}") from error
