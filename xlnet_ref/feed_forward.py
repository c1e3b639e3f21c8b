r"""Position-wise feed-forward block (Vaswani et al. 2017, Sec. 3.3), post-LayerNorm as in XLNet.

.. math::
    \mathrm{FF}(x) = \mathrm{LayerNorm}\big(x + \mathrm{Dropout}(W_2\,\mathrm{Dropout}(\mathrm{act}(W_1 x + b_1)) + b_2)\big)

The same block (same weights) is applied to the content stream h and to the query stream g.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def gelu(x: torch.Tensor) -> torch.Tensor:
    r"""Exact GELU, :math:`x \Phi(x)` with the Gauss error function — transformers' ``"gelu"``."""
    return nn.functional.gelu(x)


def gelu_new(x: torch.Tensor) -> torch.Tensor:
    r"""tanh GELU, :math:`\tfrac12 x (1 + \tanh(\sqrt{2/\pi}(x + 0.044715 x^3)))` — the original TF code's
    ``gelu`` and transformers' ``"gelu_new"``. Differs from :func:`gelu` by at most ~4.7e-4."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


ACTIVATIONS = {"gelu": gelu, "gelu_new": gelu_new, "relu": nn.functional.relu}


class PositionwiseFF(nn.Module):
    """transformers' ``ff``: layer_1 [d_inner, m], layer_2 [m, d_inner], layer_norm."""

    def __init__(self, config):
        super().__init__()
        self.layer_1 = nn.Linear(config.d_model, config.d_inner)
        self.layer_2 = nn.Linear(config.d_inner, config.d_model)
        self.layer_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)
        self.activation = ACTIVATIONS[config.ff_activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.dropout(self.activation(self.layer_1(x)))
        out = self.dropout(self.layer_2(out))
        return self.layer_norm(x + out)
