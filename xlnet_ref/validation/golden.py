r"""Golden reference outputs: a few tiny cases (config x inputs) with every stage of the reference saved.

A *case* is everything needed to run one forward pass and check it stage by stage:

- ``config``: an :class:`xlnet_ref.XLNetConfig` as a dict (transformers' field names, plus ``untie_r``);
- ``weights``: the LM model's tensors under transformers' ``XLNetLMHeadModel`` names
  (``transformer.layer.0.rel_attn.q`` [m, n, d], ..., ``lm_loss.weight`` tied to the word embedding);
- ``inputs``: the forward arguments, batch-first (``input_ids`` [b, i], ``mems`` as n_layer tensors
  [b, mlen, m], ...), plus ``target_ids`` / ``target_weights`` [b, k] for the loss;
- ``expected``: the reference's stages in forward order (see :mod:`xlnet_ref.validation.validate` for the list),
  or ``expect_error``: the reference refuses the input.

On disk (``golden/``, format documented in ``docs/validate.md``): one ``manifest.json`` and one
``<case>.safetensors`` per case, with tensors named ``weights/<name>``, ``inputs/<name>`` (``inputs/mems.0``,
``inputs/mems.1``, ...) and ``stages/<stage>``. Both formats are readable without PyTorch.

    python -m xlnet_ref.golden write [--dir golden]   # regenerate (deterministic: same bytes on the same machine)
    python -m xlnet_ref.golden check [--dir golden]   # does the reference still reproduce them?

Cases are generated from seeds with torch.Generator, so regenerating on the same machine and torch
version gives the same bytes. Reading a case needs neither the model nor transformers.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

FORMAT = "xlnet_ref-golden"
FORMAT_VERSION = 1
DEFAULT_DIR = Path(__file__).resolve().parents[2] / "golden"

# the tiny model every case uses: 2 layers so that "one set of weights for all layers" shows
TINY = dict(vocab_size=29, d_model=16, n_layer=2, n_head=2, d_inner=24, dropout=0.0)
WEIGHT_STD = 0.3  # larger than the 0.02 init, so every score term moves the output well above round-off

# per stage: pass iff max |actual - expected| <= rtol * max |expected| + atol
TOLERANCES = {
    "float32": {"rtol": 1e-5, "atol": 1e-6},
    "float16": {"rtol": 1e-2, "atol": 1e-3},
}
DTYPES = {"float32": torch.float32, "float16": torch.float16}

# what each input means (for the manifest and the adapter documentation)
INPUT_MEANINGS = {
    "input_ids": "[b, i] int64 token ids",
    "token_type_ids": "[b, i] int64 segment ids (only same/different matters; 2 = CLS)",
    "attention_mask": "[b, i] 1 = real token, 0 = padding (XLNet pads on the left)",
    "perm_mask": "[b, i, j] 1 = position i may NOT attend to position j (factorization order)",
    "target_mapping": "[b, k, i] one-hot rows: the k-th prediction is at position i; all-zero row = padding target",
    "mems": "n_layer tensors [b, mlen, m]: the content stream entering each layer in the previous segment",
    "target_ids": "[b, k] int64 the token each prediction should produce (any id on padding rows)",
    "target_weights": "[b, k] 1 = real target, 0 = padding row (must not count in the loss)",
}


@dataclass(frozen=True)
class CaseSpec:
    """How to generate one case: config overrides on TINY and the kind of inputs."""

    name: str
    description: str
    seed: int
    batch: int
    qlen: int
    config: dict = field(default_factory=dict)
    dtype: str = "float32"
    token_types: bool = False
    left_padding: bool = False
    num_predict: int = 0  # > 0: two streams (perm_mask + target_mapping) and the LM loss
    pad_target: bool = False  # the last batch row gets one all-zero target_mapping row
    mem_prev: int = 0  # > 0: mems of this length are passed in
    expect_error: bool = False  # the reference must refuse this input


SPECS = [
    CaseSpec("one_stream", "one stream, 'bi' attention, no masks, no segments", seed=1, batch=2, qlen=6),
    CaseSpec("segments_padding", "one stream with segment ids (A, B, CLS = 2) and left padding",
             seed=2, batch=2, qlen=6, token_types=True, left_padding=True),
    CaseSpec("two_stream", "two streams: factorization-order perm_mask, 3 prediction targets (one a padding row), "
             "segment ids, LM loss", seed=3, batch=2, qlen=6, token_types=True, num_predict=3, pad_target=True),
    CaseSpec("memory", "two streams with a 4-position memory from the previous segment (mem_len 8 keeps 2 of it)",
             seed=4, batch=2, qlen=6, config=dict(mem_len=8), token_types=True, num_predict=2, mem_prev=4),
    CaseSpec("uni_memory_reuse", "'uni' (causal) attention with memory, mem_len 5 and reuse_len 4, segment ids",
             seed=5, batch=2, qlen=6, config=dict(attn_type="uni", mem_len=5, reuse_len=4), token_types=True,
             mem_prev=3),
    CaseSpec("bi_data", "bi_data (first half of the batch forwards, second half backwards), clamp_len 5, two streams",
             seed=6, batch=2, qlen=6, config=dict(bi_data=True, clamp_len=5), token_types=True, num_predict=2),
    CaseSpec("bi_data_odd_batch", "bi_data with an odd batch (3): has no meaning, must be refused",
             seed=7, batch=3, qlen=5, config=dict(bi_data=True), expect_error=True),
    CaseSpec("memory_given_mem_len_0", "memory passed in while mem_len is 0: it must still be attended to",
             seed=8, batch=1, qlen=5, config=dict(mem_len=0), left_padding=True, mem_prev=3),
    CaseSpec("float16_padding", "float16 with left padding and segments (masked scores must stay finite)",
             seed=9, batch=2, qlen=6, dtype="float16", token_types=True, left_padding=True),
]


@dataclass
class Case:
    """One golden case. ``expected`` is None until the reference has been run (or read from disk)."""

    name: str
    description: str
    config: dict
    dtype: str
    weights: dict[str, torch.Tensor]
    inputs: dict  # name -> tensor; "mems" -> list of tensors
    tolerances: dict
    expect_error: str | None = None
    expected: dict[str, torch.Tensor] | None = None

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


# ---------------------------------------------------------------------------------------------------
# generating cases


def random_weights(config: dict, *, seed: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Weights under transformers' XLNetLMHeadModel names, drawn N(0, 0.3) (LayerNorm scales N(1, 0.3))."""
    from ..config import XLNetConfig
    from ..interop import backbone_tensors_in_hf_names
    from ..model import XLNetLMHeadModel

    model = XLNetLMHeadModel(XLNetConfig.from_dict(config))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():  # lm_loss.weight is tied: drawn once, as the embedding
            mean = 1.0 if name.endswith("layer_norm.weight") else 0.0
            p.copy_(mean + WEIGHT_STD * torch.randn(p.shape, generator=g))
    weights = {f"transformer.{k}": v for k, v in backbone_tensors_in_hf_names(model.transformer).items()}
    weights["lm_loss.weight"] = model.lm_loss.weight
    weights["lm_loss.bias"] = model.lm_loss.bias
    return {k: v.detach().to(dtype).clone() for k, v in sorted(weights.items())}


