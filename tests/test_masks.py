"""The masks, checked against their definitions entry by entry (True = may NOT attend)."""

import itertools

import torch

from xlnet_ref.masks import attention_masks, causal_mask


def test_causal_mask_definition():
    for qlen, mlen in itertools.product((1, 3, 5), (0, 2, 4)):
        mask = causal_mask(qlen, mlen, same_length=False)
        for i, j in itertools.product(range(qlen), range(qlen + mlen)):
            assert bool(mask[i, j]) == (j > mlen + i)


def test_same_length_every_query_sees_mlen_plus_one_keys():
    for qlen, mlen in ((4, 4), (3, 5), (5, 5)):
        mask = causal_mask(qlen, mlen, same_length=True)
        for i, j in itertools.product(range(qlen), range(qlen + mlen)):
            assert bool(mask[i, j]) == (j > mlen + i or (j < i and j < qlen))
        assert (~mask).sum(-1).tolist() == [mlen + 1] * qlen


def test_bi_without_data_masks_has_no_mask():
    assert attention_masks(qlen=3, mlen=2, attn_type="bi", same_length=False, input_mask=None, perm_mask=None) == (
        None,
        None,
    )


def test_query_stream_never_sees_itself_content_stream_always_does():
    g = torch.Generator().manual_seed(0)
    qlen, mlen, b = 5, 3, 2
    perm = torch.rand(b, qlen, qlen, generator=g) < 0.5
    perm |= torch.eye(qlen, dtype=torch.bool)  # a factorization order hides each token from its own query
    pad = torch.zeros(b, qlen, dtype=torch.bool)
    pad[1, :2] = True
    for attn_type in ("bi", "uni"):
        attn_mask, non_tgt = attention_masks(
            qlen=qlen, mlen=mlen, attn_type=attn_type, same_length=False, input_mask=pad, perm_mask=perm
        )
        attn_mask = attn_mask.expand(b, -1, -1)
        for bb, i, j in itertools.product(range(b), range(qlen), range(qlen + mlen)):
            hidden = j >= mlen and (bool(perm[bb, i, j - mlen]) or bool(pad[bb, j - mlen]))
            if attn_type == "uni":
                hidden = hidden or j > mlen + i
            assert bool(attn_mask[bb, i, j]) == hidden  # memory columns (j < mlen) always visible
            assert bool(non_tgt[bb, i, j]) == (hidden and j != mlen + i)
