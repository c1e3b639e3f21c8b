r"""Relative positional encoding (Transformer-XL, Dai et al. 2019, Sec. 3.3).

Transformer-XL replaces the absolute position of a key by its distance to the query, i - j.
The attention score between query i and key j is split into four terms (Eq. in Sec. 3.3):

.. math::
    A^{rel}_{i,j} = \underbrace{E_{x_i}^\top W_q^\top W_{k,E} E_{x_j}}_{(a)}
                  + \underbrace{E_{x_i}^\top W_q^\top W_{k,R} R_{i-j}}_{(b)}
                  + \underbrace{u^\top W_{k,E} E_{x_j}}_{(c)}
                  + \underbrace{v^\top W_{k,R} R_{i-j}}_{(d)}

Here :math:`R` is the sinusoid table below (no learned positions), and (b)+(d) is computed for every
distance at once and then moved into place by :func:`rel_shift`.

XLNet lays out the distances with the memory in front: keys j = 0..klen-1 (klen = mlen + qlen), the
query i sits at absolute position mlen + i, so the distance is (mlen + i) - j.
"""

from __future__ import annotations

import torch


def inverse_frequencies(d_model: int, *, device=None) -> torch.Tensor:
    r""":math:`1 / 10000^{2k/d}` for k = 0 .. d/2-1, in float32 and in this order of operations.

    The order matters for exactness: a one-ulp difference in a frequency grows to ~1e-5 at a
    position of ~1e3. Both the original code and transformers compute it in float32 this way.
    """
    freq_seq = torch.arange(0, d_model, 2, dtype=torch.int64, device=device).float()  # [d/2]
    return 1 / torch.pow(10000, freq_seq / d_model)


def sinusoid_embedding(pos_seq: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    r"""R_p = [sin(p / 10000^{2k/d}) ; cos(p / 10000^{2k/d})] — halves concatenated, not interleaved.

    pos_seq: [r] float positions, inv_freq: [d/2]  ->  [r, d]
    """
    sinusoid = torch.outer(pos_seq, inv_freq)  # [r, d/2]
    return torch.cat([torch.sin(sinusoid), torch.cos(sinusoid)], dim=-1)


def relative_positions(qlen: int, klen: int, *, attn_type: str, device=None) -> torch.Tensor:
    """The relative distances the table is built for, largest first.

    'bi':  klen, klen-1, ..., -qlen+1   (length klen + qlen; keys may lie after the query)
    'uni': klen, klen-1, ..., 1, 0      (length klen + 1; only past keys are needed)

    One more distance than strictly needed sits at the front (klen): :func:`rel_shift` drops it.
    """
    if attn_type == "bi":
        beg, end = klen, -qlen
    elif attn_type == "uni":
        beg, end = klen, -1
    else:
        raise ValueError(f"attn_type: expected 'bi' or 'uni', got {attn_type!r}")
    return torch.arange(beg, end, -1, dtype=torch.int64, device=device).float()  # [r]


def relative_positional_encoding(
    qlen: int,
    klen: int,
    *,
    d_model: int,
    attn_type: str,
    bi_data: bool,
    clamp_len: int,
    device=None,
) -> torch.Tensor:
    """The table R for every distance, in float32: [p, r, d] with p = 2 if bi_data else 1.

    bi_data (XLNet pretraining): the first half of the batch reads the text forwards, the second half
    backwards, so the second half gets negated distances. Row 0 of the result is for the forward half,
    row 1 for the backward half; the model uses row 0 for batch rows [0, b/2) and row 1 for [b/2, b).
    clamp_len > 0 clips every distance to [-clamp_len, clamp_len] before the sinusoid.

    Unlike transformers, the table is not repeated for each batch row: every row of a half shares it,
    so its projection W_{k,R} R is computed once per half (see attention.py).
    """
    inv_freq = inverse_frequencies(d_model, device=device)
    fwd = relative_positions(qlen, klen, attn_type=attn_type, device=device)  # [r]
    seqs = [fwd, -fwd] if bi_data else [fwd]
    if clamp_len > 0:
        seqs = [s.clamp(-clamp_len, clamp_len) for s in seqs]
    return torch.stack([sinusoid_embedding(s, inv_freq) for s in seqs])  # [p, r, d]


def rel_shift(bd: torch.Tensor, klen: int) -> torch.Tensor:
    """Move position scores from "indexed by distance" to "indexed by key": out[..., i, j] = bd[..., i, j + qlen - i].

    bd: [..., qlen, rlen] with column c holding the score for distance positions[c]  ->  [..., qlen, klen]

    The trick (from the original code): view the [qlen, rlen] block as [rlen, qlen], drop the first row
    (qlen numbers), view the rest as [qlen, rlen - 1] and keep the first klen columns. Dropping qlen
    numbers and re-reading rows one shorter shifts row i left by (qlen - i). No copy of the full block
    is needed besides the final slice. :func:`xlnet_ref.naive.rel_shift_naive` spells out the same
    indices.
    """
    *lead, qlen, rlen = bd.shape
    x = bd.reshape(*lead, rlen, qlen)[..., 1:, :]  # drop the first qlen numbers
    x = x.reshape(*lead, qlen, rlen - 1)
    return x[..., :klen]


def rel_shift_at(bd: torch.Tensor, klen: int, qlen: int, query_pos: torch.Tensor) -> torch.Tensor:
    """:func:`rel_shift` for queries at given positions (the query stream at its targets).

    bd: [b, n, k, rlen] position scores of k queries, query_pos: [b, k] the position of each (0 ..
    qlen - 1)  ->  [b, n, k, klen] with out[b, n, k, j] = bd[b, n, k, j + qlen - query_pos[b, k]]: the
    column rel_shift reads for a query at that position. Keys the causal mask hides may fall past the
    table's end in 'uni'; they are clamped (their score is masked anyway).
    """
    j = torch.arange(klen, device=bd.device)
    col = (j[None, None, :] + qlen - query_pos[:, :, None]).clamp(max=bd.shape[-1] - 1)  # [b, k, j]
    return bd.gather(3, col[:, None].expand(-1, bd.shape[1], -1, -1))
