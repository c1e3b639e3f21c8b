r"""The checks behind the labs' autograded cells (notebooks/labs/source), one function per graded part.

Each ``check_*`` builds its own cases, computes the expected answer with the library (and, where
there is one, its slow naive twin), runs the student's function, and on a wrong answer raises
:class:`xlnet_ref.labs.feedback.LabCheckFailed` with the case, expected vs got and — when the answer
equals a known wrong one (a mutant of :mod:`xlnet_ref.validation.mutants` or a classic slip) — a hint
naming the mistake. On success it prints one line and returns None.

The expected values never come from the student's notebook: a student cannot pass by editing a
fixture cell.
"""

from __future__ import annotations

import itertools

import torch

from .. import attention, memory, permutation, relative_position, segments
from .. import model as model_module
from ..config import XLNetConfig
from ..model import XLNetLMHeadModel, XLNetModel
from ..naive import permutation_masks_naive, query_stream_scatter, rel_shift_naive
from ..two_stream import two_stream_attention
from ..validation.mutants import MUTANTS
from .feedback import LabCheckFailed, call, compare, compare_value


def _passed(name: str, n_cases: int) -> None:
    print(f"{name}: correct on all {n_cases} cases")


def _mutant_function(mutant: str, module, attribute: str):
    """The function a mutant patches into ``module.attribute`` (for mutants that patch one function)."""
    with MUTANTS[mutant].inject(None):
        return getattr(module, attribute)


# --- Lab 01: the sinusoid table and rel_shift ---------------------------------------------------------


