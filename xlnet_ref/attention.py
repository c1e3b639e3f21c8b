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
from torch.autograd.function import once_differentiable

from .dropout import keep_mask, keep_scale, residual_dropout
from .masks import mask_value
from .relative_position import rel_shift
from .segments import segment_term

# The fast path attends QUERY_BLOCK query rows at a time when a call has more (the query chunking of Rabe &
# Staats, 2021, "Self-attention does not need O(n^2) memory"), so that the temporaries of the score
# computation (the position term, the bias, the scores) exist for one block at a time; what a block keeps
# for the backward pass is 5 bytes per score (ProbsDropoutValues). The presets (seq_len 32 to 128) and the
# training-step benchmark (128 rows) are one block; benchmarks/scaling.py measures sequences up to 1024
# (benchmarks/RESULTS.md). A module's ``query_block = None`` turns blocks off.
QUERY_BLOCK = 128


def position_term(q_v: torch.Tensor, k_r: torch.Tensor) -> torch.Tensor:
    """(b)+(d) before the shift: (q_i + v) . W_{k,R} R_c for every table row c.

    q_v: [b, i, n, d] (already plus r_r_bias), k_r: [p, r, n, d] with p = 1, or 2 for bi_data
    (rows [0, b/2) of the batch use half 0, rows [b/2, b) half 1)  ->  [b, n, i, r]

    transformers projects the table once per batch row ([r, b, m] @ W_r); the table is the same for
    every row of a half, so we project it once per half and let one batched matmul share it.
    attention_naive projects and multiplies per batch row instead; tests check they agree.
    """
    q_halves = rearrange(q_v, "(p c) i n d -> p c i n d", p=k_r.shape[0])  # c: rows within a half
    bd = torch.einsum("pcind,prnd->pcnir", q_halves, k_r)
    return rearrange(bd, "p c n i r -> (p c) n i r")


