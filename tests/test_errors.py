"""Bad input gets a clear error naming the argument, what was expected and what came."""

import pytest
import torch
from helpers import SMALL, random_lm

from xlnet_ref import XLNetConfig

B, T = 2, 5


@pytest.fixture(scope="module")
def model():
    return random_lm(mem_len=4)


@pytest.fixture
def ids():
    return torch.randint(0, SMALL["vocab_size"], (B, T))


def mems(n=SMALL["n_layer"], b=B, mlen=3, d=SMALL["d_model"]):
    return [torch.zeros(b, mlen, d) for _ in range(n)]


BAD = [
    (
        "input_ids of rank 1",
        lambda ids: dict(input_ids=ids[0]),
        r"input_ids: expected 2 dimensions \[batch, seq_len\], got shape \[5\]",
    ),
    (
        "float input_ids",
        lambda ids: dict(input_ids=ids.float()),
        r"input_ids: expected an integer tensor.*got dtype torch.float32",
    ),
    (
        "token id too large",
        lambda ids: dict(input_ids=ids.clone().fill_(37)),
        r"input_ids: expected token ids in \[0, vocab_size=37\), got 37",
    ),
    ("negative token id", lambda ids: dict(input_ids=ids.clone().fill_(-1)), r"input_ids: expected token ids .*got -1"),
    (
        "token_type_ids shape",
        lambda ids: dict(input_ids=ids, token_type_ids=torch.zeros(B, T + 1, dtype=torch.long)),
        r"token_type_ids: expected shape \[2, 5\].*got \[2, 6\]",
    ),
    (
        "both masks",
        lambda ids: dict(input_ids=ids, attention_mask=torch.ones(B, T), input_mask=torch.zeros(B, T)),
        r"input_mask and attention_mask: expected at most one",
    ),
    (
        "attention_mask values",
        lambda ids: dict(input_ids=ids, attention_mask=torch.full((B, T), 2.0)),
        r"attention_mask: expected only 0 and 1 \(1 = real token, 0 = padding\), got the value 2",
    ),
    (
        "input_mask shape",
        lambda ids: dict(input_ids=ids, input_mask=torch.zeros(B, T - 1)),
        r"input_mask: expected shape \[2, 5\].*got \[2, 4\]",
    ),
    (
        "perm_mask size",
        lambda ids: dict(input_ids=ids, perm_mask=torch.zeros(B, T, T - 1)),
        r"perm_mask: expected shape \[2, 5, 5\] \(\[batch, query i, key j\]\), got \[2, 5, 4\]",
    ),
    (
        "perm_mask rank",
        lambda ids: dict(input_ids=ids, perm_mask=torch.zeros(T, T)),
        r"perm_mask: expected 3 dimensions",
    ),
    (
        "perm_mask values",
        lambda ids: dict(input_ids=ids, perm_mask=-torch.ones(B, T, T)),
        r"perm_mask: expected only 0 and 1.*got the value -1",
    ),
    (
        "target_mapping length",
        lambda ids: dict(input_ids=ids, target_mapping=torch.zeros(B, 2, T + 2)),
        r"target_mapping: expected shape \[2, \?, 5\].*got \[2, 2, 7\]",
    ),
    (
        "target_mapping two ones in a row",
        lambda ids: dict(input_ids=ids, target_mapping=torch.ones(B, 2, T)),
        r"target_mapping: expected each row \[b, k, :\] to be one-hot.*got a row with 5 ones",
    ),
    (
        "target_mapping same position twice",
        lambda ids: dict(input_ids=ids, target_mapping=torch.eye(T)[[1, 1]].expand(B, -1, -1)),
        r"target_mapping: expected each position to be predicted at most once",
    ),
    (
        "mems not a list",
        lambda ids: dict(input_ids=ids, mems=torch.zeros(3, B, 3, 32)),
        r"mems: expected a list of n_layer=3 tensors, got Tensor",
    ),
    (
        "mems count",
        lambda ids: dict(input_ids=ids, mems=mems(n=2)),
        r"mems: expected n_layer=3 tensors \(one per layer\), got 2",
    ),
    (
        "mems width",
        lambda ids: dict(input_ids=ids, mems=mems(d=16)),
        r"mems\[0\]: expected shape \[2, \?, 32\].*got \[2, 3, 16\]",
    ),
    (
        "mems length-first",
        lambda ids: dict(input_ids=ids, mems=[torch.zeros(3, B, 32)] * 3),
        r"mems\[0\]: expected shape \[2, \?, 32\] \(\[batch, mem_len, d_model \(batch-first\)\]\), got \[3, 2, 32\]",
    ),
    (
        "mems of different lengths",
        lambda ids: dict(input_ids=ids, mems=[torch.zeros(B, 3, 32), torch.zeros(B, 4, 32), torch.zeros(B, 3, 32)]),
        r"mems\[1\]: expected the same length as mems\[0\] \(3\), got 4",
    ),
]


@pytest.mark.parametrize("what, kwargs, message", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_named(model, ids, what, kwargs, message):
    with pytest.raises(ValueError, match=message):
        model(**kwargs(ids))


def test_bi_data_with_odd_batch():
    model = random_lm(bi_data=True)
    with pytest.raises(ValueError, match=r"input_ids: bi_data=True needs an even batch.*got batch size 3"):
        model(torch.zeros(3, 4, dtype=torch.long))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(d_model=30, n_head=4), r"XLNetConfig.d_model: expected a multiple of n_head=4, got 30"),
        (dict(attn_type="left"), r"XLNetConfig.attn_type: expected one of \('bi', 'uni'\), got 'left'"),
        (dict(ff_activation="swish"), r"XLNetConfig.ff_activation: expected one of .*got 'swish'"),
        (dict(n_layer=0), r"XLNetConfig.n_layer: expected a positive int, got 0"),
        (dict(mem_len=-1), r"XLNetConfig.mem_len: expected None or an int >= 0, got -1"),
        (dict(dropout=1.5), r"XLNetConfig.dropout: expected a float in \[0, 1\), got 1.5"),
        (dict(bi_data="yes"), r"XLNetConfig.bi_data: expected a bool, got 'yes'"),
    ],
)
def test_bad_config_is_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        XLNetConfig(**kwargs)


def test_masks_may_be_float_int_or_bool(model):
    """0/1 masks mean the same whatever their dtype: the same logits for float, long and bool."""
    from helpers import random_inputs

    kw = random_inputs(
        batch=B, seq_len=T, vocab_size=SMALL["vocab_size"], seed=0, perm=True, num_predict=2, left_padding=True
    )
    expected = model(**kw).logits
    for dtype in (torch.long, torch.bool):
        cast = {k: v.to(dtype) if k in ("perm_mask", "target_mapping", "attention_mask") else v for k, v in kw.items()}
        assert torch.equal(model(**cast).logits, expected), dtype
