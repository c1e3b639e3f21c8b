r"""The slow twins: each vectorised step of the model written out with Python loops, as the equation
reads, for reading and for the tests that hold the fast original against it (tests/test_naive_twins.py,
tests/test_properties.py, tests/test_relative_position.py, tests/test_permutation.py).

- :func:`rel_shift_naive`: :func:`xlnet_ref.relative_position.rel_shift`, from the closed form;
- :func:`segment_term_naive`: :func:`xlnet_ref.segments.segment_term`, one dot product per (b, n, i, j);
- :func:`attention_naive`: one attention block of :class:`xlnet_ref.attention.RelativeAttention`, one
  (batch row, head, query, key) at a time;
- :func:`query_stream_scatter`: the query stream of :func:`xlnet_ref.two_stream.two_stream_attention`,
  transformers' way (scatter the targets' queries to every position, attend, gather);
- :func:`permutation_masks_naive`: :func:`xlnet_ref.permutation.permutation_masks`, walking the order.

Nothing on the model's forward path imports this module.
"""

from __future__ import annotations

import torch

from .attention import RelativeAttention
from .masks import mask_value
from .permutation import _check_flags, _check_order


def rel_shift_naive(bd: torch.Tensor, klen: int) -> torch.Tensor:
    """The slow twin of :func:`rel_shift`, written from the closed form with explicit indices.

    For query i and key j the distance is (mlen + i) - j; in the table (distances klen, klen-1, ...)
    that distance sits at column klen - (mlen + i - j) = j + qlen - i. When that column lies past the
    end of the row (only in 'uni', where rlen = klen + 1, and only for keys j > mlen + i that the causal
    mask hides anyway) the reshape trick reads on into the next row, column j + qlen - i - rlen; we do
    the same so that the two agree everywhere, masked entries included.
    """
    *lead, qlen, rlen = bd.shape
    out = bd.new_empty(*lead, qlen, klen)
    for i in range(qlen):
        for j in range(klen):
            c = j + qlen - i
            out[..., i, j] = bd[..., i, c] if c < rlen else bd[..., i + 1, c - rlen]
    return out


def segment_term_naive(q, r_s_bias, seg_embed, seg_diff):
    """The slow twin of :func:`segment_term`: one dot product per (b, n, i, j)."""
    b, i_len, n_head, _ = q.shape
    j_len = seg_diff.shape[-1]
    out = q.new_empty(b, n_head, i_len, j_len)
    for bb in range(b):
        for n in range(n_head):
            for i in range(i_len):
                for j in range(j_len):
                    s = int(seg_diff[bb, i, j])
                    out[bb, n, i, j] = torch.dot(q[bb, i, n] + r_s_bias[n], seg_embed[s, n])
    return out


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


def query_stream_scatter(
    attn: RelativeAttention,
    g: torch.Tensor,
    h: torch.Tensor,
    mem: torch.Tensor | None,
    k_r: torch.Tensor,
    target_mapping: torch.Tensor,
    *,
    r_w_bias,
    r_r_bias,
    r_s_bias,
    seg_diff,
    attn_mask,
) -> torch.Tensor:
    """The slow twin of the query stream, transformers' way: scatter, attend at all qlen positions, gather.

    q at position l = sum_k target_mapping[b, k, l] q_k; attend every position with attn_mask and
    rel_shift; then g's attention output = sum_l target_mapping[b, k, l] attn_vec_l. A position no
    target maps to attends with a zero query (wasted work); an all-zero row of target_mapping gathers 0.
    """
    qlen = h.shape[1]
    cat = h if mem is None else torch.cat([mem, h], dim=1)
    k_h, v_h = attn.project(cat, attn.k), attn.project(cat, attn.v)
    q_g = attn.project(g, attn.q)  # [b, k, n, d]
    q_scattered = torch.einsum("bknd,bkl->blnd", q_g, target_mapping)  # [b, i, n, d]
    vec, _ = attn.attend(
        q_scattered,
        k_h,
        v_h,
        k_r,
        mask=attn_mask,
        seg_diff=seg_diff,
        query_pos=None,
        r_w_bias=r_w_bias,
        r_r_bias=r_r_bias,
        r_s_bias=r_s_bias,
        qlen=qlen,
    )
    vec_g = torch.einsum("blnd,bkl->bknd", vec, target_mapping)
    return attn.post_attention(g, vec_g)


def permutation_masks_naive(
    order: torch.Tensor,
    is_target: torch.Tensor,
    *,
    is_functional: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Slow twin of :func:`permutation_masks`: ``(perm_mask, content_mask)`` by walking the order.

    Step by step: first the context :math:`C` (non-target, non-functional positions) that every
    position sees; then, for :math:`t = 1, \dots, T`, the query stream at :math:`z_t` sees
    :math:`C` plus the non-context positions met so far (:math:`z_{<t}`), and the content stream
    sees those plus :math:`z_t` (:math:`z_{\le t}`). Python loops; for tests and for reading.
    """
    _check_order(order)
    seq_len = order.shape[0]
    if is_functional is None:
        is_functional = torch.zeros(seq_len, dtype=torch.bool, device=order.device)
    _check_flags("is_target", is_target, seq_len)
    _check_flags("is_functional", is_functional, seq_len)
    targets = set(torch.nonzero(is_target).flatten().tolist())
    functional = set(torch.nonzero(is_functional).flatten().tolist())
    context = set(range(seq_len)) - targets - functional

    perm_mask = torch.ones(seq_len, seq_len, device=order.device)  # [i, j] start from "sees nothing"
    content_mask = torch.ones(seq_len, seq_len, device=order.device)  # [i, j]
    seen_so_far: list[int] = []  # non-context positions z_{<t}
    for z_t in order.tolist():
        if z_t in context:
            visible_q = visible_h = context
        else:
            visible_q = context | set(seen_so_far) | ({z_t} if z_t in functional else set())
            visible_h = context | set(seen_so_far) | {z_t}
            seen_so_far.append(z_t)
        for j in visible_q:
            perm_mask[z_t, j] = 0
        for j in visible_h:
            content_mask[z_t, j] = 0
    return perm_mask, content_mask
