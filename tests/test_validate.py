"""python -m xlnet_ref.validate: transformers passes every stage; adapters of every kind; the comparison rules;
the stages have the documented layouts; a departure is named where it happens."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from xlnet_ref import relative_position
from xlnet_ref.validation.golden import DEFAULT_DIR, builtin_cases, read_cases
from xlnet_ref.validation.validate import (
    compare_stage,
    first_departure,
    hf_adapter,
    load_adapter,
    main,
    reference_adapter,
    run_adapter,
    stage_layout,
    validate,
)

pytest.importorskip("transformers")

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "my_xlnet_adapter.py"



@pytest.fixture(scope="module")
def golden():
    return read_cases(DEFAULT_DIR)


def test_transformers_passes_every_stage_of_every_case(capsys):
    assert main(["--against", "hf"]) == 0  # expected values from the reference model, run live
    out = capsys.readouterr().out
    assert "ALL PASS" in out and "FAIL" not in out
    for row in ("pos_emb", "layer1.query.bd_raw", "layer0.new_mem_grad", "loss", "input_check"):
        assert f"  {row} " in out, row
    assert "not provided" not in out  # the hooks capture every stage the reference has


def test_golden_mode_runs_no_reference_model(monkeypatch, golden, capsys):
    from xlnet_ref import model

    def refuse(*args, **kwargs):
        raise AssertionError("the reference model was built")

    monkeypatch.setattr(model.XLNetLMHeadModel, "__init__", refuse)
    monkeypatch.setattr(model.XLNetModel, "__init__", refuse)
    assert main(["--against", "hf", "--golden", str(DEFAULT_DIR), "--brief"]) == 0
    assert "ALL PASS" in capsys.readouterr().out


def test_example_adapter_passes_with_the_stages_it_provides(golden):
    results = validate(load_adapter(f"{EXAMPLE}:run"), golden)
    assert first_departure(results) is None
    two_stream = next(r for r in results if r.case.name == "two_stream")
    status = {s.stage: s.status for s in two_stream.stages}
    assert status["logits"] == status["loss"] == status["layer1.query.prob"] == "pass"
    assert status["layer0.content.bd"] == "not provided"


def test_logits_only_is_enough_and_numpy_is_accepted(golden):
    def logits_only(case):
        return {"logits": hf_adapter(case)["logits"].detach().numpy()}

    results = validate(logits_only, golden)
    assert first_departure(results) is None
    memory = next(r for r in results if r.case.name == "memory")
    assert {s.stage: s.status for s in memory.stages}["logits"] == "pass"


def test_numpy_memory_cannot_show_gradients(golden):
    """Returned as numpy, the memory carries no autograd history: that stage is 'not measurable', not 'pass'."""
    def numpy_everything(case):
        return {k: v.detach().numpy() for k, v in hf_adapter(case).items()}

    (memory,) = validate(numpy_everything, [c for c in golden if c.name == "memory"])
    status = {s.stage: s.status for s in memory.stages}
    assert status["layer0.new_mem_grad"] == "not measurable" and status["layer0.new_mem"] == "pass"
    assert memory.passed


def test_missing_logits_fails(golden):
    (result,) = validate(lambda case: {"word_emb": hf_adapter(case)["word_emb"]}, golden[:1])
    assert result.first_failure.stage == "logits"


def test_a_crash_is_reported(golden):
    def crash(case):
        raise RuntimeError("my kernel does not support this")

    (result,) = validate(crash, golden[:1])
    assert result.first_failure.stage == "run" and "my kernel" in result.first_failure.note


def test_user_module_with_a_nudged_bias_fails_at_the_content_score(tmp_path, capsys):
    """An implementation whose u (r_w_bias) of layer 1 is off by 1e-3: u enters only (a)+(c)."""
    (tmp_path / "nudged.py").write_text(
        "from xlnet_ref.validation.validate import reference_adapter\n"
        "def run(case):\n"
        "    case.weights['transformer.layer.1.rel_attn.r_w_bias'][0, 3] += 1e-3\n"
        "    return reference_adapter(case)\n"
    )
    rc = main(["--against", f"{tmp_path / 'nudged.py'}:run", "--golden", str(DEFAULT_DIR), "--brief"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "First departure from the reference: case 'one_stream', stage 'layer1.content.ac'" in out
    assert "content score (a)+(c)" in out


def test_bad_against_is_a_usage_error(capsys):
    assert main(["--against", "nonsense"]) == 2
    assert "--against: expected" in capsys.readouterr().err
    assert main(["--against", "mutant:nonsense"]) == 2


# --- the comparison rules ----------------------------------------------------------------------------

TOL = dict(rtol=1e-5, atol=1e-6, huge=1e15)


def test_compare_relative_to_the_largest_value():
    e = torch.tensor([10.0, -2.0, 0.5])
    assert compare_stage("logits", e, e + 5e-5, **TOL).status == "pass"  # 5e-5 <= 1e-5 * 10 + 1e-6
    result = compare_stage("logits", e, e + torch.tensor([0, 0, 2e-4]), **TOL)
    assert result.status == "FAIL"
    assert result.max_abs == pytest.approx(2e-4, rel=1e-3) and result.max_rel == pytest.approx(2e-5, rel=1e-3)


def test_compare_shape_bool_nan_and_masked_entries():
    e = torch.zeros(2, 3)
    assert compare_stage("word_emb", e, torch.zeros(3, 2), **TOL).status == "FAIL"
    mask = torch.tensor([[True, False], [False, False]])
    assert compare_stage("attn_mask", mask, mask.float().numpy(), **TOL).status == "pass"
    bad = compare_stage("attn_mask", mask, ~mask, **TOL)
    assert bad.status == "FAIL" and bad.note.startswith("4 of 4")
    score = torch.tensor([1.0, -1e30, 2.0])
    assert compare_stage("layer0.content.score", score, torch.tensor([1.0, -1e30 - 5.0, 2.0]), **TOL).status == "pass"
    assert compare_stage("layer0.content.score", score, torch.tensor([1.0, -float("inf"), 2.0]), **TOL).status == "FAIL"
    assert compare_stage("layer0.content.score", score, torch.tensor([1.0, -3.0, 2.0]), **TOL).status == "FAIL"
    nan = torch.tensor([1.0, float("nan"), 1.0])
    assert compare_stage("layer0.content.prob", torch.ones(3), nan, **TOL).status == "FAIL"


def test_compare_zero_reference_uses_atol():
    zero = torch.zeros(4)
    assert compare_stage("layer0.new_mem_grad", zero, zero, **TOL).status == "pass"
    assert compare_stage("layer0.new_mem_grad", zero, torch.tensor([0, 0, 1e-3, 0]), **TOL).status == "FAIL"


def test_compare_ignores_padding_target_rows_of_query_scores():
    e = torch.zeros(1, 2, 2, 3)  # [b, n, k, j]
    a = e.clone()
    a[0, :, 1] = 7.0  # row k = 1 is a padding target
    valid = torch.tensor([[True, False]])
    assert compare_stage("layer0.query.score", e, a, valid_rows=valid, **TOL).status == "pass"
    every_row = torch.ones(1, 2, dtype=torch.bool)
    assert compare_stage("layer0.query.score", e, a, valid_rows=every_row, **TOL).status == "FAIL"
    assert compare_stage("layer0.query_attn_out", e[0], a[0], valid_rows=valid, **TOL).status == "FAIL"


# --- the stages are what the documentation says ------------------------------------------------------


def axis_sizes(case) -> dict[str, int]:
    cfg, inputs = case.config, case.inputs
    b, i = inputs["input_ids"].shape
    mlen = inputs["mems"][0].shape[1] if "mems" in inputs else 0
    klen = mlen + i
    sizes = dict(b=b, i=i, j=klen, n=cfg["n_head"], d=cfg["d_model"] // cfg["n_head"], m=cfg["d_model"],
                 V=cfg["vocab_size"], r=klen + i if cfg["attn_type"] == "bi" else klen + 1)
    if "target_mapping" in inputs:
        sizes["k"] = inputs["target_mapping"].shape[1]
    return sizes


def test_every_stage_has_its_documented_layout(golden):
    for case in golden:
        sizes = axis_sizes(case)
        for name, tensor in case.expected.items():
            layout = stage_layout(name)
            if name == "logits":
                layout = "b k V" if "k" in sizes else "b i V"
            if name.endswith("new_mem"):  # t = cached positions
                mem_len, reuse = case.config["mem_len"], case.config["reuse_len"]
                mlen = case.inputs["mems"][0].shape[1] if "mems" in case.inputs else 0
                sizes["t"] = min(mem_len, mlen + (reuse or sizes["i"]))
            if name.endswith("new_mem_grad"):
                sizes["t"] = case.inputs["mems"][0].shape[1]
            want = [] if layout == "scalar" else [sizes[a] for a in layout.split()]
            assert list(tensor.shape) == want, f"{case.name}/{name}: {list(tensor.shape)} vs {layout} = {want}"


def test_bd_raw_is_what_rel_shift_moves_into_place(golden):
    """bd (after the shift) = bd_raw at column j + qlen - i (Transformer-XL's closed form): checked with
    the slow twin for the content stream and by direct indexing at each target for the query stream."""
    for case in golden:
        if case.expect_error is not None:
            continue
        stages = run_adapter(reference_adapter, case).outputs
        qlen = case.inputs["input_ids"].shape[1]
        klen = stages["layer0.k_h"].shape[1]
        for layer in range(case.config["n_layer"]):
            raw, bd = stages[f"layer{layer}.content.bd_raw"], stages[f"layer{layer}.content.bd"]
            assert torch.equal(relative_position.rel_shift_naive(raw, klen), bd), case.name
            if f"layer{layer}.query.bd" in stages:
                raw, bd = stages[f"layer{layer}.query.bd_raw"], stages[f"layer{layer}.query.bd"]
                pos = case.inputs["target_mapping"].argmax(-1)
                for b in range(bd.shape[0]):
                    for k in range(bd.shape[2]):
                        for j in range(klen):
                            assert torch.equal(bd[b, :, k, j], raw[b, :, k, j + qlen - int(pos[b, k])]), case.name


def test_live_cases_equal_the_golden_inputs():
    """The builtin cases regenerate the committed weights and inputs (same seeds, same generator)."""
    live = {c.name: c for c in builtin_cases()}
    for case in read_cases(DEFAULT_DIR):
        assert case.weights.keys() == live[case.name].weights.keys()
        for k, w in case.weights.items():
            assert torch.equal(w, live[case.name].weights[k]), k
        assert case.inputs.keys() == live[case.name].inputs.keys()
