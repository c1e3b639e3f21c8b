r"""Attention masks. Everywhere inside xlnet_ref a mask is a bool tensor and True means "may NOT attend".

Keys j run over [memory | current segment] (klen = mlen + qlen); memory columns are always visible.

- causal ('uni' only):  mask[i, j] = 1  iff  j > mlen + i            (no peeking at the future)
  with same_length also mask[i, j] = 1 iff j < i for j < qlen       (every query sees mlen + 1 keys)
- data mask:  input_mask[b, j] (padding keys)  OR  perm_mask[b, i, j] (factorization order, XLNet Sec. 2.3)
- query stream g (XLNet Eq. 4 — g_{z_t} may use z_{<t} but not x_{z_t}):  attn_mask = causal OR data
- content stream h (h_{z_t} may use z_{<=t}, itself included):  non_tgt_mask = attn_mask with the
  diagonal (i, mlen + i) cleared.

With 'bi' attention and no data mask both are None: everybody sees everybody.
"""

from __future__ import annotations

import torch


def mask_value(dtype: torch.dtype) -> float:
    """Masked scores are set to minus this: 1e30, or 65500 where float16 cannot hold 1e30."""
    return 65500.0 if dtype == torch.float16 else 1e30


def causal_mask(qlen: int, mlen: int, *, same_length: bool, device=None) -> torch.Tensor:
    """[i, j] bool, True where key j lies after query i (at absolute position mlen + i).

    same_length: additionally hide keys j < i among the first qlen columns, so that every query
    attends to exactly mlen + 1 keys (Transformer-XL's evaluation setting).
    """
    i = torch.arange(qlen, device=device)[:, None]
    j = torch.arange(qlen + mlen, device=device)[None, :]
    mask = j > mlen + i  # [i, j]
    if same_length:
        mask = mask | ((j < i) & (j < qlen))
    return mask


def attention_masks(
    *,
    qlen: int,
    mlen: int,
    attn_type: str,
    same_length: bool,
    input_mask: torch.Tensor | None,
    perm_mask: torch.Tensor | None,
    device=None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Build (attn_mask, non_tgt_mask), each [b or 1, i, j] bool or None.

    input_mask: [b, j_cur] bool, True on padding.  perm_mask: [b, i, j_cur] bool, True = i may not see j.
    attn_mask is the query stream's mask, non_tgt_mask the content stream's (it may see itself).
    """
    mask = None
    if attn_type == "uni":
        mask = causal_mask(qlen, mlen, same_length=same_length, device=device)[None]  # [1, i, j]

    data_mask = None
    if input_mask is not None:
        data_mask = input_mask[:, None, :]  # [b, 1, j]: padding keys are hidden from every query
    if perm_mask is not None:
        data_mask = perm_mask if data_mask is None else (data_mask | perm_mask)  # [b, i, j]
    if data_mask is not None:
        # memory columns are always visible
        data_mask = torch.nn.functional.pad(data_mask, (mlen, 0), value=False)
        mask = data_mask if mask is None else (mask | data_mask)

    if mask is None:
        return None, None
    # clear the diagonal: the content stream at position i sees its own token (key mlen + i)
    own = torch.eye(qlen, dtype=torch.bool, device=mask.device)
    own = torch.nn.functional.pad(own, (mlen, 0), value=False)  # [i, j]
    non_tgt_mask = mask & ~own
    return mask, non_tgt_mask