def random_inputs(spec: CaseSpec, config: dict) -> dict:
    """The forward arguments of one case, batch-first, drawn from the spec's seed."""
    g = torch.Generator().manual_seed(1000 + spec.seed)
    b, i, dtype = spec.batch, spec.qlen, DTYPES[spec.dtype]
    inputs: dict = {"input_ids": torch.randint(0, config["vocab_size"], (b, i), generator=g)}
    if spec.token_types:  # [A ... A | B ... B | CLS]: segment 0, segment 1, and 2 for the last token
        tt = torch.zeros(b, i, dtype=torch.long)
        for row in range(b):
            split = int(torch.randint(1, i - 1, (1,), generator=g))
            tt[row, split:] = 1
        tt[:, -1] = 2
        inputs["token_type_ids"] = tt
    if spec.left_padding:  # first row: 2 padding positions on the left
        attention_mask = torch.ones(b, i, dtype=dtype)
        attention_mask[0, :2] = 0
        inputs["attention_mask"] = attention_mask
    if spec.num_predict:
        k = spec.num_predict
        perm_mask = torch.zeros(b, i, i)
        target_mapping = torch.zeros(b, k, i)
        target_ids = torch.zeros(b, k, dtype=torch.long)
        target_weights = torch.zeros(b, k)
        for row in range(b):
            n_real = k - 1 if (spec.pad_target and row == b - 1) else k
            targets = torch.randperm(i, generator=g)[:n_real].sort().values
            # rank in the factorization order: context tokens -1 (seen by all), targets 0..n_real-1
            rank = torch.full((i,), -1)
            rank[targets] = torch.randperm(n_real, generator=g)
            is_target = rank >= 0
            # i may not see j if j is a target not earlier in the order than i (itself included)
            perm_mask[row] = (is_target[None, :] & (rank[None, :] >= rank[:, None])).float()
            target_mapping[row, torch.arange(n_real), targets] = 1.0
            target_ids[row, :n_real] = inputs["input_ids"][row, targets]
            target_weights[row, :n_real] = 1.0
        inputs.update(perm_mask=perm_mask.to(dtype), target_mapping=target_mapping.to(dtype),
                      target_ids=target_ids, target_weights=target_weights.to(dtype))
    if spec.mem_prev:
        inputs["mems"] = [torch.randn(b, spec.mem_prev, config["d_model"], generator=g).to(dtype)
                          for _ in range(config["n_layer"])]
    return inputs


