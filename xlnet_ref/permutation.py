r"""Permutation language modelling: factorization orders, the two masks, partial prediction, the loss.

XLNet (Yang et al., 2019, Sec. 2.2) trains an autoregressive model on every factorization order of
the sequence at once. With :math:`\mathcal{Z}_T` the set of permutations of :math:`[1, \dots, T]`:

.. math::
    \max_\theta \; \mathbb{E}_{z \sim \mathcal{Z}_T}
    \Big[ \sum_{t=1}^{T} \log p_\theta(x_{z_t} \mid x_{z_{<t}}) \Big]            \tag{3}

The input is **never shuffled**. Only the attention masks change: the token at position
:math:`z_t` may look at the positions :math:`z_{<t}` that come before it *in the order*, wherever
they sit in the sentence. Positional encodings stay those of the original sentence.

Because the prediction of :math:`x_{z_t}` must know *which* position it predicts but must not see
the token there, the next-token distribution is re-parameterised with a target-aware
representation :math:`g_\theta(x_{z_{<t}}, z_t)` (Sec. 2.3):

.. math::
    p_\theta(X_{z_t} = x \mid x_{z_{<t}}) =
    \frac{\exp\big(e(x)^\top g_\theta(x_{z_{<t}}, z_t)\big)}
         {\sum_{x'} \exp\big(e(x')^\top g_\theta(x_{z_{<t}}, z_t)\big)}               \tag{4}

and computed by two-stream self-attention (Sec. 2.3, the two update rules, layer :math:`m`):

.. math::
    g_{z_t}^{(m)} \leftarrow \mathrm{Attention}(Q = g_{z_t}^{(m-1)},\, KV = h_{z_{<t}}^{(m-1)}; \theta)
    \quad \text{(query stream: uses } z_t \text{ but cannot see } x_{z_t})

    h_{z_t}^{(m)} \leftarrow \mathrm{Attention}(Q = h_{z_t}^{(m-1)},\, KV = h_{z_{\le t}}^{(m-1)}; \theta)
    \quad \text{(content stream: uses both } z_t \text{ and } x_{z_t})

Only the *last* tokens of each order are predicted (partial prediction, Sec. 2.3), with a cutting
point :math:`c` and :math:`K \approx |z| / (|z| - c)`:

.. math::
    \max_\theta \; \mathbb{E}_{z \sim \mathcal{Z}_T} \big[ \log p_\theta(x_{z_{>c}} \mid x_{z_{\le c}}) \big]
    = \mathbb{E}_{z \sim \mathcal{Z}_T} \Big[ \sum_{t=c+1}^{|z|} \log p_\theta(x_{z_t} \mid x_{z_{<t}}) \Big]
                                                                                              \tag{5}

Where each piece is computed
----------------------------
* :func:`sample_factorization_order` draws :math:`z \sim \mathcal{Z}_T` (uniform), or the original
  code's block-local order (``_local_perm`` in zihangdai/xlnet ``data_utils.py``).
* :func:`partial_prediction_targets` picks the targets :math:`z_{>c}` of Eq. (5).
* :func:`permutation_masks` turns :math:`z` and the targets into ``perm_mask`` (the query stream's
  "may see :math:`z_{<t}`"), the content stream's mask ("may see :math:`z_{\le t}`") and
  ``target_mapping`` (which positions the query stream predicts, :func:`target_mapping_for`).
  :func:`xlnet_ref.naive.permutation_masks_naive` is its slow twin, one loop over the steps :math:`t` of the order.
* The two update rules are computed by the model: :func:`xlnet_ref.two_stream.two_stream_attention`
  (one layer of both streams), with the masks of :func:`xlnet_ref.masks.attention_masks`, which
  takes ``perm_mask`` as the query stream's mask and ``perm_mask`` with the diagonal cleared as the
  content stream's, exactly as transformers' ``XLNetLMHeadModel`` does.
* :func:`plm_loss` is the negative of the sum in Eq. (5) (over Eq. 4's softmax), averaged over the
  real targets.

Mask convention (transformers' and the original's): ``perm_mask[i, j] = 1`` means position ``i``
may **not** attend to position ``j``. ``target_mapping[k, j] = 1`` means the ``k``-th query-stream
row predicts the token at position ``j``.

A left-to-right language model is the special case ``z = (0, 1, ..., T-1)`` with every position a
target: ``perm_mask[i, j] = 1`` iff ``j >= i`` ("cannot see itself or the future") and the
query-stream loss is the ordinary autoregressive loss
:math:`-\frac1T\sum_t \log p(x_t \mid x_{<t})` (tests/test_permutation.py shows it). One caveat
that holds for transformers and the original code too: a target whose visible set is *empty* (the
first token of the order when every token is a target and there is no memory) gets a fully masked
attention row, and subtracting 1e30 from every score makes that row *uniform over all keys*, itself
included. Give the first target something to look at: a context token (partial prediction always
leaves some), a BOS token, or memory.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")


def _describe(value) -> str:
    """What came, for an error message: dtype and shape of a tensor, else its repr."""
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {list(value.shape)}"
    return repr(value)


def _check_order(order: torch.Tensor) -> None:
    if not isinstance(order, torch.Tensor) or order.dim() != 1 or order.dtype != torch.long:
        raise ValueError(f"order: expected a 1-D long tensor [T], got {_describe(order)}")
    seq_len = order.shape[0]
    if not torch.equal(order.sort().values, torch.arange(seq_len, device=order.device)):
        raise ValueError(f"order: expected a permutation of 0..{seq_len - 1}, got {order.tolist()}")


def _check_flags(name: str, flags: torch.Tensor, seq_len: int) -> None:
    if not isinstance(flags, torch.Tensor) or flags.dtype != torch.bool or tuple(flags.shape) != (seq_len,):
        raise ValueError(f"{name}: expected a bool tensor of shape [{seq_len}], got {_describe(flags)}")


def sample_factorization_order(
    seq_len: int,
    *,
    perm_size: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    r"""Draw a factorization order :math:`z` (Eq. 3): ``z[t]`` is the position predicted at step ``t``.

    ``perm_size=None``: :math:`z` is uniform over all :math:`T!` permutations (the paper).

    ``perm_size=P``: the original code's block-local order (``_local_perm``). The sequence is cut
    into ``T / P`` blocks of ``P`` consecutive positions; one permutation :math:`\tau` of
    :math:`0..P-1` is drawn and used in *every* block, and the blocks follow each other in sentence
    order: ``z[b*P + s] = b*P + tau[s]``. So all of block ``b`` comes before all of block ``b+1``.
    ``P`` must divide ``T`` (the original reshapes to ``[-1, perm_size]``).

    Random numbers come from ``generator`` (on its device); the order is returned on ``device``
    (default: the generator's device, else the CPU).
    """
    _check_positive_int("seq_len", seq_len)
    if perm_size is not None:
        _check_positive_int("perm_size", perm_size)
        if seq_len % perm_size != 0:
            raise ValueError(f"perm_size: expected a divisor of seq_len={seq_len}, got {perm_size}")
    draw_device = generator.device if generator is not None else torch.device("cpu")
    out_device = torch.device(device) if device is not None else draw_device
    if perm_size is None:
        z = torch.randperm(seq_len, generator=generator, device=draw_device)  # [T]
    else:
        tau = torch.randperm(perm_size, generator=generator, device=draw_device)  # [P], shared by all blocks
        block_start = torch.arange(0, seq_len, perm_size, device=draw_device)  # [T/P]
        z = (block_start[:, None] + tau[None, :]).reshape(-1)  # [T/P, P] -> [T]
    return z.to(out_device)


def order_to_rank(order: torch.Tensor) -> torch.Tensor:
    """The inverse permutation: ``rank[i] = t`` such that ``order[t] = i`` (the step at which position i comes).

    The original code's ``_local_perm`` works with this ``rank`` (its ``index``) rather than with ``z``.
    """
    _check_order(order)
    rank = torch.empty_like(order)  # [T]
    rank[order] = torch.arange(order.shape[0], device=order.device)
    return rank


def partial_prediction_targets(order: torch.Tensor, *, K: int | float) -> torch.Tensor:
    r"""The targets of partial prediction (Eq. 5): the last :math:`|z| - c` positions of the order.

    The cutting point is :math:`c = T - n` with :math:`n = \max(1, \lfloor T / K \rfloor)`, so that
    :math:`K \approx |z| / (|z| - c)`; the paper uses K = 6 or 7 (the original pretraining predicts
    85 of 512 tokens, K = 6). Returns ``is_target`` [T] bool, True at the positions
    ``order[c:]``.
    """
    _check_order(order)
    if isinstance(K, bool) or not isinstance(K, (int, float)) or not K >= 1:
        raise ValueError(f"K: expected a number >= 1 (about |z| / number of targets), got {K!r}")
    seq_len = order.shape[0]
    n = max(1, int(seq_len / K))  # |z| - c
    is_target = torch.zeros(seq_len, dtype=torch.bool, device=order.device)  # [T]
    is_target[order[seq_len - n :]] = True
    return is_target


class PermutationMasks(NamedTuple):
    """What :func:`permutation_masks` returns (a tuple: unpack the first two for the model)."""

    perm_mask: torch.Tensor  # [i, j] float, 1 = query stream at i may NOT attend j (transformers' perm_mask)
    target_mapping: torch.Tensor  # [k, j] float, row k one-hot at the k-th target position; zero rows pad
    content_mask: torch.Tensor  # [i, j] float, 1 = content stream at i may NOT attend j (perm_mask minus diagonal)
    target_positions: torch.Tensor  # [k] long, the position each row predicts (0 on padding rows)
    target_weights: torch.Tensor  # [k] float, 1 = real target, 0 = padding row


def permutation_masks(
    order: torch.Tensor,
    is_target: torch.Tensor,
    *,
    is_functional: torch.Tensor | None = None,
    num_predict: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> PermutationMasks:
    r"""Build the two streams' masks and ``target_mapping`` from an order :math:`z` and its targets.

    Args:
        order: ``z``, [T] long, a permutation of ``0..T-1`` (``order[t]`` = position at step ``t``).
        is_target: [T] bool, the positions predicted (e.g. :func:`partial_prediction_targets`, or the
            spans of :func:`xlnet_ref.pretraining_data.sample_span_mask`).
        is_functional: [T] bool or None. Positions that are never targets but keep their place in
            the order instead of joining the context — the original treats SEP and CLS this way.
        num_predict: pad ``target_mapping`` with zero rows up to this many rows (the original's
            fixed ``num_predict``); None = exactly one row per target.
        dtype: dtype of the float masks.

    Three kinds of position (Eq. 5 with the original ``_local_perm``'s reading of it):

    * **context** :math:`C` = neither target nor functional. These are :math:`x_{z_{\le c}}`: they
      come first in the order, see each other (and themselves) and never a target or functional
      token. Their place inside :math:`z` is irrelevant, which is why any target set works: moving
      all non-targets to the front of :math:`z` is again a factorization order.
    * **targets**, at step :math:`t` of the order: the query stream sees :math:`C` and the
      non-context positions :math:`z_{<t}` (never itself) — Eq. (4)'s :math:`x_{z_{<t}}`; the
      content stream sees those and itself, :math:`x_{z_{\le t}}`.
    * **functional**: like a target for the content stream; it is not predicted, and for the
      query stream it may also see itself (the original sets it so).

    With rank :math:`r(i)` = step of position :math:`i` in the order, and :math:`r(i) = -1` for
    context positions:

    ``perm_mask[i, j] = 0``  iff  :math:`j \in C` or :math:`r(j) < r(i)` or (:math:`j = i` and :math:`i` not a target)

    ``content_mask[i, j] = 0``  iff  :math:`j \in C` or :math:`r(j) \le r(i)`

    The model derives the content mask itself from ``perm_mask`` (by clearing the diagonal); it is
    returned here so that it can be inspected and tested.

    ``target_mapping`` has one row per target, in increasing position order (as the original),
    then ``num_predict - #targets`` zero rows; ``target_positions``/``target_weights`` describe the
    rows (gather the labels with ``input_ids[..., target_positions]``, mask the loss with the weights).
    All tensors are made on ``order``'s device.
    """
    _check_order(order)
    seq_len = order.shape[0]
    device = order.device
    _check_flags("is_target", is_target, seq_len)
    if is_functional is None:
        is_functional = torch.zeros(seq_len, dtype=torch.bool, device=device)
    _check_flags("is_functional", is_functional, seq_len)
    if (is_target & is_functional).any():
        both = torch.nonzero(is_target & is_functional).flatten().tolist()
        raise ValueError(f"is_functional: expected no position that is also a target, got positions {both} in both")
    in_context = ~is_target & ~is_functional  # [T] C = x_{z<=c}
    r = torch.where(in_context, torch.full_like(order, -1), order_to_rank(order))  # [T] context first
    earlier = r[None, :] < r[:, None]  # [i, j]  r(j) < r(i)
    itself = torch.eye(seq_len, dtype=torch.bool, device=device)  # [i, j]  j == i
    query_sees = in_context[None, :] | earlier | (itself & ~is_target[:, None])  # [i, j]
    content_sees = in_context[None, :] | earlier | itself  # [i, j]  r(j) <= r(i)

    target_mapping, target_positions, target_weights = target_mapping_for(
        is_target, num_predict=num_predict, dtype=dtype
    )
    return PermutationMasks(
        perm_mask=(~query_sees).to(dtype),
        target_mapping=target_mapping,
        content_mask=(~content_sees).to(dtype),
        target_positions=target_positions,
        target_weights=target_weights,
    )


def target_mapping_for(
    is_target: torch.Tensor,
    *,
    num_predict: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""``(target_mapping [k, j], target_positions [k], target_weights [k])`` for the targets ``is_target`` [T] bool.

    Row ``k`` of ``target_mapping`` is one-hot at the ``k``-th target position (increasing
    positions, as the original): the query stream computes :math:`g_\theta(x_{z_{<t}}, z_t)` for
    exactly these positions. With ``num_predict`` the rows are padded with zero rows (weight 0)
    up to ``num_predict``. Made on ``is_target``'s device.
    """
    if not isinstance(is_target, torch.Tensor) or is_target.dtype != torch.bool or is_target.dim() != 1:
        raise ValueError(f"is_target: expected a 1-D bool tensor [T], got {_describe(is_target)}")
    seq_len, device = is_target.shape[0], is_target.device
    positions = torch.nonzero(is_target).flatten()  # [n] increasing
    num_targets = positions.shape[0]
    if num_predict is not None:
        if isinstance(num_predict, bool) or not isinstance(num_predict, int) or num_predict < num_targets:
            raise ValueError(
                f"num_predict: expected an int >= the number of targets ({num_targets}), got {num_predict!r}"
            )
    num_rows = num_targets if num_predict is None else num_predict
    target_positions = torch.zeros(num_rows, dtype=torch.long, device=device)  # [k]
    target_positions[:num_targets] = positions
    target_weights = torch.zeros(num_rows, dtype=dtype, device=device)  # [k]
    target_weights[:num_targets] = 1
    target_mapping = F.one_hot(target_positions, seq_len).to(dtype) * target_weights[:, None]  # [k, j]
    return target_mapping, target_positions, target_weights


def plm_loss(logits: torch.Tensor, target_ids: torch.Tensor, target_weights: torch.Tensor) -> torch.Tensor:
    r"""The permutation LM loss: masked mean of per-target cross-entropies (negative Eq. 5 per token).

    .. math::
        \mathcal{L} = \frac{\sum_{b,k} w_{bk}\, \big(-\log \mathrm{softmax}(\mathrm{logits}_{bk})[y_{bk}]\big)}
                           {\sum_{b,k} w_{bk}}

    Args:
        logits: [b, k, V], the query stream's logits (the model's output with ``target_mapping``),
            :math:`e(x)^\top g_\theta(x_{z_{<t}}, z_t)` of Eq. (4) plus the output bias.
        target_ids: [b, k] long, the token each row predicts (any valid id on padding rows).
        target_weights: [b, k] float, 1 for a real target and 0 for a padding row.

    The cross-entropy is computed per token first and the padding rows are then *removed* from the
    mean (not multiplied onto an already averaged loss, which would have no effect). Padding rows
    cannot leak even if their loss is inf or nan. With no real target the loss is 0.
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
        raise ValueError(f"logits: expected a float tensor [b, k, V], got {_describe(logits)}")
    b, k, _ = logits.shape
    if not isinstance(target_ids, torch.Tensor) or tuple(target_ids.shape) != (b, k) or target_ids.dtype != torch.long:
        raise ValueError(f"target_ids: expected a long tensor of shape [{b}, {k}], got {_describe(target_ids)}")
    if not isinstance(target_weights, torch.Tensor) or tuple(target_weights.shape) != (b, k):
        raise ValueError(f"target_weights: expected a tensor of shape [{b}, {k}], got {_describe(target_weights)}")
    per_token = F.cross_entropy(logits.float().flatten(0, 1), target_ids.flatten(), reduction="none").view(
        b, k
    )  # [b, k]  -log p(x_{z_t} | x_{z<t})
    w = target_weights.to(per_token.dtype)  # [b, k]
    per_token = torch.where(w > 0, per_token, torch.zeros_like(per_token))  # padding: removed, even if nan
    return (per_token * w).sum() / w.sum().clamp_min(torch.finfo(w.dtype).tiny)
