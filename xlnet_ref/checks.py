"""Input checks for the model's forward pass.

Each check raises a ValueError that names the argument, says what was expected and what came, so a
wrong input fails at the call instead of turning into a silent wrong answer or a NaN later on.
"""

from __future__ import annotations

import torch


def _shape(t: torch.Tensor) -> list[int]:
    return list(t.shape)


def check_tensor(name: str, t, *, shape: list, axes: str) -> None:
    """t must be a tensor whose shape equals `shape` (None entries are free); axes names each dimension."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor of shape [{axes}], got {type(t).__name__}")
    if t.dim() != len(shape):
        raise ValueError(f"{name}: expected {len(shape)} dimensions [{axes}], got shape {_shape(t)}")
    for got, want in zip(t.shape, shape):
        if want is not None and got != want:
            want_str = ", ".join("?" if w is None else str(w) for w in shape)
            raise ValueError(f"{name}: expected shape [{want_str}] ([{axes}]), got {_shape(t)}")


def check_binary(name: str, t: torch.Tensor, meaning: str) -> None:
    if t.dtype != torch.bool and t.numel() and not bool(((t == 0) | (t == 1)).all()):
        bad = t[(t != 0) & (t != 1)].flatten()[0].item()
        raise ValueError(f"{name}: expected only 0 and 1 ({meaning}), got the value {bad}")


def check_integer(name: str, t: torch.Tensor) -> None:
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise ValueError(f"{name}: expected an integer tensor (torch.long), got dtype {t.dtype}")


# nn.Embedding looks up int64 and int32 ids only; narrower types (uint8 in particular, which torch
# would treat as a boolean mask when indexing) are refused here rather than deep inside the lookup.
ID_DTYPES = (torch.long, torch.int32)


def check_token_ids(name: str, t: torch.Tensor) -> None:
    check_integer(name, t)
    if t.dtype not in ID_DTYPES:
        raise ValueError(f"{name}: expected token ids of dtype torch.long (or torch.int32), got dtype {t.dtype}")


def check_device(name: str, t: torch.Tensor, device: torch.device | None) -> None:
    """t must live on the model's device (the meta device, another GPU or the CPU would fail later)."""
    if device is not None and t.device != device:
        raise ValueError(f"{name}: expected a tensor on the model's device {device}, got a tensor on {t.device}")


def check_inputs(
    config,
    *,
    input_ids,
    token_type_ids,
    attention_mask,
    input_mask,
    perm_mask,
    target_mapping,
    mems,
    dtype: torch.dtype | None = None,
    device: torch.device | None = None,
) -> None:
    """Check every forward argument against the config and against input_ids' [b, i] shape.

    dtype, device: the model's parameters' (None: not checked). Every tensor must be on ``device``;
    mems must have ``dtype`` (outside autocast), because the memory is concatenated with h.

    mems are batch-first, [b, mlen, m] per layer. transformers' mems are [mlen, b, m]: when mlen
    equals the batch size the two layouts have the same shape and cannot be told apart here, so
    convert them with :func:`xlnet_ref.interop.mems_from_hf`, never by hand.
    """
    check_tensor("input_ids", input_ids, shape=[None, None], axes="batch, seq_len")
    check_token_ids("input_ids", input_ids)
    check_device("input_ids", input_ids, device)
    b, qlen = input_ids.shape
    if b == 0 or qlen == 0:
        raise ValueError(f"input_ids: expected at least one row and one position, got shape {_shape(input_ids)}")
    for name, t in (
        ("token_type_ids", token_type_ids),
        ("attention_mask", attention_mask),
        ("input_mask", input_mask),
        ("perm_mask", perm_mask),
        ("target_mapping", target_mapping),
    ):
        if isinstance(t, torch.Tensor):
            check_device(name, t, device)
    lo, hi = int(input_ids.min()), int(input_ids.max())
    if lo < 0 or hi >= config.vocab_size:
        bad = lo if lo < 0 else hi
        raise ValueError(f"input_ids: expected token ids in [0, vocab_size={config.vocab_size}), got {bad}")
    if config.bi_data and b % 2:
        raise ValueError(
            f"input_ids: bi_data=True needs an even batch (first half read forwards, second half backwards), "
            f"got batch size {b}"
        )
    if token_type_ids is not None:
        check_tensor("token_type_ids", token_type_ids, shape=[b, qlen], axes="batch, seq_len")
        check_integer("token_type_ids", token_type_ids)
    if input_mask is not None and attention_mask is not None:
        raise ValueError(
            "input_mask and attention_mask: expected at most one of them (input_mask uses 1 for padding, "
            "attention_mask 1 for real tokens), got both"
        )
    if attention_mask is not None:
        check_tensor("attention_mask", attention_mask, shape=[b, qlen], axes="batch, seq_len")
        check_binary("attention_mask", attention_mask, "1 = real token, 0 = padding")
    if input_mask is not None:
        check_tensor("input_mask", input_mask, shape=[b, qlen], axes="batch, seq_len")
        check_binary("input_mask", input_mask, "1 = padding, 0 = real token")
    if perm_mask is not None:
        check_tensor("perm_mask", perm_mask, shape=[b, qlen, qlen], axes="batch, query i, key j")
        check_binary("perm_mask", perm_mask, "1 = position i may not attend to j")
    if target_mapping is not None:
        check_tensor("target_mapping", target_mapping, shape=[b, None, qlen], axes="batch, num_predict k, seq_len j")
        check_binary("target_mapping", target_mapping, "1 = the k-th prediction is at position j")
        per_row = target_mapping.sum(-1)
        if bool((per_row > 1).any()):
            raise ValueError(
                "target_mapping: expected each row [b, k, :] to be one-hot (or all zero for a padding target), "
                f"got a row with {int(per_row.max())} ones"
            )
        per_pos = target_mapping.sum(1)
        if bool((per_pos > 1).any()):
            raise ValueError(
                "target_mapping: expected each position to be predicted at most once per batch row, "
                f"got a position named by {int(per_pos.max())} targets"
            )
    if mems is not None:
        if not isinstance(mems, (list, tuple)):
            raise ValueError(f"mems: expected a list of n_layer={config.n_layer} tensors, got {type(mems).__name__}")
        if len(mems) != config.n_layer:
            raise ValueError(f"mems: expected n_layer={config.n_layer} tensors (one per layer), got {len(mems)}")
        mlen = None
        for layer, mem in enumerate(mems):
            name = f"mems[{layer}]"
            check_tensor(name, mem, shape=[b, None, config.d_model], axes="batch, mem_len, d_model (batch-first)")
            if not mem.dtype.is_floating_point:
                raise ValueError(f"{name}: expected a floating-point tensor, got dtype {mem.dtype}")
            check_device(name, mem, device)
            if dtype is not None and mem.dtype != dtype and not torch.is_autocast_enabled(mem.device.type):
                raise ValueError(
                    f"{name}: expected the model's dtype {dtype} (the memory is concatenated with h), "
                    f"got dtype {mem.dtype}"
                )
            if mlen is None:
                mlen = mem.shape[1]
            elif mem.shape[1] != mlen:
                raise ValueError(f"{name}: expected the same length as mems[0] ({mlen}), got {mem.shape[1]}")
