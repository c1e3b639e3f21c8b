"""python -m xlnet_ref.validate: transformers passes every stage; adapters of every kind; the comparison rules;
the stages have the documented layouts; a departure is named where it happens."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from xlnet_ref import naive
from xlnet_ref.validation.adapters import load_adapter, run_adapter
from xlnet_ref.validation.cases import builtin_cases
from xlnet_ref.validation.cli import validate_main as main
from xlnet_ref.validation.golden import DEFAULT_DIR, read_cases
from xlnet_ref.validation.reference import reference_adapter
from xlnet_ref.validation.stages import stage_layout
from xlnet_ref.validation.transformers_adapter import hf_adapter
from xlnet_ref.validation.validate import compare_stage, first_departure, validate

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
    assert status["layer1.content.bd_raw"] == status["layer1.q_h"] == "pass"  # captured by the StageRecorder
    assert status["layer0.content.bd"] == "not provided"
    gradients = next(r for r in results if r.case.name == "gradients")
    grads = [s for s in gradients.stages if s.stage.startswith("grad.")]
    assert len(grads) == 2 * 17 + 4 and all(s.status == "pass" for s in grads)  # 17 per layer + 4


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
        "from xlnet_ref.validation.reference import reference_adapter\n"
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
    sizes = dict(
        b=b,
        i=i,
        j=klen,
        n=cfg["n_head"],
        d=cfg["d_model"] // cfg["n_head"],
        m=cfg["d_model"],
        V=cfg["vocab_size"],
        r=klen + i if cfg["attn_type"] == "bi" else klen + 1,
    )
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
            if name.startswith("grad."):  # the parameter's own shape: checked against the weights
                target = name[len("grad.") :]
                want = (
                    list(case.inputs["input_ids"].shape) + [sizes["m"]]
                    if target == "word_emb"
                    else list(case.weights[target].shape)
                )
                assert list(tensor.shape) == want, name
                assert len(layout.split()) == len(want), name
                continue
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
            assert torch.equal(naive.rel_shift_naive(raw, klen), bd), case.name
            if f"layer{layer}.query.bd" in stages:
                raw, bd = stages[f"layer{layer}.query.bd_raw"], stages[f"layer{layer}.query.bd"]
                pos = case.inputs["target_mapping"].argmax(-1)
                for b in range(bd.shape[0]):
                    for k in range(bd.shape[2]):
                        for j in range(klen):
                            # in 'uni', columns past the table's end (keys the mask hides) are clamped
                            c = min(j + qlen - int(pos[b, k]), raw.shape[-1] - 1)
                            assert torch.equal(bd[b, :, k, j], raw[b, :, k, c]), case.name


def test_live_cases_equal_the_golden_inputs():
    """The builtin cases regenerate the committed weights and inputs (same seeds, same generator): integer
    tensors equal, float ones within the case's rtol (torch's normal sampler rounds differently on
    another CPU or with other kernels, in the last bits)."""
    live = {c.name: c for c in builtin_cases()}
    for case in read_cases(DEFAULT_DIR):
        assert case.weights.keys() == live[case.name].weights.keys()
        assert case.inputs.keys() == live[case.name].inputs.keys()
        fresh = {**live[case.name].weights, **live[case.name].inputs}
        for k, w in [*case.weights.items(), *case.inputs.items()]:
            for a, b in zip(w, fresh[k]) if k == "mems" else [(w, fresh[k])]:
                assert a.dtype == b.dtype and a.shape == b.shape, k
                if a.is_floating_point():
                    scale = a.double().abs().max().item()
                    assert (a.double() - b.double()).abs().max().item() <= case.tolerances["rtol"] * scale, k
                else:
                    assert torch.equal(a, b), k


# --- no false passes ---------------------------------------------------------------------------------


def odd_batch(golden):
    return [c for c in golden if c.name == "bi_data_odd_batch"]


def test_a_crash_is_not_a_refusal(golden):
    """The reference refuses bi_data with an odd batch; an implementation that crashes on it (here with a
    RuntimeError, as transformers does inside an einsum) has not refused it."""

    def crashes(case):
        raise RuntimeError("einsum(): subscript b has size 2 for operand 1")

    (result,) = validate(crashes, odd_batch(golden))
    assert result.first_failure.stage == "input_check"
    assert "crashed instead of refusing: RuntimeError: einsum()" in result.first_failure.note


@pytest.mark.parametrize("refusal", [ValueError("input_ids: odd batch"), TypeError("bad"), "marker"])
def test_documented_refusals_pass(golden, refusal):
    def refuses(case):
        if refusal == "marker":
            return {"refused": "bi_data needs an even batch"}
        raise refusal

    (result,) = validate(refuses, odd_batch(golden))
    assert result.passed and result.stages[0].note.startswith("refused")


def test_refusing_an_accepted_input_fails(golden):
    (result,) = validate(lambda case: {"refused": "not supported"}, golden[:1])
    assert (
        result.first_failure.stage == "input_check"
        and "refused an input the reference accepts" in result.first_failure.note
    )


def test_an_unknown_stage_name_fails_with_the_closest_name(golden):
    """A typo would otherwise hide a comparison: 'bd_row' is not compared, and says what was meant."""

    def typo(case):
        stages = reference_adapter(case)
        stages["layer0.content.bd_row"] = stages.pop("layer0.content.bd_raw")
        return stages

    (result,) = validate(typo, golden[:1])
    failed = [s for s in result.stages if s.failed]
    assert [s.stage for s in failed] == ["layer0.content.bd_row"]
    assert "did you mean 'layer0.content.bd_raw'" in failed[0].note
    status = {s.stage: s.status for s in result.stages}
    assert status["layer0.content.bd_raw"] == "not provided"


def test_a_stage_of_another_kind_of_case_is_not_unknown(golden):
    """layer0.query.prob is a known name: returned for a one-stream case it is simply not compared."""

    def extra(case):
        stages = reference_adapter(case)
        stages["layer0.query.prob"] = stages["layer0.content.prob"]
        return stages

    (result,) = validate(extra, golden[:1])
    assert result.passed


def test_the_report_shows_what_still_agrees_after_the_first_departure(capsys):
    """One bug must not hide another: after the first departure, the later stages that still agree,
    those that fail too, and every other failing case's first departure are listed."""
    assert main(["--against", "mutant:tanh_gelu", "--golden", str(DEFAULT_DIR), "--brief"]) == 1
    out = capsys.readouterr().out
    assert "First departure from the reference: case 'one_stream', stage 'layer0.content_ff_out'" in out
    agree = next(line for line in out.splitlines() if "Later stages of this case that still agree" in line)
    assert "layer1.k_r" in agree  # positional keys do not depend on the feed-forward
    assert "Later stages of this case that fail too" in out
    assert "First departure in each other failing case: segments_padding at layer0.content_ff_out" in out