class ProbsDropoutValues(torch.autograd.Function):
    r"""out = (softmax(S) * K) V for scores S [B, i, j], a bool keep mask K [B, i, j] and values V [B, j, d]
    (dropout's scale 1 / (1 - p) is left to the caller). What autograd would keep for the backward pass of
    these three operations is the probabilities P, the mask as a float and the dropped probabilities: 12
    bytes per score in float32. Here only P and the bool mask are kept, 5 bytes, and the backward pass
    computes, with O = (P * K) V the output and dO its gradient:

    .. math::
        dV = (P \circ K)^\top dO, \qquad dP = (dO\, V^\top) \circ K, \qquad
        dS = P \circ (dP - D), \quad D_i = \textstyle\sum_j dP_{ij} P_{ij} = dO_i \cdot O_i

    (softmax's backward; D is taken from the [i, d] output instead of the [i, j] product, as FlashAttention
    does). tests/test_fast_path.py checks it with torch.autograd.gradcheck.
    """

    @staticmethod
    def forward(ctx, score: torch.Tensor, keep: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        prob = torch.softmax(score, dim=-1)
        out = torch.bmm(prob * keep, v)
        ctx.save_for_backward(prob, keep, v, out)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        prob, keep, v, out = ctx.saved_tensors
        # Under CUDA autocast the forward's softmax ran in float32 and its matmul in bfloat16; the backward
        # runs without autocast, so the matmuls here take V's dtype and the softmax part P's explicitly.
        grad_out = grad_out.to(v.dtype)
        grad_v = torch.bmm((prob * keep).to(v.dtype).transpose(1, 2), grad_out)
        grad_prob = torch.bmm(grad_out, v.transpose(1, 2)).to(prob.dtype).mul_(keep)  # dP
        d = (grad_out * out).sum(-1, keepdim=True).to(prob.dtype)  # [B, i, 1]
        return grad_prob.sub_(d).mul_(prob), None, grad_v  # dS, (no gradient for the mask), dV


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
        self.query_block = QUERY_BLOCK  # fast path: query rows attended at a time (see above)

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
        trace: dict | None = None,
    ) -> dict[str, torch.Tensor]:
        """The three score terms, unscaled: ac, bd (after the shift) and ef, each [b, n, i, j].

        query_pos None: the queries are the qlen positions in order (content stream) and bd is moved
        into place with rel_shift. Otherwise query_pos [b, i] gives each query's position (query stream
        at its prediction targets) and bd is gathered at column j + qlen - pos directly, which is what
        rel_shift computes row by row. Keys the causal mask hides may fall past the table's end
        in 'uni'; they are clamped (their score is masked anyway).
        """
        klen = k_h.shape[1]
        ac = torch.einsum("bind,bjnd->bnij", q + r_w_bias, k_h)  # (a) + (c)
        bd = position_term(q + r_r_bias, k_r)  # (b) + (d), indexed by distance: [b, n, i, r]
        if trace is not None:
            trace["bd_raw"] = bd  # before the shift (validate.py compares it stage by stage)
        if query_pos is None:
            bd = rel_shift(bd, klen)
        else:
            j = torch.arange(klen, device=q.device)
            col = (j[None, None, :] + qlen - query_pos[:, :, None]).clamp(max=bd.shape[-1] - 1)  # [b, i, j]
            bd = bd.gather(3, col[:, None].expand(-1, bd.shape[1], -1, -1))
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
        trace: dict | None = None,
        **score_kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """softmax((ac + bd + ef) / sqrt(d), with masked scores set to -1e30) @ V
        ->  (attn_vec [b, i, n, d], prob [b, n, i, j])."""
        terms = self.scores(q, k_h, k_r, trace=trace, **score_kwargs)
        score = sum(terms.values()) * self.scale  # [b, n, i, j]
        if mask is not None:
            # set, not subtract: score - 65500 overflows to -inf in float16 (see the module docstring)
            score = score.masked_fill(mask[:, None].bool(), score.new_tensor(-mask_value(score.dtype)))
        prob = torch.softmax(score, dim=-1)
        if trace is not None:
            trace.update(terms, score=score, prob=prob)
        prob = self.dropout(prob)
        attn_vec = torch.einsum("bnij,bjnd->bind", prob, v_h)
        return attn_vec, prob

    def post_attention(self, x: torch.Tensor, attn_vec: torch.Tensor) -> torch.Tensor:
        """LayerNorm(x + dropout(attn_vec W_o)): residual from the stream's own input, post-LN."""
        attn_out = torch.einsum("bind,mnd->bim", attn_vec, self.o)
        return self.layer_norm(x + self.dropout(attn_out))

    # ------------------------------------------------------------------ the fast path (same numbers)
    def attend_fast(
        self,
        q: torch.Tensor,
        k_heads: torch.Tensor,
        v_heads: torch.Tensor,
        k_r: torch.Tensor,
        *,
        mask: torch.Tensor | None,
        seg_diff: torch.Tensor | None,
        query_pos: torch.Tensor | None,
        **terms,
    ) -> torch.Tensor:
        """:meth:`attend_block` over blocks of ``self.query_block`` query rows  ->  attn_vec [b, n, i, d].
        One block when the call has no more rows than that (the usual case).

        A block of content-stream rows [start, stop) needs the position table's rows c = j + qlen - i for
        its queries i, i.e. c in [qlen - stop, qlen - start + klen): its position term is computed on that
        window only, and :func:`rel_shift` of the window gives the block's scores, as for a segment of
        stop - start queries. (In "uni" the table ends at distance 0, and the window would run past it
        only for keys the causal mask hides: zero rows stand in there.) Blocks of query-stream rows keep
        their positions in query_pos. ``terms``: r_w_bias, r_r_bias, r_s_bias and qlen, passed on as they come.
        """
        b, i, n, d = q.shape
        klen, qlen = k_heads.shape[1], terms["qlen"]
        one_block = self.query_block is None or i <= self.query_block
        if one_block or torch.compiler.is_compiling():  # (a compiled graph plans its memory itself)
            return self.attend_block(q, k_heads, v_heads, k_r, mask=mask, seg_diff=seg_diff, query_pos=query_pos,
                                     **terms)
        if query_pos is None and k_r.shape[1] < klen + qlen:  # "uni": pad the table with rows the mask hides
            k_r = torch.cat([k_r, k_r.new_zeros(k_r.shape[0], klen + qlen - k_r.shape[1], n, d)], dim=1)
        blocks = []
        for start in range(0, i, self.query_block):
            stop = min(start + self.query_block, i)
            block = dict(mask=None if mask is None else mask[:, start:stop],
                         seg_diff=None if seg_diff is None else seg_diff[:, start:stop], **terms)
            if query_pos is None:  # content stream: the table rows this block's distances use
                block.update(query_pos=None, k_r=k_r[:, qlen - stop: qlen - start + klen])
            else:
                block.update(query_pos=query_pos[:, start:stop], k_r=k_r)
            blocks.append(self.attend_block(q[:, start:stop], k_heads, v_heads, **block))
        return torch.cat(blocks, dim=2)

    def attend_block(
        self,
        q: torch.Tensor,
        k_heads: torch.Tensor,
        v_heads: torch.Tensor,
        k_r: torch.Tensor,
        *,
        mask: torch.Tensor | None,
        r_w_bias: torch.Tensor,
        r_r_bias: torch.Tensor,
        r_s_bias: torch.Tensor | None,
        seg_diff: torch.Tensor | None,
        query_pos: torch.Tensor | None,
        qlen: int,
    ) -> torch.Tensor:
        r""":meth:`attend` with fewer passes over the [b, n, i, j] scores  ->  attn_vec [b, n, i, d].

        q [b, i, n, d]; k_heads and v_heads [(b n), j, d]: K and V with the heads first, laid out once
        per layer for both streams (two_stream.py), so that the batched matmuls read contiguous blocks.

        Same equation, rearranged (tests/test_fast_path.py checks outputs and gradients agree):

        * the scale :math:`1/\sqrt d` is applied to the [b, i, n, d] queries, not to the scores;
        * the segment term :math:`(q_i + b)^\top s_{ij}` takes two values per row, ef_same and ef_diff.
          Softmax ignores a constant added to a whole row, so ef_same is dropped and only
          [s_ij differs] * (ef_diff - ef_same) is added (one fused addcmul onto the shifted bd);
        * the mask comes additive (masks.additive_mask: 0 or -1e30) and is added to that bias before (a)+(c):
          -1e30 + score is exactly -1e30 in float32 and bfloat16, because |score| is far below 1e30's
          rounding step. In float16, -65500 + score can round to -inf, so there the masked scores are set
          to -65500 afterwards, as :meth:`attend` sets them (a fully masked row stays finite and uniform);
        * (a)+(c) is one batched matmul that adds onto that bias (``baddbmm``): no separate sum;
        * dropout's 1 / (1 - p) is applied to the [b, n, i, d] output instead of the [b, n, i, j] probabilities,
          and in training softmax, dropout and the sum over values are one :class:`ProbsDropoutValues`.
        """
        b, i, n, d = q.shape
        klen = k_heads.shape[1]
        q = q * self.scale  # [b, i, n, d]
        # No name keeps a [b, n, i, j]-sized tensor alive after its last use (del below): a block needs memory
        # for two or three of them at a time, not for all.
        bd = position_term(q + r_r_bias * self.scale, k_r)  # [b, n, i, r], already scaled
        if query_pos is None:
            bias = rel_shift(bd, klen)  # a strided view
        else:
            j = torch.arange(klen, device=q.device)
            col = (j[None, None, :] + qlen - query_pos[:, :, None]).clamp(max=bd.shape[-1] - 1)  # [b, i, j]
            bias = bd.gather(3, col[:, None].expand(-1, n, -1, -1))
        del bd  # freed as soon as bias is a tensor of its own
        if seg_diff is not None:
            ef = torch.einsum("bind,snd->bnis", q + r_s_bias * self.scale, self.seg_embed)  # [b, n, i, 2]
            ef_diff = (ef[..., 1:2] - ef[..., 0:1]).contiguous()  # [b, n, i, 1]; einsum may return it heads-major,
            bias = torch.addcmul(bias, seg_diff[:, None].to(q.dtype), ef_diff)  # and the sum would follow that layout
        if mask is not None:  # additive: 0 where visible, -1e30 where hidden
            bias = bias + mask[:, None]
        q_u = rearrange(q + r_w_bias * self.scale, "b i n d -> (b n) i d")
        score = torch.baddbmm(bias.reshape(b * n, i, klen), q_u, k_heads.transpose(1, 2))  # (ac + bd + ef) / sqrt(d)
        del bias
        score = score.view(b, n, i, klen)
        if mask is not None and score.dtype == torch.float16:  # -65500 + score may have rounded to -inf: set
            score = score.masked_fill(mask[:, None] < 0, -mask_value(score.dtype))
        keep = keep_mask(score, self.dropout.p, self.training, dtype=torch.bool)  # dropout; its scale goes on the output
        if keep is None:
            vec = torch.bmm(torch.softmax(score, dim=-1).view(b * n, i, klen), v_heads)
        elif torch.compiler.is_compiling():  # the same numbers in autograd's operations, which dynamo traces
            vec = torch.bmm((torch.softmax(score, dim=-1) * keep).view(b * n, i, klen), v_heads)
        else:
            vec = ProbsDropoutValues.apply(score.view(b * n, i, klen), keep.view(b * n, i, klen), v_heads)
        vec = vec.view(b, n, i, d)
        return vec if keep is None else vec * keep_scale(self.dropout.p)  # [b, n, i, d]

    def post_attention_fast(self, x: torch.Tensor, attn_vec: torch.Tensor) -> torch.Tensor:
        """:meth:`post_attention` for attn_vec [b, n, i, d]: one matmul with W_o seen as [(n d), m]."""
        out = torch.matmul(rearrange(attn_vec, "b n i d -> b i (n d)"), rearrange(self.o, "m n d -> (n d) m"))
        return self.layer_norm(residual_dropout(x, out, self.dropout.p, self.training))


