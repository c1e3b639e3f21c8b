r"""Validate an XLNet implementation against the reference, stage by stage, and name where it first departs.

"The logits differ" says nothing about *where*. This module runs the same tiny cases (golden.py:
one and two streams, memory, segments, padding, bi_data, float16) through the reference and through
the implementation under test, compares every stage of the forward pass in order, and names the
first stage that fails: the positional table, the shift, the segment term, the query stream's mask,
the memory, ...

    python -m xlnet_ref.validate --against hf                  # transformers' XLNet, same weights
    python -m xlnet_ref.validate --against my_pkg.my_mod:run   # your implementation, via an adapter
    python -m xlnet_ref.validate --against examples/my_xlnet_adapter.py:run --golden golden
    python -m xlnet_ref.validate --against mutant:no_rel_shift # a known bug (mutants.py)
    python -m xlnet_ref.validate --list-mutants | --list-cases

Expected values come from the reference model (default) or, with ``--golden DIR``, from saved files
(then no reference model is run). Exit status 0 only when every stage of every case passes.

The adapter
-----------
``callable(case) -> dict``. ``case`` (a :class:`xlnet_ref.validation.golden.Case`) carries

- ``case.config``: dict, transformers' ``XLNetConfig`` field names plus ``untie_r`` (dropout is 0);
- ``case.weights``: dict of torch tensors under transformers' ``XLNetLMHeadModel`` names;
- ``case.inputs``: dict of torch tensors, batch-first: ``input_ids`` [b, i] and, when the case uses
  them, ``token_type_ids``, ``attention_mask`` (1 = real token), ``perm_mask`` [b, i, j] (1 = may not
  attend), ``target_mapping`` [b, k, i], ``mems`` (n_layer tensors [b, mlen, m], batch-first, with
  ``requires_grad`` on: call ``.detach()`` before ``.numpy()``), ``target_ids`` / ``target_weights`` [b, k];
- ``case.dtype``: "float32" or "float16".

It returns a dict of stage name -> tensor (torch or numpy). Only ``"logits"`` is required; every other
stage it returns is compared too and makes the report finer. Stage names and layouts: ``STAGES`` below
and docs/validate.md. If the reference refuses a case (``case.expect_error``), the adapter should
raise. ``layer{L}.new_mem_grad`` is not returned by the adapter: the validator computes it from the
returned ``layer{L}.new_mem`` (a torch tensor) by autograd.

Comparison: a stage passes iff ``max|actual - expected| <= rtol * max|expected| + atol`` (float32:
rtol 1e-5, atol 1e-6); masks and ``seg_diff`` must be equal; masked scores (|expected| >= ``huge``)
must be masked in the actual too, and finite where the expected is finite; rows of ``query.*`` scores
that belong to all-zero (padding) rows of ``target_mapping`` are not compared.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

from .golden import DEFAULT_DIR, Case

# ---------------------------------------------------------------------------------------------------
# stages: name -> (layout, what it is). Layout letters: b batch, i position (query), j key over
# [memory | current], r row of the positional table, k prediction target, n head, d head width,
# m d_model, V vocabulary, t cached memory positions.

STAGES = {
    "input_check": ("-", "input check: the reference refuses this input"),
    "word_emb": ("b i m", "word embeddings (the content stream's input h)"),
    "pos_emb": ("b r m", "relative positional encoding R: one sinusoid row per distance klen, klen-1, ..."),
    "attn_mask": ("b i j", "query stream's mask: which keys each position may NOT see (itself included)"),
    "non_tgt_mask": ("b i j", "content stream's mask: like the query stream's, but each position sees itself"),
    "seg_diff": ("b i j", "relative segments s_ij: are positions i and j in different segments?"),
    "new_mem": ("b t m", "memory cached for the next segment (the content stream entering this layer)"),
    "new_mem_grad": ("b t m", "gradient from the cached memory back into the past (must be 0: detach the memory)"),
    "q_h": ("b i n d", "content-stream queries W_q h"),
    "k_h": ("b j n d", "keys W_k [mem; h]"),
    "v_h": ("b j n d", "values W_v [mem; h]"),
    "k_r": ("b r n d", "positional keys W_r R"),
    "ac": ("b n i j", "content score (a)+(c) = (q + u).k"),
    "bd_raw": ("b n i r", "position score (b)+(d) = (q + v).W_r R, one column per distance (before rel_shift)"),
    "bd": ("b n i j", "position score after rel_shift (one column per key)"),
    "ef": ("b n i j", "segment score (q + b).s_ij"),
    "score": ("b n i j", "attention score (ac + bd + ef) / sqrt(d), masked"),
    "prob": ("b n i j", "attention probabilities (softmax over the keys)"),
    "content_attn_out": ("b i m", "content stream after attention (output projection, residual, LayerNorm)"),
    "q_g": ("b k n d", "query-stream queries W_q g (one per prediction target)"),
    "query_attn_out": ("b k m", "query stream after attention (output projection, residual, LayerNorm)"),
    "content_ff_out": ("b i m", "content stream after the feed-forward (GELU, residual, LayerNorm)"),
    "query_ff_out": ("b k m", "query stream after the feed-forward (GELU, residual, LayerNorm)"),
    "logits": ("b k V", "LM logits (one row per target with two streams, else per position)"),
    "loss": ("scalar", "masked LM loss: mean cross-entropy over the real targets only"),
    "run": ("-", "running the case"),
}
LAYER_STAGE = re.compile(r"layer(\d+)\.(?:(content|query)\.)?(\w+)$")
SCORE_TERMS = ("ac", "bd_raw", "bd", "ef", "score", "prob")


def _split(name: str) -> tuple[int | None, str | None, str]:
    m = LAYER_STAGE.match(name)
    return (int(m.group(1)), m.group(2), m.group(3)) if m else (None, None, name)


def stage_layout(name: str) -> str:
    layer, stream, base = _split(name)
    layout = STAGES.get(base, ("?", ""))[0]
    if stream == "query":  # the query stream's scores have one row per target k instead of per position i
        layout = layout.replace(" i ", " k ")
    if base == "logits":
        layout = "b k V (two streams) or b i V"
    return layout


def stage_description(name: str) -> str:
    """A stage's name in words, e.g. 'layer 0, query stream: position score after rel_shift (...)'."""
    layer, stream, base = _split(name)
    what = STAGES.get(base, ("", name))[1]
    where = [] if layer is None else [f"layer {layer}"]
    if stream is not None:
        where.append(f"{stream} stream")
    return f"{', '.join(where)}: {what}" if where else what


