r"""The reference's stages: xlnet_ref's own forward (and backward) pass, named and laid out as stages.py says.

:func:`reference_stages` runs the model as it is, records every intermediate tensor with a
:class:`~xlnet_ref.validation.recorder.StageRecorder` (module outputs, einsum / softmax / layer_norm
calls, and the model's own stage functions) and returns them in forward order, batch-first. :func:`reference_adapter` is the reference behind the adapter interface
(``case -> {stage: tensor}``) that every implementation under test also has: it builds the model from
a case's config and transformers-named weights, and for cases with ``gradients`` it adds the gradient
of the loss with respect to the word embeddings and every parameter (``grad.*``).
"""

from __future__ import annotations

import re

import torch

from .. import attention, permutation
from .. import model as model_module
from ..config import XLNetConfig
from ..interop import BIASES, load_hf_state_dict
from ..model import XLNetLMHeadModel, XLNetModel
from .cases import Case
from .recorder import StageRecorder
from .stages import GRAD, gradient_stage_names

FORWARD_ARGS = ("token_type_ids", "attention_mask", "perm_mask", "target_mapping", "mems")


def load_hf_named_weights(model, weights: dict[str, torch.Tensor]) -> None:
    """Copy tensors named as transformers' XLNetLMHeadModel names them into the reference LM model."""
    load_hf_state_dict(model, weights)


def build_reference(case: Case) -> XLNetLMHeadModel:
    """The reference LM model with the case's config and weights, in eval mode."""
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


# The functions of the readable model whose results are stages, by the global name the model calls
# them by (a mutant or a user who patches one of these names is recorded through the patch).
RECORDED_FUNCTIONS = (
    (model_module, "attention_masks"),  # (attn_mask, non_tgt_mask)
    (model_module, "segment_difference"),  # seg_diff
    (model_module, "cache_mem"),  # new_mem, one call per layer
    (attention, "position_term"),  # bd_raw: (b)+(d) before the shift
    (attention, "rel_shift"),  # bd of the content stream
    (attention, "rel_shift_at"),  # bd of the query stream
    (attention, "segment_term"),  # ef
)
_LAYER = re.compile(r"(?:.*\.)?layer\.(\d+)")
_PROJECT = "einsum:...m,mnd->...nd"  # RelativeAttention.project


def _norm_weight(call):
    """The weight of a recorded F.layer_norm(input, normalized_shape, weight, bias, eps) call."""
    return call.kwargs["weight"] if "weight" in call.kwargs else call.operands[2]