def attention_naive(
    attn: RelativeAttention,
    x: torch.Tensor,
    cat: torch.Tensor,
    pos_emb: torch.Tensor,
    *,
    r_w_bias,
    r_r_bias,
    r_s_bias,
    seg_diff,
    mask,
    query_pos,
    qlen: int,
) -> torch.Tensor:
    """The slow twin of one attention block, one (batch row, head, query, key) at a time.

    x: [b, i, m] the stream's input at positions query_pos[b, i] (content stream: 0..qlen-1),
    cat: [b, j, m] = [mem; h], pos_emb: [p, r, m] table (row c holds distance klen - c).
    The distance from query position pos to key j is mlen + pos - j; its row in the table is
    c = klen - (mlen + pos - j) = j + qlen - pos. Returns LayerNorm(x + attn_out) [b, i, m].
    Dropout is not applied (use it with dropout 0 or in eval mode).
    """
    b, i_len, _ = x.shape
    klen = cat.shape[1]
    p = pos_emb.shape[0]
    out_vec = x.new_zeros(b, i_len, attn.n_head, attn.d_head)
    for bb in range(b):
        table = pos_emb[bb // (b // p)]  # forward or backward half
        for n in range(attn.n_head):
            for i in range(i_len):
                pos = int(query_pos[bb, i])
                q = x[bb, i] @ attn.q[:, n]  # [d]
                scores = []
                for j in range(klen):
                    k = cat[bb, j] @ attn.k[:, n]
                    c = min(j + qlen - pos, table.shape[0] - 1)
                    k_r = table[c] @ attn.r[:, n]
                    s = (q + r_w_bias[n]) @ k + (q + r_r_bias[n]) @ k_r
                    if seg_diff is not None:
                        s = s + (q + r_s_bias[n]) @ attn.seg_embed[int(seg_diff[bb, i, j]), n]
                    s = s * attn.scale
                    if mask is not None and bool(mask[bb if mask.shape[0] > 1 else 0, i, j]):
                        s = s.new_tensor(-mask_value(s.dtype))
                    scores.append(s)
                prob = torch.softmax(torch.stack(scores), dim=0)
                v = cat[bb] @ attn.v[:, n]  # [j, d]
                out_vec[bb, i, n] = prob @ v
    attn_out = torch.einsum("bind,mnd->bim", out_vec, attn.o)
    return attn.layer_norm(x + attn_out)
