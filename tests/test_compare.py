"""golden/compare.py: judges an outputs file against the golden stages with numpy and safetensors only.

Every run here is a subprocess whose Python cannot import torch, transformers or xlnet_ref (a meta path
finder installed by sitecustomize refuses them), so the promise "runs where torch is not installed"
is what is tested. Exit status 0 = every stage passes, 1 = a mismatch, 2 = a usage or file error.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "golden"
COMPARE = GOLDEN / "compare.py"

BLOCKER = '''
import sys

class NoTorch:
    """Refuse torch, transformers and xlnet_ref: compare.py must not need them."""
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers", "xlnet_ref"):
            raise ImportError(f"{name} is blocked in this test (compare.py must run without it)")
        return None

sys.meta_path.insert(0, NoTorch())
'''


@pytest.fixture(scope="module")
def no_torch_env(tmp_path_factory):
    site = tmp_path_factory.mktemp("no_torch")
    (site / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": str(site)}
    blocked = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert blocked.returncode != 0 and "blocked" in blocked.stderr  # the environment really has no torch
    return env


def run_compare(env, *args, cwd=None):
    return subprocess.run(
        [sys.executable, str(COMPARE), *map(str, args)], env=env, capture_output=True, text=True, cwd=cwd, timeout=300
    )


def manifest():
    return json.loads((GOLDEN / "manifest.json").read_text())


def golden_copy(cases=None) -> dict[str, np.ndarray]:
    """An outputs dict holding the golden stages themselves (what a perfect implementation writes)."""
    out = {}
    for entry in manifest()["cases"]:
        if cases is not None and entry["name"] not in cases:
            continue
        if entry["expect_error"]:
            out[f"{entry['name']}/refused"] = np.array(1)
            continue
        tensors = load_file(str(GOLDEN / entry["file"]))
        out.update({f"{entry['name']}/{s['name']}": tensors[s["file"]] for s in entry["stages"]})
    return out


def test_the_two_copies_of_compare_py_are_the_same():
    assert COMPARE.read_bytes() == (ROOT / "xlnet_ref" / "validation" / "compare.py").read_bytes()


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_a_copy_of_the_golden_stages_passes(no_torch_env, tmp_path, suffix):
    path = tmp_path / f"outputs{suffix}"
    outputs = golden_copy()
    save_file(outputs, str(path)) if suffix == ".safetensors" else np.savez(path, **outputs)
    run = run_compare(no_torch_env, path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "ALL PASS" in run.stdout and "bi_data_odd_batch" in run.stdout


def test_a_perturbation_fails_naming_case_stage_and_place(no_torch_env, tmp_path):
    outputs = golden_copy()
    bd = outputs["memory/layer0.content.bd"].copy()  # [b, n, i, j]
    bd[1, 0, 3, 7] += 1e-3 * np.abs(bd).max()  # key 7 is in the current segment: not masked
    outputs["memory/layer0.content.bd"] = bd
    save_file(outputs, str(tmp_path / "out.safetensors"))
    run = run_compare(no_torch_env, tmp_path / "out.safetensors")
    assert run.returncode == 1, run.stdout + run.stderr
    assert "First departure from the reference: case 'memory', stage 'layer0.content.bd'" in run.stdout
    assert "worst at batch row 1, head 0, query position 3, key 7" in run.stdout
    # a looser tolerance for that stage (or its base name) lets it pass
    assert run_compare(no_torch_env, tmp_path / "out.safetensors", "--stage-tol", "bd=1e-2").returncode == 0
    assert run_compare(no_torch_env, tmp_path / "out.safetensors", "--stage-tol", "layer0.*=1e-2").returncode == 0
    assert run_compare(no_torch_env, tmp_path / "out.safetensors", "--rtol", "1e-2").returncode == 0


def test_missing_logits_unknown_names_and_refusals(no_torch_env, tmp_path):
    outputs = golden_copy(["one_stream", "bi_data_odd_batch", "two_stream"])
    del outputs["one_stream/logits"]
    outputs["two_stream/layer0.query.bd_row"] = outputs.pop("two_stream/layer0.query.bd_raw")
    del outputs["bi_data_odd_batch/refused"]
    outputs["bi_data_odd_batch/logits"] = np.zeros((3, 5, 29), np.float32)  # ran instead of refusing
    outputs["twostream/logits"] = outputs["two_stream/logits"]
    save_file(outputs, str(tmp_path / "out.safetensors"))
    run = run_compare(no_torch_env, tmp_path / "out.safetensors")
    assert run.returncode == 1
    assert "logits are required" in run.stdout
    assert "unknown stage name (did you mean 'layer0.query.bd_raw'?)" in run.stdout
    assert "the reference refuses this input" in run.stdout
    assert "unknown case 'twostream' in OUTPUTS (did you mean 'two_stream'?)" in run.stdout
    assert "case memory" in run.stdout and "skipped" in run.stdout


def test_length_first_layout_and_broadcast(no_torch_env, tmp_path):
    from xlnet_ref.validation.compare import length_first_layout

    entries = {e["name"]: e for e in manifest()["cases"]}
    outputs = golden_copy(["bi_data_batch4"])
    for stage in entries["bi_data_batch4"]["stages"]:
        key, axes = f"bi_data_batch4/{stage['name']}", stage["layout"].split()
        if "b" in axes:
            lf = length_first_layout(stage["layout"]).split()
            outputs[key] = np.ascontiguousarray(np.transpose(outputs[key], [axes.index(a) for a in lf]))
    outputs["bi_data_batch4/non_tgt_mask"] = outputs["bi_data_batch4/non_tgt_mask"][..., None]  # [i, j, b, 1]
    save_file(outputs, str(tmp_path / "lf.safetensors"))
    assert run_compare(no_torch_env, tmp_path / "lf.safetensors", "--layout", "length_first").returncode == 0
    assert run_compare(no_torch_env, tmp_path / "lf.safetensors").returncode == 1
    # k_r is the same for every row of a half; pos_emb of a case without bi_data broadcast over b: [1, r, m]
    outputs = golden_copy(["clamp_len"])
    outputs["clamp_len/pos_emb"] = np.ascontiguousarray(outputs["clamp_len/pos_emb"][:1])
    save_file(outputs, str(tmp_path / "bc.safetensors"))
    assert run_compare(no_torch_env, tmp_path / "bc.safetensors").returncode == 0


def test_bad_paths_and_files_are_one_line_errors(no_torch_env, tmp_path):
    good = tmp_path / "good.safetensors"
    save_file(golden_copy(["one_stream"]), str(good))
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00" * 20)
    (tmp_path / "outputs.txt").write_text("hello")
    save_file({"logits": np.zeros(3, np.float32)}, str(tmp_path / "nokeys.safetensors"))
    truncated = tmp_path / "golden_truncated"
    truncated.mkdir()
    (truncated / "manifest.json").write_text((GOLDEN / "manifest.json").read_text()[:5000])
    missing_file = tmp_path / "golden_missing"
    missing_file.mkdir()
    (missing_file / "manifest.json").write_text((GOLDEN / "manifest.json").read_text())
    cases = [
        ([tmp_path / "nowhere.safetensors"], "nowhere.safetensors: no such file"),
        ([tmp_path / "garbage.safetensors"], "cannot read it as safetensors"),
        ([tmp_path / "outputs.txt"], "expected a .safetensors or .npz file"),
        ([tmp_path / "nokeys.safetensors"], "expected '<case>/<stage>'"),
        ([good, "--golden", tmp_path / "nowhere"], "no such folder"),
        ([good, "--golden", tmp_path], "manifest.json: no such file"),
        ([good, "--golden", truncated], "not valid JSON"),
        ([good, "--golden", missing_file], "one_stream.safetensors: no such file"),
        ([good, "--case", "one_strem"], "--case: expected one of"),
    ]
    for args, message in cases:
        run = run_compare(no_torch_env, *args)
        lines = run.stderr.strip().splitlines()
        assert run.returncode == 2 and len(lines) == 1 and message in lines[0], (args, run.stdout, run.stderr)
    for args in (["--stage-tol", "nonsense"], ["--layout", "sideways"], []):
        run = run_compare(no_torch_env, *([good] if args else []), *args)
        lines = run.stderr.strip().splitlines()
        assert run.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), run.stderr


def test_a_copied_folder_is_all_a_porter_needs(no_torch_env, tmp_path):
    """golden/ copied elsewhere: compare.py finds the golden files next to itself."""
    import shutil

    target = tmp_path / "golden_copy"
    shutil.copytree(GOLDEN, target)
    save_file(golden_copy(["two_stream"]), str(tmp_path / "out.safetensors"))
    run = subprocess.run(
        [sys.executable, str(target / "compare.py"), str(tmp_path / "out.safetensors")],
        env=no_torch_env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert run.returncode == 0 and str(target) in run.stdout, run.stdout + run.stderr


def test_the_numpy_example_passes_without_torch(no_torch_env, tmp_path):
    """examples/numpy_xlnet.py: XLNet's forward in numpy from the golden files alone, every stage it
    computes passing compare.py; the odd bi_data batch is refused; gradients are not provided."""
    out = tmp_path / "numpy_outputs.safetensors"
    run = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "numpy_xlnet.py"), "--out", str(out)],
        env=no_torch_env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr
    assert "bi_data_odd_batch        refused" in run.stdout
    judged = run_compare(no_torch_env, out, "--verbose")
    assert judged.returncode == 0, judged.stdout[-3000:]
    for row in ("layer1.query.bd ", "layer0.content.ef ", "layer1.new_mem ", "pos_emb ", "loss "):
        assert row in judged.stdout, row
    written = load_file(str(out))
    assert len([k for k in written if k.startswith("uni_perm_padding/")]) == 49


def test_the_readme_example_writes_a_passing_outputs_file(no_torch_env, tmp_path):
    """golden/README.md's example, run as written, with examples/numpy_xlnet.py as "my_xlnet"."""
    text = (GOLDEN / "README.md").read_text()
    block = text.split("## Writing an outputs file from a non-torch implementation")[1]
    code = block.split("```python\n")[1].split("```")[0]
    assert len(code.splitlines()) <= 30
    (tmp_path / "write_outputs.py").write_text(code)
    (tmp_path / "my_xlnet.py").write_text("from numpy_xlnet import xlnet_forward as xlnet_stages\n")
    env = {**no_torch_env, "PYTHONPATH": os.pathsep.join([no_torch_env["PYTHONPATH"], str(ROOT / "examples")])}
    run = subprocess.run(
        [sys.executable, "write_outputs.py", str(GOLDEN)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr
    judged = run_compare(env, tmp_path / "my_outputs.safetensors")
    assert judged.returncode == 0 and "ALL PASS" in judged.stdout, judged.stdout[-2000:]


def test_the_walkthroughs_rel_shift_bug_is_named(no_torch_env, tmp_path):
    """docs/validate.md step 6: the numpy example without its rel_shift fails first at layer0.content.bd,
    while bd_raw (before the shift) still agrees."""
    out = tmp_path / "buggy.safetensors"
    code = f"import numpy_xlnet as x; x.rel_shift = lambda bd, klen: bd[..., :klen]; x.main(['--out', {str(out)!r}])"
    run = subprocess.run(
        [sys.executable, "-c", code],
        env=no_torch_env,
        cwd=ROOT / "examples",
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr
    judged = run_compare(no_torch_env, out, "--case", "one_stream", "--verbose")
    assert judged.returncode == 1
    assert "First departure from the reference: case 'one_stream', stage 'layer0.content.bd'" in judged.stdout
    assert any(line.split()[:2] == ["layer0.content.bd_raw", "pass"] for line in judged.stdout.splitlines())
