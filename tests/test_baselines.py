"""Kneser-Ney count models (xlnet_ref.training.baselines): a proper distribution, back-off, and the
ordering unigram >= bigram >= trigram on English text; the held-out scorer uses the L2R targets.

Expected values come from the definitions (a distribution sums to 1; a seen text is likelier than an
unseen one; Chen & Goodman's discount formula by hand), not from the code under test.
"""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from xlnet_ref.pretraining_data import plm_batches
from xlnet_ref.training.baselines import NGramModel, held_out_ngram_loss, kneser_ney_discounts
from xlnet_ref.training.tokenizer import ByteTokenizer

TEXT = (
    "The permutation language model predicts each token from the tokens that come before it in a "
    "random order. The memory carries the hidden states of the previous segment to the next one, so "
    "that the model sees a long text as one text. Relative positions make the reuse of the memory "
    "coherent: a position is known only by its distance to the query. "
) * 3
OTHER = "Every language model must beat the counts of the pairs of letters before it can claim to have learned."


def byte_ids(text: str) -> list[int]:
    return list(text.encode("utf-8"))


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("context", ["", "t", "th", "zq", "e "])
def test_probabilities_sum_to_one_over_the_vocabulary(order, context):
    model = NGramModel(byte_ids(TEXT), order=order, vocab_size=260)
    p = model.distribution(byte_ids(context))
    assert p.shape == (260,)
    assert (p > 0).all()  # every id, specials included, keeps some mass
    assert abs(float(p.sum()) - 1.0) < 1e-9


@pytest.mark.parametrize("order", [1, 2, 3])
def test_a_seen_text_has_a_lower_loss_than_an_unseen_one(order):
    model = NGramModel(byte_ids(TEXT), order=order, vocab_size=260)
    seen = model.loss(byte_ids(TEXT[:200]))
    unseen = model.loss(byte_ids(OTHER))
    assert seen < unseen
    assert unseen < math.log(260)  # still better than a uniform guess: English letters


def test_unigram_bigram_trigram_get_better_on_english_text():
    """Held-out English: each longer context helps (with enough training text)."""
    from xlnet_ref.training.corpus import load_corpus, split_corpus

    train_text, eval_text = split_corpus(load_corpus(None)[:300_000], eval_fraction=0.05)
    train, held_out = byte_ids(train_text), byte_ids(eval_text)[:4000]
    losses = [NGramModel(train, order=n, vocab_size=260).loss(held_out) for n in (1, 2, 3)]
    assert losses[0] > losses[1] + 0.3 > losses[2] + 0.6, losses


def test_an_unseen_context_backs_off_to_the_shorter_one():
    model = NGramModel(byte_ids(TEXT), order=3, vocab_size=260)
    assert "qz" not in TEXT
    for w in byte_ids("eax"):
        assert model.probability(byte_ids("qz"), w) == pytest.approx(model.probability(byte_ids("z"), w))
        # "z" never occurs at all: both fall back to the unigram level
        assert model.probability(byte_ids("z"), w) == pytest.approx(model.probability([], w))


def test_the_seen_continuation_is_the_likeliest():
    model = NGramModel(byte_ids(TEXT), order=3, vocab_size=260)
    p = model.distribution(byte_ids("Th"))  # always "The" in TEXT
    assert int(p.argmax()) == ord("e")
    assert float(p[ord("e")]) > 0.5


def test_discounts_follow_chen_goodman():
    counts = Counter({("a",): 1, ("b",): 1, ("c",): 1, ("d",): 1, ("e",): 2, ("f",): 2, ("g",): 3, ("h",): 4})
    n1, n2, n3, n4 = 4, 2, 1, 1
    y = n1 / (n1 + 2 * n2)
    expected = (1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3)
    assert kneser_ney_discounts(counts) == pytest.approx(expected)


def test_unigram_is_the_discounted_frequency():
    """Order 1 with D = 0: the relative frequency, interpolated with nothing (gamma = 0)."""
    ids = byte_ids("aab")
    model = NGramModel(ids, order=1, vocab_size=4 + 256, discounts=[(0.0, 0.0, 0.0)])
    assert model.probability([], ord("a")) == pytest.approx(2 / 3)
    assert model.probability([], ord("b")) == pytest.approx(1 / 3)


def test_held_out_scorer_uses_the_left_to_right_targets_and_the_text_before_them():
    """A bigram model scored on batches equals the bigram loss of every (previous text token, token)
    pair the left-to-right evaluation predicts: position 0 of the first batch has no memory, SEP and
    CLS are skipped, the token after a SEP is predicted from the text token before the SEP."""
    tok = ByteTokenizer()
    stream = torch.tensor(byte_ids(TEXT), dtype=torch.long)
    model = NGramModel(stream[:400], order=2, vocab_size=tok.vocab_size)
    seq_len, reuse_len, b = 16, 6, 2
    batches = list(
        plm_batches(
            stream,
            seq_len=seq_len,
            reuse_len=reuse_len,
            batch_size=b,
            num_predict=3,
            perm_size=None,
            bi_data=False,
            sep_id=tok.sep_id,
            cls_id=tok.cls_id,
            generator=torch.Generator().manual_seed(0),
        )
    )[:3]
    row_len = stream.numel() // b
    expected, n = 0.0, 0
    for s in range(len(batches)):
        for r in range(b):
            # the text tokens of window s of row r: reuse part and A + B, consecutive in the row
            first = s * reuse_len + (1 if s == 0 else 0)  # position 0 of the first window: no target
            for t in range(first, s * reuse_len + seq_len - 3):
                prev, w = int(stream[r * row_len + t - 1]), int(stream[r * row_len + t])
                expected -= math.log(model.probability([prev], w))
                n += 1
    got = held_out_ngram_loss(model, batches, reuse_len=reuse_len, sep_id=tok.sep_id, cls_id=tok.cls_id)
    assert got == pytest.approx(expected / n)


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="order"):
        NGramModel([1, 2, 3], order=0, vocab_size=10)
    with pytest.raises(ValueError, match="tokens"):
        NGramModel([1, 2, 30], order=2, vocab_size=10)
    with pytest.raises(ValueError, match="vocab_size"):
        NGramModel([1, 2, 3], order=2, vocab_size=0)
    with pytest.raises(ValueError, match="w"):
        NGramModel([1, 2, 3], order=2, vocab_size=10).probability([1], 10)
    with pytest.raises(ValueError, match="batches"):
        held_out_ngram_loss(NGramModel([1, 2, 3], order=2, vocab_size=10), [], reuse_len=2, sep_id=8, cls_id=9)
