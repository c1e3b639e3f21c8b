"""Shared builders for the tests: random models with large weights, random inputs, error measures."""

from __future__ import annotations

import dataclasses

import torch

from xlnet_ref import XLNetConfig, XLNetLMHeadModel
from xlnet_ref.training.train import TrainConfig

SMALL = dict(vocab_size=37, d_model=32, n_layer=3, n_head=4, d_inner=48, dropout=0.0)


def random_lm(*, seed: int = 0, std: float = 0.3, dtype=torch.float32, **overrides) -> XLNetLMHeadModel:
    """A small LM whose weights are drawn N(0, std) — larger than the 0.02 init, so that every score
    term (content, position, segment) moves the output by much more than round-off."""
    torch.manual_seed(seed)
    model = XLNetLMHeadModel(XLNetConfig(**{**SMALL, **overrides}))
    model.transformer.reset_parameters(std=std)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name or name == "lm_loss.bias":
                p.normal_(mean=1.0 if name.endswith("weight") and "layer_norm" in name else 0.0, std=std)
    return model.to(dtype).eval()


def random_inputs(
    *,
    batch: int,
    seq_len: int,
    vocab_size: int,
    seed: int,
    token_types: bool = False,
    left_padding: bool = False,
    perm: bool = False,
    num_predict: int = 0,
) -> dict:
    """Random forward arguments. Padding is on the left, as XLNet pads (CLS stays at the end)."""
    g = torch.Generator().manual_seed(seed)
    kw = {"input_ids": torch.randint(0, vocab_size, (batch, seq_len), generator=g)}
    if token_types:
        kw["token_type_ids"] = torch.randint(0, 3, (batch, seq_len), generator=g)
    if left_padding:
        attention_mask = torch.ones(batch, seq_len)
        for b in range(batch):
            attention_mask[b, : int(torch.randint(0, seq_len // 2 + 1, (1,), generator=g))] = 0
        kw["attention_mask"] = attention_mask
    if perm:
        kw["perm_mask"] = (torch.rand(batch, seq_len, seq_len, generator=g) < 0.4).float()
    if num_predict:
        tm = torch.zeros(batch, num_predict, seq_len)
        for b in range(batch):
            positions = torch.randperm(seq_len, generator=g)[:num_predict]
            tm[b, torch.arange(num_predict), positions] = 1.0
        kw["target_mapping"] = tm
    return kw


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|: one number per tensor, relative to its scale."""
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def micro_train_config(corpus, **overrides) -> TrainConfig:
    """A pretraining run small enough for a unit test (d_model 32, 2 layers, 16 steps of 4 x 24 tokens)
    on the text file ``corpus``; ``overrides`` replace TrainConfig fields."""
    model = XLNetConfig(
        vocab_size=260, d_model=32, n_layer=2, n_head=2, d_inner=64, mem_len=16, reuse_len=8, dropout=0.1
    )
    base = TrainConfig(
        model=model,
        name="micro",
        corpus=str(corpus),
        eval_fraction=0.3,
        seq_len=24,
        batch_size=4,
        num_predict=4,
        steps=16,
        learning_rate=3e-3,
        warmup_steps=2,
        eval_every=5,
        eval_batches=2,
    )
    return dataclasses.replace(base, **overrides)
