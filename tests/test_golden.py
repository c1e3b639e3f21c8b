"""The committed golden files: the reference reproduces them, they regenerate bit for bit, they are small,
and they can be read with json + numpy alone (the format docs/validate.md describes)."""

from __future__ import annotations

import json
import shutil
import struct

import numpy as np
import pytest
import torch

from xlnet_ref.validation.golden import DEFAULT_DIR, SPECS, environment, read_cases, read_manifest, write_golden
from xlnet_ref.validation.validate import first_departure, reference_adapter, validate, validate_case

SAME_ENVIRONMENT = read_manifest(DEFAULT_DIR)["generated_on"] == environment()



@pytest.fixture(scope="module")
def committed():
    return read_cases(DEFAULT_DIR)


def test_every_case_is_committed(committed):
    assert [c.name for c in committed] == [s.name for s in SPECS]


def test_reference_reproduces_the_committed_files(committed):
    for case in committed:
        result = validate_case(case, reference_adapter)
        assert result.passed, f"{case.name}: first failing stage {result.first_failure}"
        if case.expect_error is None:
            assert result.outputs.keys() >= case.expected.keys()
            if SAME_ENVIRONMENT:  # bit for bit where they were generated
                for name, expected in case.expected.items():
                    assert torch.equal(result.outputs[name], expected), f"{case.name}/{name} not bit for bit"
        else:
            assert result.stages[0].stage == "input_check"


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory):
    return write_golden(tmp_path_factory.mktemp("golden"))


def test_regenerating_gives_the_same_bytes(regenerated):
    if not SAME_ENVIRONMENT:
        pytest.skip(f"golden files were generated on {read_manifest(DEFAULT_DIR)['generated_on']}, "
                    f"this is {environment()}: only tolerances are promised (test above)")
    committed_files = sorted(p.name for p in DEFAULT_DIR.iterdir())
    assert committed_files == sorted(p.name for p in regenerated.iterdir())
    for name in committed_files:
        assert (regenerated / name).read_bytes() == (DEFAULT_DIR / name).read_bytes(), f"{name} differs"


def test_writing_twice_gives_the_same_bytes(regenerated, tmp_path):
    again = write_golden(tmp_path, read_cases(regenerated))  # from the written cases, not from the seeds
    for path in regenerated.glob("*.safetensors"):
        assert (again / path.name).read_bytes() == path.read_bytes(), path.name


def test_files_are_small():
    total = sum(p.stat().st_size for p in DEFAULT_DIR.iterdir())
    assert total < 1_000_000, f"golden/ holds {total:,} bytes"


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
        assert {"name", "description", "file", "dtype", "config", "tolerances", "expect_error", "inputs",
                "stages"} <= entry.keys()
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