def check_sinusoid_table(sinusoid_table) -> None:
    """sinusoid_table(pos_seq [r], d_model) -> R [r, d] = [sin(p w_k) ; cos(p w_k)], w_k = 10000^{-2k/d}."""
    __tracebackhide__ = True
    name = "sinusoid_table"
    cases = [
        (torch.arange(5, -3, -1).float(), 8),
        (torch.arange(12, -12, -1).float(), 16),
        (torch.tensor([0.0, 100.0]), 4),
    ]
    for pos_seq, d_model in cases:
        case = f"pos_seq = {pos_seq.tolist()[:4]}..., d_model {d_model}"
        got = call(name, sinusoid_table, pos_seq.clone(), d_model, case=case)
        inv_freq = relative_position.inverse_frequencies(d_model)
        expected = relative_position.sinusoid_embedding(pos_seq, inv_freq)
        angle = torch.outer(pos_seq, inv_freq)
        half_exponent = 1 / torch.pow(10000, torch.arange(d_model // 2).float() / d_model)
        compare(
            name,
            got,
            expected,
            case=case,
            known_mistakes={
                "you interleaved sin and cos (sin, cos, sin, cos, ...): XLNet concatenates the halves, "
                "all d/2 sines first, then all d/2 cosines": torch.stack([angle.sin(), angle.cos()], dim=-1).reshape(
                    len(pos_seq), d_model
                ),
                "cosines first: R_p = [sin(p w) ; cos(p w)], the sines are the first half": torch.cat(
                    [angle.cos(), angle.sin()], dim=-1
                ),
                "frequencies: w_k = 1 / 10000^(2k/d) for k = 0 .. d/2-1 — the exponent steps by 2/d, you stepped by 1/d": relative_position.sinusoid_embedding(
                    pos_seq, half_exponent
                ),
            },
            otherwise="compare with xlnet_ref.relative_position.sinusoid_embedding row by row",
        )
    _passed(name, len(cases))


def _rel_shift_cases(batched: bool):
    cases = []
    for qlen, mlen in [(3, 0), (3, 2), (4, 1)]:
        klen = qlen + mlen
        rlen = klen + qlen  # 'bi': distances klen .. -qlen+1
        bd = (10 * torch.arange(qlen)[:, None] + torch.arange(rlen)[None, :]).float()  # [i, r]
        cases.append((f"qlen {qlen}, mlen {mlen} (bd[i, c] = 10 i + c)", bd, klen))
    if batched:
        g = torch.Generator().manual_seed(0)
        cases.append(
            ("bd of shape [b=2, n=3, qlen=4, rlen=9], mlen 1, random", torch.randn(2, 3, 4, 9, generator=g), 5)
        )
    return cases


WRONG_WAY = (
    "your shift moves rows the wrong way: row i must move left by qlen - i columns "
    "(the first row moves most, the last row least)"
)


def _rel_shift_mistakes(bd: torch.Tensor, klen: int) -> list[tuple[str, torch.Tensor | None]]:
    qlen, rlen = bd.shape[-2:]
    i = torch.arange(qlen)[:, None]
    j = torch.arange(klen)[None, :]

    def take(col):  # out[..., i, j] = bd[..., i, col[i, j]], where the column exists
        col = col.expand(qlen, klen)
        if col.min() < 0 or col.max() >= rlen:
            return None
        return bd.gather(-1, col.expand(*bd.shape[:-2], qlen, klen))

    mistakes = [
        (
            "you kept the first klen columns as they are (no shift): column c holds distance klen - c for every "
            "query, but query i needs distance (mlen + i) - j, so row i must move left by qlen - i columns",
            _mutant_function("no_rel_shift", attention, "rel_shift")(bd, klen),
        ),
        (
            "this is Transformer-XL's zero-pad rel_shift: XLNet's table starts one distance higher (at klen), so "
            "it lands one column off — drop the first row of the [rlen, qlen] view instead of padding a column",
            _mutant_function("transformer_xl_rel_shift", attention, "rel_shift")(bd, klen),
        ),
        (WRONG_WAY, take(j + i + 1)),
        (WRONG_WAY, take(j + i)),
        (
            "off by one column: distance (mlen + i) - j sits at column klen - ((mlen + i) - j) = j + qlen - i "
            "of the table (whose rows hold distances klen, klen - 1, ...)",
            take(j + qlen - i - 1),
        ),
        (
            "you dropped the last row of the [rlen, qlen] view; the trick drops the first one (its first qlen numbers)",
            bd.reshape(*bd.shape[:-2], rlen, qlen)[..., :-1, :].reshape(*bd.shape[:-2], qlen, rlen - 1)[..., :klen],
        ),
        (
            "a transpose moves the numbers; the trick re-reads the same numbers with rows one shorter: use reshape",
            bd.transpose(-1, -2)[..., 1:, :].reshape(*bd.shape[:-2], qlen, rlen - 1)[..., :klen],
        ),
    ]
    return mistakes


def _check_rel_shift(name: str, fn, *, batched: bool) -> None:
    __tracebackhide__ = True
    cases = _rel_shift_cases(batched)
    for case, bd, klen in cases:
        got = call(name, fn, bd.clone(), klen, case=case)
        expected = relative_position.rel_shift(bd, klen)
        naive = rel_shift_naive(bd, klen)
        assert torch.equal(expected, naive), "library rel_shift and its naive twin disagree"
        compare(
            name,
            got,
            expected,
            case=case,
            known_mistakes=_rel_shift_mistakes(bd, klen),
            otherwise="out[i, j] = bd[i, j + qlen - i]; check one row by hand against xlnet_ref.naive.rel_shift_naive",
        )
    _passed(name, len(cases))


def check_rel_shift_by_index(rel_shift_by_index) -> None:
    """rel_shift_by_index(bd [qlen, rlen], klen) -> [qlen, klen] by explicit index arithmetic."""
    __tracebackhide__ = True
    _check_rel_shift("rel_shift_by_index", rel_shift_by_index, batched=False)


def check_rel_shift_by_reshape(rel_shift_by_reshape) -> None:
    """rel_shift_by_reshape(bd [..., qlen, rlen], klen) -> [..., qlen, klen] by the reshape trick."""
    __tracebackhide__ = True
    _check_rel_shift("rel_shift_by_reshape", rel_shift_by_reshape, batched=True)


def check_needed_distances(needed_distances) -> None:
    """needed_distances(qlen, mlen) -> the distances (mlen + i) - j some query/key pair uses, largest first."""
    __tracebackhide__ = True
    name = "needed_distances"
    cases = [(3, 0), (3, 2), (2, 5), (1, 1)]
    for qlen, mlen in cases:
        case = f"qlen {qlen}, mlen {mlen}"
        got = call(name, needed_distances, qlen, mlen, case=case)
        got = list(got) if isinstance(got, (range, tuple, torch.Tensor)) else got
        got = [int(x) for x in got] if isinstance(got, list) else got
        klen = qlen + mlen
        expected = sorted({mlen + i - j for i in range(qlen) for j in range(klen)}, reverse=True)
        compare_value(
            name,
            got,
            expected,
            case=case,
            known_mistakes={
                "that is every row of the table; one of them is never used — which query/key pair would need distance klen?": list(
                    range(klen, -qlen, -1)
                ),
                "the keys include the mlen memory positions in front of the segment: key j = 0 is the oldest memory slot": list(
                    range(qlen - 1, -qlen, -1)
                ),
                "right set, wrong order: largest first, as the rows of the table": sorted(expected),
            },
            otherwise="list (mlen + i) - j for every query i in 0..qlen-1 and key j in 0..klen-1",
        )
    _passed(name, len(cases))


# --- Lab 02: the relative attention score by hand ------------------------------------------------------


def score_case(qlen: int, mlen: int, d_model: int = 8, d_head: int = 4, seed: int = 0) -> dict:
    """Random inputs and one head's weights for the score terms: x [i, m], mem [mlen, m], seg [i] and the
    weights W_q, W_kE, W_kR [m, d], u, v, b, s_same, s_diff [d]. Memory counts as segment 0."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    seg = torch.tensor([(0 if i < (qlen + 1) // 2 else 1) for i in range(qlen)])
    return dict(
        x=r(qlen, d_model),
        mem=r(mlen, d_model),
        seg=seg,
        W_q=r(d_model, d_head),
        W_kE=r(d_model, d_head),
        W_kR=r(d_model, d_head),
        u=r(d_head),
        v=r(d_head),
        b=r(d_head),
        s_same=r(d_head),
        s_diff=r(d_head),
    )


def library_scores(P: dict) -> dict[str, torch.Tensor]:
    """The library's ac, bd, ef [i, j] and attention probabilities for one head with the weights in P."""
    x, mem = P["x"], P["mem"]
    qlen, mlen, (m, d) = x.shape[0], mem.shape[0], P["W_q"].shape
    cfg = XLNetConfig(vocab_size=4, d_model=m, n_layer=1, n_head=m // d, d_inner=4, dropout=0.0)
    attn = attention.RelativeAttention(cfg)  # head 0 gets P's weights; the other heads are ignored
    bias = lambda t: torch.cat([t[None], torch.zeros(cfg.n_head - 1, d)])  # noqa: E731  [n, d]
    with torch.no_grad():
        for w in (attn.q, attn.k, attn.r, attn.seg_embed):
            w.zero_()
        attn.q[:, 0], attn.k[:, 0], attn.r[:, 0] = P["W_q"], P["W_kE"], P["W_kR"]
        attn.seg_embed[0, 0], attn.seg_embed[1, 0] = P["s_same"], P["s_diff"]
        klen = qlen + mlen
        pos_emb = relative_position.relative_positional_encoding(
            qlen, klen, d_model=m, attn_type="bi", bi_data=False, clamp_len=0
        )  # [1, r, m]
        cat = torch.cat([mem, x])[None]  # [1, j, m]
        q, k_h, k_r = attn.project(x[None], attn.q), attn.project(cat, attn.k), attn.project(pos_emb, attn.r)
        seg_diff = segments.segment_difference(P["seg"][None], mlen)
        terms = attn.scores(
            q,
            k_h,
            k_r,
            r_w_bias=bias(P["u"]),
            r_r_bias=bias(P["v"]),
            r_s_bias=bias(P["b"]),
            seg_diff=seg_diff,
            query_pos=None,
            qlen=qlen,
        )
        score = sum(terms.values()) / d**0.5
    out = {k: t[0, 0] for k, t in terms.items()}
    out["prob"] = torch.softmax(score, dim=-1)[0, 0]
    return out


def _R(dist: torch.Tensor, d_model: int) -> torch.Tensor:
    """R_dist for a tensor of distances [...] -> [..., m]."""
    inv = relative_position.inverse_frequencies(d_model)
    return relative_position.sinusoid_embedding(dist.flatten().float(), inv).reshape(*dist.shape, d_model)


def _score_terms_variants(P: dict) -> dict[str, torch.Tensor]:
    """Each term written out by hand (the naive way), plus the classic wrong variants, all [i, j]."""
    x, mem = P["x"], P["mem"]
    qlen, mlen, m = x.shape[0], mem.shape[0], x.shape[1]
    cat = torch.cat([mem, x])
    q, k, k_cur = x @ P["W_q"], cat @ P["W_kE"], x @ P["W_kE"]
    i = torch.arange(qlen)[:, None]
    j = torch.arange(qlen + mlen)[None, :]
    kr = lambda dist: _R(dist, m) @ P["W_kR"]  # [i, j, d]  # noqa: E731
    seg_key = torch.cat([torch.zeros(mlen, dtype=torch.long), P["seg"]])
    diff = P["seg"][:, None] != seg_key[None, :]
    s = lambda d: torch.where(d[..., None], P["s_diff"], P["s_same"])  # noqa: E731
    return dict(
        a=q @ k.T,
        c=(P["u"] @ k.T).expand(qlen, -1),
        c_with_v=(P["v"] @ k.T).expand(qlen, -1),
        a_no_mem=q @ k_cur.T,
        b=torch.einsum("id,ijd->ij", q, kr(mlen + i - j)),
        d=torch.einsum("d,ijd->ij", P["v"], kr(mlen + i - j)),
        b_sign=torch.einsum("id,ijd->ij", q, kr(j - mlen - i)),
        d_sign=torch.einsum("d,ijd->ij", P["v"], kr(j - mlen - i)),
        b_no_mlen=torch.einsum("id,ijd->ij", q, kr(i - j)),
        d_no_mlen=torch.einsum("d,ijd->ij", P["v"], kr(i - j)),
        d_with_u=torch.einsum("d,ijd->ij", P["u"], kr(mlen + i - j)),
        seg=torch.einsum("ijd,ijd->ij", (q + P["b"])[:, None, :].expand(-1, qlen + mlen, -1), s(diff)),
        seg_swapped=torch.einsum("ijd,ijd->ij", (q + P["b"])[:, None, :].expand(-1, qlen + mlen, -1), s(~diff)),
        seg_absolute=torch.einsum(
            "ijd,ijd->ij",
            (q + P["b"])[:, None, :].expand(-1, qlen + mlen, -1),
            s((seg_key != 0)[None, :].expand(qlen, -1)),
        ),
        seg_no_bias=torch.einsum("ijd,ijd->ij", q[:, None, :].expand(-1, qlen + mlen, -1), s(diff)),
    )


SCORE_CASES = [(3, 2, 0), (4, 0, 1), (2, 3, 2)]  # (qlen, mlen, seed)


def _two_terms(name, fn, first: str, second: str, mistakes) -> None:
    __tracebackhide__ = True
    for qlen, mlen, seed in SCORE_CASES:
        P = score_case(qlen, mlen, seed=seed)
        case = f"qlen {qlen}, mlen {mlen}, seed {seed}"
        got = call(name, fn, **{k: v.clone() for k, v in P.items()}, case=case)
        if not (isinstance(got, tuple) and len(got) == 2):
            raise LabCheckFailed(f"{name}: expected a pair of tensors ({first}, {second}), got {type(got).__name__}")
        V = _score_terms_variants(P)
        lib = library_scores(P)
        assert torch.allclose(V[first] + V[second], lib["ac" if first == "a" else "bd"], atol=1e-4)
        for term, got_term in zip((first, second), got):
            compare(
                f"{name}, term ({term})",
                got_term,
                V[term],
                case=case,
                known_mistakes=[(h, V[w]) for h, w, t in mistakes if t == term],
                otherwise="write the term for one (i, j) pair on paper, then compare one entry",
            )
    _passed(name, len(SCORE_CASES))


def check_terms_a_c(terms_a_c) -> None:
    """terms_a_c(**P) -> (a, c), each [i, j]: a = q_i . k_j, c = u . k_j, keys over [mem; x]."""
    __tracebackhide__ = True
    _two_terms(
        "terms_a_c",
        terms_a_c,
        "a",
        "c",
        [
            ("(c) uses u (r_w_bias), the content bias; v (r_r_bias) belongs to the position term (d)", "c_with_v", "c"),
            ("keys run over [memory; current segment]: klen = mlen + qlen columns, the memory first", "a_no_mem", "a"),
        ],
    )


def check_terms_b_d(terms_b_d) -> None:
    """terms_b_d(**P) -> (b, d), each [i, j]: b = q_i . W_kR R_{(mlen+i)-j}, d = v . W_kR R_{(mlen+i)-j}."""
    __tracebackhide__ = True
    _two_terms(
        "terms_b_d",
        terms_b_d,
        "b",
        "d",
        [
            (
                "the distance has the wrong sign: R is indexed by (query position) - (key position) = (mlen + i) - j",
                "b_sign",
                "b",
            ),
            (
                "the distance has the wrong sign: R is indexed by (query position) - (key position) = (mlen + i) - j",
                "d_sign",
                "d",
            ),
            (
                "query i sits at absolute position mlen + i (the memory comes first), so its distance to key j is "
                "(mlen + i) - j, not i - j",
                "b_no_mlen",
                "b",
            ),
            (
                "query i sits at absolute position mlen + i (the memory comes first), so its distance to key j is "
                "(mlen + i) - j, not i - j",
                "d_no_mlen",
                "d",
            ),
            ("(d) uses v (r_r_bias), the position bias; u (r_w_bias) belongs to the content term (c)", "d_with_u", "d"),
        ],
    )


def check_segment_term(segment_term) -> None:
    """segment_term(**P) -> [i, j]: (q_i + b) . s_ij with s_ij = s_same if seg(i) == seg(j) else s_diff."""
    __tracebackhide__ = True
    name = "segment_term"
    for qlen, mlen, seed in SCORE_CASES:
        P = score_case(qlen, mlen, seed=seed)
        case = f"qlen {qlen}, mlen {mlen}, seed {seed}, seg = {P['seg'].tolist()}"
        got = call(name, segment_term, **{k: v.clone() for k, v in P.items()}, case=case)
        V = _score_terms_variants(P)
        assert torch.allclose(V["seg"], library_scores(P)["ef"], atol=1e-4)
        compare(
            name,
            got,
            V["seg"],
            case=case,
            known_mistakes={
                "same and different are swapped: s_same (segment_embed row 0) is used when i and j lie in the same segment": V[
                    "seg_swapped"
                ],
                "you used the key's own segment id (BERT's absolute segment embedding, the mutant absolute_segment_ids): "
                "XLNet only asks whether i and j lie in the same segment": V["seg_absolute"],
                "the segment term has its own bias b (r_s_bias): (q_i + b) . s_ij": V["seg_no_bias"],
            },
            otherwise="the memory counts as segment 0; compare with xlnet_ref.naive.segment_term_naive",
        )
    _passed(name, len(SCORE_CASES))


def check_attention_probabilities(attention_probabilities) -> None:
    """attention_probabilities(**P) -> [i, j] = softmax_j((a + b + c + d + seg) / sqrt(d_head))."""
    __tracebackhide__ = True
    name = "attention_probabilities"
    for qlen, mlen, seed in SCORE_CASES:
        P = score_case(qlen, mlen, seed=seed)
        case = f"qlen {qlen}, mlen {mlen}, seed {seed}"
        got = call(name, attention_probabilities, **{k: v.clone() for k, v in P.items()}, case=case)
        V = _score_terms_variants(P)
        total = V["a"] + V["b"] + V["c"] + V["d"] + V["seg"]
        d_head = P["W_q"].shape[1]
        compare(
            name,
            got,
            library_scores(P)["prob"],
            case=case,
            known_mistakes={
                "the scores are divided by sqrt(d_head) before the softmax": torch.softmax(total, dim=-1),
                "the softmax runs over the keys j (the last axis), not over the queries": torch.softmax(
                    total / d_head**0.5, dim=0
                ),
                "you divided by d_head; the scale is 1 / sqrt(d_head)": torch.softmax(total / d_head, dim=-1),
                "the segment term is part of the score": torch.softmax((total - V["seg"]) / d_head**0.5, dim=-1),
            },
            otherwise="score = (a + b + c + d + seg) / sqrt(d_head), then softmax over j",
        )
    _passed(name, len(SCORE_CASES))


# --- Lab 03: segment-level memory --------------------------------------------------------------------


def _memory_cases():
    """(case, h [1, i, 1] with h = 10 + position, prev_mem [1, mlen, 1] or None, mem_len, reuse_len)."""
    cases = []
    for qlen, mlen, mem_len, reuse_len in [(4, 0, 3, None), (4, 2, 5, None), (6, 3, 4, 4), (4, 3, 5, 2)]:
        h = (10 + torch.arange(qlen, dtype=torch.float32)).reshape(1, qlen, 1).requires_grad_()
        prev = None if mlen == 0 else (1 + torch.arange(mlen, dtype=torch.float32)).reshape(1, mlen, 1)
        case = (
            f"h = 10..{9 + qlen}, prev_mem = {None if prev is None else prev.flatten().tolist()}, "
            f"mem_len {mem_len}, reuse_len {reuse_len}"
        )
        cases.append((case, h, prev, mem_len, reuse_len))
    return cases


def check_cache_memory(cache_memory) -> None:
    """cache_memory(h [b, i, m], prev_mem [b, mlen, m] or None, mem_len, reuse_len) -> new memory."""
    __tracebackhide__ = True
    name = "cache_memory"
    cases = _memory_cases()
    for case, h, prev, mem_len, reuse_len in cases:
        got = call(name, cache_memory, h, None if prev is None else prev.clone(), mem_len, reuse_len, case=case)
        expected = memory.cache_mem(h, prev, mem_len=mem_len, reuse_len=reuse_len)
        cat = lambda x, prev=prev: x if prev is None else torch.cat([prev, x], dim=1)  # noqa: E731
        reused = h if reuse_len is None else h[:, :reuse_len]
        compare(
            name,
            got,
            expected,
            case=case,
            known_mistakes=[
                (
                    "you kept the oldest mem_len states; the memory keeps the newest: [..., -mem_len:]",
                    cat(reused)[:, :mem_len],
                ),
                (
                    "only the first reuse_len positions of a window continue into the next one: cache h[:, :reuse_len]",
                    cat(h)[:, -mem_len:],
                ),
                (
                    "reuse_len counts from the start of the window (h[:, :reuse_len]), not from its end",
                    None if reuse_len is None else cat(h[:, -reuse_len:])[:, -mem_len:],
                ),
                (
                    "the new memory is [previous memory ; this segment], then cut to the newest mem_len",
                    reused[:, -mem_len:],
                ),
            ],
            otherwise="new_mem = SG(cat(prev_mem, h[:, :reuse_len]))[:, -mem_len:]",
        )
        if isinstance(got, torch.Tensor) and got.requires_grad:
            mutant = _mutant_function("memory_not_detached", model_module, "cache_mem")
            assert mutant(h, prev, mem_len=mem_len, reuse_len=reuse_len).requires_grad
            raise LabCheckFailed(
                f"{name}: right values but still attached to the graph on case {case!r}\n"
                "  hint: the stop-gradient SG(.) is missing (the bug of the mutant memory_not_detached): "
                "call .detach(), or gradients flow into the previous segment and the cost of a step grows with "
                "the length of the text"
            )
    _passed(name, len(cases))


def tiny_memory_model(*, n_layer: int, mem_len: int, seed: int = 0, vocab_size: int = 16) -> XLNetModel:
    """A small XLNet backbone in eval mode ('bi' attention, no dropout) for the memory experiments."""
    torch.manual_seed(seed)
    cfg = XLNetConfig(
        vocab_size=vocab_size, d_model=16, n_layer=n_layer, n_head=2, d_inner=32, mem_len=mem_len, dropout=0.0
    )
    model = XLNetModel(cfg).eval()
    model.reset_parameters(std=0.3)  # large weights: every influence shows far above round-off
    return model


def _run_stream(model, ids, qlen):
    outs, mems = [], None
    with torch.no_grad():
        for start in range(0, ids.shape[1], qlen):
            out = model(ids[:, start : start + qlen], mems=mems)
            outs.append(out.content)
            mems = out.mems
    return torch.cat(outs, dim=1)


def _measure_reach(model, ids, qlen) -> int:
    """How many tokens before the last segment's start can still change that segment's output."""
    last = ids.shape[1] - qlen
    base = _run_stream(model, ids, qlen)[:, last:]
    reach = 0
    for p in range(last):
        changed = ids.clone()
        changed[0, p] = (changed[0, p] + 1) % model.config.vocab_size
        if not torch.allclose(_run_stream(model, changed, qlen)[:, last:], base, atol=1e-6, rtol=0):
            reach = max(reach, last - p)
    return reach


REACH_CASES = [(1, 4, 4), (2, 4, 4), (2, 2, 4), (3, 3, 3)]  # (n_layer, mem_len, qlen), mem_len <= qlen


def _stream_ids(qlen: int, n_segments: int = 5) -> torch.Tensor:
    return (torch.arange(qlen * n_segments) * 7 % 16).reshape(1, -1)


def check_run_stream(run_stream) -> None:
    """run_stream(model, ids [1, T], qlen) -> [1, T, m]: the content stream of every segment, memory carried."""
    __tracebackhide__ = True
    name = "run_stream"
    for n_layer, mem_len, qlen in REACH_CASES[:2]:
        model = tiny_memory_model(n_layer=n_layer, mem_len=mem_len)
        ids = _stream_ids(qlen, 3)
        case = f"n_layer {n_layer}, mem_len {mem_len}, qlen {qlen}, {ids.shape[1]} tokens"
        got = call(name, run_stream, model, ids.clone(), qlen, case=case)
        no_memory = torch.cat([model(ids[:, s : s + qlen]).content for s in range(0, ids.shape[1], qlen)], 1)
        compare(
            name,
            got,
            _run_stream(model, ids, qlen),
            case=case,
            known_mistakes={
                "every segment ran on its own: pass the out.mems of one segment as mems= to the next": no_memory,
            },
            otherwise="segments of qlen tokens, in order; mems=None for the first",
        )
    _passed(name, 2)


def check_reach(reach) -> None:
    """reach(model, ids [1, T], qlen) -> int, measured by changing one earlier token at a time."""
    __tracebackhide__ = True
    name = "reach"
    for n_layer, mem_len, qlen in REACH_CASES:
        model = tiny_memory_model(n_layer=n_layer, mem_len=mem_len)
        ids = _stream_ids(qlen)
        case = f"n_layer {n_layer}, mem_len {mem_len}, qlen {qlen}, {ids.shape[1]} tokens"
        got = call(name, reach, model, ids.clone(), qlen, case=case)
        expected = _measure_reach(model, ids, qlen)
        compare_value(
            name,
            got,
            expected,
            case=case,
            known_mistakes={
                "you counted from the start of the text; count back from the start of the last segment": ids.shape[1]
                - qlen
                - (ids.shape[1] - qlen - expected),
                "you returned the position of the farthest token; return how many tokens before the last "
                "segment's start it lies": ids.shape[1] - qlen - expected,
            },
            otherwise=f"expected {expected}: change token p (for every p before the last segment), rerun the "
            "whole stream and see whether the last segment's output moves",
        )
    _passed(name, len(REACH_CASES))


def check_reach_formula(reach_formula) -> None:
    """reach_formula(n_layer, mem_len, qlen) for mem_len <= qlen: mem_len + (n_layer - 1) * qlen."""
    __tracebackhide__ = True
    name = "reach_formula"
    configs = REACH_CASES + [(4, 5, 8), (6, 1, 2)]
    for n_layer, mem_len, qlen in configs:
        case = f"n_layer {n_layer}, mem_len {mem_len}, qlen {qlen}"
        got = call(name, reach_formula, n_layer, mem_len, qlen, case=case)
        compare_value(
            name,
            got,
            mem_len + (n_layer - 1) * qlen,
            case=case,
            known_mistakes={
                "n_layer * mem_len holds only when mem_len = qlen: a state cached from the previous segment was "
                "computed while attending to that whole segment (qlen tokens), not only to mem_len of them": n_layer
                * mem_len,
                "the first layer reaches only mem_len tokens back (its memory is the word embeddings)": n_layer * qlen,
            },
        )
    _passed(name, len(configs))


# --- Lab 04: from a factorization order to the two masks -------------------------------------------------


def _mask_cases():
    """Every order of T <= 4 positions with every cut 0 <= c < T (at least one target)."""
    for seq_len in (2, 3, 4, 1):  # T = 1 last: there a flipped mask and a swapped one look alike
        for order in itertools.permutations(range(seq_len)):
            for cut in range(seq_len):
                yield torch.tensor(order), cut


def _targets(order: torch.Tensor, cut: int) -> torch.Tensor:
    is_target = torch.zeros(len(order), dtype=torch.bool)
    is_target[order[cut:]] = True
    return is_target


def _mask_variants(order: torch.Tensor, cut: int) -> dict[str, torch.Tensor]:
    is_target = _targets(order, cut)
    right = permutation.permutation_masks(order, is_target)
    naive_perm, naive_content = permutation_masks_naive(order, is_target)
    assert torch.equal(right.perm_mask, naive_perm) and torch.equal(right.content_mask, naive_content)
    rank_as_order = permutation.permutation_masks(permutation.order_to_rank(order), is_target)
    r = permutation.order_to_rank(order)
    return dict(
        query=right.perm_mask.bool(),
        content=right.content_mask.bool(),
        query_rank_confused=rank_as_order.perm_mask.bool(),
        content_rank_confused=rank_as_order.content_mask.bool(),
        query_no_context=~(r[None, :] < r[:, None]),
        content_no_context=~(r[None, :] <= r[:, None]),
    )


def _check_mask(name: str, fn, which: str, hints) -> None:
    __tracebackhide__ = True
    n = 0
    for order, cut in _mask_cases():
        case = f"z = {order.tolist()}, cut c = {cut} (targets {order[cut:].tolist()})"
        got = call(name, fn, order.clone(), cut, case=case)
        if isinstance(got, torch.Tensor) and got.dtype != torch.bool:
            got = got != 0
        V = _mask_variants(order, cut)
        expected = V[which]
        mistakes = [
            (
                "the sign is flipped: True (1) means 'may NOT attend' (the mutant perm_mask_flipped reads it "
                "the other way)",
                ~expected,
            ),
            ("rows and columns are swapped: mask[i, j] is about query i looking at key j", expected.T),
        ]
        mistakes += [(hint, V[key]) for hint, key in hints]
        compare(
            name,
            got,
            expected,
            case=case,
            known_mistakes=[(h, w) for h, w in mistakes if not torch.equal(w, expected)],
            otherwise="walk the order step by step as naive.permutation_masks_naive does",
        )
        n += 1
    _passed(name, n)


RANK_HINT = (
    "you compared the entries of z directly: z[t] is the position at step t; the step of position i is "
    "its rank r(i), the inverse permutation (permutation.order_to_rank)"
)
CONTEXT_HINT = (
    "the context z_{<=c} is not predicted: every context position sees the whole context, itself "
    "included, and no target; only the targets follow the order"
)


def check_query_mask(query_mask) -> None:
    """query_mask(order, cut) -> [T, T] bool, True where the query stream at i may NOT see j (perm_mask)."""
    __tracebackhide__ = True
    _check_mask(
        "query_mask",
        query_mask,
        "query",
        [
            (
                "the query stream must not see its own token x_{z_t}, the token it predicts (the mutant "
                "query_stream_sees_itself gives it the content stream's mask)",
                "content",
            ),
            (RANK_HINT, "query_rank_confused"),
            (CONTEXT_HINT, "query_no_context"),
        ],
    )


def check_content_mask(content_mask) -> None:
    """content_mask(order, cut) -> [T, T] bool, True where the content stream at i may NOT see j."""
    __tracebackhide__ = True
    _check_mask(
        "content_mask",
        content_mask,
        "content",
        [
            (
                "you masked the content stream's own token: h_{z_t} sees z_{<=t}, itself included (the mutant "
                "content_stream_blind_to_itself gives it the query stream's mask)",
                "query",
            ),
            (RANK_HINT, "content_rank_confused"),
            (CONTEXT_HINT, "content_no_context"),
        ],
    )


def check_target_mapping(target_mapping) -> None:
    """target_mapping(order, cut, num_predict) -> [num_predict, T]: row k one-hot at the k-th target
    position (increasing positions), then zero rows."""
    __tracebackhide__ = True
    name = "target_mapping"
    n = 0
    for order, cut in _mask_cases():
        seq_len = len(order)
        num_predict = seq_len - cut + (seq_len % 2)  # sometimes one padding row
        case = f"z = {order.tolist()}, cut c = {cut}, num_predict {num_predict}"
        got = call(name, target_mapping, order.clone(), cut, num_predict, case=case)
        expected, _, _ = permutation.target_mapping_for(_targets(order, cut), num_predict=num_predict)
        in_order = torch.zeros(num_predict, seq_len)
        in_order[torch.arange(seq_len - cut), order[cut:]] = 1
        compare(
            name,
            got,
            expected,
            case=case,
            known_mistakes={
                "rows follow the targets' positions in the sentence (increasing), not their steps in z": in_order,
                "pad with zero rows up to num_predict (their weight is 0 in the loss)": expected[: seq_len - cut],
                "rows are targets k, columns positions j: [num_predict, T]": expected.T,
            },
            otherwise="one row per target position, one-hot, in increasing position order; then zero rows",
        )
        n += 1
    _passed(name, n)


# --- Lab 05: two-stream attention --------------------------------------------------------------------------


def two_stream_case(seed: int = 0, *, seq_len: int = 5, n_targets: int = 2) -> dict:
    """One layer and its inputs for the query-stream update (no memory, no segments, 'bi' attention).

    attn: RelativeAttention (d_model 8, 2 heads); h [1, T, m] content stream; g [1, K, m] query stream;
    k_r [1, r, n, d] projected table; u, v [n, d]; perm_mask [1, T, T] bool (True = may NOT attend) from a
    random order with the last K steps as targets; target_pos [1, K] (increasing positions).
    """
    g_ = torch.Generator().manual_seed(seed)
    cfg = XLNetConfig(vocab_size=4, d_model=8, n_layer=1, n_head=2, d_inner=16, dropout=0.0)
    torch.manual_seed(seed)
    attn = attention.RelativeAttention(cfg).eval()
    with torch.no_grad():
        for p in (attn.q, attn.k, attn.v, attn.o, attn.r):
            p.normal_(0, 0.5, generator=g_)
    order = torch.randperm(seq_len, generator=g_)
    is_target = _targets(order, seq_len - n_targets)
    masks = permutation.permutation_masks(order, is_target)
    pos_emb = relative_position.relative_positional_encoding(
        seq_len, seq_len, d_model=8, attn_type="bi", bi_data=False, clamp_len=0
    )
    with torch.no_grad():
        k_r = attn.project(pos_emb, attn.r)
    return dict(
        attn=attn,
        h=torch.randn(1, seq_len, 8, generator=g_),
        g=torch.randn(1, n_targets, 8, generator=g_),
        k_r=k_r,
        u=torch.randn(2, 4, generator=g_),
        v=torch.randn(2, 4, generator=g_),
        perm_mask=masks.perm_mask.bool()[None],
        target_pos=masks.target_positions[None],
    )


def _query_update(
    C: dict, *, mask: str = "query", residual: str = "g", scale: bool = True, kv: str = "h"
) -> torch.Tensor:
    """The query-stream update written out, with switches for the classic mistakes."""
    attn, h, g, pos = C["attn"], C["h"], C["g"], C["target_pos"]
    source = h if kv == "h" else g
    k_h, v_h, q = attn.project(source, attn.k), attn.project(source, attn.v), attn.project(g, attn.q)
    terms = attn.scores(
        q, k_h, C["k_r"], r_w_bias=C["u"], r_r_bias=C["v"], r_s_bias=None, seg_diff=None, query_pos=pos, qlen=h.shape[1]
    )
    score = (terms["ac"] + terms["bd"]) * (attn.scale if scale else 1.0)  # [b, n, k, j]
    eye = torch.eye(h.shape[1], dtype=torch.bool)[None]
    full = {"query": C["perm_mask"], "content": C["perm_mask"] & ~eye, "none": torch.zeros_like(C["perm_mask"])}[mask]
    rows = full[0, pos[0]]  # [k, j]
    if kv == "h":
        score = score - 1e30 * rows[None, None].to(score.dtype)
    prob = torch.softmax(score, dim=-1)
    vec = torch.einsum("bnkj,bjnd->bknd", prob, v_h)
    return attn.post_attention(g if residual == "g" else h[:, pos[0]], vec)


def check_query_stream_update(query_stream_update) -> None:
    """query_stream_update(attn, h, g, k_r, u, v, perm_mask, target_pos) -> g_new [1, K, m]."""
    __tracebackhide__ = True
    name = "query_stream_update"
    seeds = [0, 1, 2]
    for seed in seeds:
        C = two_stream_case(seed)
        case = f"seed {seed}: T 5, targets at positions {C['target_pos'][0].tolist()}"
        with torch.no_grad():
            got = call(
                name,
                query_stream_update,
                **{k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in C.items()},
                case=case,
            )
            eye = torch.eye(5, dtype=torch.bool)[None]
            _, expected, _, _ = two_stream_attention(
                C["attn"],
                C["h"],
                C["g"],
                None,
                C["k_r"],
                r_w_bias=C["u"],
                r_r_bias=C["v"],
                r_s_bias=None,
                seg_diff=None,
                attn_mask=C["perm_mask"],
                non_tgt_mask=C["perm_mask"] & ~eye,
                target_pos=C["target_pos"],
                target_valid=torch.ones_like(C["target_pos"], dtype=torch.bool),
            )
            mapping = torch.nn.functional.one_hot(C["target_pos"], 5).float()
            twin = query_stream_scatter(
                C["attn"],
                C["g"],
                C["h"],
                None,
                C["k_r"],
                mapping,
                r_w_bias=C["u"],
                r_r_bias=C["v"],
                r_s_bias=None,
                seg_diff=None,
                attn_mask=C["perm_mask"],
            )
            assert torch.allclose(expected, twin, atol=1e-5) and torch.allclose(expected, _query_update(C), atol=1e-5)
            mistakes = {
                "you masked with the content stream's mask: the query stream saw its own token x_{z_t}, the one it "
                "predicts (the mutant query_stream_sees_itself)": _query_update(C, mask="content"),
                "no mask: the query stream at z_t may only see z_{<t} — use perm_mask's rows at the target "
                "positions": _query_update(C, mask="none"),
                "the residual of the query stream is g itself: LayerNorm(g + attention output)": _query_update(
                    C, residual="h"
                ),
                "the scores are scaled by 1/sqrt(d_head) before the softmax": _query_update(C, scale=False),
                "keys and values come from the content stream h (shared with the content stream), never from g": _query_update(
                    C, kv="g"
                ),
            }
        compare(
            name,
            got,
            expected,
            case=case,
            known_mistakes=mistakes,
            otherwise="compare step by step with xlnet_ref.two_stream.two_stream_attention",
        )
    _passed(name, len(seeds))


def tiny_lm(seed: int = 0) -> XLNetLMHeadModel:
    """A small XLNet LM (vocab 16, d_model 16, 2 layers) in eval mode with large random weights."""
    torch.manual_seed(seed)
    lm = XLNetLMHeadModel(XLNetConfig(vocab_size=16, d_model=16, n_layer=2, n_head=2, d_inner=32, dropout=0.0)).eval()
    lm.transformer.reset_parameters(std=0.3)
    return lm


PREDICTION_CASES = [
    ([5, 9, 2, 7], [0, 1], 2),
    ([5, 9, 2, 7], [0, 1], 3),
    ([3, 3, 8, 1, 4], [1, 3], 0),
    ([3, 3, 8, 1, 4], [1, 3], 4),
]  # (ids, context positions, target position)


def _only_context(seq_len: int, context: list[int]) -> torch.Tensor:
    pm = torch.ones(1, seq_len, seq_len)
    pm[:, :, context] = 0
    return pm


def reference_aware_logits(lm, ids: torch.Tensor, context: list[int], target: int) -> torch.Tensor:
    with torch.no_grad():
        mapping = torch.nn.functional.one_hot(torch.tensor([[target]]), ids.shape[1]).float()
        return lm(ids, perm_mask=_only_context(ids.shape[1], context), target_mapping=mapping).logits[0, 0]


def reference_blind_logits(lm, ids: torch.Tensor, context: list[int], target: int) -> torch.Tensor:
    with torch.no_grad():
        return lm(ids, perm_mask=_only_context(ids.shape[1], context)).logits[0, context[-1]]


def check_target_aware_logits(target_aware_logits) -> None:
    """target_aware_logits(lm, ids [1, T], context, target) -> [V]: the query stream's logits at target."""
    __tracebackhide__ = True
    name = "target_aware_logits"
    lm = tiny_lm()
    for ids, context, target in PREDICTION_CASES:
        ids = torch.tensor([ids])
        case = f"ids {ids[0].tolist()}, context positions {context}, target position {target}"
        got = call(name, target_aware_logits, lm, ids.clone(), list(context), target, case=case)
        expected = reference_aware_logits(lm, ids, context, target)
        with torch.no_grad():
            pm = _only_context(ids.shape[1], context)
            pm[0, target, target] = 0
            mapping = torch.nn.functional.one_hot(torch.tensor([[target]]), ids.shape[1]).float()
            leaked = lm(ids, perm_mask=pm, target_mapping=mapping).logits[0, 0]
            content = lm(ids, perm_mask=_only_context(ids.shape[1], context)).logits[0, target]
        compare(
            name,
            got,
            expected,
            case=case,
            atol=1e-4,
            known_mistakes={
                "the target's own token leaked in: in perm_mask its row must hide its own column": leaked,
                "those are the content stream's logits at the target; it has read x_target itself — pass "
                "target_mapping and read the query stream": content,
            },
            otherwise="perm_mask: every position sees only the context; target_mapping: one row, one-hot at target",
        )
    _passed(name, len(PREDICTION_CASES))


def check_target_blind_logits(target_blind_logits) -> None:
    """target_blind_logits(lm, ids, context, target) -> [V]: the content stream at the last context position,
    which is what a standard softmax over h(x_{z<t}) would use; the same for every target."""
    __tracebackhide__ = True
    name = "target_blind_logits"
    lm = tiny_lm()
    for ids, context, target in PREDICTION_CASES:
        ids = torch.tensor([ids])
        case = f"ids {ids[0].tolist()}, context positions {context}, target position {target}"
        got = call(name, target_blind_logits, lm, ids.clone(), list(context), target, case=case)
        compare(
            name,
            got,
            reference_blind_logits(lm, ids, context, target),
            case=case,
            atol=1e-4,
            known_mistakes={
                "that is the target-aware query stream (Part B); here use no target_mapping and read the content "
                "stream at the last context position": reference_aware_logits(lm, ids, context, target),
            },
            otherwise="lm(ids, perm_mask=<only the context is visible>).logits at position context[-1]",
        )
    _passed(name, len(PREDICTION_CASES))


# --- Lab 06: find the bug ---------------------------------------------------------------------------------

MECHANISMS = {
    "rel_shift": "moving the position scores from one column per distance to one column per key",
    "masks": "the attention masks of the two streams",
    "memory": "the segment-level memory",
    "segments": "the relative segment encoding",
    "feed_forward": "the position-wise feed-forward block and its activation",
    "weights": "which weights each layer uses",
    "loss": "the permutation LM loss",
    "positional_table": "the relative positional table (bi_data, clamp_len)",
    "precision": "masking in low precision (float16)",
    "input_checks": "refusing inputs that have no meaning",
}

MUTANT_MECHANISM = {
    "shared_attention_weights": "weights",
    "feed_forward_missing": "feed_forward",
    "no_rel_shift": "rel_shift",
    "transformer_xl_rel_shift": "rel_shift",
    "perm_mask_flipped": "masks",
    "query_stream_sees_itself": "masks",
    "content_stream_blind_to_itself": "masks",
    "memory_not_detached": "memory",
    "absolute_segment_ids": "segments",
    "tanh_gelu": "feed_forward",
    "loss_mask_no_effect": "loss",
    "bi_data_ignored": "positional_table",
    "bi_data_odd_batch_runs": "input_checks",
    "memory_needs_mem_len": "memory",
    "float16_mask_1e30": "precision",
}


def check_suspect(answers: dict, suspect: str) -> None:
    """answers[suspect] = (first failing case, first failing stage in it, mechanism from MECHANISMS)."""
    __tracebackhide__ = True
    from .suspects import _identity

    name = f"suspect {suspect.upper()}"
    if not isinstance(answers, dict) or suspect not in answers:
        raise LabCheckFailed(f"{name}: expected answers[{suspect!r}] = (case, stage, mechanism), got no entry")
    answer = answers[suspect]
    if not (isinstance(answer, tuple) and len(answer) == 3 and all(isinstance(x, str) for x in answer)):
        raise LabCheckFailed(f"{name}: expected a tuple of three strings (case, stage, mechanism), got {answer!r}")
    case, stage, mechanism = (x.strip() for x in answer)
    mutant = MUTANTS[_identity(suspect)]
    problems = []
    if case != mutant.expected_case:
        problems.append(
            f"case {case!r} is not the first case that catches it. The validator runs its cases in a fixed order "
            "(python -m xlnet_ref.validate --list-cases); run them all and report the first block that ends in "
            "'=> FAIL'"
        )
    elif stage != mutant.expected_stage:
        problems.append(
            f"stage {stage!r} is not the first failing stage of case {case!r}: the stages are listed in the order "
            "the model computes them, and everything after the first departure fails too — report the stage named "
            "on the '=> FAIL at' line"
        )
    if mechanism not in MECHANISMS:
        problems.append(f"mechanism {mechanism!r} is not one of {sorted(MECHANISMS)}")
    elif mechanism != MUTANT_MECHANISM[mutant.name]:
        problems.append(
            f"mechanism {mechanism!r} ({MECHANISMS[mechanism]}) does not compute the first failing stage: read "
            "that stage's 'what it is' column, then ask which part of the model writes it"
        )
    if problems:
        raise LabCheckFailed(f"{name}: {len(problems)} problem(s)\n" + "\n".join(f"  hint: {p}" for p in problems))
    print(f"{name}: located and explained")
