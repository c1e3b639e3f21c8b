r"""Two-stream attention on the fast path: :func:`xlnet_ref.two_stream.two_stream_attention`'s numbers."""

from __future__ import annotations

import torch
from einops import rearrange

from ..attention import RelativeAttention
from ..two_stream import rows_at
from .attention import QUERY_BLOCK, attend, post_attention


def two_stream_attention(
    attn: RelativeAttention,
    h: torch.Tensor,
    g: torch.Tensor | None,
    mem: torch.Tensor | None,
    k_r: torch.Tensor,
    *,
    r_w_bias: torch.Tensor,
    r_r_bias: torch.Tensor,
    r_s_bias: torch.Tensor,
    seg_diff: torch.Tensor | None,
    attn_mask: torch.Tensor | None,
    non_tgt_mask: torch.Tensor | None,
    target_pos: torch.Tensor | None,
    target_valid: torch.Tensor | None,
    skip_content: bool = False,
    query_block: int | None = QUERY_BLOCK,
):
    """:func:`xlnet_ref.two_stream.two_stream_attention` on the fast path: the same numbers, K and V
    projected by one matmul, attention by :func:`attend` (blocks of ``query_block`` query rows). No
    probabilities are kept. skip_content: the content stream's own attention is not computed (h_out
    None); its keys and values still are, for the query stream.
    ->  (h_out [b, i, m] or None, g_out [b, k, m] or None)
    """
    qlen = h.shape[1]
    n = attn.n_head
    cat = h if mem is None else torch.cat([mem, h], dim=1)  # [b, j, m]
    w_kv = rearrange(torch.cat([attn.k, attn.v], dim=1), "m n2 d -> m (n2 d)")  # [W_{k,E} | W_v]
    # K and V with the heads first, [(b n), j, d] each, shared by both streams: one layout copy for the two
    k_heads, v_heads = rearrange(cat @ w_kv, "b j (two n d) -> two (b n) j d", two=2, n=n).unbind(0)
    w_q = rearrange(attn.q, "m n d -> m (n d)")
    biases = dict(r_w_bias=r_w_bias, r_r_bias=r_r_bias, r_s_bias=r_s_bias, qlen=qlen, query_block=query_block)

    h_out = None
    if not skip_content:
        q_h = rearrange(h @ w_q, "b i (n d) -> b i n d", n=n)
        vec_h = attend(attn, q_h, k_heads, v_heads, k_r, mask=non_tgt_mask, seg_diff=seg_diff, query_pos=None, **biases)
        h_out = post_attention(attn, h, vec_h)

    g_out = None
    if g is not None:
        q_g = rearrange(g @ w_q, "b k (n d) -> b k n d", n=n)
        vec_g = attend(
            attn,
            q_g,
            k_heads,
            v_heads,
            k_r,
            mask=rows_at(attn_mask, target_pos),
            seg_diff=rows_at(seg_diff, target_pos),
            query_pos=target_pos,
            **biases,
        )
        vec_g = vec_g * target_valid[:, None, :, None].to(vec_g.dtype)  # [b, n, k, d]: padding targets get none
        g_out = post_attention(attn, g, vec_g)
    return h_out, g_out
