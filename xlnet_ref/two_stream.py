r"""Two-stream self-attention (XLNet, Yang et al. 2019, Sec. 2.3, Eq. 4 and the update rules).

A standard softmax over h_{z<t} cannot tell *which* position it should predict: the target's
position z_t must enter the representation, but its content x_{z_t} must not. XLNet keeps two
streams per position:

.. math::
    g^{(m)}_{z_t} \leftarrow \mathrm{Attention}(Q = g^{(m-1)}_{z_t},\ KV = h^{(m-1)}_{z_{<t}};\ \theta)
    \quad \text{(query stream: uses } z_t \text{ but not } x_{z_t})

    h^{(m)}_{z_t} \leftarrow \mathrm{Attention}(Q = h^{(m-1)}_{z_t},\ KV = h^{(m-1)}_{z_{\le t}};\ \theta)
    \quad \text{(content stream: uses } x_{z_t})

Both streams share every weight: W_q, the keys and values (computed once, from [mem; h]), W_o, the
LayerNorm and the feed-forward. g starts from the learned ``mask_emb`` w; h from the word embeddings.
Keys/values always come from the content stream, so the query stream never reads another query.

transformers computes the query stream at *every* position (scattering the k target queries into a
[qlen] grid with target_mapping, attending, then gathering back). Here each target's query attends
from its own position directly (``query_pos``): the same numbers, k rows instead of qlen.
:func:`xlnet_ref.naive.query_stream_scatter` is transformers' way, kept as the slow twin that tests
compare against.
"""

from __future__ import annotations

import torch

from .attention import RelativeAttention


def target_positions(target_mapping: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """target_mapping [b, k, j] one-hot rows  ->  (position [b, k] long, valid [b, k] bool).

    An all-zero row is a padding target: valid False (its position is reported as 0 and unused).
    """
    one_hot = (target_mapping != 0).to(torch.uint8)  # float, int or bool input alike
    return one_hot.argmax(-1), one_hot.sum(-1) > 0


def rows_at(t: torch.Tensor | None, pos: torch.Tensor) -> torch.Tensor | None:
    """Pick rows t[b, pos[b, k], :] of a [b or 1, i, j] tensor  ->  [b, k, j]."""
    if t is None:
        return None
    t = t.expand(pos.shape[0], -1, -1)
    return t.gather(1, pos[:, :, None].expand(-1, -1, t.shape[-1]))


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
):
    """One attention block for the content stream h [b, i, m] and, if given, the query stream g [b, k, m].

    mem: [b, mlen, m] or None; k_r: [p, r, n, d] the projected positional table.
    Returns (h_out [b, i, m], g_out [b, k, m] or None, prob_h [b, n, i, j], prob_g [b, n, k, j] or None).
    """
    qlen = h.shape[1]
    cat = h if mem is None else torch.cat([mem, h], dim=1)  # [b, j, m]: keys over [mem; h]
    k_h = attn.project(cat, attn.k)  # shared by both streams
    v_h = attn.project(cat, attn.v)
    biases = dict(r_w_bias=r_w_bias, r_r_bias=r_r_bias, r_s_bias=r_s_bias, qlen=qlen)

    # content stream: h_i sees keys z_{<=t}, itself included (non_tgt_mask)
    q_h = attn.project(h, attn.q)
    vec_h, prob_h = attn.attend(q_h, k_h, v_h, k_r, mask=non_tgt_mask, seg_diff=seg_diff, query_pos=None, **biases)
    h_out = attn.post_attention(h, vec_h)

    g_out = prob_g = None
    if g is not None:
        # query stream: the k-th query sits at target_pos[b, k] and sees z_{<t} only (attn_mask)
        q_g = attn.project(g, attn.q)
        vec_g, prob_g = attn.attend(
            q_g,
            k_h,
            v_h,
            k_r,
            mask=rows_at(attn_mask, target_pos),
            seg_diff=rows_at(seg_diff, target_pos),
            query_pos=target_pos,
            **biases,
        )
        vec_g = vec_g * target_valid[:, :, None, None].to(vec_g.dtype)  # padding targets get no attention
        g_out = attn.post_attention(g, vec_g)
    return h_out, g_out, prob_h, prob_g
