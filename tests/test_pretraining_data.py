"""Span targets, [reuse | A SEP B SEP CLS] examples and batches, and a tiny pretraining run.

Expected values are derived from the definitions in the module docstrings (p(n) ∝ 1/n, context
alpha/beta per span token, windows advancing by reuse_len, ...), not read off the code.
"""

from __future__ import annotations

import math

import pytest
import torch

from xlnet_ref import XLNetConfig, XLNetLMHeadModel
from xlnet_ref.naive import permutation_masks_naive
from xlnet_ref.permutation import plm_loss
from xlnet_ref.pretraining_data import PLMBatch, plm_batches, sample_span_mask
from xlnet_ref.training.tokenizer import ByteTokenizer

SEP, CLS = 1, 2


def runs(mask: torch.Tensor) -> list[tuple[int, int]]:
    """Maximal runs of True as (begin, end) with end exclusive."""
    out, begin = [], None
    for p, m in enumerate(mask.tolist() + [False]):
        if m and begin is None:
            begin = p
        elif not m and begin is not None:
            out.append((begin, p))
            begin = None
    return out


def inverse_n(max_span: int) -> list[float]:
    weights = [1 / n for n in range(1, max_span + 1)]
    return [w / sum(weights) for w in weights]


def assert_close_to_distribution(counts: list[int], p: list[float]):
    total = sum(counts)
    for n, (c, q) in enumerate(zip(counts, p), start=1):
        assert abs(c / total - q) < 5 * math.sqrt(q * (1 - q) / total), (n, c / total, q)


# ----------------------------------------------------------------------------- span targets


def test_span_lengths_follow_one_over_n():
    g = torch.Generator().manual_seed(0)
    counts = [0] * 5
    for _ in range(6):
        for b, e in runs(sample_span_mask(3000, generator=g)):  # every token is a word: spans of n tokens
            counts[e - b - 1] += 1
    assert sum(counts) > 1000
    assert_close_to_distribution(counts, inverse_n(5))


@pytest.mark.parametrize("alpha, beta", [(6, 1), (4, 2)])
def test_span_rate_is_beta_over_alpha_plus_beta(alpha, beta):
    """Each span of n comes with n * alpha / beta context tokens: a fraction beta / (alpha + beta)."""
    g = torch.Generator().manual_seed(1)
    chosen = sum(int(sample_span_mask(4000, mask_alpha=alpha, mask_beta=beta, generator=g).sum()) for _ in range(5))
    assert abs(chosen / 20000 - beta / (alpha + beta)) < 0.01


def random_word_starts(T: int, g: torch.Generator) -> torch.Tensor:
    starts = torch.rand(T, generator=g) < 0.5  # words of 1, 2, 3, ... pieces
    starts[0] = True
    return starts


def test_words_mode_masks_whole_words_counted_in_words():
    g = torch.Generator().manual_seed(2)
    counts = [0] * 5
    for _ in range(6):
        starts = random_word_starts(3000, g)
        for b, e in runs(sample_span_mask(3000, word_starts=starts, span_unit="words", generator=g)):
            assert starts[b]  # begins at a word start
            assert e == 3000 or starts[e]  # ends where the next word begins: whole words
            counts[int(starts[b:e].sum()) - 1] += 1  # length in words
    assert_close_to_distribution(counts, inverse_n(5))


ENGLISH = (
    "The model reads the text in windows and predicts a few of its words from the others, in an "
    "order drawn at random; the memory carries what it has read on to the next window, so that "
    "a long document is seen as one piece of text, not as many unrelated parts. "
)


