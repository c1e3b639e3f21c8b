r"""Segment-level recurrence memory (Transformer-XL, Dai et al. 2019, Sec. 3.2).

For the segment :math:`\tau + 1`, layer n attends over its own input extended by the cached input of
the previous segment, with the gradient stopped at the cache:

.. math::
    \tilde h^{n-1}_{\tau+1} = [\mathrm{SG}(h^{n-1}_\tau) \circ h^{n-1}_{\tau+1}]

(SG = stop-gradient, :math:`\circ` = concatenation along the length). XLNet caches the content
stream only, the hidden state *entering* each layer (layer 0 caches the dropped-out word
embeddings), so there are n_layer memories, not n_layer + 1.
"""

from __future__ import annotations

import torch


def cache_mem(h: torch.Tensor, prev_mem: torch.Tensor | None, *, mem_len: int, reuse_len: int | None) -> torch.Tensor:
    """new_mem = SG(cat(prev_mem, h[:, :reuse_len])[:, -mem_len:]).

    h: [b, i, m] the content stream entering the layer; prev_mem: [b, mlen, m] or None  ->  [b, <=mem_len, m]

    reuse_len (pretraining): only the first reuse_len positions of a window are the text that the next
    window continues, so only they are cached. detach() is the stop-gradient: no gradient flows into
    the previous segment, which is what keeps training cost per segment constant.
    """
    if reuse_len is not None and reuse_len > 0:
        h = h[:, :reuse_len]
    new_mem = h if prev_mem is None else torch.cat([prev_mem, h], dim=1)
    return new_mem[:, -mem_len:].detach()
