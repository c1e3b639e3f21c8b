"""Every fast operation that hides the math against its slow twin that spells the equation out."""

import pytest
import torch
from helpers import random_lm

from xlnet_ref.masks import attention_masks
from xlnet_ref.naive import attention_naive, query_stream_scatter, segment_term_naive
from xlnet_ref.relative_position import relative_positional_encoding
from xlnet_ref.segments import segment_difference, segment_term
from xlnet_ref.two_stream import target_positions, two_stream_attention


def test_segment_term_equals_naive():
    torch.manual_seed(0)
    q = torch.randn(2, 4, 3, 5)
    tt = torch.tensor([[0, 0, 1, 2], [1, 1, 1, 0]])
    seg_diff = segment_difference(tt, mlen=2)
    args = (q, torch.randn(3, 5), torch.randn(2, 3, 5), seg_diff)
    assert torch.allclose(segment_term(*args), segment_term_naive(*args), atol=1e-6)


def test_segment_difference_is_same_or_different_and_memory_is_segment_0():
    tt = torch.tensor([[0, 1, 2]])
    diff = segment_difference(tt, mlen=2)[0]
    expected = torch.tensor([[0, 0, 0, 1, 1], [1, 1, 1, 0, 1], [1, 1, 1, 1, 0]], dtype=torch.bool)
    assert torch.equal(diff, expected)


def _layer_setup(attn_type, *, bi_data=False, mlen=3, qlen=5, b=2, seed=0):
    model = random_lm(attn_type=attn_type, bi_data=bi_data, seed=seed).transformer
    layer = model.layer[1]
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(b, qlen, 32, generator=g)
    mem = torch.randn(b, mlen, 32, generator=g)
    perm = torch.rand(b, qlen, qlen, generator=g) < 0.4
    tt = torch.randint(0, 3, (b, qlen), generator=g)
    attn_mask, non_tgt = attention_masks(
        qlen=qlen, mlen=mlen, attn_type=attn_type, same_length=False, input_mask=None, perm_mask=perm, device=None
    )
    pos_emb = relative_positional_encoding(
        qlen, qlen + mlen, d_model=32, attn_type=attn_type, bi_data=bi_data, clamp_len=-1
    )
    return model, layer, h, mem, pos_emb, attn_mask, non_tgt, segment_difference(tt, mlen)


@pytest.mark.parametrize("attn_type, bi_data", [("bi", False), ("bi", True), ("uni", False), ("uni", True)])
def test_content_stream_equals_naive_loops(attn_type, bi_data):
    model, layer, h, mem, pos_emb, _, non_tgt, seg_diff = _layer_setup(attn_type, bi_data=bi_data)
    k_r = layer.rel_attn.project(pos_emb, layer.rel_attn.r)
    fast, _, _, _ = two_stream_attention(
        layer.rel_attn,
        h,
        None,
        mem,
        k_r,
        seg_diff=seg_diff,
        attn_mask=None,
        non_tgt_mask=non_tgt,
        target_pos=None,
        target_valid=None,
        **model.layer_biases(1),
    )
    qlen = h.shape[1]
    naive = attention_naive(
        layer.rel_attn,
        h,
        torch.cat([mem, h], 1),
        pos_emb,
        seg_diff=seg_diff,
        mask=non_tgt,
        query_pos=torch.arange(qlen).expand(h.shape[0], -1),
        qlen=qlen,
        **model.layer_biases(1),
    )
    assert torch.allclose(fast, naive, atol=1e-5)


@pytest.mark.parametrize("attn_type", ["bi", "uni"])
def test_query_stream_at_targets_equals_transformers_scatter(attn_type):
    model, layer, h, mem, pos_emb, attn_mask, non_tgt, seg_diff = _layer_setup(attn_type)
    b, qlen = h.shape[:2]
    tm = torch.zeros(b, 4, qlen)
    tm[0, [0, 1, 2], [4, 0, 2]] = 1  # row 0: three targets and one padding target (all zeros)
    tm[1, [0, 1, 2, 3], [1, 3, 2, 0]] = 1
    g = torch.randn(b, 4, 32)
    k_r = layer.rel_attn.project(pos_emb, layer.rel_attn.r)
    pos, valid = target_positions(tm)
    _, fast, _, _ = two_stream_attention(
        layer.rel_attn,
        h,
        g,
        mem,
        k_r,
        seg_diff=seg_diff,
        attn_mask=attn_mask,
        non_tgt_mask=non_tgt,
        target_pos=pos,
        target_valid=valid,
        **model.layer_biases(1),
    )
    slow = query_stream_scatter(
        layer.rel_attn, g, h, mem, k_r, tm, seg_diff=seg_diff, attn_mask=attn_mask, **model.layer_biases(1)
    )
    assert torch.allclose(fast, slow, atol=1e-5)
    # the padding target received no attention: its output is LayerNorm(g)
    assert torch.allclose(fast[0, 3], layer.rel_attn.layer_norm(g[0, 3]), atol=1e-6)
