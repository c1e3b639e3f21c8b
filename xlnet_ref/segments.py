r"""Relative segment encoding (XLNet, Yang et al. 2019, Sec. 2.5).

XLNet does not add an absolute segment embedding to the input. Instead, for every pair (i, j) it only
asks *whether* i and j lie in the same segment, s_ij = s_+ if so and s_- otherwise, and adds a term to
the attention score:

.. math::
    a_{ij} = (q_i + b)^\top s_{ij}

with :math:`b` = ``r_s_bias`` and :math:`s_{+}, s_{-}` = ``seg_embed[0]``, ``seg_embed[1]`` (per head).
Because only same/different matters, the model handles more than two segments (e.g. the CLS token
with its own id 2) and generalises to tasks with several input segments.
Memory positions count as segment 0.
"""

from __future__ import annotations

import torch


def segment_difference(token_type_ids: torch.Tensor, mlen: int) -> torch.Tensor:
    """s_ij as a bool: True where query i and key j lie in *different* segments.

    token_type_ids: [b, i] long (any ids; only equality matters)  ->  [b, i, j] bool with j over [memory | current]
    """
    mem_ids = token_type_ids.new_zeros(token_type_ids.shape[0], mlen)  # memory is segment 0
    key_ids = torch.cat([mem_ids, token_type_ids], dim=1)  # [b, j]
    return token_type_ids[:, :, None] != key_ids[:, None, :]


def segment_term(
    q: torch.Tensor, r_s_bias: torch.Tensor, seg_embed: torch.Tensor, seg_diff: torch.Tensor
) -> torch.Tensor:
    r"""ef[b, n, i, j] = (q_i + r_s_bias) . seg_embed[s_ij]  (XLNet Sec. 2.5).

    q: [b, i, n, d], r_s_bias: [n, d], seg_embed: [2, n, d] (row 0 same segment, row 1 different),
    seg_diff: [b, i, j] bool.

    Only two values per (b, n, i) exist, so they are computed once ([b, n, i, 2]) and then chosen
    per key — instead of transformers' contraction with a one-hot [i, j, b, 2] tensor. The result is
    the same number (multiplying by 1 and adding 0 is exact). :func:`xlnet_ref.naive.segment_term_naive`
    loops.
    """
    ef = torch.einsum("bind,snd->bnis", q + r_s_bias, seg_embed)  # [b, n, i, 2]
    return torch.where(seg_diff[:, None], ef[..., 1:2], ef[..., 0:1])  # [b, n, i, j]
