r"""The built-in golden cases: a tiny model (config x weights x inputs) for each XLNet feature to check.

A *case* is everything needed to run one forward pass and check it stage by stage:

- ``config``: an :class:`xlnet_ref.XLNetConfig` as a dict (transformers' field names, plus ``untie_r``);
- ``weights``: the LM model's tensors under transformers' ``XLNetLMHeadModel`` names
  (``transformer.layer.0.rel_attn.q`` [m, n, d], ..., ``lm_loss.weight`` tied to the word embedding);
- ``inputs``: the forward arguments, batch-first (``input_ids`` [b, i], ``mems`` as n_layer tensors
  [b, mlen, m], ...), plus ``target_ids`` / ``target_weights`` [b, k] for the loss;
- ``expected``: the reference's stages in forward order (stages.py names them), or ``expect_error``:
  the reference refuses the input;
- ``gradients``: the case also checks the backward pass (``grad.*`` stages).

:data:`SPECS` is the golden set: the cases, in order. :func:`expected_stage_names` says which stages
each case has; it is what a golden folder is checked against (golden.py), so a folder that lost a
case or a stage is caught by the code, not by the folder itself. Cases are drawn from seeds with
torch.Generator: one machine gives the same bytes every time; another CPU may differ in the last bits
(torch's normal sampler has vectorised and scalar paths), well inside the tolerances.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..config import XLNetConfig
from ..interop import backbone_tensors_in_hf_names
from ..model import XLNetLMHeadModel
from .stages import gradient_stage_names

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
    gradients: bool = False  # also compare the gradients of the loss (grad.* stages)


SPECS = [
    CaseSpec("one_stream", "one stream, 'bi' attention, no masks, no segments", seed=1, batch=2, qlen=6),
    CaseSpec(
        "segments_padding",
        "one stream with segment ids (A, B, CLS = 2) and left padding",
        seed=2,
        batch=2,
        qlen=6,
        token_types=True,
        left_padding=True,
    ),
    CaseSpec(
        "two_stream",
        "two streams: factorization-order perm_mask, 3 prediction targets (one a padding row), segment ids, LM loss",
        seed=3,
        batch=2,
        qlen=6,
        token_types=True,
        num_predict=3,
        pad_target=True,
    ),
    CaseSpec(
        "memory",
        "two streams with a 4-position memory from the previous segment (mem_len 8 keeps 2 of it)",
        seed=4,
        batch=2,
        qlen=6,
        config=dict(mem_len=8),
        token_types=True,
        num_predict=2,
        mem_prev=4,
    ),
    CaseSpec(
        "uni_memory_reuse",
        "'uni' (causal) attention with memory, mem_len 5 and reuse_len 4, segment ids",
        seed=5,
        batch=2,
        qlen=6,
        config=dict(attn_type="uni", mem_len=5, reuse_len=4),
        token_types=True,
        mem_prev=3,
    ),
    CaseSpec(
        "bi_data",
        "bi_data (first half of the batch forwards, second half backwards), clamp_len 5, two streams",
        seed=6,
        batch=2,
        qlen=6,
        config=dict(bi_data=True, clamp_len=5),
        token_types=True,
        num_predict=2,
    ),
    CaseSpec(
        "bi_data_odd_batch",
        "bi_data with an odd batch (3): has no meaning, must be refused",
        seed=7,
        batch=3,
        qlen=5,
        config=dict(bi_data=True),
        expect_error=True,
    ),
    CaseSpec(
        "memory_given_mem_len_0",
        "memory passed in while mem_len is 0: it must still be attended to",
        seed=8,
        batch=1,
        qlen=5,
        config=dict(mem_len=0),
        left_padding=True,
        mem_prev=3,
    ),
    CaseSpec(
        "float16_padding",
        "float16 with left padding and segments (masked scores must stay finite)",
        seed=9,
        batch=2,
        qlen=6,
        dtype="float16",
        token_types=True,
        left_padding=True,
    ),
    CaseSpec(
        "same_length",
        "'uni' attention with same_length and a 3-position memory: every query sees mlen + 1 keys",
        seed=10,
        batch=2,
        qlen=5,
        config=dict(attn_type="uni", same_length=True, mem_len=6),
        mem_prev=3,
    ),
    CaseSpec(
        "untie_r_false",
        "untie_r False: one u, v and segment bias shared by every layer; segments, two streams",
        seed=11,
        batch=2,
        qlen=6,
        config=dict(untie_r=False),
        token_types=True,
        num_predict=2,
    ),
    CaseSpec(
        "bi_data_batch4",
        "bi_data with batch 4 (rows 0-1 forwards, 2-3 backwards), memory, two streams",
        seed=12,
        batch=4,
        qlen=5,
        config=dict(bi_data=True, mem_len=4),
        token_types=True,
        num_predict=2,
        mem_prev=2,
    ),
    CaseSpec(
        "clamp_len",
        "clamp_len 2 without bi_data, with memory: every distance beyond 2 reads the same row",
        seed=13,
        batch=2,
        qlen=6,
        config=dict(clamp_len=2, mem_len=4),
        mem_prev=3,
    ),
    CaseSpec(
        "uni_perm_padding",
        "'uni' attention with a perm_mask and left padding, segments, two streams, LM loss "
        "(batch 1: transformers fails on a larger batch here, transformers#21626)",
        seed=14,
        batch=1,
        qlen=6,
        config=dict(attn_type="uni"),
        token_types=True,
        left_padding=True,
        num_predict=2,
    ),
    CaseSpec(
        "generation_step",
        "one new token (qlen 1) after a 5-position memory, as in generation; mem_len 6",
        seed=15,
        batch=2,
        qlen=1,
        config=dict(mem_len=6),
        mem_prev=5,
    ),
    CaseSpec(
        "gradients",
        "backward pass: gradients of the LM loss w.r.t. the word embeddings and every parameter "
        "(two streams, memory, segments, a padding target)",
        seed=16,
        batch=2,
        qlen=5,
        config=dict(mem_len=4),
        token_types=True,
        num_predict=2,
        pad_target=True,
        mem_prev=2,
        gradients=True,
    ),
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
    gradients: bool = False  # the adapter may return grad.* stages (stages.gradient_stage_names)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


# ---------------------------------------------------------------------------------------------------
# generating cases


def random_weights(config: dict, *, seed: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Weights under transformers' XLNetLMHeadModel names, drawn N(0, 0.3) (LayerNorm scales N(1, 0.3))."""
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
        inputs.update(
            perm_mask=perm_mask.to(dtype),
            target_mapping=target_mapping.to(dtype),
            target_ids=target_ids,
            target_weights=target_weights.to(dtype),
        )
    if spec.mem_prev:
        inputs["mems"] = [
            torch.randn(b, spec.mem_prev, config["d_model"], generator=g).to(dtype) for _ in range(config["n_layer"])
        ]
    return inputs


