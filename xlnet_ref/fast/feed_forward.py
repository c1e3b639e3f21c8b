"""The position-wise feed-forward on the fast path (dropout's scale fused into the matmul and the residual)."""

from __future__ import annotations

import torch

from ..feed_forward import PositionwiseFF
from .dropout import keep_mask, keep_scale, residual_dropout


def feed_forward(ff: PositionwiseFF, x: torch.Tensor) -> torch.Tensor:
    """:class:`xlnet_ref.feed_forward.PositionwiseFF` on the fast path: the same weights and equation; the inner dropout's
    1 / (1 - p) is applied inside the second matmul (addmm's alpha), the outer one with the residual."""
    p = ff.dropout.p
    inner = ff.activation(ff.layer_1(x))  # [b, i, d_inner]
    keep = keep_mask(inner, p, ff.training)
    if keep is None:
        out = ff.layer_2(inner)
    else:
        flat = (inner * keep).flatten(0, -2)
        out = torch.addmm(ff.layer_2.bias, flat, ff.layer_2.weight.t(), alpha=keep_scale(p)).view(*x.shape[:-1], -1)
    return ff.layer_norm(residual_dropout(x, out, p, ff.training))