def builtin_cases(names: list[str] | None = None) -> list[Case]:
    """The cases of SPECS (config, weights, inputs), without expected stages: run the reference for those."""
    from ..config import XLNetConfig

    specs = SPECS if names is None else [spec_by_name(n) for n in names]
    cases = []
    for spec in specs:
        config = XLNetConfig.from_dict({**TINY, **spec.config}).to_dict()
        cases.append(Case(
            name=spec.name,
            description=spec.description,
            config=config,
            dtype=spec.dtype,
            weights=random_weights(config, seed=spec.seed, dtype=DTYPES[spec.dtype]),
            inputs=random_inputs(spec, config),
            tolerances=dict(TOLERANCES[spec.dtype]),
            expect_error="(the reference refuses this input)" if spec.expect_error else None,
        ))
    return cases


def spec_by_name(name: str) -> CaseSpec:
    for spec in SPECS:
        if spec.name == name:
            return spec
    raise ValueError(f"case: expected one of {[s.name for s in SPECS]}, got {name!r}")


def with_reference_outputs(case: Case) -> Case:
    """Run the reference on the case: fills ``expected`` (or the refusal message in ``expect_error``)."""
    from .validate import reference_adapter, run_adapter

    run = run_adapter(reference_adapter, case)
    if case.expect_error is not None:
        if run.error is None:
            raise AssertionError(f"case {case.name}: expected the reference to refuse the input, but it ran")
        return replace(case, expect_error=f"{type(run.error).__name__}: {run.error}", expected={})
    if run.error is not None:
        raise run.error
    return replace(case, expected=run.outputs)


# ---------------------------------------------------------------------------------------------------
# writing and reading