def reference_stages(model, inputs: dict) -> dict[str, torch.Tensor]:
    """Every stage of the reference forward pass, in forward order and the documented layouts.

    ``model``: a readable :class:`xlnet_ref.XLNetLMHeadModel` (stages and ``logits``) or
    :class:`xlnet_ref.XLNetModel` (stages only); ``inputs``: input_ids and any of token_type_ids,
    attention_mask, perm_mask, target_mapping, mems (and target_ids, target_weights for the loss).
    The model runs unchanged: a :class:`StageRecorder` picks the stages out of its module outputs, its
    einsum / softmax / layer_norm calls and the :data:`RECORDED_FUNCTIONS` it calls.
    """
    backbone = model.transformer if isinstance(model, XLNetLMHeadModel) else model
    if not isinstance(backbone, XLNetModel):
        raise ValueError(f"model: expected an xlnet_ref XLNetLMHeadModel or XLNetModel, got {type(model).__name__}")
    prefix = next(name for name, module in model.named_modules() if module is backbone)
    prefix = f"{prefix}." if prefix else ""
    with StageRecorder(model, functions=RECORDED_FUNCTIONS) as rec:
        out = model(inputs["input_ids"], **{k: inputs[k] for k in FORWARD_ARGS if k in inputs})
    by_layer: dict[int | None, list] = {}
    for call in rec.recorded:  # the layer whose forward made the call (None: the backbone itself)
        layers = [int(m.group(1)) for m in map(_LAYER.fullmatch, call.stack) if m]
        by_layer.setdefault(layers[0] if layers else None, []).append(call)

    def made(calls, op):
        return [c for c in calls if c.op == op]

    top = by_layer.get(None, [])
    if not made(top, "call:attention_masks"):
        raise ValueError("model: expected the readable xlnet_ref model (xlnet_ref.fast runs none of its stages)")
    b, qlen = inputs["input_ids"].shape
    positional_keys = made(top, _PROJECT)  # W_{k,R} R, one per layer, in layer order
    pos_emb = positional_keys[0].operands[0]  # R as the layers see it: [p, r, m]
    attn_mask, non_tgt_mask = made(top, "call:attention_masks")[0].output
    first = backbone.layer[0].rel_attn
    keys = next(c.output for c in made(by_layer[0], _PROJECT) if c.operands[1] is first.k)
    klen = keys.shape[1]  # keys over [memory | current], as the model saw them
    stages = {
        "word_emb": rec.output(f"{prefix}word_embedding"),
        "pos_emb": _per_row(pos_emb, b),
        "attn_mask": _full_mask(attn_mask, b, qlen, klen),
        "non_tgt_mask": _full_mask(non_tgt_mask, b, qlen, klen),
    }
    if made(top, "call:segment_difference"):
        stages["seg_diff"] = made(top, "call:segment_difference")[0].output
    new_mems = made(top, "call:cache_mem")
    for index, layer in enumerate(backbone.layer):
        calls, attn = by_layer[index], layer.rel_attn  # (the layer's attention module as it is now)
        projections = made(calls, _PROJECT)
        queries = [c.output for c in projections if c.operands[1] is attn.q]  # content stream, then query stream
        s = {"new_mem": new_mems[index].output} if new_mems else {}
        s.update(
            q_h=queries[0],
            k_h=next(c.output for c in projections if c.operands[1] is attn.k),
            v_h=next(c.output for c in projections if c.operands[1] is attn.v),
            k_r=_per_row(positional_keys[index].output, b),
        )
        ac, bd_raw = made(calls, "einsum:bind,bjnd->bnij"), made(calls, "call:position_term")
        bd = made(calls, "call:rel_shift") + made(calls, "call:rel_shift_at")
        ef, softmax = made(calls, "call:segment_term"), made(calls, "softmax")
        attn_out = [c.output for c in made(calls, "layer_norm") if _norm_weight(c) is attn.layer_norm.weight]
        for n, stream in enumerate(("content", "query")[: len(queries)]):
            if stream == "query":
                s["q_g"] = queries[1]
            s[f"{stream}.ac"], s[f"{stream}.bd_raw"], s[f"{stream}.bd"] = ac[n].output, bd_raw[n].output, bd[n].output
            if ef:
                s[f"{stream}.ef"] = ef[n].output
            s[f"{stream}.score"], s[f"{stream}.prob"] = softmax[n].operands[0], softmax[n].output
            s[f"{stream}_attn_out"] = attn_out[n]
        h, g = rec.output(f"{prefix}layer.{index}")[:2]  # after the feed-forward
        s["content_ff_out"] = h
        if g is not None:
            s["query_ff_out"] = g
        stages.update({f"layer{index}.{k}": v for k, v in s.items()})
    if isinstance(model, XLNetLMHeadModel):
        stages["logits"] = out.logits
        if "target_ids" in inputs:
            stages["loss"] = permutation.plm_loss(out.logits, inputs["target_ids"], inputs["target_weights"])
    return stages


def reference_gradients(model: XLNetLMHeadModel, stages: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    r"""grad.<name> = :math:`\partial \mathcal{L} / \partial \theta` for every parameter under transformers' names,
    and grad.word_emb = :math:`\partial \mathcal{L} / \partial h^{(0)}` [b, i, m], by autograd from ``stages["loss"]``.

    Our u, v and segment bias are stacked [n_layer, n, d] (untie_r); transformers' per-layer copy
    ``layer.L.rel_attn.r_w_bias`` gets row L of the gradient. The LM head's weight is the word embedding
    (tied), so its gradient appears once, as ``transformer.word_embedding.weight``.
    """
    backbone = model.transformer
    if not backbone.config.untie_r:
        raise ValueError("model: gradients under transformers' per-layer names need untie_r=True, got untie_r=False")
    params = {f"transformer.{k}": p for k, p in backbone.named_parameters()}
    params["lm_loss.bias"] = model.lm_loss.bias
    tensors = [stages["word_emb"], *params.values()]
    grads = dict(
        zip(["word_emb", *params], torch.autograd.grad(stages["loss"], tensors, retain_graph=True, allow_unused=True))
    )
    out = {GRAD + "word_emb": grads.pop("word_emb")}
    for name, g in grads.items():
        g = torch.zeros_like(params[name]) if g is None else g
        bias = name.removeprefix("transformer.")
        if bias in BIASES:
            out.update({f"{GRAD}transformer.layer.{layer}.rel_attn.{bias}": g[layer] for layer in range(len(g))})
        else:
            out[GRAD + name] = g
    return {name: out[name] for name in gradient_stage_names(backbone.config.n_layer)}  # backward order


def reference_outputs(model: XLNetLMHeadModel, case: Case) -> dict[str, torch.Tensor]:
    """What the reference returns for a case: its stages, plus the gradients when the case asks for them."""
    stages = reference_stages(model, case.inputs)
    if case.gradients:
        stages.update(reference_gradients(model, stages))
    return stages


def reference_adapter(case: Case) -> dict[str, torch.Tensor]:
    """xlnet_ref itself, through the adapter interface (what --against ref runs)."""
    return reference_outputs(build_reference(case), case)
