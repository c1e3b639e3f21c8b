r"""The reference's stages: xlnet_ref's own forward (and backward) pass, named and laid out as stages.py says.

:func:`reference_stages` runs the model with ``trace`` on and returns every intermediate tensor in
forward order, batch-first. :func:`reference_adapter` is the reference behind the adapter interface
(``case -> {stage: tensor}``) that every implementation under test also has: it builds the model from
a case's config and transformers-named weights, and for cases with ``gradients`` it adds the gradient
of the loss with respect to the word embeddings and every parameter (``grad.*``).
"""

from __future__ import annotations

import torch

from .. import permutation
from ..config import XLNetConfig
from ..interop import BIASES, load_hf_state_dict
from ..model import XLNetLMHeadModel
from .cases import Case
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


def reference_stages(model, inputs: dict) -> dict[str, torch.Tensor]:
    """Every stage of the reference forward pass, in forward order and the documented layouts.

    Uses the model's ``trace`` (which also records the position score before rel_shift, ``bd_raw``).
    """
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
