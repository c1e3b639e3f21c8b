"""Model API edge cases (issue 14): narrow id dtypes, mems of another dtype, tensors on another device,
and float16 attention rows with every key masked, at weight scales far above the 0.02 init."""

import pytest
import torch
from helpers import SMALL, random_lm

from xlnet_ref.validation.reference import reference_stages

B, T = 2, 5


@pytest.fixture(scope="module")
def model():
    return random_lm(mem_len=4)


@pytest.mark.parametrize("dtype", [torch.int8, torch.int16, torch.uint8])
def test_narrow_id_dtypes_are_named(model, dtype):
    ids = torch.randint(0, SMALL["vocab_size"], (B, T)).to(dtype)
    with pytest.raises(ValueError, match=rf"input_ids: expected token ids of dtype torch.long.*got dtype {dtype}"):
        model(ids)


def test_int32_ids_give_the_same_logits(model):
    ids = torch.randint(0, SMALL["vocab_size"], (B, T))
    assert torch.equal(model(ids.int()).logits, model(ids).logits)


def test_mems_of_another_dtype_are_named(model):
    ids = torch.randint(0, SMALL["vocab_size"], (B, T))
    mems = [torch.zeros(B, 3, SMALL["d_model"], dtype=torch.float64) for _ in range(SMALL["n_layer"])]
    with pytest.raises(
        ValueError, match=r"mems\[0\]: expected the model's dtype torch.float32.*got dtype torch.float64"
    ):
        model(ids, mems=mems)


@pytest.mark.parametrize("which", ["input_ids", "perm_mask", "mems"])
def test_tensors_on_another_device_are_named(model, which):
    """The meta device stands for any device other than the model's (a GPU, another GPU)."""
    ids = torch.randint(0, SMALL["vocab_size"], (B, T))
    kw = dict(
        perm_mask=torch.zeros(B, T, T), mems=[torch.zeros(B, 3, SMALL["d_model"]) for _ in range(SMALL["n_layer"])]
    )
    if which == "input_ids":
        ids = ids.to("meta")
    elif which == "perm_mask":
        kw["perm_mask"] = kw["perm_mask"].to("meta")
    else:
        kw["mems"][0] = kw["mems"][0].to("meta")
    name = "mems\\[0\\]" if which == "mems" else which
    with pytest.raises(ValueError, match=rf"{name}: expected a tensor on the model's device cpu, got a tensor on meta"):
        model(ids, **kw)


@pytest.mark.parametrize("std", [0.3, 1.0, 2.0])
def test_float16_fully_masked_row_stays_finite_at_large_weight_scales(std):
    """A query-stream row that may see nothing (perm_mask row of ones) must give finite logits: the
    masked scores are set, not shifted by 65500 (which overflows to -inf below a score of -4)."""
    model = random_lm(std=std, dtype=torch.float16)
    ids = torch.randint(0, SMALL["vocab_size"], (B, T), generator=torch.Generator().manual_seed(0))
    perm_mask = torch.zeros(B, T, T)
    perm_mask[:, 2, :] = 1  # position 2 may see no key (the content stream still sees itself)
    target_mapping = torch.eye(T).expand(B, T, T)
    inputs = dict(input_ids=ids, perm_mask=perm_mask, target_mapping=target_mapping)
    trace = reference_stages(model, inputs)  # every stage, recorded by hooks
    assert torch.isfinite(trace["logits"]).all()
    # the fully masked row is uniform over the keys, as in float32
    prob = trace["layer1.query.prob"][:, :, 2].float()
    torch.testing.assert_close(prob, torch.full_like(prob, 1 / T), rtol=0, atol=1e-3)
    # and the rows that do see something match the float32 model's attention (a half-precision tolerance)
    ref_trace = reference_stages(model.float(), inputs)
    seen = [0, 1, 3, 4]
    torch.testing.assert_close(
        trace["layer0.query.prob"][:, :, seen].float(), ref_trace["layer0.query.prob"][:, :, seen], rtol=0, atol=2e-2
    )
