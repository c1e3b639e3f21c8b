"""The committed golden files: the reference reproduces them within their tolerances on any machine,
regenerating them from the seeds gives the same files within those tolerances (and the same bytes when
written twice on one machine), they are small, and they can be read with json + numpy alone (the
format docs/validate.md describes).

Bit-for-bit equality with the committed files is not tested: float rounding depends on the CPU, the
kernels torch picks for it, the BLAS build and the thread count (run the suite with
ATEN_CPU_CAPABILITY=default to see the bits move while every tolerance holds)."""

from __future__ import annotations

import json
import shutil
import struct

import numpy as np
import pytest
import torch

from xlnet_ref.validation.cases import SPECS, builtin_cases, expected_stage_names
from xlnet_ref.validation.compare import compare_stage, huge_threshold
from xlnet_ref.validation.golden import DEFAULT_DIR, read_cases, write_golden
from xlnet_ref.validation.validate import first_departure, reference_adapter, validate, validate_case


@pytest.fixture(scope="module")
def committed():
    return read_cases(DEFAULT_DIR)


def test_every_case_is_committed(committed):
    assert [c.name for c in committed] == [s.name for s in SPECS]


def test_expected_stage_names_are_what_the_reference_returns():
    """The golden set's stage lists (which a folder is checked against) are derived from the specs alone:
    they must be exactly the reference's stages, in order, for every case."""
    for spec, case in zip(SPECS, builtin_cases()):
        if spec.expect_error:
            assert expected_stage_names(spec) == []
            continue
        from xlnet_ref.validation.adapters import run_adapter

        assert expected_stage_names(spec) == list(run_adapter(reference_adapter, case).outputs), spec.name


def test_reference_reproduces_the_committed_files(committed):
    """The promise, on any machine: every stage within the case's tolerances."""
    for case in committed:
        result = validate_case(case, reference_adapter)
        assert result.passed, f"{case.name}: first failing stage {result.first_failure}"
        if case.expect_error is None:
            assert result.outputs.keys() >= case.expected.keys()
        else:
            assert result.stages[0].stage == "input_check"


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory):
    return write_golden(tmp_path_factory.mktemp("golden"))


def within_case_tolerance(name, expected, actual, case) -> bool:
    """The golden comparison rule itself (compare.compare_stage), with the case's tolerances."""
    if not expected.dtype.is_floating_point:
        return torch.equal(expected, actual)
    result = compare_stage(
        name,
        expected.numpy(),
        actual.numpy(),
        rtol=case.tolerances["rtol"],
        atol=case.tolerances["atol"],
        huge=huge_threshold(case.dtype),
    )
    return not result.failed


def test_regenerating_from_the_seeds_gives_the_committed_files_within_tolerance(committed, regenerated):
    """Same file names, cases, stage lists and tensor names; integer and bool tensors equal; every float
    tensor (weights, inputs, stages) within its case's tolerances."""
    written = sorted(p.name for p in regenerated.iterdir())  # golden/ also holds README.md
    assert sorted(p.name for p in DEFAULT_DIR.iterdir()) == sorted(written + ["README.md"])
    assert (regenerated / "compare.py").read_bytes() == (DEFAULT_DIR / "compare.py").read_bytes()
    fresh = {c.name: c for c in read_cases(regenerated)}
    for case in committed:
        new = fresh[case.name]
        assert (new.config, new.dtype, new.tolerances, new.gradients) == (
            case.config,
            case.dtype,
            case.tolerances,
            case.gradients,
        ), case.name
        assert bool(new.expect_error) == bool(case.expect_error), case.name
        assert list(new.expected) == list(case.expected), case.name
        for group in ("weights", "inputs", "expected"):
            old_tensors, new_tensors = getattr(case, group), getattr(new, group)
            assert old_tensors.keys() == new_tensors.keys(), (case.name, group)
            for name, old in old_tensors.items():
                pairs = zip(old, new_tensors[name]) if name == "mems" else [(old, new_tensors[name])]
                for a, b in pairs:
                    assert a.shape == b.shape and a.dtype == b.dtype, (case.name, name)
                    assert within_case_tolerance(name, a, b, case), f"{case.name}/{name}"


def test_writing_twice_on_one_machine_gives_the_same_bytes(regenerated, tmp_path):
    """The bit-for-bit promise that holds everywhere: from the seeds, and from the written cases."""
    from_seeds = write_golden(tmp_path / "seeds")
    from_files = write_golden(tmp_path / "files", read_cases(regenerated))
    for path in regenerated.iterdir():
        assert (from_seeds / path.name).read_bytes() == path.read_bytes(), path.name
        if path.suffix == ".safetensors":
            assert (from_files / path.name).read_bytes() == path.read_bytes(), path.name


