r"""Known XLNet bugs, each written as a small change to the reference (bugs that XLNet implementations
have had; docs/validate.md lists them).

They are here to prove that the validator catches real mistakes and names the right place: each
mutant says which case of the golden set catches it first and at which stage.

A mutant is a context manager over a built reference model: inside the ``with`` block the bug is in
(one module attribute patched, or one part of *this model instance* replaced); on exit everything
is put back. Outside a ``with`` block nothing here changes the reference.

    python -m xlnet_ref.validate --against mutant:no_rel_shift
    python -m xlnet_ref.validate --list-mutants
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from unittest import mock

import torch
import torch.nn.functional as F
from torch import nn

from .. import attention, feed_forward, permutation
from .. import model as model_module
from .reference import build_reference, reference_outputs


@dataclass(frozen=True)
class Mutant:
    name: str
    bug: str  # what the buggy implementation does, in words
    expected_case: str  # the first golden case that catches it
    expected_stage: str  # the first stage that fails in that case
    inject: Callable[[nn.Module], AbstractContextManager]  # model -> context manager that puts the bug in


# --- the bugs -----------------------------------------------------------------------------------------


@contextlib.contextmanager
def _shared_attention_weights(model):
    """One RelativeAttention module (layer 0's) used by every layer."""
    layers = model.transformer.layer
    own = [layer.rel_attn for layer in layers]
    try:
        for layer in layers:
            layer.rel_attn = own[0]
        yield
    finally:
        for layer, attn in zip(layers, own):
            layer.rel_attn = attn


@contextlib.contextmanager
def _feed_forward_missing_in_last_layer(model):
    last = model.transformer.layer[-1]
    ff = last.ff
    try:
        last.ff = nn.Identity()
        yield
    finally:
        last.ff = ff


def _no_shift(bd, klen):
    """bd's first klen columns as they are: column j then holds distance klen - j, whatever the query."""
    return bd[..., :klen]


def _transformer_xl_shift(bd, klen):
    """Transformer-XL's zero-pad _rel_shift applied to XLNet's table: it is off by one row of distances."""
    *lead, qlen, rlen = bd.shape
    x = F.pad(bd, (1, 0))  # a zero column in front: [..., qlen, rlen + 1]
    x = x.reshape(*lead, rlen + 1, qlen)[..., 1:, :].reshape(*lead, qlen, rlen)
    return x[..., :klen]


def _patch_masks(transform):
    """Patch model.attention_masks so that its (attn_mask, non_tgt_mask) or its arguments are changed."""
    real = model_module.attention_masks

    def patched(**kwargs):
        return transform(real, kwargs)

    return lambda model: mock.patch.object(model_module, "attention_masks", patched)


def _flip_perm(real, kwargs):
    if kwargs.get("perm_mask") is not None:
        kwargs = {**kwargs, "perm_mask": ~kwargs["perm_mask"]}  # 1 read as "may attend"
    return real(**kwargs)


def _query_mask_for_both(real, kwargs):
    attn_mask, non_tgt_mask = real(**kwargs)
    return non_tgt_mask, non_tgt_mask  # the query stream gets the content stream's mask: sees itself


def _content_mask_for_both(real, kwargs):
    attn_mask, non_tgt_mask = real(**kwargs)
    return attn_mask, attn_mask  # the content stream gets the query stream's mask: blind to itself


def _cache_mem_not_detached(h, prev_mem, *, mem_len, reuse_len):
    if reuse_len is not None and reuse_len > 0:
        h = h[:, :reuse_len]
    new_mem = h if prev_mem is None else torch.cat([prev_mem, h], dim=1)
    return new_mem[:, -mem_len:]  # no .detach(): gradients flow into the previous segment


def _absolute_segments(token_type_ids, mlen):
    """BERT-style: the key's own segment id (0 / not 0) instead of "same segment as the query?"."""
    mem_ids = token_type_ids.new_zeros(token_type_ids.shape[0], mlen)
    key_ids = torch.cat([mem_ids, token_type_ids], dim=1)  # [b, j]
    return (key_ids != 0)[:, None, :].expand(-1, token_type_ids.shape[1], -1)


@contextlib.contextmanager
def _tanh_gelu(model):
    ffs = [layer.ff for layer in model.transformer.layer]
    activations = [ff.activation for ff in ffs]
    try:
        for ff in ffs:
            ff.activation = feed_forward.gelu_new
        yield
    finally:
        for ff, act in zip(ffs, activations):
            ff.activation = act


def _loss_mask_on_averaged_loss(logits, target_ids, target_weights):
    """The mask multiplied onto a loss that is already a mean over every row: it has no effect."""
    loss = F.cross_entropy(logits.float().flatten(0, 1), target_ids.flatten())  # mean over all rows, padding too
    w = target_weights.float()
    return (loss * w).sum() / w.sum()  # = loss


class _GeluWrongBackward(torch.autograd.Function):
    r"""Exact GELU forward, x \Phi(x); backward \Phi(x) only: the x \phi(x) term of the derivative is lost."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return feed_forward.gelu(x)

    @staticmethod
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        cdf = 0.5 * (1.0 + torch.erf(x / 2**0.5))  # Phi(x)
        return grad_out * cdf  # the right one is grad_out * (Phi(x) + x phi(x))


@contextlib.contextmanager
def _gelu_wrong_backward(model):
    ffs = [layer.ff for layer in model.transformer.layer]
    activations = [ff.activation for ff in ffs]
    try:
        for ff in ffs:
            ff.activation = _GeluWrongBackward.apply
        yield
    finally:
        for ff, act in zip(ffs, activations):
            ff.activation = act


def _bi_data_always_off(qlen, klen, *, bi_data, **kwargs):
    return _REAL_POSITIONS(qlen, klen, bi_data=False, **kwargs)


_REAL_POSITIONS = model_module.relative_positional_encoding


@contextlib.contextmanager
def _patch_backbone_forward(model, wrapper):
    """Replace this model's backbone forward (instance attribute only) by wrapper(real_forward, ...)."""
    backbone = model.transformer
    real = backbone.forward
    backbone.forward = lambda input_ids, **kw: wrapper(backbone, real, input_ids, **kw)
    try:
        yield
    finally:
        del backbone.forward


def _bi_data_off_for_odd_batch(backbone, real, input_ids, **kw):
    cfg = backbone.config
    if not (cfg.bi_data and input_ids.shape[0] % 2):
        return real(input_ids, **kw)
    cfg.bi_data = False  # silently read every row forwards instead of refusing
    try:
        return real(input_ids, **kw)
    finally:
        cfg.bi_data = True


def _memory_only_with_mem_len(backbone, real, input_ids, **kw):
    if not backbone.config.mem_len:  # tests the configured length, not the memory it was given
        kw = {**kw, "mems": None}
    return real(input_ids, **kw)


MUTANTS = {
    m.name: m
    for m in [
        Mutant(
            "shared_attention_weights",
            "one set of attention weights (layer 0's) used by every layer",
            "one_stream",
            "layer1.q_h",
            _shared_attention_weights,
        ),
        Mutant(
            "feed_forward_missing",
            "the last layer has no feed-forward block",
            "one_stream",
            "layer1.content_ff_out",
            _feed_forward_missing_in_last_layer,
        ),
        Mutant(
            "no_rel_shift",
            "rel_shift left out: position scores read by absolute column, not by distance",
            "one_stream",
            "layer0.content.bd",
            lambda m: mock.patch.object(attention, "rel_shift", _no_shift),
        ),
        Mutant(
            "transformer_xl_rel_shift",
            "Transformer-XL's zero-pad rel_shift used on XLNet's position table",
            "one_stream",
            "layer0.content.bd",
            lambda m: mock.patch.object(attention, "rel_shift", _transformer_xl_shift),
        ),
        Mutant(
            "perm_mask_flipped",
            "perm_mask read with the opposite sign (1 = may attend)",
            "two_stream",
            "attn_mask",
            _patch_masks(_flip_perm),
        ),
        Mutant(
            "query_stream_sees_itself",
            "one mask for both streams: the query stream sees its own token",
            "segments_padding",
            "attn_mask",
            _patch_masks(_query_mask_for_both),
        ),
        Mutant(
            "content_stream_blind_to_itself",
            "one mask for both streams: the content stream may not see itself",
            "segments_padding",
            "non_tgt_mask",
            _patch_masks(_content_mask_for_both),
        ),
        Mutant(
            "memory_not_detached",
            "the cached memory is not detached: gradients flow into the previous segment",
            "memory",
            "layer0.new_mem_grad",
            lambda m: mock.patch.object(model_module, "cache_mem", _cache_mem_not_detached),
        ),
        Mutant(
            "absolute_segment_ids",
            "segment term from the key's absolute segment id, not same/different",
            "segments_padding",
            "seg_diff",
            lambda m: mock.patch.object(model_module, "segment_difference", _absolute_segments),
        ),
        Mutant(
            "tanh_gelu",
            "tanh-approximate GELU (the original TF code's) instead of the exact erf GELU",
            "one_stream",
            "layer0.content_ff_out",
            _tanh_gelu,
        ),
        Mutant(
            "loss_mask_no_effect",
            "the loss mask multiplied onto an already averaged loss (padding targets count)",
            "two_stream",
            "loss",
            lambda m: mock.patch.object(permutation, "plm_loss", _loss_mask_on_averaged_loss),
        ),
        Mutant(
            "bi_data_ignored",
            "bi_data silently off: the second half of the batch is not read backwards",
            "bi_data",
            "pos_emb",
            lambda m: mock.patch.object(model_module, "relative_positional_encoding", _bi_data_always_off),
        ),
        Mutant(
            "bi_data_odd_batch_runs",
            "bi_data silently off for an odd batch instead of refusing it",
            "bi_data_odd_batch",
            "input_check",
            lambda m: _patch_backbone_forward(m, _bi_data_off_for_odd_batch),
        ),
        Mutant(
            "memory_needs_mem_len",
            "memory used only when config.mem_len > 0, not whenever mems are given",
            "memory_given_mem_len_0",
            "pos_emb",
            lambda m: _patch_backbone_forward(m, _memory_only_with_mem_len),
        ),
        Mutant(
            "float16_mask_1e30",
            "masking by subtracting 1e30 in float16 (becomes inf: -inf scores, nan rows)",
            "float16_padding",
            "layer0.content.score",
            lambda m: mock.patch.object(attention, "mask_value", lambda dtype: 1e30),
        ),
        Mutant(
            "gelu_wrong_backward",
            "a hand-written GELU whose backward drops the x phi(x) term (forward exact)",
            "gradients",
            "grad.transformer.layer.1.ff.layer_1.weight",
            _gelu_wrong_backward,
        ),
    ]
}


def mutant_adapter(name: str) -> Callable:
    """An adapter (``case -> {stage: tensor}``, see adapters.py) that runs the reference with one bug in."""
    if name not in MUTANTS:
        raise ValueError(f"mutant: expected one of {sorted(MUTANTS)}, got {name!r}")
    mutant = MUTANTS[name]

    def adapter(case):
        model = build_reference(case)
        with mutant.inject(model):
            return reference_outputs(model, case)

    adapter.__name__ = f"mutant_{name}"
    return adapter