# ---------------------------------------------------------------------------------------------------
# the reference as an adapter


def load_hf_named_weights(model, weights: dict[str, torch.Tensor]) -> None:
    """Copy tensors named as transformers' XLNetLMHeadModel names them into the reference LM model."""
    from ..interop import load_hf_state_dict

    load_hf_state_dict(model, weights)


def build_reference(case: Case):
    """The reference LM model with the case's config and weights, in eval mode."""
    from ..config import XLNetConfig
    from ..model import XLNetLMHeadModel

    model = XLNetLMHeadModel(XLNetConfig.from_dict(case.config)).to(case.torch_dtype)
    load_hf_named_weights(model, case.weights)
    return model.eval()


def _per_row(t: torch.Tensor, b: int) -> torch.Tensor:
    """[p, ...] with p = 1, or 2 for bi_data (rows [0, b/2) forwards, [b/2, b) backwards) -> [b, ...]."""
    return t[torch.arange(b) // (b // t.shape[0])]


def _full_mask(mask: torch.Tensor | None, b: int, qlen: int, klen: int) -> torch.Tensor:
    """[b or 1, i, j] bool or None (nothing masked) -> [b, i, j] bool."""
    if mask is None:
        return torch.zeros(b, qlen, klen, dtype=torch.bool)
    return mask.expand(b, qlen, klen)


FORWARD_ARGS = ("token_type_ids", "attention_mask", "perm_mask", "target_mapping", "mems")


def reference_stages(model, inputs: dict) -> dict[str, torch.Tensor]:
    """Every stage of the reference forward pass, in forward order and the documented layouts.

    Uses the model's ``trace`` (which also records the position score before rel_shift, ``bd_raw``).
    """
    from .. import permutation

    trace: dict = {}
    out = model(inputs["input_ids"], **{k: inputs[k] for k in FORWARD_ARGS if k in inputs}, trace=trace)
    b, qlen = inputs["input_ids"].shape
    klen = trace["layer0.k_h"].shape[1]  # keys over [memory | current], as the model saw them
    stages = {
        "word_emb": trace["word_emb"],
        "pos_emb": _per_row(trace["pos_emb"], b),
        "attn_mask": _full_mask(trace["attn_mask"], b, qlen, klen),
        "non_tgt_mask": _full_mask(trace["non_tgt_mask"], b, qlen, klen),
    }
    if trace["seg_diff"] is not None:
        stages["seg_diff"] = trace["seg_diff"]
    backbone = model.transformer
    for layer in range(backbone.config.n_layer):
        t = {k.split(".", 1)[1]: v for k, v in trace.items() if k.startswith(f"layer{layer}.")}
        s = {}
        if "new_mem" in t:
            s["new_mem"] = t["new_mem"]
        k_r = t["k_r"]  # [p, r, n, d]
        s.update(q_h=t["q_h"], k_h=t["k_h"], v_h=t["v_h"], k_r=_per_row(k_r, b))
        for stream, q in (("content", t["q_h"]), ("query", t.get("q_g"))):
            if q is None:
                continue
            if stream == "query":
                s["q_g"] = q
            s[f"{stream}.ac"] = t[f"{stream}.ac"]
            s[f"{stream}.bd_raw"] = t[f"{stream}.bd_raw"]  # before rel_shift
            for term in ("bd", "ef", "score", "prob"):
                if f"{stream}.{term}" in t:
                    s[f"{stream}.{term}"] = t[f"{stream}.{term}"]
            s[f"{stream}_attn_out"] = t[f"{stream}_attn_out"]
        s["content_ff_out"] = t["content_ff_out"]
        if "query_ff_out" in t:
            s["query_ff_out"] = t["query_ff_out"]
        stages.update({f"layer{layer}.{k}": v for k, v in s.items()})
    stages["logits"] = out.logits
    if "target_ids" in inputs:
        stages["loss"] = permutation.plm_loss(out.logits, inputs["target_ids"], inputs["target_weights"])
    return stages


def reference_adapter(case: Case) -> dict[str, torch.Tensor]:
    """xlnet_ref itself, through the adapter interface (what --against ref runs)."""
    return reference_stages(build_reference(case), case.inputs)


# ---------------------------------------------------------------------------------------------------
# transformers' XLNet as an adapter: its internal stages captured with hooks


class _RecordCalls(torch.overrides.TorchFunctionMode):
    """Records every torch.einsum and softmax call (equation, operands, result) while active."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[str, tuple, torch.Tensor]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.einsum:
            self.calls.append((args[0], args[1:], out))
        elif func is torch.nn.functional.softmax:
            self.calls.append(("softmax", args, out))
        return out


def _instrument_hf_layer(layer) -> dict:
    """Wrap one transformers XLNetLayer's attention methods (on this instance only) to record its stages."""
    attn = layer.rel_attn
    rec: dict = {"core": [], "post": [], "shift": [], "ff": [], "mode": None}
    orig_forward, orig_core = attn.forward, attn.rel_attn_core
    orig_post, orig_shift = attn.post_attention, attn.rel_shift_bnij

    def forward(*args, **kwargs):
        with _RecordCalls() as mode:
            rec["mode"] = mode
            return orig_forward(*args, **kwargs)

    def rel_attn_core(q_head, k_head_h, v_head_h, k_head_r, seg_mat=None, attn_mask=None, output_attentions=False):
        start, n_shift = len(rec["mode"].calls), len(rec["shift"])
        out = orig_core(q_head, k_head_h, v_head_h, k_head_r, seg_mat=seg_mat, attn_mask=attn_mask,
                        output_attentions=output_attentions)
        rec["core"].append(dict(q=q_head, k_h=k_head_h, v_h=v_head_h, k_r=k_head_r,
                                calls=rec["mode"].calls[start:], shift=rec["shift"][n_shift:]))
        return out

    def rel_shift_bnij(x, klen=-1):
        out = orig_shift(x, klen=klen)
        rec["shift"].append((x, out))
        return out

    def post_attention(h, attn_vec, residual=True):
        out = orig_post(h, attn_vec, residual=residual)
        rec["post"].append(out)
        return out

    attn.forward, attn.rel_attn_core = forward, rel_attn_core
    attn.post_attention, attn.rel_shift_bnij = post_attention, rel_shift_bnij
    layer.ff.register_forward_hook(lambda module, inp, out: rec["ff"].append((inp[0], out)))
    return rec


def _hf_scores(core: dict) -> dict[str, torch.Tensor]:
    """ac, bd_raw, bd, ef, score, prob ([b, n, i, *]) from one recorded rel_attn_core call."""
    pair = [out for eq, _, out in core["calls"] if eq == "ibnd,jbnd->bnij"]  # ac first, then bd before the shift
    softmax = [c for c in core["calls"] if c[0] == "softmax"]
    if len(pair) != 2 or len(core["shift"]) != 1 or len(softmax) != 1:
        raise RuntimeError("hf_adapter: transformers' XLNetRelativeAttention.rel_attn_core no longer computes its "
                           "scores as written for transformers 5.x; update the hooks in xlnet_ref/validate.py")
    terms = {"ac": pair[0], "bd_raw": pair[1], "bd": core["shift"][0][1]}
    ef = [out for eq, _, out in core["calls"] if eq == "ijbs,ibns->bnij"]
    if ef:
        terms["ef"] = ef[0]
    ((_, args, prob),) = softmax
    terms.update(score=args[0], prob=prob)
    return terms


def hf_adapter(case: Case) -> dict:
    """transformers' XLNetLMHeadModel with the case's weights; every stage captured with hooks.

    transformers works length-first inside ([i, b, ...]); its query stream attends at every position
    (queries scattered with target_mapping), so its query-stream scores are gathered at the targets.
    """
    from transformers import XLNetConfig as HFConfig
    from transformers import XLNetLMHeadModel as HFLM

    from ..interop import SHARED_FIELDS

    hf = HFLM(HFConfig(**{f: case.config[f] for f in SHARED_FIELDS})).to(case.torch_dtype)
    hf.load_state_dict(case.weights)
    hf.eval()
    inputs = case.inputs
    b, qlen = inputs["input_ids"].shape
    recs = [_instrument_hf_layer(layer) for layer in hf.transformer.layer]
    top: dict = {}
    hf.transformer.word_embedding.register_forward_hook(lambda m, inp, out: top.update(word_emb=out))
    hf.transformer.layer[0].register_forward_pre_hook(lambda m, args, kwargs: top.update(kwargs), with_kwargs=True)

    kw = {k: inputs[k] for k in FORWARD_ARGS if k in inputs and k != "mems"}
    if "mems" in inputs:
        kw["mems"] = [m.transpose(0, 1) for m in inputs["mems"]]  # transformers' mems are [mlen, b, m]
    if "target_ids" in inputs:
        kw["labels"] = torch.where(inputs["target_weights"] > 0, inputs["target_ids"], -100)  # -100 = ignored
    out = hf(inputs["input_ids"], **kw, use_mems=bool(case.config["mem_len"]))

    mlen = inputs["mems"][0].shape[1] if "mems" in inputs else 0

    def mask(m):  # [i or 1, j, b or 1, 1] float or None -> [b, i, j] bool
        if m is None:
            return torch.zeros(b, qlen, mlen + qlen, dtype=torch.bool)
        return m[..., 0].permute(2, 0, 1).expand(b, qlen, mlen + qlen) > 0

    stages = {
        "word_emb": top["word_emb"].transpose(0, 1),
        "pos_emb": top["r"].transpose(0, 1),  # [r, b, m] -> [b, r, m]
        "attn_mask": mask(top["attn_mask_g"]),
        "non_tgt_mask": mask(top["attn_mask_h"]),
    }
    if top["seg_mat"] is not None:  # one-hot [i, j, b, 2]; index 1 = different segments
        stages["seg_diff"] = top["seg_mat"][..., 1].permute(2, 0, 1) > 0
    pos = inputs["target_mapping"].argmax(-1) if "target_mapping" in inputs else None  # [b, k]

    def at_targets(t):  # [b, n, i, x] -> [b, n, k, x]
        return t.gather(2, pos[:, None, :, None].expand(-1, t.shape[1], -1, t.shape[3]))

    for layer, rec in enumerate(recs):
        pre = f"layer{layer}."
        if out.mems is not None:
            stages[pre + "new_mem"] = out.mems[layer].transpose(0, 1)
        content = rec["core"][0]
        stages.update({
            pre + "q_h": content["q"].transpose(0, 1),
            pre + "k_h": content["k_h"].transpose(0, 1),
            pre + "v_h": content["v_h"].transpose(0, 1),
            pre + "k_r": content["k_r"].transpose(0, 1),
        })
        stages.update({pre + "content." + k: v for k, v in _hf_scores(content).items()})
        stages[pre + "content_attn_out"] = rec["post"][0].transpose(0, 1)
        if len(rec["core"]) > 1:  # two streams: the second call is the query stream
            scatter = [ops for eq, ops, _ in rec["mode"].calls if eq == "mbnd,mlb->lbnd"]
            stages[pre + "q_g"] = scatter[0][0].transpose(0, 1)  # [k, b, n, d] before scattering
            stages.update({pre + "query." + k: at_targets(v) for k, v in _hf_scores(rec["core"][1]).items()})
            stages[pre + "query_attn_out"] = rec["post"][1].transpose(0, 1)
        for inp, ff_out in rec["ff"]:  # transformers runs the feed-forward on g first, then h
            name = "content_ff_out" if inp is rec["post"][0] else "query_ff_out"
            stages[pre + name] = ff_out.transpose(0, 1)
    stages["logits"] = out.logits
    if out.loss is not None:
        stages["loss"] = out.loss
    return stages


# ---------------------------------------------------------------------------------------------------
# running an adapter


@dataclass
class AdapterRun:
    outputs: dict | None  # stage -> tensor (detached), in the adapter's order, new_mem_grad added
    error: BaseException | None = None
    not_measurable: dict = field(default_factory=dict)  # stage -> why it could not be measured


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
    import numpy as np

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
    connected = isinstance(logits, torch.Tensor) and logits.requires_grad and any(
        g is not None for g in torch.autograd.grad(logits.float().sum(), mems, allow_unused=True, retain_graph=True)
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
        layer = int(_split(name)[0])
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
    except Exception as error:  # noqa: BLE001 — a refusal or a crash, both are reported
        return AdapterRun(outputs=None, error=error)
    if not isinstance(outputs, dict):
        return AdapterRun(outputs=None, error=TypeError(
            f"adapter: expected it to return a dict of stage name -> tensor, got {type(outputs).__name__}"))
    outputs = {k: _as_tensor(v) for k, v in outputs.items()}
    not_measurable: dict = {}
    _memory_gradients(view.inputs, outputs, not_measurable)
    outputs = {k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in outputs.items()}
    return AdapterRun(outputs=outputs, not_measurable=not_measurable)


# ---------------------------------------------------------------------------------------------------
# comparing


@dataclass
class StageResult:
    stage: str
    status: str  # "pass", "FAIL", "not provided", "not measurable"
    shape: list | None = None
    max_abs: float | None = None
    max_rel: float | None = None
    note: str = ""

    @property
    def failed(self) -> bool:
        return self.status == "FAIL"


def huge_threshold(dtype: str) -> float:
    """|score| above this is a masked entry: 1e30 is subtracted in float32, 65500 in float16."""
    return 3e4 if dtype == "float16" else 1e15


def compare_stage(name: str, expected: torch.Tensor, actual, *, rtol: float, atol: float, huge: float,
                  valid_rows: torch.Tensor | None = None) -> StageResult:
    """One stage: shape, then exact equality (bool) or max abs / rel error (float) against the tolerance."""
    if actual is None:
        return StageResult(name, "not provided", list(expected.shape))
    actual = _as_tensor(actual).detach().cpu()
    shape = list(expected.shape)
    layer, stream, base = _split(name)
    if list(actual.shape) != shape:
        note = f"shape {list(actual.shape)}, expected {shape} ({stage_layout(name)})"
        if base in ("pos_emb", "k_r", "bd_raw"):
            note += "; r = klen + qlen ('bi') or klen + 1 ('uni') distances, klen = mlen + qlen"
        elif "j" in stage_layout(name).split():
            note += "; j runs over klen = mlen + qlen keys, memory first"
        return StageResult(name, "FAIL", shape, note=note)
    if stream == "query" and base in SCORE_TERMS and valid_rows is not None:
        # [b, n, k, x]: padding targets (all-zero target_mapping rows) have no meaning
        expected, actual = expected.transpose(1, 2)[valid_rows], actual.transpose(1, 2)[valid_rows]
    if expected.dtype == torch.bool:
        differ = int(((actual != 0) != expected).sum())
        if differ:
            return StageResult(name, "FAIL", shape, note=f"{differ} of {expected.numel()} entries differ")
        return StageResult(name, "pass", shape, 0.0, 0.0)
    e, a = expected.double(), actual.double()
    fin_e, fin_a = torch.isfinite(e), torch.isfinite(a)
    if not torch.equal(fin_e, fin_a):
        n = int((fin_e != fin_a).sum())
        return StageResult(name, "FAIL", shape, float("nan"), float("nan"),
                           note=f"{n} entries are nan/inf in one and finite in the other")
    huge_e, huge_a = fin_e & (e.abs() >= huge), fin_a & (a.abs() >= huge)
    if not torch.equal(huge_e, huge_a):
        n = int((huge_e != huge_a).sum())
        return StageResult(name, "FAIL", shape, note=f"{n} entries masked in one and not in the other")
    regular = fin_e & ~huge_e
    if not bool(regular.any()):
        return StageResult(name, "pass", shape, 0.0, 0.0, note="all entries masked")
    diff = (a - e).abs()[regular]
    max_abs, scale = float(diff.max()), float(e.abs()[regular].max())
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    status = "pass" if max_abs <= rtol * scale + atol else "FAIL"
    return StageResult(name, status, shape, max_abs, max_rel)


@dataclass
class CaseResult:
    case: Case
    stages: list[StageResult]
    outputs: dict | None = None  # what the implementation returned (detached)

    @property
    def first_failure(self) -> StageResult | None:
        return next((s for s in self.stages if s.failed), None)

    @property
    def passed(self) -> bool:
        return self.first_failure is None


def expected_outputs(case: Case) -> Case:
    """The case with ``expected`` filled: from disk if read from a golden directory, else by the reference."""
    if case.expected is not None:
        return case
    from .golden import with_reference_outputs

    return with_reference_outputs(case)


def validate_case(case: Case, adapter: Callable) -> CaseResult:
    case = expected_outputs(case)
    run = run_adapter(adapter, case)
    if case.expect_error is not None:
        if run.error is not None:
            note = f"refused: {type(run.error).__name__}: {str(run.error)[:100]}"
            return CaseResult(case, [StageResult("input_check", "pass", note=note)])
        return CaseResult(case, [StageResult(
            "input_check", "FAIL",
            note=f"returned results; the reference refuses it ({case.expect_error[:100]})")], run.outputs)
    if run.error is not None:
        note = f"{type(run.error).__name__}: {str(run.error)[:200]}"
        return CaseResult(case, [StageResult("run", "FAIL", note=note)])
    tol = case.tolerances
    huge = huge_threshold(case.dtype)
    tm = case.inputs.get("target_mapping")
    valid_rows = tm.sum(-1) > 0 if tm is not None else None
    results = []
    for name, expected in case.expected.items():
        if name in run.not_measurable:
            results.append(StageResult(name, "not measurable", list(expected.shape), note=run.not_measurable[name]))
            continue
        result = compare_stage(name, expected, run.outputs.get(name), rtol=tol["rtol"], atol=tol["atol"],
                               huge=huge, valid_rows=valid_rows)
        if name == "logits" and result.status == "not provided":
            result = replace(result, status="FAIL", note="the adapter must return 'logits'")
        results.append(result)
    return CaseResult(case, results, run.outputs)


def validate(adapter: Callable, cases: list[Case]) -> list[CaseResult]:
    return [validate_case(case, adapter) for case in cases]


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


def format_case(result: CaseResult, *, brief: bool = False) -> str:
    case = result.case
    tol = case.tolerances
    lines = [f"case {case.name}: {case.description}  [{case.dtype}, rtol {tol['rtol']:g}, atol {tol['atol']:g}]"]
    shown = [s for s in result.stages if s.failed] if brief else result.stages
    if shown:
        header = f"{'stage':<26} {'shape':<16} {'max abs err':>11} {'max rel err':>11}  {'result':<14} what it is"
        lines.append("  " + header)
    for s in shown:
        shape = "-" if s.shape is None else str(s.shape).replace(" ", "")
        lines.append(f"  {s.stage:<26} {shape:<16} {_num(s.max_abs):>11} {_num(s.max_rel):>11}  {s.status:<14} "
                     f"{stage_description(s.stage)}" + (f"  [{s.note}]" if s.note else ""))
    counts = {status: sum(s.status == status for s in result.stages)
              for status in ("pass", "FAIL", "not provided", "not measurable")}
    summary = ", ".join(f"{n} {status}" for status, n in counts.items() if n)
    first = result.first_failure
    verdict = "PASS" if first is None else f"FAIL at {first.stage} — {stage_description(first.stage)}"
    lines.append(f"  => {verdict}  ({summary})")
    return "\n".join(lines)


def format_report(results: list[CaseResult], *, against: str, brief: bool = False) -> str:
    blocks = [f"xlnet_ref.validate: {against} against the reference, {len(results)} case(s)\n"]
    blocks += [format_case(r, brief=brief) + "\n" for r in results]
    departure = first_departure(results)
    if departure is None:
        stages = [s for r in results for s in r.stages]
        passed = sum(s.status == "pass" for s in stages)
        blocks.append(f"ALL PASS: {passed} stages compared in {len(results)} cases"
                      + (f" ({len(stages) - passed} not provided or not measurable)." if passed < len(stages) else "."))
    else:
        r, s = departure
        failing = [x.case.name for x in results if not x.passed]
        lines = [f"FAILED ({len(failing)} of {len(results)} cases: {', '.join(failing)}).",
                 f"First departure from the reference: case '{r.case.name}', stage '{s.stage}'",
                 f"  = {stage_description(s.stage)}" + (f"  [{s.note}]" if s.note else "")]
        before = [x.stage for x in r.stages[: r.stages.index(s)] if x.status == "not provided"]
        if before:
            lines.append(f"  ({len(before)} earlier stages not provided by the adapter; return them to narrow this down)")
        blocks.append("\n".join(lines))
    return "\n".join(blocks)


# ---------------------------------------------------------------------------------------------------
# golden reproduction (python -m xlnet_ref.golden check)


def check_reproduction(directory=DEFAULT_DIR, *, out=print) -> int:
    """Run the reference on the saved cases: bit for bit? within tolerance? Returns the exit status."""
    from .golden import environment, read_cases, read_manifest

    same_env = read_manifest(directory)["generated_on"] == environment()
    status = 0
    for case in read_cases(directory):
        result = validate_case(case, reference_adapter)
        exact = result.outputs is not None and all(
            torch.equal(result.outputs[k], v) for k, v in case.expected.items() if k in result.outputs)
        worst = max((s.max_rel or 0.0 for s in result.stages if s.max_rel is not None), default=0.0)
        if not result.passed:
            verdict = "FAIL"
        elif case.expect_error is not None:
            verdict = "refused, as the saved case expects"
        else:
            verdict = "bit for bit" if exact else f"within tolerance (max rel err {worst:.1e})"
        out(f"{case.name:<24} {verdict}")
        if not result.passed:
            out(format_case(result, brief=True))
            status = 1
        elif same_env and not exact and case.expect_error is None:
            out("  not bit for bit although generated on this environment")
            status = 1
    out(f"environment {'matches' if same_env else 'differs from'} the one the files were generated on")
    return status


# ---------------------------------------------------------------------------------------------------
# CLI


def load_adapter(spec: str) -> Callable:
    """'hf', 'ref', 'mutant:NAME', 'package.module:callable' or 'path/to/file.py:callable'."""
    if spec == "hf":
        return hf_adapter
    if spec in ("ref", "reference"):
        return reference_adapter
    if spec.startswith("mutant:"):
        from .mutants import mutant_adapter

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
        module_spec.loader.exec_module(module)
    else:
        if "" not in sys.path:
            sys.path.insert(0, "")  # modules next to where the command is run
        module = importlib.import_module(target)
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"--against: expected {attr!r} in {target} to be a callable(case) -> dict, got {fn!r}")
    return fn


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m xlnet_ref.validate",
        description="Compare an XLNet implementation with the reference, stage by stage (docs/validate.md).",
    )
    parser.add_argument("--against", default="hf",
                        help="hf | ref | mutant:NAME | module:callable | path/file.py:callable (default: hf)")
    parser.add_argument("--golden", metavar="DIR",
                        help="take the expected stages from this golden directory instead of running the reference")
    parser.add_argument("--case", action="append", metavar="NAME", help="only this case (repeatable)")
    parser.add_argument("--brief", action="store_true", help="print only the failing stages of each case")
    parser.add_argument("--list-cases", action="store_true")
    parser.add_argument("--list-mutants", action="store_true")
    args = parser.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny cases: more threads only spin-wait
    try:
        return _run_cli(args)
    finally:
        torch.set_num_threads(threads)


def _run_cli(args) -> int:
    from .golden import SPECS, builtin_cases, read_cases

    if args.list_cases:
        for spec in SPECS:
            print(f"{spec.name:<24} {spec.description}")
        return 0
    if args.list_mutants:
        from .mutants import MUTANTS

        for m in MUTANTS.values():
            print(f"{m.name:<32} {m.bug}\n{'':<32} caught in case {m.expected_case}, at {m.expected_stage}")
        return 0
    try:
        adapter = load_adapter(args.against)
        cases = read_cases(args.golden, args.case) if args.golden else builtin_cases(args.case)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    results = validate(adapter, cases)
    print(format_report(results, against=args.against, brief=args.brief))
    return 0 if first_departure(results) is None else 1


if __name__ == "__main__":
    sys.exit(main())