def test_golden_check_on_the_committed_files_passes_and_says_what_it_checked(capsys):
    from xlnet_ref.validation.cli import golden_main

    assert golden_main(["check"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("promise checked: every stage within its case's tolerances")
    assert "bit-for-bit equality is not promised across machines" in out
    assert f"OK: {len(SPECS) - 1} of {len(SPECS) - 1} cases within tolerance, 1 refusal case(s)" in out


@pytest.mark.parametrize("factor", [1 + 1e-4, 1 - 1e-4])
def test_golden_check_fails_on_a_changed_stage(tmp_path, capsys, factor):
    """The tolerance path is no rubber stamp: a change of 1e-4 (ten times rtol) in one stage fails
    `golden check` (exit 1) and names that case, and only that case."""
    from xlnet_ref.validation.cli import golden_main

    directory = copy_golden(tmp_path)
    edit_tensor(directory, "memory", "stages/layer1.content.bd", lambda t: t * factor)
    assert golden_main(["check", "--dir", str(directory)]) == 1
    out = capsys.readouterr().out
    verdicts = [
        line.split()[:2]
        for line in out.splitlines()
        if line[:1].isalpha() and line.split()[0] in {s.name for s in SPECS}
    ]
    assert [name for name, verdict in verdicts if verdict == "FAIL"] == ["memory"]
    assert len(verdicts) == len(SPECS)
    assert "layer1.content.bd" in out and out.splitlines()[-1].startswith("FAILED: ")


def test_golden_check_fails_on_a_changed_weight(tmp_path, capsys):
    from xlnet_ref.validation.cli import golden_main

    directory = copy_golden(tmp_path)

    def nudge(w):
        w[3] += 1e-3
        return w

    edit_tensor(directory, "gradients", "weights/transformer.layer.0.ff.layer_2.bias", nudge)
    assert golden_main(["check", "--dir", str(directory)]) == 1
    assert "gradients                FAIL" in capsys.readouterr().out


def test_files_are_small():
    total = sum(p.stat().st_size for p in DEFAULT_DIR.iterdir())
    assert total < 1_500_000, f"golden/ holds {total:,} bytes"


# --- the format, read without torch ------------------------------------------------------------------

NUMPY_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "BOOL": np.bool_}


def read_safetensors_by_hand(path) -> dict[str, np.ndarray]:
    """The safetensors format: u64 little-endian header size, a JSON header, then the raw bytes."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    header.pop("__metadata__", None)
    body = data[8 + n :]
    out = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        out[name] = np.frombuffer(body[begin:end], dtype=NUMPY_DTYPES[info["dtype"]]).reshape(info["shape"])
    return out


def test_manifest_and_tensors_readable_without_torch(committed):
    manifest = json.loads((DEFAULT_DIR / "manifest.json").read_text())
    assert manifest["format"] == "xlnet_ref-golden" and manifest["format_version"] == 1
    by_name = {c.name: c for c in committed}
    for entry in manifest["cases"]:
        assert {
            "name",
            "description",
            "file",
            "dtype",
            "config",
            "tolerances",
            "expect_error",
            "gradients",
            "inputs",
            "stages",
        } <= entry.keys()
        arrays = read_safetensors_by_hand(DEFAULT_DIR / entry["file"])
        weights = [k for k in arrays if k.startswith("weights/")]
        assert "weights/lm_loss.weight" in weights and "weights/transformer.layer.0.rel_attn.q" in weights
        for stage in entry["stages"]:
            array = arrays[stage["file"]]
            assert list(array.shape) == stage["shape"] and stage["layout"] and stage["meaning"]
            assert str(array.dtype) == stage["dtype"]
            # the same numbers torch reads
            assert np.array_equal(array, by_name[entry["name"]].expected[stage["name"]].numpy())
        for item in entry["inputs"]:
            files = item.get("files", [item.get("file")])
            for f in files:
                assert list(arrays[f].shape) == item["shape"], f


# --- any change in the numbers is caught -------------------------------------------------------------


def copy_golden(tmp_path):
    target = tmp_path / "golden"
    shutil.copytree(DEFAULT_DIR, target)
    return target


def edit_tensor(directory, case: str, name: str, change):
    from safetensors.torch import load_file, save_file

    path = directory / f"{case}.safetensors"
    tensors = load_file(str(path))
    tensors[name] = change(tensors[name].clone())
    save_file(tensors, str(path))


def test_a_changed_stage_is_caught(tmp_path):
    directory = copy_golden(tmp_path)
    edit_tensor(directory, "two_stream", "stages/layer1.query.bd", lambda t: t * (1 + 1e-4))
    results = validate(reference_adapter, read_cases(directory))
    case, stage = first_departure(results)
    assert (case.case.name, stage.stage) == ("two_stream", "layer1.query.bd")
    assert [r.case.name for r in results if not r.passed] == ["two_stream"]


def test_a_changed_weight_is_caught_where_it_first_acts(tmp_path):
    directory = copy_golden(tmp_path)

    def nudge(w):
        w[0, 1, 2] += 1e-3
        return w

    # W_r of layer 1 first acts in layer 1's positional keys
    edit_tensor(directory, "one_stream", "weights/transformer.layer.1.rel_attn.r", nudge)
    case, stage = first_departure(validate(reference_adapter, read_cases(directory, ["one_stream"])))
    assert stage.stage == "layer1.k_r"


# --- a missing, incomplete or damaged golden folder: exit 2 and one line naming the file ---------------


def cli_error(capsys, directory) -> list[str]:
    """Run `golden check` and `validate --golden` on a folder; both must exit 2 with the same one line."""
    from xlnet_ref.validation.cli import golden_main, validate_main

    assert golden_main(["check", "--dir", str(directory)]) == 2
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in out.out + out.err, out
    assert validate_main(["--against", "ref", "--golden", str(directory)]) == 2
    again = capsys.readouterr().err.strip().splitlines()
    assert again == lines
    return lines[0]


def test_missing_or_empty_folder(tmp_path, capsys):
    assert "golden folder" in cli_error(capsys, tmp_path / "nowhere") and "no such folder" in cli_error(
        capsys, tmp_path / "nowhere"
    )
    (tmp_path / "empty").mkdir()
    line = cli_error(capsys, tmp_path / "empty")
    assert "manifest.json: no such file" in line


def test_truncated_or_corrupt_manifest(tmp_path, capsys):
    directory = copy_golden(tmp_path)
    text = (directory / "manifest.json").read_text()
    (directory / "manifest.json").write_text(text[: len(text) // 2])
    line = cli_error(capsys, directory)
    assert "manifest.json: not valid JSON" in line and "truncated" in line
    (directory / "manifest.json").write_text('{"format": "something else"}')
    assert "expected format 'xlnet_ref-golden'" in cli_error(capsys, directory)


def test_truncated_or_deleted_case_file(tmp_path, capsys):
    directory = copy_golden(tmp_path)
    path = directory / "memory.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    line = cli_error(capsys, directory)
    assert "memory.safetensors: not a readable safetensors file" in line
    path.unlink()
    assert "memory.safetensors: no such file (manifest.json lists it for case 'memory')" in cli_error(capsys, directory)


def test_missing_tensor(tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    directory = copy_golden(tmp_path)
    path = directory / "two_stream.safetensors"
    tensors = load_file(str(path))
    del tensors["stages/layer1.query.bd"]
    save_file(tensors, str(path))
    assert "two_stream.safetensors: no tensor 'stages/layer1.query.bd'" in cli_error(capsys, directory)


def edit_manifest(directory, change):
    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def test_a_manifest_with_fewer_cases_is_caught(tmp_path, capsys):
    """The expected cases are the code's (SPECS), not the folder's: dropping a case from the manifest
    (and its file) does not make a smaller golden set that passes."""
    directory = copy_golden(tmp_path)
    edit_manifest(directory, lambda m: m.update(cases=[c for c in m["cases"] if c["name"] != "gradients"]))
    (directory / "gradients.safetensors").unlink()
    line = cli_error(capsys, directory)
    assert f"lists {len(SPECS) - 1} cases, the golden set has {len(SPECS)}: missing ['gradients']" in line


def test_a_manifest_with_fewer_stages_is_caught(tmp_path, capsys):
    directory = copy_golden(tmp_path)

    def drop_stage(manifest):
        case = next(c for c in manifest["cases"] if c["name"] == "memory")
        case["stages"] = [s for s in case["stages"] if s["name"] != "layer0.new_mem_grad"]

    edit_manifest(directory, drop_stage)
    line = cli_error(capsys, directory)
    assert "case 'memory' lists" in line and "missing ['layer0.new_mem_grad']" in line


def test_stages_out_of_order_are_caught(tmp_path, capsys):
    directory = copy_golden(tmp_path)
    edit_manifest(directory, lambda m: m["cases"][0]["stages"].reverse())
    assert "case 'one_stream' lists its stages out of order" in cli_error(capsys, directory)
