"""Additive masks: the fast path turns each bool mask, once per forward pass, into one that every layer
adds to its scores (0 where visible, -1e30 where hidden): on a CPU, adding a float tensor is about ten
times cheaper than ``masked_fill`` with a broadcast bool mask."""

from __future__ import annotations

import torch

from ..masks import mask_value


def additive_mask(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """[b or 1, i, j] bool (True = hidden)  ->  the same shape in ``dtype``: 0 where visible, -1e30 where
    hidden (-65500 in float16). Added to a score s, it gives exactly -1e30 wherever |s| is below 1e30's
    rounding step (~7.6e22), which is what setting the score gives (xlnet_ref.attention)."""
    if mask is None:
        return None
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, -mask_value(dtype))
