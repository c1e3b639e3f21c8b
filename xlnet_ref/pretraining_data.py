r"""Pretraining data for the permutation LM: span targets, ``[reuse | A SEP B SEP CLS]`` examples, batches.

This follows the original code (zihangdai/xlnet ``data_utils.py``: ``_sample_mask``,
``create_tfrecords``, ``_local_perm`` and the parser in ``get_dataset``), rewritten from its
description. The objective itself (Eq. 3-5) lives in :mod:`xlnet_ref.permutation`.

One example of length ``T = seq_len`` with ``R = reuse_len``::

    position   0 .. R-1 | R .. R+|A|-1 | R+|A| | .. B .. | T-2 | T-1
    token      reuse    | A            | SEP   | B       | SEP | CLS
    segment    0        | 0            | 0     | 1       | 1   | 2

* The text is read in consecutive windows that advance by ``reuse_len``: the reuse part of the next
  window of a row is the text right after this window's reuse part. The model caches the hidden
  states of the first ``reuse_len`` positions as memory (``XLNetConfig.reuse_len``), so the memory
  always holds the text just before the new reuse part: memory carries the text on
  (Transformer-XL Sec. 3.2; XLNet Sec. 2.4).
* A and B: ``seq_len - reuse_len - 3`` consecutive tokens after the reuse part, cut at a uniformly
  random point; B is always the continuation of A. (The original picks, half of the time, a random
  B from elsewhere in the corpus and cuts at sentence boundaries — a leftover of next-sentence
  prediction, which XLNet drops (Sec. 3.4, ablation); we have no sentence ids here.)
* Targets: spans chosen by :func:`sample_span_mask` (the original's ``_sample_mask``), separately in
  the reuse part and in the rest, ``num_predict`` in all; SEP and CLS are never targets.
* Factorization order: one order for the reuse part and one for the rest
  (:func:`xlnet_ref.permutation.sample_factorization_order`, uniform or block-local). The reuse
  part comes first in the order: the rest sees all of it, it sees nothing of the rest. That is what
  makes the cached memory safe: the memory of the next window is built from positions that never
  looked at the text after them.
* ``bi_data``: the first half of the batch reads the text forwards, the second half reads the same
  rows backwards (row ``r + b/2`` is row ``r`` reversed), as the original's ``create_tfrecords``. The
  model must be built with ``XLNetConfig(bi_data=True)`` so that the second half gets reversed
  relative positions.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields

import torch

from .permutation import _check_flags, _describe, permutation_masks, sample_factorization_order, target_mapping_for

SPAN_UNITS = ("words", "pieces")


def _check_int(name: str, value, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")


def span_length_probabilities(max_span: int) -> torch.Tensor:
    r"""p(n) for n = 1..max_span, :math:`p(n) \propto 1/n` (the original's ``pvals``). Shape [max_span]."""
    _check_int("max_span", max_span, minimum=1)
    inv_n = 1.0 / torch.arange(1, max_span + 1, dtype=torch.float64)
    return inv_n / inv_n.sum()


def sample_span_mask(
    seq_len: int,
    *,
    num_predict: int | None = None,
    word_starts: torch.Tensor | None = None,
    selectable: torch.Tensor | None = None,
    mask_alpha: int = 6,
    mask_beta: int = 1,
    max_span: int = 5,
    span_unit: str = "words",
    reverse: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Choose the prediction targets as spans, like the original ``_sample_mask``. Returns [T] bool.

    Walking left to right from ``cur = 0``, repeat:

    1. draw a span length :math:`n \in \{1..\text{max\_span}\}` with :math:`p(n) \propto 1/n`
       (with ``num_predict``: at most the number still missing);
    2. a context of ``ctx = n * mask_alpha // mask_beta`` units goes around the span, ``l_ctx``
       uniform in ``0..ctx-1`` on its left and ``ctx - l_ctx`` (at least 1) on its right;
    3. the span starts at the first (selectable) word start after ``l_ctx`` units from ``cur`` and
       covers ``n`` units; then ``cur`` moves ``r_ctx`` units past the span's end.

    A unit is what ``span_unit`` says — a word or a piece — for the span *and* its context alike.

    It stops at the end of the sequence or once ``num_predict`` tokens are chosen; if it falls
    short of ``num_predict``, single tokens are added uniformly at random (as the original).

    **n pieces versus n words (the original's quirk, upstream issues 16 and 220).** The original's
    loop is meant to cover ``n`` whole words ("end position of the n-gram = start of the n+1-th"),
    but it tests ``seg[beg]`` (always a word start) instead of ``seg[end]``, so it counts every piece
    and masks exactly ``n`` *subword pieces* starting at a word start, possibly ending mid-word.
    ``span_unit="words"`` (our default) does what the comment says: ``n`` whole words, as the
    paper's span-based prediction intends. ``span_unit="pieces"`` reproduces the original. With
    ``word_starts=None`` every token is a word and the two coincide.

    **Rate.** The original's docstring says "about ``mask_beta`` tokens in a context of
    ``mask_alpha``", i.e. 1/6, but each span of ``n`` comes *with* ``n * alpha / beta`` context
    units, so without ``num_predict`` a fraction :math:`\beta / (\alpha + \beta)` (1/7) of the units
    is chosen (about 1/7 of the tokens too, when span words are as long as context words). The
    original counts span and context in pieces; counting the span in words but the context in
    tokens (this function before the fix) chose ~0.35 of a byte-level text, so with a fixed
    ``num_predict`` the walk ran out of targets early and they bunched at the start of each part.
    In pretraining ``num_predict`` is fixed (85 of 512, K = 6) and the random single tokens make up
    the difference.

    Args:
        seq_len: T.
        num_predict: the exact number of targets wanted, or None (as many as the walk gives).
        word_starts: [T] bool, True where a word begins (SentencePiece "▁" pieces, punctuation,
            special symbols in the original). None = every token starts a word.
        selectable: [T] bool, positions that may be chosen at all (False for SEP and CLS, which
            the original could select and then drop as targets — we never select them, so no
            target slot is wasted). None = all.
        mask_alpha, mask_beta: context size ``alpha / beta`` per span token (original flags; 6 and 1).
        max_span: the longest span (original ``max_gram``, 5).
        span_unit: ``"words"`` or ``"pieces"``, see above.
        reverse: walk the flipped sequence and flip the mask back (the backward half of
            ``bi_data``: the row is reversed text, and the walk should follow the forward text so
            that spans start at word starts). ``word_starts``/``selectable`` are given in the
            row's own order.
        generator: the source of randomness.

    The mask is returned on the device of ``word_starts`` (or ``selectable``; else the CPU).
    """
    _check_int("seq_len", seq_len, minimum=1)
    if num_predict is not None:
        _check_int("num_predict", num_predict, minimum=0)
    _check_int("mask_beta", mask_beta, minimum=1)
    _check_int("mask_alpha", mask_alpha, minimum=mask_beta)  # so that every span has >= 1 context token
    _check_int("max_span", max_span, minimum=1)
    if span_unit not in SPAN_UNITS:
        raise ValueError(f"span_unit: expected one of {SPAN_UNITS}, got {span_unit!r}")
    device = next((t.device for t in (word_starts, selectable) if isinstance(t, torch.Tensor)), torch.device("cpu"))
    if word_starts is None:
        word_starts = torch.ones(seq_len, dtype=torch.bool)
    if selectable is None:
        selectable = torch.ones(seq_len, dtype=torch.bool)
    _check_flags("word_starts", word_starts, seq_len)
    _check_flags("selectable", selectable, seq_len)
    word_starts, selectable = word_starts.cpu(), selectable.cpu()  # a Python walk: run it on the CPU
    if num_predict is not None and num_predict > int(selectable.sum()):
        raise ValueError(
            f"num_predict: expected at most the {int(selectable.sum())} selectable positions, got {num_predict}"
        )
    if reverse:
        word_starts, selectable = word_starts.flip(0), selectable.flip(0)

    starts = word_starts.tolist()
    can_pick = selectable.tolist()
    span_p = span_length_probabilities(max_span)  # [max_span]
    mask = [False] * seq_len
    num_chosen = 0

    def span_end(beg: int, n: int) -> int:
        """One past the last position of a span of n units starting at word start `beg`."""
        if span_unit == "pieces":
            return beg + n  # the original's behaviour
        end, words = beg + 1, 1
        while end < seq_len and not (starts[end] and words == n):
            words += starts[end]
            end += 1
        return end

    def skip_units(pos: int, k: int) -> int:
        """k units on from pos — the context is counted in the spans' unit: in "words" mode the k-th
        word start after the first word start at or after pos (the tail of a word cut off at pos is
        no unit of its own), in "pieces" mode pos + k."""
        if span_unit == "pieces":
            return pos + k
        while pos < seq_len and not starts[pos]:
            pos += 1
        for _ in range(k):
            pos += 1
            while pos < seq_len and not starts[pos]:
                pos += 1
        return pos

    cur = 0
    while cur < seq_len:
        if num_predict is not None and num_chosen >= num_predict:
            break
        n = int(torch.multinomial(span_p, 1, generator=generator)) + 1
        if num_predict is not None:
            n = min(n, num_predict - num_chosen)
        ctx = n * mask_alpha // mask_beta
        l_ctx = int(torch.randint(ctx, (1,), generator=generator))
        r_ctx = ctx - l_ctx

        beg = skip_units(cur, l_ctx)
        while beg < seq_len and not (starts[beg] and can_pick[beg]):
            beg += 1
        if beg >= seq_len:
            break
        end = span_end(beg, n)
        if num_predict is not None:  # "words" may hold more pieces than still missing: fewer words
            while n > 1 and sum(can_pick[beg:end]) > num_predict - num_chosen:
                n -= 1
                end = span_end(beg, n)
            if sum(can_pick[beg:end]) > num_predict - num_chosen:
                break
        # the original stops at end >= seq_len (a span touching the last piece is dropped); a whole
        # word may end exactly at seq_len
        if end > seq_len or (span_unit == "pieces" and end >= seq_len):
            break
        for p in range(beg, end):
            if can_pick[p]:
                mask[p] = True
                num_chosen += 1
        cur = skip_units(end, r_ctx)

    result = torch.tensor(mask, dtype=torch.bool)  # [T]
    if num_predict is not None and num_chosen < num_predict:
        free = torch.nonzero(~result & selectable).flatten()  # never re-pick, never SEP/CLS
        pick = free[torch.randperm(free.numel(), generator=generator)[: num_predict - num_chosen]]
        result[pick] = True
    return (result.flip(0) if reverse else result).to(device)


@dataclass
class PLMBatch:
    """One batch for the permutation LM (shapes: b batch, T sequence, K = num_predict target rows)."""

    input_ids: torch.Tensor  # [b, T] long, [reuse | A SEP B SEP CLS]
    token_type_ids: torch.Tensor  # [b, T] long, 0 reuse and A (and the first SEP), 1 B (and the second SEP), 2 CLS
    perm_mask: torch.Tensor  # [b, T, T] float, 1 = i may NOT attend j (query stream; model adds the diagonal for h)
    target_mapping: torch.Tensor  # [b, K, T] float one-hot rows, zero rows = padding
    target_ids: torch.Tensor  # [b, K] long, the token under each target row (0 on padding rows)
    target_weights: torch.Tensor  # [b, K] float, 1 real target, 0 padding
    order: torch.Tensor  # [b, T] long, z: reuse part's order, then the rest's (positions >= reuse_len)
    is_target: torch.Tensor  # [b, T] bool, positions predicted

    def to(self, device: torch.device | str) -> PLMBatch:
        return PLMBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


def example_masks(
    input_ids: torch.Tensor,
    is_target: torch.Tensor,
    *,
    reuse_len: int,
    sep_id: int,
    cls_id: int,
    perm_size: int | None = None,
    num_predict: int | None = None,
    generator: torch.Generator | None = None,
):
    r"""Orders and masks of one ``[reuse | A SEP B SEP CLS]`` example, as the original's parser.

    The reuse part (``reuse_len`` positions) and the rest each get their own factorization order
    and :func:`~xlnet_ref.permutation.permutation_masks` (SEP and CLS as functional tokens), and
    the two are put side by side with the reuse part first in the order::

        perm_mask = [[ M_reuse , 1      ],     reuse part: never sees the rest
                     [ 0       , M_rest ]]     rest: sees all of the reuse part

    Returns ``(order [T], perm_mask [T, T], target_mapping [K, T], target_positions [K], target_weights [K])``.
    """
    seq_len = input_ids.shape[0]
    device = input_ids.device
    is_functional = (input_ids == sep_id) | (input_ids == cls_id)  # [T]
    if (is_target & is_functional).any():
        raise ValueError("is_target: expected no SEP or CLS position among the targets")
    orders, blocks = [], []
    for lo, hi in ((0, reuse_len), (reuse_len, seq_len)):
        if hi == lo:
            continue
        z = sample_factorization_order(hi - lo, perm_size=perm_size, generator=generator).to(device)
        part = permutation_masks(z, is_target[lo:hi], is_functional=is_functional[lo:hi])
        orders.append(z + lo)
        blocks.append(part.perm_mask)
    perm_mask = torch.ones(seq_len, seq_len, device=device)  # [i, j] reuse rows: cannot see the rest
    perm_mask[reuse_len:, :reuse_len] = 0  # rest rows: see the whole reuse part
    lo = 0
    for block in blocks:
        hi = lo + block.shape[0]
        perm_mask[lo:hi, lo:hi] = block
        lo = hi
    target_mapping, target_positions, target_weights = target_mapping_for(is_target, num_predict=num_predict)
    return torch.cat(orders), perm_mask, target_mapping, target_positions, target_weights


def plm_batches(
    tokens: torch.Tensor,
    *,
    seq_len: int,
    reuse_len: int,
    batch_size: int,
    num_predict: int | None,
    perm_size: int | None,
    bi_data: bool,
    sep_id: int,
    cls_id: int,
    mask_alpha: int = 6,
    mask_beta: int = 1,
    max_span: int = 5,
    word_starts: torch.Tensor | None = None,
    span_unit: str = "words",
    generator: torch.Generator | None = None,
) -> Iterator[PLMBatch]:
    r"""Cut a 1-D token stream into consecutive permutation-LM batches (the original ``create_tfrecords`` + parser).

    The stream is split into ``batch_size`` rows of equal length (``batch_size / 2`` rows and their
    reversed copies with ``bi_data``); batch ``s`` holds, in every row, the window starting at
    ``s * reuse_len`` of that row, so row ``r`` of batch ``s+1`` continues row ``r`` of batch ``s``
    (pass the model's ``mems`` on). With ``reuse_len = 0`` windows advance by
    ``seq_len - 3``, and a model with ``mem_len > 0`` then caches the whole previous window. The last window that does not fit is dropped.

    Targets: ``num_predict`` per example — ``num_predict - num_predict * (T - R) // T`` in the
    reuse part and the rest in the rest (the original's halves when ``R = T / 2``). With
    ``num_predict=None`` the span walk decides and K is the largest count in the batch, the other
    rows padded. ``target_weights`` marks padding rows (possible only then).

    Args:
        tokens: [N] long, the token stream (documents separated as you like).
        seq_len, reuse_len: T and R; A and B together get ``T - R - 3 >= 2`` tokens.
        batch_size: b (even with ``bi_data``).
        num_predict: K target rows per example, or None.
        perm_size: None = uniform orders; else the block-local order of this block size, which must
            divide ``reuse_len`` and ``seq_len - reuse_len``.
        bi_data: second half of the batch = the first half's rows reversed.
        sep_id, cls_id: the SEP and CLS ids (never targets, wherever they appear).
        mask_alpha, mask_beta, max_span, span_unit: see :func:`sample_span_mask`.
        word_starts: [N] bool aligned with ``tokens``, or None (every token a word).
        generator: the source of randomness.

    Batches are returned on ``tokens``' device.
    """
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 1 or tokens.dtype != torch.long:
        raise ValueError(f"tokens: expected a 1-D long tensor (the token stream), got {_describe(tokens)}")
    _check_int("reuse_len", reuse_len, minimum=0)
    _check_int("seq_len", seq_len, minimum=reuse_len + 5)  # A, B >= 1 token each, 2 SEP, CLS
    _check_int("batch_size", batch_size, minimum=1)
    if not isinstance(bi_data, bool):
        raise ValueError(f"bi_data: expected a bool, got {bi_data!r}")
    if bi_data and batch_size % 2 != 0:
        raise ValueError(
            f"batch_size: expected an even number with bi_data=True (forward and backward halves), got {batch_size}"
        )
    if perm_size is not None:
        _check_int("perm_size", perm_size, minimum=1)
        for name, length in (("reuse_len", reuse_len), ("seq_len - reuse_len", seq_len - reuse_len)):
            if length % perm_size != 0:
                raise ValueError(f"perm_size: expected a divisor of {name}={length}, got {perm_size}")
    if num_predict is not None:
        _check_int("num_predict", num_predict, minimum=1)
        if num_predict > seq_len - 3:
            raise ValueError(
                f"num_predict: expected at most seq_len - 3 = {seq_len - 3} (SEP, SEP and CLS are never targets), "
                f"got {num_predict}"
            )
    if word_starts is None:
        word_starts = torch.ones_like(tokens, dtype=torch.bool)
    _check_flags("word_starts", word_starts, tokens.shape[0])
    for name, value in (("sep_id", sep_id), ("cls_id", cls_id)):
        _check_int(name, value, minimum=0)

    device = tokens.device
    tokens, word_starts = tokens.cpu(), word_starts.cpu()  # built on the CPU, moved at the end
    n_rows = batch_size // 2 if bi_data else batch_size
    row_len = tokens.shape[0] // n_rows
    ab_len = seq_len - reuse_len - 3  # |A| + |B|
    step = reuse_len if reuse_len > 0 else ab_len
    if row_len < reuse_len + ab_len:
        raise ValueError(
            f"tokens: expected at least {n_rows * (reuse_len + ab_len)} tokens ({n_rows} rows of "
            f"{reuse_len + ab_len}), got {tokens.shape[0]}"
        )
    rows = tokens[: n_rows * row_len].view(n_rows, row_len)  # [b', N/b']
    row_starts = word_starts[: n_rows * row_len].view(n_rows, row_len)  # [b', N/b']
    backward = [False] * n_rows
    if bi_data:
        rows = torch.cat([rows, rows.flip(1)])  # [b, N/b'] second half: the same text backwards
        row_starts = torch.cat([row_starts, row_starts.flip(1)])
        backward += [True] * n_rows
    if num_predict is None:
        n_reuse = n_rest = None
    else:
        n_rest = num_predict * (seq_len - reuse_len) // seq_len
        n_reuse = num_predict - n_rest
    sep = torch.tensor([sep_id])
    cls = torch.tensor([cls_id])
    span_args = dict(
        mask_alpha=mask_alpha, mask_beta=mask_beta, max_span=max_span, span_unit=span_unit, generator=generator
    )

    start = 0
    while start + reuse_len + ab_len <= row_len:
        examples = []
        for r in range(batch_size):
            reuse = rows[r, start : start + reuse_len]  # [R]
            text = rows[r, start + reuse_len : start + reuse_len + ab_len]  # [|A| + |B|]
            text_starts = row_starts[r, start + reuse_len : start + reuse_len + ab_len]
            cut = int(torch.randint(1, ab_len, (1,), generator=generator))  # |A|, in 1..ab_len-1
            input_ids = torch.cat([reuse, text[:cut], sep, text[cut:], sep, cls])  # [T]
            token_type_ids = torch.tensor([0] * (reuse_len + cut + 1) + [1] * (ab_len - cut + 1) + [2])  # [T]
            starts = torch.cat(
                [
                    row_starts[r, start : start + reuse_len],
                    text_starts[:cut],
                    torch.tensor([True]),
                    text_starts[cut:],
                    torch.tensor([True, True]),
                ]
            )
            selectable = (input_ids != sep_id) & (input_ids != cls_id)  # [T]
            if reuse_len > 0:
                in_reuse = sample_span_mask(
                    reuse_len,
                    num_predict=n_reuse,
                    word_starts=starts[:reuse_len],
                    selectable=selectable[:reuse_len],
                    reverse=backward[r],
                    **span_args,
                )
            else:
                in_reuse = torch.zeros(0, dtype=torch.bool)
            in_rest = sample_span_mask(
                seq_len - reuse_len,
                num_predict=n_rest,
                word_starts=starts[reuse_len:],
                selectable=selectable[reuse_len:],
                reverse=backward[r],
                **span_args,
            )
            is_target = torch.cat([in_reuse, in_rest])  # [T]
            examples.append((input_ids, token_type_ids, is_target))

        k = num_predict if num_predict is not None else max(int(t.sum()) for _, _, t in examples)
        columns = {
            name: []
            for name in (
                "input_ids",
                "token_type_ids",
                "perm_mask",
                "target_mapping",
                "target_ids",
                "target_weights",
                "order",
                "is_target",
            )
        }
        for input_ids, token_type_ids, is_target in examples:
            order, perm_mask, target_mapping, target_positions, target_weights = example_masks(
                input_ids,
                is_target,
                reuse_len=reuse_len,
                sep_id=sep_id,
                cls_id=cls_id,
                perm_size=perm_size,
                num_predict=k,
                generator=generator,
            )
            columns["input_ids"].append(input_ids)
            columns["token_type_ids"].append(token_type_ids)
            columns["perm_mask"].append(perm_mask)
            columns["target_mapping"].append(target_mapping)
            columns["target_ids"].append(torch.where(target_weights > 0, input_ids[target_positions], 0))
            columns["target_weights"].append(target_weights)
            columns["order"].append(order)
            columns["is_target"].append(is_target)
        yield PLMBatch(**{name: torch.stack(values) for name, values in columns.items()}).to(device)
        start += step
