"""The labs' feedback (xlnet_ref.labs): right answers pass, known mistakes are named, stubs and crashes are
reported with their case. The right answers here come from the library, not from the lab notebooks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from xlnet_ref import attention, memory, naive, permutation, relative_position
from xlnet_ref import model as model_module
from xlnet_ref.labs import feedback, graders, suspects
from xlnet_ref.validation.mutants import MUTANTS


def mutant_function(name, module, attribute):
    with MUTANTS[name].inject(None):
        return getattr(module, attribute)


def failure(check, fn) -> str:
    with pytest.raises(feedback.LabCheckFailed) as info:
        check(fn)
    return str(info.value)


# --- feedback.py -------------------------------------------------------------------------------------


def test_describe_prints_small_tensors_and_summarises_large_ones():
    assert "tensor([1., 2.])" in feedback.describe(torch.tensor([1.0, 2.0]))
    big = feedback.describe(torch.arange(100.0).reshape(10, 10))
    assert big.startswith("[10, 10] torch.float32") and "max 99" in big and "tensor(" not in big


def test_compare_is_silent_on_a_match_and_reports_case_values_and_first_difference():
    feedback.compare("f", torch.ones(2, 2), torch.ones(2, 2), case="c")
    got = torch.tensor([[1.0, 2.0], [3.0, 5.0]])
    with pytest.raises(feedback.LabCheckFailed) as info:
        feedback.compare("f", got, torch.tensor([[1.0, 2.0], [3.0, 4.0]]), case="two by two")
    text = str(info.value)
    assert "f: wrong on case 'two by two'" in text
    assert "first difference at [1, 1]: expected 4, got 5" in text
    assert "hint" not in text


def test_compare_names_the_known_mistake_the_answer_equals_else_the_fallback():
    expected, wrong = torch.zeros(3), torch.ones(3)
    with pytest.raises(feedback.LabCheckFailed, match="hint: you added one"):
        feedback.compare("f", wrong, expected, case="c", known_mistakes={"other": -wrong, "you added one": wrong})
    with pytest.raises(feedback.LabCheckFailed, match="hint: look again"):
        feedback.compare(
            "f", 2 * wrong, expected, case="c", known_mistakes={"you added one": wrong}, otherwise="look again"
        )
    with pytest.raises(feedback.LabCheckFailed, match=r"shape: expected \[3\], got \[4\]"):
        feedback.compare("f", torch.zeros(4), expected, case="c")


def test_call_turns_a_stub_and_a_crash_into_feedback():
    def stub(x):
        raise NotImplementedError()

    with pytest.raises(feedback.LabCheckFailed, match="not written yet"):
        feedback.call("f", stub, 1, case="c")
    with pytest.raises(feedback.LabCheckFailed, match="raised ZeroDivisionError on case 'one over zero'"):
        feedback.call("f", lambda x: 1 / x, 0, case="one over zero")


# --- lab 01 ------------------------------------------------------------------------------------------


def test_rel_shift_checks_pass_the_library_and_its_naive_twin():
    graders.check_rel_shift_by_index(naive.rel_shift_naive)
    graders.check_rel_shift_by_reshape(relative_position.rel_shift)
    graders.check_sinusoid_table(
        lambda p, d: relative_position.sinusoid_embedding(p, relative_position.inverse_frequencies(d))
    )


@pytest.mark.parametrize(
    "mutant, hint",
    [
        ("no_rel_shift", "no shift"),
        ("transformer_xl_rel_shift", "Transformer-XL's zero-pad rel_shift"),
    ],
)
def test_rel_shift_check_names_the_mutants(mutant, hint):
    text = failure(graders.check_rel_shift_by_reshape, mutant_function(mutant, attention, "rel_shift"))
    assert hint in text and "expected [3, 3]" in text


def test_rel_shift_check_says_when_rows_move_the_wrong_way():
    def wrong_way(bd, klen):
        i = torch.arange(bd.shape[0])[:, None]
        return bd.gather(1, torch.arange(klen)[None, :] + i)

    assert "moves rows the wrong way" in failure(graders.check_rel_shift_by_index, wrong_way)


def test_needed_distances_names_the_unused_row():
    def whole_table(qlen, mlen):
        return relative_position.relative_positions(qlen, qlen + mlen, attn_type="bi").long().tolist()

    assert "every row of the table" in failure(graders.check_needed_distances, whole_table)


# --- lab 03 ------------------------------------------------------------------------------------------


def test_cache_memory_check_passes_the_library_and_catches_the_missing_stop_gradient():
    graders.check_cache_memory(
        lambda h, p, mem_len, reuse_len: memory.cache_mem(h, p, mem_len=mem_len, reuse_len=reuse_len)
    )
    undetached = mutant_function("memory_not_detached", model_module, "cache_mem")
    text = failure(
        graders.check_cache_memory,
        lambda h, p, mem_len, reuse_len: undetached(h, p, mem_len=mem_len, reuse_len=reuse_len),
    )
    assert "stop-gradient SG(.) is missing" in text


def test_reach_formula_matches_the_measured_reach_and_names_n_layer_times_mem_len():
    for n_layer, mem_len, qlen in graders.REACH_CASES[:2] + [(2, 2, 4)]:
        model = graders.tiny_memory_model(n_layer=n_layer, mem_len=mem_len)
        measured = graders._measure_reach(model, graders._stream_ids(qlen, n_layer + 1), qlen)
        assert measured == mem_len + (n_layer - 1) * qlen
    graders.check_reach_formula(lambda n_layer, mem_len, qlen: mem_len + (n_layer - 1) * qlen)
    assert "holds only when mem_len = qlen" in failure(graders.check_reach_formula, lambda n, m, q: n * m)


# --- lab 04 ------------------------------------------------------------------------------------------


def library_masks(order, cut):
    is_target = torch.zeros(len(order), dtype=torch.bool)
    is_target[order[cut:]] = True
    return permutation.permutation_masks(order, is_target)


def test_mask_checks_pass_the_library_and_name_the_swapped_stream_masks():
    graders.check_query_mask(lambda o, c: library_masks(o, c).perm_mask)
    graders.check_content_mask(lambda o, c: library_masks(o, c).content_mask)
    assert "must not see its own token" in failure(
        graders.check_query_mask, lambda o, c: library_masks(o, c).content_mask
    )
    assert "you masked the content stream's own token" in failure(
        graders.check_content_mask, lambda o, c: library_masks(o, c).perm_mask
    )
    assert "sign is flipped" in failure(graders.check_query_mask, lambda o, c: 1 - library_masks(o, c).perm_mask)


def test_target_mapping_check_passes_the_library():
    def mapping(order, cut, num_predict):
        return (
            library_masks(order, cut)
            and permutation.target_mapping_for(
                library_masks(order, cut).target_mapping.sum(0) > 0, num_predict=num_predict
            )[0]
        )

    graders.check_target_mapping(mapping)


# --- lab 05 ------------------------------------------------------------------------------------------


def test_target_blind_logits_are_the_same_for_two_targets_and_the_aware_ones_are_not():
    lm, ids = graders.tiny_lm(), torch.tensor([[5, 9, 2, 7]])
    blind = [graders.reference_blind_logits(lm, ids, [0, 1], t) for t in (2, 3)]
    aware = [graders.reference_aware_logits(lm, ids, [0, 1], t) for t in (2, 3)]
    assert torch.equal(blind[0], blind[1])
    assert (aware[0] - aware[1]).abs().max() > 1e-3
    text = failure(graders.check_target_blind_logits, graders.reference_aware_logits)
    assert "that is the target-aware query stream" in text


# --- lab 06 ------------------------------------------------------------------------------------------


def test_suspects_are_five_different_mutants_whose_names_the_file_does_not_spell():
    names = [suspects._identity(k) for k in "abcde"]
    assert len(set(names)) == 5 and set(names) <= set(MUTANTS)
    source = Path(suspects.__file__).read_text()
    assert not any(name in source for name in names)
    with pytest.raises(ValueError, match="suspect: expected one of"):
        suspects._identity("f")


def test_check_suspect_accepts_the_mutants_own_record_and_explains_a_late_stage():
    answers = {}
    for k in "abcde":
        m = MUTANTS[suspects._identity(k)]
        answers[k] = (m.expected_case, m.expected_stage, graders.MUTANT_MECHANISM[m.name])
        graders.check_suspect(answers, k)
    case, _, mechanism = answers["a"]
    answers["a"] = (case, "logits", mechanism)
    assert "is not the first failing stage" in failure(lambda a: graders.check_suspect(a, "a"), answers)
    assert "got no entry" in failure(lambda a: graders.check_suspect(a, "a"), {})


# --- tests/labs/check_labs.py ---------------------------------------------------------------------------

LABS = Path(__file__).resolve().parents[1] / "notebooks" / "labs"


def check_labs_module():
    import importlib.util
    import sys

    sys.path.insert(0, str(Path(__file__).parent / "labs"))
    spec = importlib.util.spec_from_file_location("check_labs", Path(__file__).parent / "labs" / "check_labs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_check_labs_finds_solution_text_and_a_stale_release(tmp_path):
    import nbformat

    check = check_labs_module()
    lab = "01_rel_shift"
    source = nbformat.read(LABS / "source" / lab / f"{lab}.ipynb", 4)
    release_path = LABS / "release" / lab / f"{lab}.ipynb"
    release = nbformat.read(release_path, 4)
    assert check.leaked_solution(source, release) == []
    assert "return bd.gather(1, column)" in check.leaked_solution(source, source)
    assert check.release_diff(release_path, release_path) is None
    release.cells[4].source += "\n# edited by hand"
    nbformat.write(release, tmp_path / "stale.ipynb")
    assert "cell 4" in check.release_diff(tmp_path / "stale.ipynb", release_path)