def test_traceback_flag_shows_the_adapters_exception(tmp_path, capsys):
    (tmp_path / "crash.py").write_text(
        "def helper():\n    raise KeyError('the weight I forgot')\ndef run(case):\n    helper()\n"
    )
    args = ["--against", f"{tmp_path / 'crash.py'}:run", "--golden", str(DEFAULT_DIR), "--case", "one_stream"]
    assert main(args) == 1
    assert "Traceback" not in capsys.readouterr().out
    assert main(args + ["--traceback"]) == 1
    out = capsys.readouterr().out
    assert "Traceback (most recent call last)" in out and "in helper" in out and "the weight I forgot" in out


@pytest.mark.parametrize(
    "source, expected",
    [
        ("import no_such_package_xyz\ndef run(case): pass\n", "ModuleNotFoundError"),
        ("def run(case) pass\n", "SyntaxError"),
        ("raise RuntimeError('boom at import')\n", "RuntimeError: boom at import"),
    ],
)
def test_an_adapter_that_does_not_import_is_a_one_line_usage_error(tmp_path, capsys, source, expected):
    (tmp_path / "broken.py").write_text(source)
    assert main(["--against", f"{tmp_path / 'broken.py'}:run", "--golden", str(DEFAULT_DIR)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not import" in err[0] and expected in err[0]
    assert main(["--against", "no_such_module_xyz:run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "module 'no_such_module_xyz' does not import" in err[0]


def test_length_first_layouts_and_broadcast_masks(golden):
    """--layout length_first: every stage in the original code's layout ([i, b, m], [i, j, b, n], ...)
    passes; masks broadcast over the batch ([1, i, j]) are expanded; the batch-first reading fails."""
    from xlnet_ref.validation.compare import length_first_layout

    def length_first(case):
        out = {}
        two_stream = "target_mapping" in case.inputs
        for name, t in reference_adapter(case).items():
            axes = stage_layout(name, two_stream=two_stream).split()
            if "b" in axes and t.dim() == len(axes):
                lf = length_first_layout(" ".join(axes)).split()
                t = t.permute([axes.index(a) for a in lf])
            out[name] = t
        return out

    cases = [c for c in golden if c.name in ("two_stream", "memory", "bi_data_batch4")]
    assert first_departure(validate(length_first, cases, length_first=True)) is None
    assert first_departure(validate(length_first, cases)) is not None

    def broadcast_mask(case):
        stages = reference_adapter(case)
        stages["attn_mask"] = stages["attn_mask"][:1]  # the same mask for every row: [1, i, j]
        return stages

    (one,) = validate(broadcast_mask, golden[:1])  # no data mask: the same for every row
    assert one.passed
    (padded,) = validate(broadcast_mask, [c for c in golden if c.name == "segments_padding"])
    assert padded.first_failure.stage == "attn_mask"  # row 1's padding differs from row 0's


def test_the_worst_error_is_located():
    e = torch.zeros(2, 2, 3, 4)  # [b, n, i, j]
    a = e.clone()
    a[1, 0, 2, 3] = 1.0
    r = compare_stage("layer0.content.ac", e, a, **TOL)
    assert r.failed and r.where == "worst at batch row 1, head 0, query position 2, key 3"


# --- the stage recorder --------------------------------------------------------------------------------


def test_stage_recorder_tags_calls_with_their_module():
    from torch import nn

    from xlnet_ref.validation.recorder import StageRecorder, gradient_stages

    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(3, 3))
            self.proj = nn.Linear(3, 3)

        def forward(self, x):
            s = torch.einsum("bi,ij->bj", x, self.w)
            s = s @ self.w.T
            return torch.softmax(self.proj(s), dim=-1)

    model = nn.Sequential(Attn(), Attn())
    x = torch.randn(2, 3)
    with StageRecorder(model) as rec:
        y = model(x)
    assert torch.equal(rec.output("1"), y) and torch.equal(rec.input("1"), rec.output("0"))
    (first,) = rec.calls("0", "einsum:bi, ij->bj")  # spaces in the equation do not matter
    assert torch.allclose(first, x @ model[0].w)
    assert len(rec.calls("1", "matmul")) == 1 and len(rec.calls("1", "softmax")) == 1
    assert rec.calls("0.proj", "einsum") == []  # the Linear's own call is not an einsum
    with torch.no_grad():
        model(x)  # outside the block nothing more is recorded
    assert len(rec.outputs["0"]) == 1
    grads = gradient_stages(y.sum(), dict(model.named_parameters()), word_emb=rec.output("0"))
    assert set(grads) == {f"grad.{n}" for n, _ in model.named_parameters()} | {"grad.word_emb"}
    assert torch.allclose(grads["grad.1.w"], torch.autograd.grad(model(x).sum(), model[1].w)[0])
    with pytest.raises(ValueError, match="module: expected one of the modules that ran"):
        rec.output("2")


def test_a_non_array_stage_is_a_crash_not_a_refusal(golden):
    """Returning something that is not a tensor is an adapter bug: on a case the reference refuses it
    must not count as a (TypeError) refusal."""
    (result,) = validate(lambda case: {"logits": "not an array"}, odd_batch(golden))
    assert result.first_failure.stage == "input_check" and "crashed instead of refusing" in result.first_failure.note
