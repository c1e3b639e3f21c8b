"""Every known bug (xlnet_ref.validation.mutants), written as a mutant of the reference, fails the
validator, and the validator names the stage where the bug is; the reference itself passes, and the
mutants leave it untouched."""

from __future__ import annotations

import pytest

from xlnet_ref import attention, feed_forward, masks, memory, permutation, relative_position, segments
from xlnet_ref import model as model_module
from xlnet_ref.validation.cli import validate_main as main
from xlnet_ref.validation.golden import DEFAULT_DIR, read_cases
from xlnet_ref.validation.mutants import MUTANTS, mutant_adapter
from xlnet_ref.validation.validate import first_departure, reference_adapter, stage_description, validate

# mutant -> (first case that catches it, first stage that fails there): where each bug lives
EXPECTED = {
    "shared_attention_weights": ("one_stream", "layer1.q_h"),  # layer 1 projects with layer 0's W_q
    "feed_forward_missing": ("one_stream", "layer1.content_ff_out"),
    "no_rel_shift": ("one_stream", "layer0.content.bd"),  # bd before the shift is still right
    "transformer_xl_rel_shift": ("one_stream", "layer0.content.bd"),
    "perm_mask_flipped": ("two_stream", "attn_mask"),  # the first case with a perm_mask
    "query_stream_sees_itself": ("segments_padding", "attn_mask"),  # the first case with any mask
    "content_stream_blind_to_itself": ("segments_padding", "non_tgt_mask"),
    "memory_not_detached": ("memory", "layer0.new_mem_grad"),  # the values are right, the gradient is not
    "absolute_segment_ids": ("segments_padding", "seg_diff"),
    "tanh_gelu": ("one_stream", "layer0.content_ff_out"),
    "loss_mask_no_effect": ("two_stream", "loss"),  # logits right, loss counts the padding target
    "bi_data_ignored": ("bi_data", "pos_emb"),
    "bi_data_odd_batch_runs": ("bi_data_odd_batch", "input_check"),
    "memory_needs_mem_len": ("memory_given_mem_len_0", "pos_emb"),  # the table is built without the memory
    "float16_mask_1e30": ("float16_padding", "layer0.content.score"),  # -inf instead of -65500
    # forward exact, backward wrong: the first gradient (in backward order) that goes through a GELU
    "gelu_wrong_backward": ("gradients", "grad.transformer.layer.1.ff.layer_1.weight"),
}

ORIGINALS = {
    (attention, "rel_shift"): relative_position.rel_shift,
    (attention, "mask_value"): attention.mask_value,
    (model_module, "attention_masks"): masks.attention_masks,
    (model_module, "cache_mem"): memory.cache_mem,
    (model_module, "segment_difference"): segments.segment_difference,
    (model_module, "relative_positional_encoding"): relative_position.relative_positional_encoding,
    (permutation, "plm_loss"): permutation.plm_loss,
    (feed_forward, "ACTIVATIONS"): feed_forward.ACTIVATIONS,
}


@pytest.fixture(scope="module")
def golden():
    return read_cases(DEFAULT_DIR)


def test_every_mutant_has_an_expectation():
    assert set(MUTANTS) == set(EXPECTED)
    for name, m in MUTANTS.items():  # what --list-mutants prints agrees with this file
        assert (m.expected_case, m.expected_stage) == EXPECTED[name], name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_mutant_fails_at_the_expected_stage(name, golden):
    results = validate(mutant_adapter(name), golden)
    departure = first_departure(results)
    assert departure is not None, f"{name} passed the validator"
    case, stage = departure
    assert (case.case.name, stage.stage) == EXPECTED[name], f"{name}: {stage}"
    assert stage_description(stage.stage)  # named in words


def test_wrong_backward_passes_every_forward_stage(golden):
    """The wrong GELU backward is invisible to every forward stage: only the gradient stages catch it."""
    (result,) = validate(mutant_adapter("gelu_wrong_backward"), [c for c in golden if c.name == "gradients"])
    failed = [s.stage for s in result.stages if s.failed]
    assert failed and all(name.startswith("grad.") for name in failed)
    assert "grad.transformer.layer.1.ff.layer_2.weight" not in failed  # W_2 sees the GELU's output, not its slope


def test_the_reference_passes_and_is_untouched_by_the_mutants(golden):
    for name in MUTANTS:  # run every mutant, then check that nothing of it stayed behind
        validate(mutant_adapter(name), golden)
    for (module, attr), original in ORIGINALS.items():
        assert getattr(module, attr) is original, f"{module.__name__}.{attr} still patched"
    assert feed_forward.ACTIVATIONS["gelu"] is feed_forward.gelu
    assert first_departure(validate(reference_adapter, golden)) is None


def test_cli_names_the_first_departure(capsys):
    assert main(["--against", "mutant:no_rel_shift", "--golden", str(DEFAULT_DIR), "--brief"]) == 1
    out = capsys.readouterr().out
    assert "First departure from the reference: case 'one_stream', stage 'layer0.content.bd'" in out
    assert "position score after rel_shift" in out
    assert main(["--list-mutants"]) == 0
    assert "memory_not_detached" in capsys.readouterr().out