def environment() -> dict:
    """Where the files were generated: bit-for-bit equality is only promised on the same environment."""
    return {
        "torch": torch.__version__,
        "machine": platform.machine(),
        "system": platform.system(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def _describe_tensor(name: str, t: torch.Tensor) -> dict:
    return {"name": name, "shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", "")}


def case_tensors(case: Case) -> dict[str, torch.Tensor]:
    """Every tensor of a case under its file name: weights/..., inputs/..., stages/..."""
    tensors = {f"weights/{k}": v for k, v in case.weights.items()}
    for k, v in case.inputs.items():
        if k == "mems":
            tensors.update({f"inputs/mems.{layer}": m for layer, m in enumerate(v)})
        else:
            tensors[f"inputs/{k}"] = v
    tensors.update({f"stages/{k}": v for k, v in (case.expected or {}).items()})
    return {k: v.detach().contiguous() for k, v in tensors.items()}


def case_manifest(case: Case) -> dict:
    from .validate import stage_description, stage_layout

    inputs = []
    for k, v in case.inputs.items():
        if k == "mems":
            inputs.append({"name": "mems", "files": [f"inputs/mems.{layer}" for layer in range(len(v))],
                           "shape": list(v[0].shape), "dtype": str(v[0].dtype).replace("torch.", ""),
                           "meaning": INPUT_MEANINGS[k]})
        else:
            inputs.append({**_describe_tensor(k, v), "file": f"inputs/{k}", "meaning": INPUT_MEANINGS[k]})
    stages = [
        {**_describe_tensor(k, v), "file": f"stages/{k}", "layout": stage_layout(k), "meaning": stage_description(k)}
        for k, v in (case.expected or {}).items()
    ]
    return {
        "name": case.name,
        "description": case.description,
        "file": f"{case.name}.safetensors",
        "dtype": case.dtype,
        "config": case.config,
        "tolerances": case.tolerances,
        "expect_error": case.expect_error,
        "inputs": inputs,
        "stages": stages,
    }


def write_golden(directory: str | Path = DEFAULT_DIR, cases: list[Case] | None = None) -> Path:
    """Generate the cases, run the reference, write manifest.json + one safetensors file per case."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cases = [with_reference_outputs(c) for c in (cases if cases is not None else builtin_cases())]
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "about": "XLNet reference stages from xlnet_ref; layout and meaning of every tensor: docs/validate.md",
        "comparison": "a stage passes iff max|actual - expected| <= rtol * max|expected| + atol over its entries; "
                      "masks and seg_diff must be equal; entries with |expected| >= huge (masked scores) must be "
                      "masked in the actual too; rows of query.* for all-zero target_mapping rows are not compared",
        "generated_on": environment(),
        "cases": [case_manifest(c) for c in cases],
    }
    for case in cases:
        save_file(case_tensors(case), str(directory / f"{case.name}.safetensors"), metadata={"case": case.name})
    (directory / "manifest.json").write_text(to_json(manifest) + "\n")
    return directory


def to_json(obj, indent: str = "") -> str:
    """JSON with every object or list that fits in 240 characters on one line (readable diffs, small file)."""
    flat = json.dumps(obj)
    if len(flat) + len(indent) <= 240 or not isinstance(obj, (dict, list)) or not obj:
        return flat
    inner = indent + " "
    if isinstance(obj, dict):
        items = [f"{inner}{json.dumps(k)}: {to_json(v, inner)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    return "[\n" + ",\n".join(inner + to_json(v, inner) for v in obj) + "\n" + indent + "]"


def read_manifest(directory: str | Path) -> dict:
    path = Path(directory) / "manifest.json"
    if not path.is_file():
        raise ValueError(f"golden directory: expected {path} (write it with `python -m xlnet_ref.golden write`), "
                         "got no such file")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: expected format {FORMAT!r} version {FORMAT_VERSION}, "
                         f"got {manifest.get('format')!r} version {manifest.get('format_version')!r}")
    return manifest


def read_cases(directory: str | Path = DEFAULT_DIR, names: list[str] | None = None) -> list[Case]:
    """Read golden cases from disk. Needs safetensors and torch only: no model is built."""
    from safetensors.torch import load_file

    directory = Path(directory)
    manifest = read_manifest(directory)
    known = [c["name"] for c in manifest["cases"]]
    for n in names or []:
        if n not in known:
            raise ValueError(f"case: expected one of {known}, got {n!r}")
    cases = []
    for entry in manifest["cases"]:
        if names is not None and entry["name"] not in names:
            continue
        tensors = load_file(str(directory / entry["file"]))
        weights = {k[len("weights/"):]: v for k, v in tensors.items() if k.startswith("weights/")}
        inputs: dict = {}
        for item in entry["inputs"]:
            if item["name"] == "mems":
                inputs["mems"] = [tensors[f] for f in item["files"]]
            else:
                inputs[item["name"]] = tensors[item["file"]]
        expected = {s["name"]: tensors[s["file"]] for s in entry["stages"]}  # manifest order = forward order
        cases.append(Case(
            name=entry["name"], description=entry["description"], config=entry["config"], dtype=entry["dtype"],
            weights=weights, inputs=inputs, tolerances=entry["tolerances"], expect_error=entry["expect_error"],
            expected=expected,
        ))
    return cases


def golden_size(directory: str | Path = DEFAULT_DIR) -> dict[str, int]:
    """File name -> bytes, for the files of a golden directory."""
    return {p.name: p.stat().st_size for p in sorted(Path(directory).iterdir()) if p.is_file()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xlnet_ref.golden", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["write", "check"],
                        help="write: regenerate the golden files; check: does the reference reproduce them?")
    parser.add_argument("--dir", default=str(DEFAULT_DIR), help="golden directory (default: %(default)s)")
    args = parser.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny cases: more threads only spin-wait (the bytes are the same)
    try:
        return _run_cli(args)
    finally:
        torch.set_num_threads(threads)


def _run_cli(args) -> int:
    if args.command == "write":
        directory = write_golden(args.dir)
        sizes = golden_size(directory)
        for name, size in sizes.items():
            print(f"{size:>9,d}  {directory / name}")
        print(f"{sum(sizes.values()):>9,d}  bytes in all")
        return 0
    from .validate import check_reproduction

    return check_reproduction(args.dir)


if __name__ == "__main__":
    sys.exit(main())
