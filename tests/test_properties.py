"""Property tests (hypothesis): the fast operations equal their definitions for any sizes."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from xlnet_ref.masks import attention_masks
from xlnet_ref.naive import rel_shift_naive, segment_term_naive
from xlnet_ref.relative_position import rel_shift, relative_positions
from xlnet_ref.segments import segment_difference, segment_term

sizes = st.integers(min_value=1, max_value=9)


@settings(max_examples=60, deadline=None)
@given(qlen=sizes, mlen=st.integers(0, 9), attn_type=st.sampled_from(["bi", "uni"]), seed=st.integers(0, 2**16))
def test_rel_shift_is_the_closed_form(qlen, mlen, attn_type, seed):
    klen = qlen + mlen
    rlen = relative_positions(qlen, klen, attn_type=attn_type).shape[0]
    bd = torch.randn(2, qlen, rlen, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(rel_shift(bd, klen), rel_shift_naive(bd, klen))


@settings(max_examples=40, deadline=None)
@given(qlen=sizes, mlen=st.integers(0, 5), n_types=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_segment_term_is_the_dot_product_with_s_ij(qlen, mlen, n_types, seed):
    g = torch.Generator().manual_seed(seed)
    tt = torch.randint(0, n_types, (2, qlen), generator=g)
    seg_diff = segment_difference(tt, mlen)
    args = (
        torch.randn(2, qlen, 2, 3, generator=g),
        torch.randn(2, 3, generator=g),
        torch.randn(2, 2, 3, generator=g),
        seg_diff,
    )
    assert torch.allclose(segment_term(*args), segment_term_naive(*args), atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(qlen=sizes, mlen=st.integers(0, 5), attn_type=st.sampled_from(["bi", "uni"]), seed=st.integers(0, 2**16))
def test_content_stream_sees_exactly_one_more_key_than_query_stream_when_self_is_hidden(qlen, mlen, attn_type, seed):
    """With perm_mask hiding each token from itself, the content stream's mask is the query stream's
    with the own-token entry (i, mlen + i) opened, and nothing else changed."""
    g = torch.Generator().manual_seed(seed)
    perm = (torch.rand(2, qlen, qlen, generator=g) < 0.5) | torch.eye(qlen, dtype=torch.bool)
    attn_mask, non_tgt = attention_masks(
        qlen=qlen, mlen=mlen, attn_type=attn_type, same_length=False, input_mask=None, perm_mask=perm
    )
    diff = attn_mask.expand_as(non_tgt) & ~non_tgt
    own = torch.zeros(qlen, qlen + mlen, dtype=torch.bool)
    own[torch.arange(qlen), mlen + torch.arange(qlen)] = True
    assert torch.equal(diff, own.expand_as(diff))
