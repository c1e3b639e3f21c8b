r"""Relative attention on the fast path: :meth:`xlnet_ref.attention.RelativeAttention.attend` and
``post_attention``, the same equation with fewer passes over the [b, n, i, j] scores.

Each function takes the readable module (its weights: W_q ... W_o, the segment embeddings, dropout and
LayerNorm) as its first argument; tests/test_fast_path.py checks outputs, memories, losses and
gradients against the readable path for every parity configuration.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch.autograd.function import once_differentiable

from ..attention import RelativeAttention, position_term
from ..masks import mask_value
from ..relative_position import rel_shift
from .dropout import keep_mask, keep_scale, residual_dropout

# The fast path attends QUERY_BLOCK query rows at a time when a call has more (the query chunking of Rabe &
# Staats, 2021, "Self-attention does not need O(n^2) memory"), so that the temporaries of the score
# computation (the position term, the bias, the scores) exist for one block at a time; what a block keeps
# for the backward pass is 5 bytes per score (ProbsDropoutValues). The presets (seq_len 32 to 128) and the
# training-step benchmark (128 rows) are one block; benchmarks/scaling.py measures sequences up to 1024
# (benchmarks/RESULTS.md). ``XLNetModel.query_block = None`` (xlnet_ref.fast) turns blocks off.
QUERY_BLOCK = 128


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


def attend(
    attn: RelativeAttention,
    q: torch.Tensor,
    k_heads: torch.Tensor,
    v_heads: torch.Tensor,
    k_r: torch.Tensor,
    *,
    mask: torch.Tensor | None,
    seg_diff: torch.Tensor | None,
    query_pos: torch.Tensor | None,
    query_block: int | None = QUERY_BLOCK,
    **terms,
) -> torch.Tensor:
    """:meth:`RelativeAttention.attend`'s numbers by :func:`attend_block` over blocks of ``query_block``
    query rows  ->  attn_vec [b, n, i, d]. One block when the call has no more rows than that (the usual
    case), or when ``query_block`` is None.

    A block of content-stream rows [start, stop) needs the position table's rows c = j + qlen - i for
    its queries i, i.e. c in [qlen - stop, qlen - start + klen): its position term is computed on that
    window only, and :func:`rel_shift` of the window gives the block's scores, as for a segment of
    stop - start queries. (In "uni" the table ends at distance 0, and the window would run past it
    only for keys the causal mask hides: zero rows stand in there.) Blocks of query-stream rows keep
    their positions in query_pos. ``terms``: r_w_bias, r_r_bias, r_s_bias and qlen, passed on as they come.
    """
    b, i, n, d = q.shape
    klen, qlen = k_heads.shape[1], terms["qlen"]
    one_block = query_block is None or i <= query_block
    if one_block or torch.compiler.is_compiling():  # (a compiled graph plans its memory itself)
        return attend_block(attn, q, k_heads, v_heads, k_r, mask=mask, seg_diff=seg_diff, query_pos=query_pos, **terms)
    if query_pos is None and k_r.shape[1] < klen + qlen:  # "uni": pad the table with rows the mask hides
        k_r = torch.cat([k_r, k_r.new_zeros(k_r.shape[0], klen + qlen - k_r.shape[1], n, d)], dim=1)
    blocks = []
    for start in range(0, i, query_block):
        stop = min(start + query_block, i)
        block = dict(
            mask=None if mask is None else mask[:, start:stop],
            seg_diff=None if seg_diff is None else seg_diff[:, start:stop],
            **terms,
        )
        if query_pos is None:  # content stream: the table rows this block's distances use
            block.update(query_pos=None, k_r=k_r[:, qlen - stop : qlen - start + klen])
        else:
            block.update(query_pos=query_pos[:, start:stop], k_r=k_r)
        blocks.append(attend_block(attn, q[:, start:stop], k_heads, v_heads, **block))
    return torch.cat(blocks, dim=2)


def attend_block(
    attn: RelativeAttention,
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
    r""":meth:`RelativeAttention.attend` with fewer passes over the [b, n, i, j] scores  ->  attn_vec [b, n, i, d].

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
      to -65500 afterwards, as :meth:`RelativeAttention.attend` sets them (a fully masked row stays finite and uniform);
    * (a)+(c) is one batched matmul that adds onto that bias (``baddbmm``): no separate sum;
    * dropout's 1 / (1 - p) is applied to the [b, n, i, d] output instead of the [b, n, i, j] probabilities,
      and in training softmax, dropout and the sum over values are one :class:`ProbsDropoutValues`.
    """
    b, i, n, d = q.shape
    klen = k_heads.shape[1]
    q = q * attn.scale  # [b, i, n, d]
    # No name keeps a [b, n, i, j]-sized tensor alive after its last use (del below): a block needs memory
    # for two or three of them at a time, not for all.
    bd = position_term(q + r_r_bias * attn.scale, k_r)  # [b, n, i, r], already scaled
    if query_pos is None:
        bias = rel_shift(bd, klen)  # a strided view
    else:
        j = torch.arange(klen, device=q.device)
        col = (j[None, None, :] + qlen - query_pos[:, :, None]).clamp(max=bd.shape[-1] - 1)  # [b, i, j]
        bias = bd.gather(3, col[:, None].expand(-1, n, -1, -1))
    del bd  # freed as soon as bias is a tensor of its own
    if seg_diff is not None:
        ef = torch.einsum("bind,snd->bnis", q + r_s_bias * attn.scale, attn.seg_embed)  # [b, n, i, 2]
        ef_diff = (ef[..., 1:2] - ef[..., 0:1]).contiguous()  # [b, n, i, 1]; einsum may return it heads-major,
        bias = torch.addcmul(bias, seg_diff[:, None].to(q.dtype), ef_diff)  # and the sum would follow that layout
    if mask is not None:  # additive: 0 where visible, -1e30 where hidden
        bias = bias + mask[:, None]
    q_u = rearrange(q + r_w_bias * attn.scale, "b i n d -> (b n) i d")
    score = torch.baddbmm(bias.reshape(b * n, i, klen), q_u, k_heads.transpose(1, 2))  # (ac + bd + ef) / sqrt(d)
    del bias
    score = score.view(b, n, i, klen)
    if mask is not None and score.dtype == torch.float16:  # -65500 + score may have rounded to -inf: set
        score = score.masked_fill(mask[:, None] < 0, -mask_value(score.dtype))
    keep = keep_mask(score, attn.dropout.p, attn.training, dtype=torch.bool)  # dropout; its scale goes on the output
    if keep is None:
        vec = torch.bmm(torch.softmax(score, dim=-1).view(b * n, i, klen), v_heads)
    elif torch.compiler.is_compiling():  # the same numbers in autograd's operations, which dynamo traces
        vec = torch.bmm((torch.softmax(score, dim=-1) * keep).view(b * n, i, klen), v_heads)
    else:
        vec = ProbsDropoutValues.apply(score.view(b * n, i, klen), keep.view(b * n, i, klen), v_heads)
    vec = vec.view(b, n, i, d)
    return vec if keep is None else vec * keep_scale(attn.dropout.p)  # [b, n, i, d]


def post_attention(attn: RelativeAttention, x: torch.Tensor, attn_vec: torch.Tensor) -> torch.Tensor:
    """:meth:`RelativeAttention.post_attention` for attn_vec [b, n, i, d]: one matmul with W_o seen as
    [(n d), m], dropout fused with the residual."""
    out = torch.matmul(rearrange(attn_vec, "b n i d -> b i (n d)"), rearrange(attn.o, "m n d -> (n d) m"))
    return attn.layer_norm(residual_dropout(x, out, attn.dropout.p, attn.training))