def english_byte_words(T: int, g: torch.Generator) -> torch.Tensor:
    """Word starts of T bytes of English text (byte tokens: words of several bytes plus a space)."""
    words = ENGLISH.split(" ")
    picked = [words[int(i)] for i in torch.randint(len(words), (T // 3,), generator=g)]
    ids = " ".join(picked).encode("utf-8")[:T]
    return ByteTokenizer().word_starts(list(ids))


@pytest.mark.parametrize("unit", ["words", "pieces"])
def test_span_rate_on_byte_text_is_one_seventh_in_either_unit(unit):
    """Span and context are counted in the same unit, so about beta / (alpha + beta) = 1/7 of the
    units is chosen; words of equal length on average in spans and context: 1/7 of the bytes as well.
    (Counting the span in words but the context in bytes chose ~0.35 of the bytes.)"""
    g = torch.Generator().manual_seed(6)
    chosen = chosen_words = total = total_words = 0
    for _ in range(10):
        starts = english_byte_words(3000, g)
        mask = sample_span_mask(3000, word_starts=starts, span_unit=unit, generator=g)
        chosen, total = chosen + int(mask.sum()), total + 3000
        chosen_words, total_words = chosen_words + int((mask & starts).sum()), total_words + int(starts.sum())
    assert abs(chosen / total - 1 / 7) < 0.02
    if unit == "words":
        assert abs(chosen_words / total_words - 1 / 7) < 0.02


def test_targets_spread_evenly_over_a_part_with_fixed_num_predict():
    """The tiny preset's case: a part of 32 bytes with 5 targets. The walk covers the whole part (the
    random single tokens fill the rest uniformly), so each quarter of the part holds about 1/4 of the
    targets; with the context counted in bytes the walk ran out early and the last quarter got ~0.19."""
    g = torch.Generator().manual_seed(7)
    quarters = torch.zeros(4)
    for _ in range(3000):
        start = int(torch.randint(200, (1,), generator=g))
        starts = english_byte_words(240, g)[start : start + 32]  # a part may begin mid-word
        mask = sample_span_mask(32, num_predict=5, word_starts=starts, generator=g)
        quarters += mask.view(4, 8).float().sum(1)
    share = quarters / quarters.sum()
    assert (share - 0.25).abs().max() < 0.03, share.tolist()


def test_pieces_mode_reproduces_the_original_quirk():
    """The original counts pieces: n pieces from a word start, which may stop in the middle of a word."""
    g = torch.Generator().manual_seed(3)
    counts, mid_word = [0] * 5, 0
    for _ in range(6):
        starts = random_word_starts(3000, g)
        for b, e in runs(sample_span_mask(3000, word_starts=starts, span_unit="pieces", generator=g)):
            assert starts[b]
            counts[e - b - 1] += 1
            mid_word += e < 3000 and not starts[e]
    assert_close_to_distribution(counts, inverse_n(5))
    assert mid_word > 100


def test_pieces_mode_never_masks_a_span_touching_the_end():
    """The original's loop stops at `end >= seg_len`: a span reaching the last piece is dropped."""
    g = torch.Generator().manual_seed(4)
    ends = 0
    for _ in range(2000):
        starts = torch.ones(12, dtype=torch.bool)  # every piece starts a word: spans land anywhere
        ends += bool(sample_span_mask(12, word_starts=starts, span_unit="pieces", generator=g)[-1])
    assert ends == 0


def test_num_predict_is_exact_and_never_picks_unselectable_positions():
    g = torch.Generator().manual_seed(4)
    for T, n in [(20, 3), (64, 11), (64, 30), (10, 8), (7, 0)]:
        selectable = torch.rand(T, generator=g) < 0.85
        selectable[: n + 1] = True
        for unit in ("words", "pieces"):
            mask = sample_span_mask(
                T,
                num_predict=n,
                selectable=selectable,
                word_starts=random_word_starts(T, g),
                span_unit=unit,
                generator=g,
            )
            assert int(mask.sum()) == n
            assert not (mask & ~selectable).any()


def test_reverse_follows_the_forward_text():
    """bi_data's backward rows: the walk runs over the forward text, so spans start at its word starts."""
    g = torch.Generator().manual_seed(5)
    forward_starts = random_word_starts(400, g)
    for _ in range(20):
        mask = sample_span_mask(400, word_starts=forward_starts.flip(0), reverse=True, generator=g)
        for b, e in runs(mask.flip(0)):  # read forwards
            assert forward_starts[b] and (e == 400 or forward_starts[e])


def test_span_mask_errors_name_the_argument():
    with pytest.raises(ValueError, match="span_unit"):
        sample_span_mask(10, span_unit="ngrams")
    with pytest.raises(ValueError, match="num_predict"):
        sample_span_mask(10, num_predict=4, selectable=torch.arange(10) < 3)
    with pytest.raises(ValueError, match="word_starts"):
        sample_span_mask(10, word_starts=torch.ones(9, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask_alpha"):
        sample_span_mask(10, mask_alpha=0)


# ----------------------------------------------------------------------------- examples and batches

T, R, B = 16, 6, 4  # seq_len, reuse_len, batch size of the layout tests


def stream(n: int, seed: int) -> torch.Tensor:
    return torch.randint(3, 40, (n,), generator=torch.Generator().manual_seed(seed))  # no SEP/CLS inside


def batches(tokens, **overrides) -> list[PLMBatch]:
    args = dict(
        seq_len=T,
        reuse_len=R,
        batch_size=B,
        num_predict=4,
        perm_size=None,
        bi_data=False,
        sep_id=SEP,
        cls_id=CLS,
        generator=torch.Generator().manual_seed(7),
    )
    return list(plm_batches(tokens, **{**args, **overrides}))


@pytest.mark.parametrize("bi_data", [False, True])
def test_example_layout_segments_and_consecutive_windows(bi_data):
    tokens = stream(600, seed=8)
    out = batches(tokens, bi_data=bi_data)
    n_rows = B // 2 if bi_data else B
    row_len = len(tokens) // n_rows
    rows = tokens[: n_rows * row_len].view(n_rows, row_len)
    if bi_data:  # the second half reads the same rows backwards
        rows = torch.cat([rows, rows.flip(1)])
    assert len(out) == (row_len - (T - 3)) // R + 1  # every window [s*R, s*R + T - 3) that fits
    for s, batch in enumerate(out):
        assert batch.input_ids.shape == batch.token_type_ids.shape == (B, T)
        for r in range(B):
            ids, seg = batch.input_ids[r].tolist(), batch.token_type_ids[r].tolist()
            a_len = seg.count(0) - R - 1
            assert a_len >= 1 and seg.count(1) - 1 >= 1  # A and B are not empty
            # [reuse | A SEP B SEP CLS] with segments 0 (reuse, A, SEP), 1 (B, SEP), 2 (CLS)
            assert ids[R + a_len] == SEP and ids[-2] == SEP and ids[-1] == CLS
            assert seg == [0] * (R + a_len + 1) + [1] * (T - R - a_len - 2) + [2]
            # the text is the row's window s*R .. s*R + T - 3, untouched and in order
            text = ids[: R + a_len] + ids[R + a_len + 1 : -2]
            assert text == rows[r, s * R : s * R + T - 3].tolist()
    # memory carries the text on: the next window's reuse part follows this window's reuse part
    for s in range(len(out) - 1):
        for r in range(B):
            assert out[s + 1].input_ids[r, :R].tolist() == rows[r, (s + 1) * R : (s + 2) * R].tolist()


def test_targets_are_text_never_sep_cls_or_padding():
    tokens = stream(600, seed=9)
    tokens[::17] = SEP  # SEP / CLS inside the stream itself are never targets either
    tokens[5::23] = CLS
    for num_predict in (5, None):  # None: as many as the span walk gives, padding rows up to the max
        for batch in batches(tokens, num_predict=num_predict, bi_data=True):
            real = batch.target_weights > 0  # [b, K]
            positions = batch.target_mapping.argmax(-1)  # [b, K]
            assert (batch.target_mapping.sum(-1) == real.float()).all()  # one-hot rows, zero on padding
            assert torch.equal(batch.target_ids, torch.where(real, batch.input_ids.gather(1, positions), 0))
            picked = batch.input_ids.gather(1, positions)[real]
            assert not ((picked == SEP) | (picked == CLS)).any()
            assert torch.equal(batch.is_target.sum(-1), real.sum(-1))
            if num_predict is not None:
                assert (real.sum(-1) == num_predict).all()


def test_fraction_of_predicted_tokens_is_about_one_over_K():
    tokens = stream(3000, seed=10)
    for K in (6, 7):
        seq_len = 42
        out = batches(tokens, seq_len=seq_len, reuse_len=14, num_predict=seq_len // K)
        fraction = sum(b.target_weights.sum().item() for b in out) / (len(out) * B * seq_len)
        assert abs(fraction - 1 / K) < 1 / seq_len


@pytest.mark.parametrize("perm_size", [None, 2])
def test_perm_mask_is_the_definition_on_each_part(perm_size):
    """Reuse part first in the order (never sees the rest, is seen by all of it); inside each part
    the masks of the definition for that part's order, SEP/CLS keeping their place in the order."""
    tokens = stream(400, seed=11)
    for batch in batches(tokens, perm_size=perm_size, bi_data=True)[:3]:
        assert (batch.perm_mask[:, :R, R:] == 1).all()
        assert (batch.perm_mask[:, R:, :R] == 0).all()
        for r in range(B):
            functional = (batch.input_ids[r] == SEP) | (batch.input_ids[r] == CLS)
            for lo, hi in ((0, R), (R, T)):
                z = batch.order[r, lo:hi] - lo
                if perm_size is not None:  # block-local: block b holds positions b*P .. b*P + P - 1
                    assert (z.view(-1, perm_size) // perm_size == torch.arange((hi - lo) // perm_size)[:, None]).all()
                expected, _ = permutation_masks_naive(z, batch.is_target[r, lo:hi], is_functional=functional[lo:hi])
                assert torch.equal(batch.perm_mask[r, lo:hi, lo:hi], expected)


def test_batch_errors_name_the_argument():
    tokens = stream(200, seed=12)
    with pytest.raises(ValueError, match="batch_size"):
        batches(tokens, batch_size=3, bi_data=True)
    with pytest.raises(ValueError, match="perm_size"):
        batches(tokens, perm_size=4)  # does not divide reuse_len = 6
    with pytest.raises(ValueError, match="seq_len"):
        batches(tokens, seq_len=R + 4)
    with pytest.raises(ValueError, match="tokens"):
        batches(tokens[:20])
    with pytest.raises(ValueError, match="tokens"):
        batches(tokens.float())
    with pytest.raises(ValueError, match="num_predict"):
        batches(tokens, num_predict=T)


def test_batch_to_moves_every_field():
    batch = batches(stream(200, seed=13))[0].to("meta")
    assert all(getattr(batch, f).device.type == "meta" for f in batch.__dataclass_fields__)


# ----------------------------------------------------------------------------- with the model


def test_memory_holds_only_the_reuse_part():
    """The cached memory comes from reuse positions that never see the rest of the window, so the next
    window's targets cannot leak through it: changing a token after the reuse part leaves mems alone."""
    torch.manual_seed(14)
    cfg = XLNetConfig(vocab_size=40, d_model=32, n_layer=2, n_head=4, d_inner=48, dropout=0.0, mem_len=R, reuse_len=R)
    lm = XLNetLMHeadModel(cfg).eval()
    lm.transformer.reset_parameters(std=0.3)
    batch = batches(stream(400, seed=15))[0]

    def mems_after(input_ids):
        with torch.no_grad():
            return torch.stack(
                lm(
                    input_ids,
                    token_type_ids=batch.token_type_ids,
                    perm_mask=batch.perm_mask,
                    target_mapping=batch.target_mapping,
                ).mems
            )

    base = mems_after(batch.input_ids)
    later = batch.input_ids.clone()
    later[:, R + 1] = (later[:, R + 1] + 1) % 40  # a token of A
    assert torch.equal(mems_after(later), base)
    earlier = batch.input_ids.clone()
    earlier[:, 0] = (earlier[:, 0] + 1) % 40  # a token of the reuse part
    assert not torch.allclose(mems_after(earlier), base)


def test_a_tiny_model_learns_with_the_permutation_objective():
    """Two hundred steps on a patterned stream, memory carried from batch to batch, bi_data on."""
    torch.manual_seed(16)
    vocab, seq_len, reuse_len = 24, 16, 8
    cfg = XLNetConfig(
        vocab_size=vocab,
        d_model=32,
        n_layer=2,
        n_head=4,
        d_inner=64,
        dropout=0.0,
        mem_len=reuse_len,
        reuse_len=reuse_len,
        bi_data=True,
    )
    lm = XLNetLMHeadModel(cfg)
    optimizer = torch.optim.Adam(lm.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(17)
    pattern = torch.randint(3, vocab, (11,), generator=g)  # a text that repeats: learnable from context
    tokens = pattern.repeat(200)

    losses, step = [], 0
    while step < 200:
        mems = None
        for batch in plm_batches(
            tokens,
            seq_len=seq_len,
            reuse_len=reuse_len,
            batch_size=8,
            num_predict=3,
            perm_size=None,
            bi_data=True,
            sep_id=SEP,
            cls_id=CLS,
            generator=g,
        ):
            out = lm(
                batch.input_ids,
                token_type_ids=batch.token_type_ids,
                perm_mask=batch.perm_mask,
                target_mapping=batch.target_mapping,
                mems=mems,
            )
            loss = plm_loss(out.logits, batch.target_ids, batch.target_weights)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            mems = out.mems
            losses.append(loss.item())
            step += 1
            if step == 200:
                break
    uniform = math.log(vocab)  # the loss of a model that knows nothing
    assert abs(losses[0] - uniform) < 0.3  # small initial weights: near-uniform predictions
    last = sum(losses[-20:]) / 20
    assert last < 0.25 * uniform, (losses[0], last)
