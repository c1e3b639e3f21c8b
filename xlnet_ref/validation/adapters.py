r"""Running an implementation under test: the adapter interface, the refusal rule, loading an adapter.

An adapter is ``callable(case) -> dict``: ``case`` (a :class:`xlnet_ref.validation.cases.Case`)
carries ``config``, ``weights`` (transformers' names), ``inputs`` (batch-first torch tensors),
``dtype`` and ``gradients``; the adapter returns ``{stage name: tensor}`` (torch or numpy; stages.py
and docs/validate.md name them). Only ``"logits"`` is required.

Refusing an input: when the reference refuses a case (``case.expect_error``), the implementation
must refuse it too, by raising ``ValueError`` or ``TypeError`` (the documented kinds) or by
returning ``{"refused": "why"}``. Any other exception is a crash, reported as a failure with its
message, not counted as a refusal.

``layer{L}.new_mem_grad`` is not returned by the adapter: :func:`run_adapter` computes it from the
returned ``layer{L}.new_mem`` (a torch tensor) by autograd.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .cases import Case
from .compare import REFUSED
from .mutants import mutant_adapter
from .reference import reference_adapter
from .stages import split_stage
from .transformers_adapter import hf_adapter

REFUSAL_ERRORS = (ValueError, TypeError)  # the kinds of exception that count as refusing an input


@dataclass
class AdapterRun:
    outputs: dict | None  # stage -> tensor (detached), in the adapter's order, new_mem_grad added
    error: BaseException | None = None
    not_measurable: dict = field(default_factory=dict)  # stage -> why it could not be measured
    refused: str | None = None  # the adapter returned {"refused": why}
    traceback: str = ""  # the adapter's full traceback when it raised (shown with --traceback)

    @property
    def refusal(self) -> str | None:
        """Why the implementation refused the input, if it did in a documented way (else None)."""
        if self.refused is not None:
            return f"refused: {self.refused}"
        if isinstance(self.error, REFUSAL_ERRORS):
            return f"refused: {type(self.error).__name__}: {self.error}"
        return None


def adapter_case(case: Case) -> Case:
    """What an adapter receives: fresh copies of the weights and inputs (mems require grad), no expected values."""
    inputs = {}
    for k, v in case.inputs.items():
        inputs[k] = [m.detach().clone().requires_grad_(True) for m in v] if k == "mems" else v.clone()
    weights = {k: v.detach().clone() for k, v in case.weights.items()}
    return replace(case, weights=weights, inputs=inputs, expected=None)


def _as_tensor(value):
    if value is None or isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (int, float)):
        return torch.tensor(value)
    return torch.from_numpy(np.array(value))


def _memory_gradients(inputs: dict, outputs: dict, not_measurable: dict) -> None:
    """Add layer{L}.new_mem_grad = d(sum new_mem_L) / d(mems_L) right after each layer{L}.new_mem.

    The reference detaches the memory (stop-gradient, Transformer-XL Sec. 3.2), so its value is 0. Only
    measurable when the outputs are torch tensors connected to the mems passed in.
    """
    mems = inputs.get("mems")
    names = [k for k in outputs if k.endswith(".new_mem")]
    if mems is None or not names:
        return
    logits = outputs.get("logits")
    connected = (
        isinstance(logits, torch.Tensor)
        and logits.requires_grad
        and any(
            g is not None for g in torch.autograd.grad(logits.float().sum(), mems, allow_unused=True, retain_graph=True)
        )
    )
    ordered = {}
    for name, value in outputs.items():
        ordered[name] = value
        if name not in names:
            continue
        grad_name = name + "_grad"
        if not connected:
            not_measurable[grad_name] = "no gradient path from the logits back to the mems passed in (detached?)"
            continue
        layer = int(split_stage(name)[0])
        grad = None
        if isinstance(value, torch.Tensor) and value.requires_grad:
            (grad,) = torch.autograd.grad(value.float().sum(), mems[layer], allow_unused=True, retain_graph=True)
        ordered[grad_name] = torch.zeros_like(mems[layer]) if grad is None else grad
    outputs.clear()
    outputs.update(ordered)


def run_adapter(adapter: Callable, case: Case) -> AdapterRun:
    """Call the adapter on fresh copies of the case's inputs; add the gradient stages; detach everything."""
    view = adapter_case(case)
    try:
        outputs = adapter(view)
    except Exception as error:  # noqa: BLE001 — a refusal or a crash: validate.py judges which
        return AdapterRun(outputs=None, error=error, traceback=traceback.format_exc())
    if not isinstance(outputs, dict):
        return AdapterRun(
            outputs=None,
            error=RuntimeError(
                f"adapter: expected it to return a dict of stage name -> tensor, got {type(outputs).__name__}"
            ),
        )
    if REFUSED in outputs:
        return AdapterRun(outputs=None, refused=str(outputs[REFUSED]))
    try:
        outputs = {k: _as_tensor(v) for k, v in outputs.items()}
    except (TypeError, ValueError) as error:  # a crash of the adapter, not a refusal: RuntimeError
        return AdapterRun(
            outputs=None, error=RuntimeError(f"adapter: expected every stage to be a tensor or an array, got {error}")
        )
    not_measurable: dict = {}
    _memory_gradients(view.inputs, outputs, not_measurable)
    outputs = {k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in outputs.items()}
    return AdapterRun(outputs=outputs, not_measurable=not_measurable)


def load_adapter(spec: str) -> Callable:
    """'hf', 'ref', 'mutant:NAME', 'package.module:callable' or 'path/to/file.py:callable'."""
    if spec == "hf":
        return hf_adapter
    if spec in ("ref", "reference"):
        return reference_adapter
    if spec.startswith("mutant:"):
        return mutant_adapter(spec.split(":", 1)[1])
    if ":" not in spec:
        raise ValueError(f"--against: expected 'hf', 'ref', 'mutant:NAME' or 'module:callable', got {spec!r}")
    target, attr = spec.rsplit(":", 1)
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise ValueError(f"--against: expected {path} to be a Python file, got no such file")
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)
        except Exception as error:  # noqa: BLE001 — any error while importing the user's file
            raise ValueError(f"--against: {path} does not import: {_one_line(error)}") from error
    else:
        if "" not in sys.path:
            sys.path.insert(0, "")  # modules next to where the command is run
        try:
            module = importlib.import_module(target)
        except Exception as error:  # noqa: BLE001 — ModuleNotFoundError, SyntaxError, an error inside it
            raise ValueError(f"--against: module {target!r} does not import: {_one_line(error)}") from error
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"--against: expected {attr!r} in {target} to be a callable(case) -> dict, got {fn!r}")
    return fn


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]
