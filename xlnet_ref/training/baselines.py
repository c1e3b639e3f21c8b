r"""Count models (unigram, bigram, trigram) as the baseline a pretrained model must beat on held-out text.

A language model that has learned anything from its context must do better than a table of counts
that looks at the one (bigram) or two (trigram) tokens before the target. These are the counts of the
same training tokens the model was trained on, smoothed with **interpolated modified Kneser-Ney**
(Chen & Goodman 1999, "An empirical study of smoothing techniques for language modeling", Sec. 3.5),
the standard strong smoothing for n-gram models:

.. math::

    P_{KN}(w \mid h) = \frac{\max(c(h w) - D(c(h w)), 0)}{\sum_{w'} c(h w')}
        + \gamma(h)\, P_{KN}(w \mid h^-),
    \qquad
    \gamma(h) = \frac{D_1 N_1(h \bullet) + D_2 N_2(h \bullet) + D_{3+} N_{3+}(h \bullet)}{\sum_{w'} c(h w')}

where :math:`h^-` is the context without its oldest token and :math:`N_k(h\bullet)` counts the words
seen exactly k times (3 or more for :math:`N_{3+}`) after :math:`h`. The highest order uses the raw
counts c; every lower order uses *continuation* counts :math:`N_{1+}(\bullet h w)`, the number of
different tokens seen before :math:`h w` (Kneser-Ney's idea: a token that follows many different
contexts is a better guess in a new context than one that is frequent after a single context). The
lowest order is interpolated with the uniform distribution over the vocabulary, so every token of
the vocabulary has a probability > 0 and they sum to 1. A context never seen in training
(:math:`\sum_{w'} c(h w') = 0`) backs off to :math:`P_{KN}(w \mid h^-)` entirely.

The discounts come from the counts of counts :math:`n_k` of each order, on the training text only
(Chen & Goodman Eq. 26): :math:`Y = n_1 / (n_1 + 2 n_2)`, :math:`D_1 = 1 - 2Y n_2/n_1`,
:math:`D_2 = 2 - 3Y n_3/n_2`, :math:`D_{3+} = 3 - 4Y n_4/n_3`. Nothing is tuned on held-out text.

:func:`held_out_ngram_loss` scores exactly the targets of the held-out left-to-right evaluation
(:func:`xlnet_ref.training.train.evaluate`, ``eval_l2r_loss``): the same windows, the same target
positions and weights, each target predicted from the text tokens just before it (the memory carries
the text on from window to window, so the model sees them too; SEP and CLS are not text).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict

import torch


def _as_token_list(tokens, *, name: str = "tokens") -> list[int]:
    if isinstance(tokens, torch.Tensor):
        if tokens.dim() != 1 or tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
            raise ValueError(
                f"{name}: expected a 1-D integer tensor of token ids, got shape {tuple(tokens.shape)} "
                f"dtype {tokens.dtype}"
            )
        return tokens.tolist()
    try:
        out = [int(t) for t in tokens]
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a 1-D sequence of int token ids, got {type(tokens).__name__}") from None
    return out


def kneser_ney_discounts(counts: Counter) -> tuple[float, float, float]:
    r"""(D_1, D_2, D_3+) from the counts of counts :math:`n_k` (Chen & Goodman 1999, Eq. 26).

    :math:`Y = n_1/(n_1 + 2 n_2)`, :math:`D_k = k - (k+1) Y n_{k+1}/n_k` for k = 1, 2, 3; each is kept
    in [0, k] (a few distinct counts, as in a tiny text, can push the formula outside it)."""
    n = Counter(c for c in counts.values() if c <= 4)
    n1, n2, n3, n4 = (n.get(k, 0) for k in (1, 2, 3, 4))
    if n1 == 0 or n2 == 0:
        return (0.5, 1.0, 1.5)  # too few counts for the estimate: a common fixed choice
    y = n1 / (n1 + 2 * n2)
    d = [1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2 if n2 else 1.0, 3 - 4 * y * n4 / n3 if n3 else 1.5]
    return tuple(min(max(dk, 0.0), k) for k, dk in zip((1, 2, 3), d))


class NGramModel:
    r"""Interpolated modified Kneser-Ney n-gram model of ``order`` n (1 unigram, 2 bigram, 3 trigram).

    ``probability(context, w)`` is :math:`P_{KN}(w \mid h)` with h the last n-1 tokens of ``context``
    (fewer at the start of a text: then the lower order answers). ``distribution(context)`` is the
    whole vector over the vocabulary (it sums to 1).

    Args:
        tokens: the training token stream, 1-D (a tensor or a list of ints).
        order: n >= 1.
        vocab_size: V; every id in ``tokens`` must be < V.
        discounts: None = estimated from the training counts (:func:`kneser_ney_discounts`), or one
            (D_1, D_2, D_3+) triple per order, lowest order first.
    """

    def __init__(self, tokens, *, order: int, vocab_size: int, discounts=None):
        if isinstance(order, bool) or not isinstance(order, int) or order < 1:
            raise ValueError(f"order: expected an int >= 1 (1 unigram, 2 bigram, 3 trigram), got {order!r}")
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
            raise ValueError(f"vocab_size: expected a positive int, got {vocab_size!r}")
        stream = _as_token_list(tokens)
        if len(stream) < order:
            raise ValueError(f"tokens: expected at least order={order} training tokens, got {len(stream)}")
        bad = [t for t in stream if not 0 <= t < vocab_size]
        if bad:
            raise ValueError(f"tokens: expected ids in [0, vocab_size={vocab_size}), got {bad[:5]}")
        if discounts is not None and len(discounts) != order:
            raise ValueError(f"discounts: expected one (D1, D2, D3+) triple per order ({order}), got {len(discounts)}")
        self.order, self.vocab_size = order, vocab_size

        # counts[k][(h..., w)] for k = 1..n: raw counts at the highest order, continuation counts below
        raw = Counter(tuple(stream[i : i + order]) for i in range(len(stream) - order + 1))
        counts = {order: raw}
        for k in range(order - 1, 0, -1):  # N_1+(. h w): distinct left extensions of each k-gram
            counts[k] = Counter(gram[1:] for gram in counts[k + 1])
        if order > 1:
            # k-grams at the very start of the text have no left neighbour: count them as seen once
            for k in range(1, order):
                counts[k][tuple(stream[:k])] += 0  # present, so that its count is at least its continuations
        self.counts = counts
        self.discounts = {
            k: tuple(discounts[k - 1]) if discounts is not None else kneser_ney_discounts(counts[k])
            for k in range(1, order + 1)
        }
        # per context h (a (k-1)-tuple): total count, and how many words were seen 1, 2, 3+ times after it
        self.context_total, self.context_n = {}, {}
        for k in range(1, order + 1):
            total, n123 = defaultdict(int), defaultdict(lambda: [0, 0, 0])
            for gram, c in counts[k].items():
                if c == 0:
                    continue
                total[gram[:-1]] += c
                n123[gram[:-1]][min(c, 3) - 1] += 1
            self.context_total[k], self.context_n[k] = dict(total), {h: tuple(v) for h, v in n123.items()}

    def _discount(self, k: int, c: int) -> float:
        return 0.0 if c == 0 else self.discounts[k][min(c, 3) - 1]

    def probability(self, context, w: int) -> float:
        r""":math:`P_{KN}(w \mid h)`, h = the last n-1 tokens of ``context``."""
        context = _as_token_list(context, name="context")
        if not 0 <= w < self.vocab_size:
            raise ValueError(f"w: expected a token id in [0, {self.vocab_size}), got {w}")
        h = tuple(context[-(self.order - 1) :]) if self.order > 1 else ()
        p = 1.0 / self.vocab_size  # order 0: uniform
        for k in range(1, len(h) + 2):  # from the unigram up to the longest context available
            hk = h[len(h) - (k - 1) :] if k > 1 else ()
            total = self.context_total[k].get(hk, 0)
            if total == 0:
                continue  # unseen context: P(w | h) = P(w | h^-)
            c = self.counts[k].get(hk + (w,), 0)
            d1, d2, d3 = self.discounts[k]
            n1, n2, n3 = self.context_n[k][hk]
            gamma = (d1 * n1 + d2 * n2 + d3 * n3) / total
            p = max(c - self._discount(k, c), 0.0) / total + gamma * p
        return p

    def distribution(self, context) -> torch.Tensor:
        """[V] float64, P(w | context) for every w (sums to 1)."""
        return torch.tensor([self.probability(context, w) for w in range(self.vocab_size)], dtype=torch.float64)

    def loss(self, tokens) -> float:
        """Mean -ln P(w_t | w_<t) over a token stream, nats/token (the first token with no context)."""
        stream = _as_token_list(tokens)
        if not stream:
            raise ValueError("tokens: expected at least one token, got none")
        return -sum(math.log(self.probability(stream[:t], w)) for t, w in enumerate(stream)) / len(stream)


def held_out_ngram_loss(model: NGramModel, batches, *, reuse_len: int, sep_id: int, cls_id: int) -> float:
    r"""Mean -ln P_KN over exactly the targets of the held-out left-to-right loss, nats/token.

    ``batches`` are the held-out :class:`~xlnet_ref.pretraining_data.PLMBatch` list that
    :func:`~xlnet_ref.training.train.evaluate` scores, in order. Targets and weights are those of
    :func:`~xlnet_ref.training.train.left_to_right_batch` (every position but SEP and CLS; not position
    0 of the first batch, which has no memory). The context of a target is the text before it: the
    earlier text tokens of its window, and before them the reuse parts (the first ``reuse_len``
    positions) of the earlier windows of the same row — what the model's memory holds, since windows
    advance by ``reuse_len``.
    """
    from .train import left_to_right_batch  # local: train does not import this module, but keep it one-way

    if not batches:
        raise ValueError("batches: expected at least one held-out batch, got none")
    if isinstance(reuse_len, bool) or not isinstance(reuse_len, int) or reuse_len < 1:
        raise ValueError(f"reuse_len: expected an int >= 1 (windows advance by reuse_len), got {reuse_len!r}")
    keep = model.order - 1  # context tokens the model looks at
    history = [[] for _ in range(batches[0].input_ids.shape[0])]  # per row: the text before this window
    total, weight = 0.0, 0.0
    for s, batch in enumerate(batches):
        l2r = left_to_right_batch(batch, sep_id=sep_id, cls_id=cls_id, has_memory=s > 0)
        ids, weights = batch.input_ids.tolist(), l2r.target_weights.tolist()  # [b, T], [b, K = T]
        for r, (row, row_weights) in enumerate(zip(ids, weights)):
            text = list(history[r])
            for token, w in zip(row, row_weights):
                if token in (sep_id, cls_id):
                    continue  # not text: the context skips them
                if w > 0:
                    total -= w * math.log(model.probability(text[len(text) - keep :] if keep else [], token))
                    weight += w
                text.append(token)
            history[r] = (history[r] + row[:reuse_len])[-keep:] if keep else []
    return total / weight
