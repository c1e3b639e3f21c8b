"""Prepared wrong answers, at least one per lab: the mistakes students really make.

tests/labs/check_labs.py puts each one into an otherwise correct submission (every other answer cell
from the instructor's version), autogrades it, and checks that exactly the points of ``loses`` are
lost and that that cell's feedback contains ``hint``. Wrong answers to different cells of a lab share
one submission (a kernel start per submission is what costs), so a wrong answer must not call the
function of another answer cell, unless ``loses`` also names the parts that depend on it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WrongAnswer:
    lab: str  # folder under notebooks/labs/source
    cell: str  # grade_id of the answer cell replaced
    source: str  # what the student wrote in it
    loses: str | tuple[str, ...]  # grade_id(s) of the test cell(s) that must give 0 points (a later part
    # that calls this function loses its points too)
    hint: str  # a piece of the hint the feedback of the first of them must show

    @property
    def tests(self) -> tuple[str, ...]:
        return (self.loses,) if isinstance(self.loses, str) else self.loses


WRONG_ANSWERS = [
    # --- 01_rel_shift
    WrongAnswer(
        "01_rel_shift",
        "sinusoid_table",
        """\
def sinusoid_table(pos_seq, d_model):
    omega = 1 / torch.pow(10000, torch.arange(0, d_model, 2).float() / d_model)
    angle = pos_seq[:, None] * omega[None, :]
    return torch.stack([torch.sin(angle), torch.cos(angle)], dim=-1).reshape(len(pos_seq), d_model)
""",
        "test_sinusoid_table",
        "you interleaved sin and cos",
    ),
    WrongAnswer(
        "01_rel_shift",
        "rel_shift_by_index",
        """\
def rel_shift_by_index(bd, klen):
    qlen, rlen = bd.shape
    out = torch.empty(qlen, klen)
    for i in range(qlen):
        for j in range(klen):
            out[i, j] = bd[i, j + i + 1]
    return out
""",
        "test_rel_shift_by_index",
        "your shift moves rows the wrong way",
    ),
    WrongAnswer(
        "01_rel_shift",
        "rel_shift_by_reshape",
        """\
def rel_shift_by_reshape(bd, klen):
    *lead, qlen, rlen = bd.shape
    x = bd.reshape(*lead, rlen, qlen)[..., :-1, :]
    return x.reshape(*lead, qlen, rlen - 1)[..., :klen]
""",
        "test_rel_shift_by_reshape",
        "you dropped the last row",
    ),
    WrongAnswer(
        "01_rel_shift",
        "needed_distances",
        """\
def needed_distances(qlen, mlen):
    return relative_position.relative_positions(qlen, qlen + mlen, attn_type="bi").long().tolist()
""",
        "test_needed_distances",
        "that is every row of the table",
    ),
    # --- 02_attention_score
    WrongAnswer(
        "02_attention_score",
        "terms_a_c",
        """\
def terms_a_c(x, mem, seg, W_q, W_kE, W_kR, u, v, b, s_same, s_diff):
    q = x @ W_q
    k = torch.cat([mem, x]) @ W_kE
    return q @ k.T, (v @ k.T).expand(x.shape[0], -1)
""",
        "test_terms_a_c",
        "(c) uses u (r_w_bias)",
    ),
    WrongAnswer(
        "02_attention_score",
        "terms_b_d",
        """\
def terms_b_d(x, mem, seg, W_q, W_kE, W_kR, u, v, b, s_same, s_diff):
    qlen, m = x.shape
    i = torch.arange(qlen)[:, None]
    j = torch.arange(qlen + mem.shape[0])[None, :]
    k_r = R(i - j, m) @ W_kR
    return torch.einsum("id,ijd->ij", x @ W_q, k_r), torch.einsum("d,ijd->ij", v, k_r)
""",
        "test_terms_b_d",
        "query i sits at absolute position mlen + i",
    ),
    WrongAnswer(
        "02_attention_score",
        "segment_term",
        """\
def segment_term(x, mem, seg, W_q, W_kE, W_kR, u, v, b, s_same, s_diff):
    key_seg = torch.cat([torch.zeros(mem.shape[0], dtype=seg.dtype), seg])
    s = torch.where((key_seg != 0)[None, :, None], s_diff, s_same).expand(len(seg), -1, -1)
    return torch.einsum("id,ijd->ij", x @ W_q + b, s)
""",
        "test_segment_term",
        "BERT's absolute segment embedding",
    ),
    WrongAnswer(
        "02_attention_score",
        "attention_probabilities",
        """\
def attention_probabilities(x, mem, seg, W_q, W_kE, W_kR, u, v, b, s_same, s_diff):
    qlen, mlen, m = x.shape[0], mem.shape[0], x.shape[1]
    q, k = x @ W_q, torch.cat([mem, x]) @ W_kE
    i, j = torch.arange(qlen)[:, None], torch.arange(qlen + mlen)[None, :]
    k_r = R(mlen + i - j, m) @ W_kR
    key_seg = torch.cat([torch.zeros(mlen, dtype=seg.dtype), seg])
    s = torch.where((seg[:, None] != key_seg[None, :])[..., None], s_diff, s_same)
    score = (q + u) @ k.T + torch.einsum("id,ijd->ij", q + v, k_r) + torch.einsum("id,ijd->ij", q + b, s)
    return torch.softmax(score, dim=-1)