def builtin_cases(names: list[str] | None = None) -> list[Case]:
    """The cases of SPECS (config, weights, inputs), without expected stages: run the reference for those."""
    specs = SPECS if names is None else [spec_by_name(n) for n in names]
    cases = []
    for spec in specs:
        config = XLNetConfig.from_dict({**TINY, **spec.config}).to_dict()
        cases.append(
            Case(
                name=spec.name,
                description=spec.description,
                config=config,
                dtype=spec.dtype,
                weights=random_weights(config, seed=spec.seed, dtype=DTYPES[spec.dtype]),
                inputs=random_inputs(spec, config),
                tolerances=dict(TOLERANCES[spec.dtype]),
                expect_error="(the reference refuses this input)" if spec.expect_error else None,
                gradients=spec.gradients,
            )
        )
    return cases


def spec_by_name(name: str) -> CaseSpec:
    for spec in SPECS:
        if spec.name == name:
            return spec
    raise ValueError(f"case: expected one of {[s.name for s in SPECS]}, got {name!r}")


def expected_stage_names(spec: CaseSpec) -> list[str]:
    """The stages the reference produces for a case, in order, from the spec alone (no model is run).

    A golden folder is checked against this list (golden.py); tests check that it is exactly what the
    reference adapter returns.
    """
    if spec.expect_error:
        return []
    cfg = {**TINY, **spec.config}
    two_stream = spec.num_predict > 0
    names = ["word_emb", "pos_emb", "attn_mask", "non_tgt_mask"] + (["seg_diff"] if spec.token_types else [])
    for layer in range(cfg["n_layer"]):
        s = []
        if cfg.get("mem_len"):
            s += ["new_mem"] + (["new_mem_grad"] if spec.mem_prev else [])
        s += ["q_h", "k_h", "v_h", "k_r"]
        for stream in ("content", "query") if two_stream else ("content",):
            if stream == "query":
                s.append("q_g")
            s += [f"{stream}.{t}" for t in ("ac", "bd_raw", "bd") + (("ef",) if spec.token_types else ())]
            s += [f"{stream}.score", f"{stream}.prob", f"{stream}_attn_out"]
        s += ["content_ff_out"] + (["query_ff_out"] if two_stream else [])
        names += [f"layer{layer}.{x}" for x in s]
    names += ["logits"] + (["loss"] if two_stream else [])
    return names + (gradient_stage_names(cfg["n_layer"]) if spec.gradients else [])
