"""Relative positional encoding: the table, the distance ranges, bi_data, clamp_len and rel_shift."""

import math

import pytest
import torch

from xlnet_ref.naive import rel_shift_naive
from xlnet_ref.relative_position import (
    inverse_frequencies,
    rel_shift,
    relative_positional_encoding,
    relative_positions,
    sinusoid_embedding,
)

# many (qlen, mlen) pairs, including qlen = 1 and mlen = 0
PAIRS = [(q, m) for q in (1, 2, 3, 5, 8) for m in (0, 1, 4, 7)]


@pytest.mark.parametrize("attn_type", ["bi", "uni"])
@pytest.mark.parametrize("qlen, mlen", PAIRS)
def test_rel_shift_equals_naive_closed_form(attn_type, qlen, mlen):
    klen = qlen + mlen
    rlen = relative_positions(qlen, klen, attn_type=attn_type).shape[0]
    bd = torch.randn(2, 3, qlen, rlen)  # [b, n, i, r]
    assert torch.equal(rel_shift(bd, klen), rel_shift_naive(bd, klen))


@pytest.mark.parametrize("qlen, mlen", PAIRS)
def test_rel_shift_puts_distance_mlen_plus_i_minus_j_at_i_j(qlen, mlen):
    """Fill the score table with the distances themselves: after the shift, entry (i, j) must read
    (mlen + i) - j, the distance from query i (absolute position mlen + i) to key j."""
    klen = qlen + mlen
    dist = relative_positions(qlen, klen, attn_type="bi")  # [r]
    shifted = rel_shift(dist.expand(qlen, -1).contiguous(), klen)
    i = torch.arange(qlen)[:, None]
    j = torch.arange(klen)[None, :]
    assert torch.equal(shifted, (mlen + i - j).float())


def test_position_ranges():
    assert relative_positions(3, 5, attn_type="bi").tolist() == [5, 4, 3, 2, 1, 0, -1, -2]
    assert relative_positions(3, 5, attn_type="uni").tolist() == [5, 4, 3, 2, 1, 0]
    with pytest.raises(ValueError, match="attn_type.*'bi' or 'uni'.*'left'"):
        relative_positions(3, 5, attn_type="left")


def test_sinusoid_table_from_the_formula():
    d = 8
    table = relative_positional_encoding(2, 3, d_model=d, attn_type="bi", bi_data=False, clamp_len=-1)[0]
    for c, p in enumerate([3, 2, 1, 0, -1]):
        for k in range(d // 2):
            freq = 1 / 10000 ** (2 * k / d)
            assert math.isclose(table[c, k].item(), math.sin(p * freq), abs_tol=1e-6)  # first half: sin
            assert math.isclose(table[c, d // 2 + k].item(), math.cos(p * freq), abs_tol=1e-6)  # second: cos


def test_inverse_frequencies_are_float32_in_the_reference_order():
    d = 1024
    expected = 1 / torch.pow(10000, torch.arange(0, d, 2).float() / d)
    assert inverse_frequencies(d).dtype == torch.float32
    assert torch.equal(inverse_frequencies(d), expected)


def test_bi_data_second_half_reads_negated_distances():
    fwd, bwd = relative_positional_encoding(3, 5, d_model=8, attn_type="bi", bi_data=True, clamp_len=-1)
    dist = relative_positions(3, 5, attn_type="bi")
    assert torch.equal(fwd, sinusoid_embedding(dist, inverse_frequencies(8)))
    assert torch.equal(bwd, sinusoid_embedding(-dist, inverse_frequencies(8)))
    assert torch.allclose(bwd[:, :4], -fwd[:, :4]) and torch.allclose(bwd[:, 4:], fwd[:, 4:])  # sin odd, cos even


def test_clamp_len_clips_distances():
    clamped = relative_positional_encoding(4, 6, d_model=8, attn_type="bi", bi_data=False, clamp_len=2)[0]
    unclamped = relative_positional_encoding(4, 6, d_model=8, attn_type="bi", bi_data=False, clamp_len=-1)[0]
    dist = relative_positions(4, 6, attn_type="bi")
    row_of = {int(p): c for c, p in enumerate(dist)}
    for c, p in enumerate(dist.tolist()):
        assert torch.equal(clamped[c], unclamped[row_of[max(-2, min(2, int(p)))]])
