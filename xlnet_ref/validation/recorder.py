r"""A stage recorder for PyTorch ports: capture a model's intermediate tensors without editing its code.

An adapter for ``python -m xlnet_ref.validate`` returns named stages (``layer0.q_h``,
``layer0.content.bd``, ...). In a PyTorch implementation most of them are either a module's output,
the result of one einsum / matmul / softmax / layer_norm call inside a module, or what one of its own
Python functions returns. :class:`StageRecorder` records all three while the model runs, each tagged
with the module (its dotted name in ``named_modules``) that made it, so that an adapter picks them out
in a few lines::

    with StageRecorder(model, functions=[(my_attention_module, "rel_shift")]) as rec:
        out = model(input_ids, ...)
    word_emb = rec.output("transformer.word_embedding")                 # a module's output
    ac, bd_raw = rec.calls("transformer.layer.0.rel_attn", "einsum:ibnd,jbnd->bnij")[:2]
    prob = rec.calls("transformer.layer.0.rel_attn", "softmax")[0]
    bd = rec.calls("transformer.layer.0.rel_attn", "call:rel_shift")[0]  # a stage after a reshape trick

``functions``: (namespace, name) pairs, e.g. a module object and the name of a function it calls by
that global name; while recording, the name is bound to a wrapper that records each call's arguments
and result (op ``"call:<name>"``) and calls what was bound before. A module's inputs are recorded
positionally (``rec.input``); each call's ``operands`` are its positional arguments (a softmax's
operand is its input, the score) and ``stack`` the dotted names of every module running, outermost
first. :func:`gradient_stages` turns a loss into the ``grad.*`` stages. Torch only: nothing here knows
about xlnet_ref's model (examples/my_xlnet_adapter.py uses it on transformers' XLNet;
validation/reference.py on xlnet_ref's own).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
from torch import nn

_MATMUL = {torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.bmm, torch.mm}
_SOFTMAX = {torch.softmax, torch.Tensor.softmax, nn.functional.softmax}


@dataclass
class Call:
    module: str  # the innermost module running when the call was made ("" for the top model)
    op: str  # "einsum:<equation>", "matmul", "softmax", "layer_norm" or "call:<function name>"
    operands: tuple  # the positional arguments (an einsum's tensors, without the equation)
    output: object  # a tensor, or what a recorded function returned
    stack: tuple = ()  # every module running, outermost first
    kwargs: dict = field(default_factory=dict)


class _CallMode(torch.overrides.TorchFunctionMode):
    def __init__(self, recorder: StageRecorder):
        super().__init__()
        self.recorder = recorder

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        op = None
        if func is torch.einsum:
            op = f"einsum:{args[0].replace(' ', '')}"
            args = args[1:]
        elif func in _MATMUL:
            op = "matmul"
        elif func in _SOFTMAX:
            op = "softmax"
        elif func is nn.functional.layer_norm:
            op = "layer_norm"
        if op is not None:
            self.recorder._record(op, tuple(args), out, kwargs)
        return out


class StageRecorder:
    """Context manager: while active, records every call of every submodule of ``model`` (inputs and
    outputs, in call order), every einsum / matmul / softmax / layer_norm call and every call of the
    ``functions`` named (each tagged with the innermost module running). Hooks, wrappers and the function
    mode are removed on exit; the recorded tensors stay."""

    def __init__(self, model: nn.Module, *, functions=()):
        self.model = model
        self.functions = list(functions)  # (namespace, attribute name) pairs
        self.inputs: dict[str, list[tuple]] = {}
        self.outputs: dict[str, list] = {}
        self.recorded: list[Call] = []
        self._stack: list[str] = []
        self._handles: list = []
        self._bound: list = []
        self._mode = None

    def __enter__(self) -> StageRecorder:
        for namespace, name in self.functions:
            if not callable(getattr(namespace, name, None)):
                raise ValueError(f"functions: expected a callable {name!r} in {namespace!r}, found none")
        for name, module in self.model.named_modules():
            self._handles.append(module.register_forward_pre_hook(self._pre(name)))
            self._handles.append(module.register_forward_hook(self._post(name)))
        for namespace, name in self.functions:
            before = getattr(namespace, name)
            self._bound.append((namespace, name, before))
            setattr(namespace, name, self._wrap(name, before))
        self._mode = _CallMode(self)
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)
        for namespace, name, before in reversed(self._bound):
            setattr(namespace, name, before)
        self._bound.clear()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _record(self, op: str, args: tuple, out, kwargs=None) -> None:
        stack = tuple(self._stack)
        self.recorded.append(Call(stack[-1] if stack else "", op, args, out, stack, dict(kwargs or {})))

    def _wrap(self, name: str, function):
        @functools.wraps(function)
        def recording(*args, **kwargs):
            out = function(*args, **kwargs)
            self._record(f"call:{name}", args, out, kwargs)
            return out

        return recording

    def _pre(self, name):
        def hook(module, args):
            self._stack.append(name)
            self.inputs.setdefault(name, []).append(args)

        return hook

    def _post(self, name):
        def hook(module, args, output):
            self._stack.pop()
            self.outputs.setdefault(name, []).append(output)

        return hook

    def output(self, module: str, call: int = 0):
        """The output of the ``call``-th run of a module (by its name in ``model.named_modules()``)."""
        if module not in self.outputs:
            raise ValueError(
                f"module: expected one of the modules that ran, e.g. {list(self.outputs)[:4]}, got {module!r}"
            )
        return self.outputs[module][call]

    def input(self, module: str, call: int = 0, arg: int = 0):
        """Positional argument ``arg`` of the ``call``-th run of a module."""
        if module not in self.inputs:
            raise ValueError(f"module: expected one of the modules that ran, got {module!r}")
        return self.inputs[module][call][arg]

    def calls(self, module: str, op: str) -> list[torch.Tensor]:
        """Outputs of the calls made directly inside ``module`` (not in its submodules), in order.
        op: "einsum:<equation>" (spaces ignored), "einsum" (any equation), "matmul", "softmax",
        "layer_norm" or "call:<function name>" (one of ``functions``)."""
        op = op.replace(" ", "")
        return [
            c.output
            for c in self.recorded
            if c.module == module and (c.op == op or (op == "einsum" and c.op.startswith("einsum:")))
        ]


def gradient_stages(
    loss: torch.Tensor, parameters: dict[str, torch.Tensor], *, word_emb: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    r"""The ``grad.*`` stages: ``grad.<name>`` = :math:`\partial \mathcal{L} / \partial \theta` for each named
    parameter (use transformers' XLNetLMHeadModel names) and ``grad.word_emb`` =
    :math:`\partial \mathcal{L} / \partial h^{(0)}` for the word embeddings' output (as laid out in your
    model: transpose it to [b, i, m] if yours is length-first). The graph is kept (retain_graph)."""
    tensors = list(parameters.values()) + ([word_emb] if word_emb is not None else [])
    grads = torch.autograd.grad(loss, tensors, retain_graph=True, allow_unused=True)
    out = {f"grad.{name}": torch.zeros_like(p) if g is None else g for (name, p), g in zip(parameters.items(), grads)}
    if word_emb is not None:
        out["grad.word_emb"] = grads[-1]
    return out
