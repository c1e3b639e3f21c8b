r"""Relative multi-head attention: Transformer-XL's four terms plus XLNet's segment term.

For query i and key j (keys over [memory | current segment]):

.. math::
    \text{score}_{ij} = \frac{1}{\sqrt{d}} \Big[
        \underbrace{(q_i + u)^\top k_j}_{(a)+(c)\ \texttt{ac}}
      + \underbrace{(q_i + v)^\top W_{k,R} R_{i-j}}_{(b)+(d)\ \texttt{bd}}
      + \underbrace{(q_i + b)^\top s_{ij}}_{\text{segment}\ \texttt{ef}} \Big]

(Transformer-XL Sec. 3.3; XLNet Sec. 2.5.) :math:`q_i = W_q x_i` comes from the stream's own input
(h for the content stream, g for the query stream); :math:`k_j = W_{k,E}\,[\text{mem};h]_j` and
:math:`v_j` from memory and the content stream; :math:`u, v, b` are ``r_w_bias``, ``r_r_bias``,
``r_s_bias``. There are no projection biases. Masked scores are set to -1e30 (-65500 in float16), so
that a fully masked row stays finite (uniform) instead of NaN. transformers subtracts 1e30 instead;
in float32 and bfloat16 that gives exactly -1e30 too (a score is far below 1e30's rounding step), but
in float16 ``score - 65500`` overflows to -inf for any score below -4, and a fully masked row of
-inf is NaN after the softmax. Setting the value (``masked_fill``) cannot overflow whatever the
weights' scale; on every row that is not fully masked the probabilities are the same either way
(masked keys get exactly 0). Then softmax over j, dropout,
:math:`\sum_j p_{ij} v_j`, the output projection :math:`W_o`, dropout, residual and post-LayerNorm.

Axis letters: b batch, i query, j key, r distance (rows of the positional table), p table half
(bi_data), n head, d head width, m model width.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from .masks import mask_value
from .relative_position import rel_shift, rel_shift_at
from .segments import segment_term


def position_term(q_v: torch.Tensor, k_r: torch.Tensor) -> torch.Tensor:
    """(b)+(d) before the shift: (q_i + v) . W_{k,R} R_c for every table row c.

    q_v: [b, i, n, d] (already plus r_r_bias), k_r: [p, r, n, d] with p = 1, or 2 for bi_data
    (rows [0, b/2) of the batch use half 0, rows [b/2, b) half 1)  ->  [b, n, i, r]

    transformers projects the table once per batch row ([r, b, m] @ W_r); the table is the same for
    every row of a half, so we project it once per half and let one batched matmul share it.
    naive.attention_naive projects and multiplies per batch row instead; tests check they agree.
    """
    q_halves = rearrange(q_v, "(p c) i n d -> p c i n d", p=k_r.shape[0])  # c: rows within a half
    bd = torch.einsum("pcind,prnd->pcnir", q_halves, k_r)
    return rearrange(bd, "p c n i r -> (p c) n i r")


class RelativeAttention(nn.Module):
    """One layer's attention weights, shaped as transformers shapes them: W [m, n, d], no biases.

    u, v and the segment bias are passed in by the model, because the original code shares one set
    across layers when untie_r is False (see model.py).
    """

    def __init__(self, config):
        super().__init__()
        m, n, d = config.d_model, config.n_head, config.d_head
        self.n_head, self.d_head = n, d
        self.scale = 1 / (d**0.5)
        self.q = nn.Parameter(torch.empty(m, n, d))  # W_q
        self.k = nn.Parameter(torch.empty(m, n, d))  # W_{k,E}
        self.v = nn.Parameter(torch.empty(m, n, d))  # W_v
        self.o = nn.Parameter(torch.empty(m, n, d))  # W_o (used transposed: [n, d] -> m)
        self.r = nn.Parameter(torch.empty(m, n, d))  # W_{k,R}
        self.seg_embed = nn.Parameter(torch.empty(2, n, d))  # s_+ (same segment), s_- (different)
        self.layer_norm = nn.LayerNorm(m, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def project(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """x [..., m] @ W [m, n, d] -> [..., n, d]: one head split per projection."""
        return torch.einsum("...m,mnd->...nd", x, weight)

    def scores(
        self,
        q: torch.Tensor,
        k_h: torch.Tensor,
        k_r: torch.Tensor,
        *,
        r_w_bias: torch.Tensor,
        r_r_bias: torch.Tensor,
        r_s_bias: torch.Tensor | None,
        seg_diff: torch.Tensor | None,
        query_pos: torch.Tensor | None,
        qlen: int,
    ) -> dict[str, torch.Tensor]:
        """The three score terms, unscaled: ac, bd (after the shift) and ef, each [b, n, i, j].

        query_pos None: the queries are the qlen positions in order (content stream) and bd is moved
        into place with rel_shift. Otherwise query_pos [b, i] gives each query's position (query stream
        at its prediction targets) and bd is moved with rel_shift_at, which picks, for each query, the
        row rel_shift would have given the query at that position.
        """
        klen = k_h.shape[1]
        ac = torch.einsum("bind,bjnd->bnij", q + r_w_bias, k_h)  # (a) + (c)
        bd = position_term(q + r_r_bias, k_r)  # (b) + (d), indexed by distance: [b, n, i, r]
        bd = rel_shift(bd, klen) if query_pos is None else rel_shift_at(bd, klen, qlen, query_pos)
        terms = {"ac": ac, "bd": bd}
        if seg_diff is not None:
            terms["ef"] = segment_term(q, r_s_bias, self.seg_embed, seg_diff)  # segment term
        return terms

    def attend(
        self,
        q: torch.Tensor,
        k_h: torch.Tensor,
        v_h: torch.Tensor,
        k_r: torch.Tensor,
        *,
        mask: torch.Tensor | None,
        **score_kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """softmax((ac + bd + ef) / sqrt(d), with masked scores set to -1e30) @ V
        ->  (attn_vec [b, i, n, d], prob [b, n, i, j])."""
        terms = self.scores(q, k_h, k_r, **score_kwargs)
        score = sum(terms.values()) * self.scale  # [b, n, i, j]
        if mask is not None:
            # set, not subtract: score - 65500 overflows to -inf in float16 (see the module docstring)
            score = score.masked_fill(mask[:, None].bool(), score.new_tensor(-mask_value(score.dtype)))
        prob = torch.softmax(score, dim=-1)
        prob = self.dropout(prob)
        attn_vec = torch.einsum("bnij,bjnd->bind", prob, v_h)
        return attn_vec, prob

    def post_attention(self, x: torch.Tensor, attn_vec: torch.Tensor) -> torch.Tensor:
        """LayerNorm(x + dropout(attn_vec W_o)): residual from the stream's own input, post-LN."""
        attn_out = torch.einsum("bind,mnd->bim", attn_vec, self.o)
        return self.layer_norm(x + self.dropout(attn_out))