""",
        "test_attention_probabilities",
        "divided by sqrt(d_head)",
    ),
    # --- 03_memory
    WrongAnswer(
        "03_memory",
        "cache_memory",
        """\
def cache_memory(h, prev_mem, mem_len, reuse_len):
    if reuse_len is not None:
        h = h[:, :reuse_len]
    new_mem = h if prev_mem is None else torch.cat([prev_mem, h], dim=1)
    return new_mem[:, -mem_len:]
""",
        "test_cache_memory",
        "the stop-gradient SG(.) is missing",
    ),
    WrongAnswer(
        "03_memory",
        "run_stream",
        """\
def run_stream(model, ids, qlen):
    with torch.no_grad():
        return torch.cat([model(ids[:, s:s + qlen]).content for s in range(0, ids.shape[1], qlen)], dim=1)
""",
        ("test_run_stream", "test_reach"),
        "every segment ran on its own",
    ),
    WrongAnswer(
        "03_memory",
        "reach_formula",
        """\
def reach_formula(n_layer, mem_len, qlen):
    return n_layer * mem_len
""",
        "test_reach_formula",
        "n_layer * mem_len holds only when mem_len = qlen",
    ),
    # --- 04_permutation_masks
    WrongAnswer(
        "04_permutation_masks",
        "query_mask",
        """\
def query_mask(order, cut):
    T = len(order)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(T)
    context = torch.zeros(T, dtype=torch.bool)
    context[order[:cut]] = True
    rank = torch.where(context, torch.full_like(rank, -1), rank)
    sees = context[None, :] | (rank[None, :] <= rank[:, None])
    return ~sees
""",
        "test_query_mask",
        "the query stream must not see its own token",
    ),
    WrongAnswer(
        "04_permutation_masks",
        "content_mask",
        """\
def content_mask(order, cut):
    T = len(order)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(T)
    context = torch.zeros(T, dtype=torch.bool)
    context[order[:cut]] = True
    rank = torch.where(context, torch.full_like(rank, -1), rank)
    return ~(context[None, :] | (rank[None, :] < rank[:, None]) | (torch.eye(T, dtype=torch.bool) & context[:, None]))
""",
        "test_content_mask",
        "you masked the content stream's own token",
    ),
    WrongAnswer(
        "04_permutation_masks",
        "target_mapping",
        """\
def target_mapping(order, cut, num_predict):
    out = torch.zeros(num_predict, len(order))
    out[torch.arange(len(order) - cut), order[cut:]] = 1
    return out
""",
        "test_target_mapping",
        "rows follow the targets' positions in the sentence",
    ),
    # --- 05_two_stream
    WrongAnswer(
        "05_two_stream",
        "query_stream_update",
        """\
def query_stream_update(attn, h, g, k_r, u, v, perm_mask, target_pos):
    k_h, v_h = attn.project(h, attn.k), attn.project(h, attn.v)
    q = attn.project(g, attn.q)
    terms = attn.scores(q, k_h, k_r, r_w_bias=u, r_r_bias=v, r_s_bias=None, seg_diff=None,
                        query_pos=target_pos, qlen=h.shape[1])
    score = (terms["ac"] + terms["bd"]) * attn.scale
    content_mask = perm_mask[0] & ~torch.eye(h.shape[1], dtype=torch.bool)
    score = score - 1e30 * content_mask[target_pos[0]][None, None].float()
    prob = torch.softmax(score, dim=-1)
    return attn.post_attention(g, torch.einsum("bnkj,bjnd->bknd", prob, v_h))
""",
        "test_query_stream_update",
        "the query stream saw its own token",
    ),
    WrongAnswer(
        "05_two_stream",
        "target_aware_logits",
        """\
def target_aware_logits(lm, ids, context, target):
    T = ids.shape[1]
    perm_mask = torch.ones(1, T, T)
    perm_mask[:, :, context] = 0
    with torch.no_grad():
        return lm(ids, perm_mask=perm_mask).logits[0, target]
""",
        "test_target_aware_logits",
        "those are the content stream's logits at the target",
    ),
    # --- 06_find_the_bug
    WrongAnswer(
        "06_find_the_bug",
        "answers",
        """\
answers = {}
answers["a"] = ("one_stream", "layer0.content_ff_out", "feed_forward")
answers["b"] = ("segments_padding", "seg_diff", "segments")
answers["c"] = ("one_stream", "layer0.content.score", "rel_shift")
answers["d"] = ("memory", "layer0.new_mem_grad", "memory")
answers["e"] = ("segments_padding", "non_tgt_mask", "masks")
""",
        "test_suspect_c",
        "is not the first failing stage",
    ),
]
