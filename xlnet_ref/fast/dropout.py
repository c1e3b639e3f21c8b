r"""Dropout on the fast path (xlnet_ref.fast).

The readable path uses ``nn.Dropout``. On a CPU, drawing the random numbers is the costliest part of
dropout (about a sixth of a training step at dropout 0.1): torch's generator makes one 32-bit draw per
``rand_like`` element. Here one draw serves two elements: each gets 15 uniform random bits
:math:`u \in \{0, \dots, 2^{15} - 1\}` and is kept when :math:`u \ge t` with :math:`t = \mathrm{round}(p \cdot 2^{15})`.
So an element is dropped with probability :math:`p' = t / 2^{15}`, which is :math:`p` rounded to a
multiple of :math:`2^{-15}` (0.1 -> 0.100006; ``rand_like`` rounds to :math:`2^{-24}` the same way), and
kept elements are scaled by :math:`1 / (1 - p')`, so that the expectation is exactly x, as in ``nn.Dropout``.
Each element is independent of every other. tests/test_fast_path.py checks the rate and the expectation.
"""

from __future__ import annotations

import torch

BITS = 15  # random bits per element: a 32-bit draw gives 31 uniform bits, two elements take 15 each


def drop_threshold(p: float) -> int:
    """t: an element is dropped when its 15 random bits are below t = round(p * 2^15)."""
    return round(p * 2**BITS)


def keep_scale(p: float) -> float:
    """1 / (1 - p'): the scale of kept elements, with p' = t / 2^15 the exact drop probability."""
    return 2**BITS / (2**BITS - drop_threshold(p))


def keep_mask(x: torch.Tensor, p: float, training: bool, dtype: torch.dtype | None = None) -> torch.Tensor | None:
    """Dropout's keep mask [u >= t] (0./1. in x's shape, in ``dtype``: x's by default, or torch.bool to
    keep it in a byte per element), or None when nothing is dropped. The caller scales by
    :func:`keep_scale` wherever that is cheapest (fused into the next operation)."""
    dtype = x.dtype if dtype is None else dtype
    if not training or p == 0:
        return None
    if not 0 < p < 1:
        raise ValueError(f"dropout p: expected 0 <= p < 1, got {p}")
    if torch.compiler.is_compiling():  # dynamo cannot trace random_(); the compiled kernel draws its own
        # uniforms (multiples of 2^-24): P(u < t / 2^15) is exactly t / 2^15, the same drop probability
        return (torch.rand_like(x, dtype=torch.float32) >= drop_threshold(p) / 2**BITS).to(dtype)
    n = x.numel()
    draws = torch.empty((n + 1) // 2, dtype=torch.int32, device=x.device).random_()  # 31 uniform bits each
    # two int16 halves per draw, bit 15 of each cleared (the high half's is the draw's sign bit, always 0)
    bits = draws.bitwise_and_(0x7FFF7FFF).view(torch.int16)[:n].view(x.shape)  # uniform on 0..2^15-1
    # compared straight into the dtype: multiplying x by a bool mask would convert it twice (forward, backward)
    return torch.ge(bits, drop_threshold(p), out=torch.empty(x.shape, dtype=dtype, device=x.device))


def fast_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """x * [u >= t] / (1 - p'): ``nn.Dropout`` with p rounded to a multiple of 2^-15 (see the module docstring)."""
    mask = keep_mask(x, p, training)
    return x if mask is None else x * mask.mul_(keep_scale(p))


def residual_dropout(x: torch.Tensor, out: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """x + dropout(out) in one pass: addcmul(x, out, mask, value=1 / (1 - p'))."""
    mask = keep_mask(out, p, training)
    return x + out if mask is None else torch.addcmul(x, out, mask, value=keep_scale(p))
