"""Pretraining with the permutation LM objective: a flat loop, presets, evaluation, checkpoints, CLI.

    python -m xlnet_ref.train --preset tiny                # CPU, about 2 minutes on 2 cores
    python -m xlnet_ref.train --preset small               # one GPU, a few minutes
    python -m xlnet_ref.train --resume runs/tiny           # continue from the latest checkpoint

One training step (the original ``train_gpu.py`` recipe, scaled down):

1. the next :class:`~xlnet_ref.pretraining_data.PLMBatch` — every row continues the text of the
   same row in the previous batch, so the memory ``mems`` from the previous step is passed on
   (Transformer-XL Sec. 3.2; the model caches the first ``reuse_len`` positions of each window);
2. the query stream's logits at the targets, ``plm_loss`` = masked mean cross-entropy (XLNet Eq. 5);
3. backward, clip the global gradient norm to 1.0, AdamW step, learning-rate schedule step:
   linear warm-up from 0, then linear decay to ``min_lr_ratio * learning_rate``.

Evaluation runs on held-out text (every 20th block of ~4000 characters, see corpus.split_corpus) with a
fixed set of batches and reports

* ``eval_plm_loss`` — the training objective: random factorization orders, span targets;
* ``eval_l2r_loss`` — the same windows with one particular order, z = identity (left to right), every
  text position a target (SEP/CLS excluded as in pretraining): an ordinary autoregressive LM loss,
  comparable across orders and runs. It is usually higher than the PLM loss, whose targets see
  context on both sides.

Repeatability: ``seed`` fixes the initial weights and dropout (torch's global RNG), the training data
(its own torch.Generator) and the evaluation data (another one). A checkpoint stores every RNG state,
the optimizer, the scheduler, the memory and the data position, so stopping after N steps and resuming
for M gives bit-for-bit the weights of N + M steps in one go on a CPU.

Safety: checkpoints are checksummed, cross-checked and written atomically (checkpoint.py); the run
folder is checked before the first step, never mixed with another run, and tidied after a kill
(run_folder.py); SIGINT/SIGTERM finish the step, save and say how to resume (interrupt.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import torch

from .. import fast
from ..config import XLNetConfig, check_int_fields, dataclass_from_dict
from ..model import XLNetLMHeadModel
from ..permutation import plm_loss
from ..pretraining_data import PLMBatch, plm_batches
from . import checkpoint as ckpt
from . import distributed, run_folder
from .corpus import load_corpus, split_corpus
from .interrupt import StopRequests, TrainingInterrupted
from .tokenizer import build_tokenizer, load_tokenizer


# ----------------------------------------------------------------------------------------- config
@dataclass
class TrainConfig:
    """Everything a run depends on. ``model`` is the XLNetConfig; the rest is data, optimizer, schedule."""

    model: XLNetConfig
    name: str = "custom"
    # data: windows of seq_len tokens [reuse | A SEP B SEP CLS]; memory length and reuse_len live in `model`
    corpus: str | None = None  # None: CPython's built-in documentation (xlnet_ref.training.corpus)
    tokenizer: str = "byte"  # "byte" or "sentencepiece" (trained on the training text)
    sp_vocab_size: int = 2000
    eval_fraction: float = 0.05
    seq_len: int = 64
    batch_size: int = 16
    num_predict: int = 10  # targets per window, about seq_len / K with K = 6 (the paper's 85 of 512)
    perm_size: int | None = None  # None: uniform orders; else the original's block-local orders
    mask_alpha: int = 6
    mask_beta: int = 1
    max_span: int = 5
    # optimization (XLNet paper Table 7: Adam eps 1e-6, weight decay 0.01, linear decay, clip 1.0)
    steps: int = 400
    learning_rate: float = 1e-3
    warmup_steps: int = 40
    min_lr_ratio: float = 0.001  # train_gpu.py's default: decay ends at lr * min_lr_ratio, not 0
    weight_decay: float = 0.01
    adam_epsilon: float = 1e-6
    clip_norm: float = 1.0
    # evaluation, logging, checkpoints
    eval_every: int = 100
    eval_batches: int = 4
    checkpoint_every: int = 0  # 0: only at the end (when there is an out_dir)
    keep_checkpoints: int = 2
    seed: int = 0
    device: str = "auto"  # "auto" = cuda, then mps, then cpu
    bf16: bool = True  # bf16 autocast, used on CUDA only
    # speed only (the same equations; tests/test_fast_path.py): the model class (xlnet_ref.fast or the
    # readable xlnet_ref) and torch.compile. Training uses the fast path (fused AdamW too; benchmarks/RESULTS.md
    # has its speed against transformers). The experiments in xlnet_ref/experiments and the notebooks pin
    # "readable", the path they teach, with which results/ was recorded.
    implementation: str = "fast"
    compile: bool = False

    def __post_init__(self):
        if isinstance(self.model, dict):
            self.model = XLNetConfig.from_dict(self.model)
        check_int_fields(
            self,
            ("seq_len", "batch_size", "num_predict", "steps", "eval_batches", "sp_vocab_size", "max_span"),
            minimum=1,
        )
        check_int_fields(
            self, ("warmup_steps", "eval_every", "checkpoint_every", "keep_checkpoints", "seed"), minimum=0
        )
        if self.implementation not in ("readable", "fast"):
            raise ValueError(f"TrainConfig.implementation: expected 'readable' or 'fast', got {self.implementation!r}")
        if self.tokenizer not in ("byte", "sentencepiece"):
            raise ValueError(f"TrainConfig.tokenizer: expected 'byte' or 'sentencepiece', got {self.tokenizer!r}")
        if not self.model.mem_len or not self.model.reuse_len:
            raise ValueError(
                f"TrainConfig.model: expected mem_len > 0 and reuse_len > 0 for pretraining with memory, "
                f"got mem_len={self.model.mem_len!r}, reuse_len={self.model.reuse_len!r}"
            )
        if self.model.reuse_len + 5 > self.seq_len:
            raise ValueError(
                f"TrainConfig.seq_len: expected at least model.reuse_len + 5 = {self.model.reuse_len + 5} "
                f"(room for A, SEP, B, SEP, CLS), got {self.seq_len}"
            )
        if self.model.bi_data and self.batch_size % 2:
            raise ValueError(
                f"TrainConfig.batch_size: expected an even number with model.bi_data=True, got {self.batch_size}"
            )
        for name in ("learning_rate", "adam_epsilon", "clip_norm"):
            if not (isinstance(getattr(self, name), (int, float)) and getattr(self, name) > 0):
                raise ValueError(f"TrainConfig.{name}: expected a number > 0, got {getattr(self, name)!r}")
        for name, high in (("learning_rate", 1.0), ("adam_epsilon", 1.0), ("clip_norm", 1e6), ("weight_decay", 1.0)):
            value = getattr(self, name)  # inf passes "> 0"; anything above these is a typo, not a recipe
            if not (isinstance(value, (int, float)) and math.isfinite(value) and 0 <= value <= high):
                raise ValueError(f"TrainConfig.{name}: expected a finite number in [0, {high:g}], got {value!r}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"TrainConfig.min_lr_ratio: expected a number in [0, 1], got {self.min_lr_ratio!r}")
        if self.warmup_steps >= self.steps:
            raise ValueError(
                f"TrainConfig.warmup_steps: expected fewer than steps={self.steps}, got {self.warmup_steps}"
            )

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["model"] = self.model.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        return dataclass_from_dict(cls, d)


def tiny() -> TrainConfig:
    """CPU preset: a 0.9 M-parameter byte-level model, ~3-4 minutes on 2 cores (make demo, notebooks' quick
    mode, tests). Tuned so that its held-out left-to-right loss beats a Kneser-Ney bigram count model
    (``training.baselines``) on the same text within that budget:

    * short windows (seq 32, reuse 16, memory 32): fewer keys per query, so the attention finds the
      neighbouring tokens sooner (the loss sits at the unigram level until it does), and cheaper steps;
    * half of each window predicted (num_predict 16 of 32, i.e. K = 2 instead of the paper's K = 6):
      more targets per step, and targets that see less of the window, closer to the left-to-right use;
    * no dropout: 600 steps (windows advance by reuse_len = 16) read ~0.7 of the training text once:
      nothing to overfit;
    * learning rate 1.5e-3 with 10 % warm-up.
    """
    model = XLNetConfig(
        vocab_size=260,
        d_model=128,
        n_layer=4,
        n_head=4,
        d_inner=512,
        ff_activation="gelu",
        attn_type="bi",
        bi_data=False,
        mem_len=32,
        reuse_len=16,
        dropout=0.0,
    )
    return TrainConfig(
        model=model,
        name="tiny",
        seq_len=32,
        batch_size=32,
        num_predict=16,
        steps=600,
        learning_rate=1.5e-3,
        warmup_steps=60,
        eval_every=100,
        eval_batches=4,
        checkpoint_every=100,
    )


def small() -> TrainConfig:
    """GPU preset: 5.2 M parameters, seq_len 128 with 128 tokens of memory; a few minutes on one GPU.

    2000 steps of 32 x 128 tokens is ~18 passes over the default corpus (0.44 M bytes). On a GPU the
    batch preparation on the CPU (~50-100 ms a batch) is the slower half of a step."""
    model = XLNetConfig(
        vocab_size=260,
        d_model=256,
        n_layer=6,
        n_head=8,
        d_inner=1024,
        ff_activation="gelu",
        attn_type="bi",
        bi_data=False,
        mem_len=128,
        reuse_len=64,
        dropout=0.1,
    )
    return TrainConfig(
        model=model,
        name="small",
        seq_len=128,
        batch_size=32,
        num_predict=21,
        steps=2000,
        learning_rate=5e-4,
        warmup_steps=200,
        eval_every=250,
        eval_batches=8,
        checkpoint_every=500,
    )


PRESETS = MappingProxyType({"tiny": tiny, "small": small})  # read-only: name -> function making a fresh config


def preset(name: str, **overrides) -> TrainConfig:
    """A fresh preset config, with TrainConfig fields replaced by ``overrides``."""
    if name not in PRESETS:
        raise ValueError(f"preset: name: expected one of {sorted(PRESETS)}, got {name!r}")
    return dataclasses.replace(PRESETS[name](), **overrides)


# ------------------------------------------------------------------------------------------ device
def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda if available, then mps, then cpu; otherwise the named device (checked to exist)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device: expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {name!r}") from None
    if device.type not in ("cpu", "cuda", "mps"):  # meta, xpu, ...: no data, or not what this loop supports
        raise ValueError(f"device: expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {name!r} was asked for, but torch.cuda.is_available() is False on this machine")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device: {name!r} was asked for, but MPS is not available on this machine")
    return device


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA only: on a CPU bf16 matmuls are slow, and exactness tests run there."""
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


# ----------------------------------------------------------------------------- optimizer, schedule
def uses_weight_decay(name: str) -> bool:
    """The original AdamWeightDecayOptimizer's rule (model_utils.py): decay u, v and the segment bias;
    no decay for LayerNorm parameters and other biases; decay everything else."""
    if any(key in name for key in ("r_w_bias", "r_r_bias", "r_s_bias")):
        return True
    return not any(key in name for key in ("LayerNorm", "layer_norm", "bias"))


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with two parameter groups (decay / no decay). Unlike the original optimizer, torch's
    AdamW applies Adam's bias correction; with warm-up the difference fades after a few hundred steps."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():  # a tied tensor is listed once
        (decay if uses_weight_decay(name) else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # the fast path also fuses the update into one kernel per parameter group (same numbers to round-off)
    fused = config.implementation == "fast" and next(model.parameters()).device.type in ("cpu", "cuda")
    return torch.optim.AdamW(
        groups, lr=config.learning_rate, betas=(0.9, 0.999), eps=config.adam_epsilon, fused=fused or None
    )


def lr_factor(step: int, *, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """Multiplier on the learning rate before update ``step`` (0-based), as model_utils.get_train_op:
    step / warmup_steps during warm-up (so the very first update has lr 0), then linear ("poly", power 1)
    from 1 down to min_lr_ratio at total_steps."""
    if step < warmup_steps:
        return step / warmup_steps
    progress = min(step - warmup_steps, total_steps - warmup_steps) / max(1, total_steps - warmup_steps)
    return 1.0 - (1.0 - min_lr_ratio) * progress


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        return lr_factor(
            step, warmup_steps=config.warmup_steps, total_steps=config.steps, min_lr_ratio=config.min_lr_ratio
        )

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ------------------------------------------------------------------------------------------- data
@dataclass
class TextData:
    """The tokenized corpus: training and held-out token streams, their word starts, the tokenizer."""

    tokenizer: object
    train_tokens: torch.Tensor  # [N] long
    train_word_starts: torch.Tensor  # [N] bool
    eval_tokens: torch.Tensor  # [N_eval] long
    eval_word_starts: torch.Tensor  # [N_eval] bool
    corpus_sha256: str


def prepare_data(config: TrainConfig, *, tokenizer=None) -> TextData:
    """Load the corpus, split off the held-out blocks, build (or reuse) the tokenizer and tokenize both parts."""
    text = load_corpus(config.corpus)
    train_text, eval_text = split_corpus(text, eval_fraction=config.eval_fraction)
    if tokenizer is None:
        tokenizer = build_tokenizer(
            config.tokenizer, text=train_text, vocab_size=config.sp_vocab_size, seed=config.seed
        )
    train_tokens = torch.tensor(tokenizer.encode(train_text), dtype=torch.long)
    eval_tokens = torch.tensor(tokenizer.encode(eval_text), dtype=torch.long)
    return TextData(
        tokenizer=tokenizer,
        train_tokens=train_tokens,
        train_word_starts=tokenizer.word_starts(train_tokens),
        eval_tokens=eval_tokens,
        eval_word_starts=tokenizer.word_starts(eval_tokens),
        corpus_sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
    )


def batch_stream(
    config: TrainConfig, tokens: torch.Tensor, word_starts: torch.Tensor, tokenizer, generator: torch.Generator
):
    """plm_batches over one pass of the token stream (an "epoch"), with this run's settings."""
    return plm_batches(
        tokens,
        seq_len=config.seq_len,
        reuse_len=config.model.reuse_len,
        batch_size=config.batch_size,
        num_predict=config.num_predict,
        perm_size=config.perm_size,
        bi_data=config.model.bi_data,
        sep_id=tokenizer.sep_id,
        cls_id=tokenizer.cls_id,
        mask_alpha=config.mask_alpha,
        mask_beta=config.mask_beta,
        max_span=config.max_span,
        word_starts=word_starts,
        generator=generator,
    )


class TrainingBatches:
    """Endless training batches: epoch after epoch of plm_batches, with a position that can be saved.

    The position is (epoch, batches already taken in this epoch, generator state when the epoch
    began). Restoring it replays the epoch's batches up to that point from the saved generator state:
    slower than a jump (at most one epoch of data preparation, ~16 ms a batch for the tiny preset) but
    exact for any deterministic batch iterator, without knowing its internals.
    """

    def __init__(self, make_iterator, generator: torch.Generator):
        self.make_iterator = make_iterator  # generator -> iterator over PLMBatch
        self.generator = generator
        self.epoch = 0
        self.batches_in_epoch = 0
        self.epoch_start_state = generator.get_state()
        self.iterator = make_iterator(generator)

    def next(self) -> tuple[PLMBatch, bool]:
        """(batch, new_epoch): new_epoch is True when the text starts again from the beginning."""
        batch = next(self.iterator, None)
        new_epoch = False
        if batch is None:
            self.epoch += 1
            self.batches_in_epoch = 0
            self.epoch_start_state = self.generator.get_state()
            self.iterator = self.make_iterator(self.generator)
            batch = next(self.iterator, None)
            if batch is None:
                raise ValueError("training data: the token stream is too short for even one batch")
            new_epoch = True
        self.batches_in_epoch += 1
        return batch, new_epoch

    def state(self) -> tuple[dict, dict[str, torch.Tensor]]:
        """(JSON part, tensors) of the position."""
        return (
            {"epoch": self.epoch, "batches_in_epoch": self.batches_in_epoch},
            {"data_epoch_start": self.epoch_start_state, "data_now": self.generator.get_state()},
        )

    def restore(self, meta: dict, tensors: dict[str, torch.Tensor]) -> None:
        missing = [k for k in ("data_epoch_start", "data_now") if k not in tensors]
        if missing or not isinstance(meta, dict) or not {"epoch", "batches_in_epoch"} <= set(meta):
            raise ckpt.CheckpointError(
                f"data position: expected {ckpt.RNG_FILE} to hold data_epoch_start and data_now "
                f"and {ckpt.STATE_FILE} extra.data to hold epoch and batches_in_epoch; missing "
                f"{missing or 'part of extra.data'}"
            )
        self.epoch = meta["epoch"]
        self.epoch_start_state = tensors["data_epoch_start"]
        try:
            self.generator.set_state(self.epoch_start_state)
        except (RuntimeError, TypeError) as err:
            raise ckpt.CheckpointError(
                f"data position: data_epoch_start in {ckpt.RNG_FILE} is not a generator state ({err})"
            ) from None
        self.iterator = self.make_iterator(self.generator)
        for _ in range(meta["batches_in_epoch"]):
            if next(self.iterator, None) is None:
                raise ckpt.CheckpointError(
                    f"data position: the checkpoint is {meta['batches_in_epoch']} batches into "
                    "an epoch, but the data now has fewer; was the corpus or config changed?"
                )
        self.batches_in_epoch = meta["batches_in_epoch"]
        if not torch.equal(self.generator.get_state(), tensors["data_now"]):
            raise ckpt.CheckpointError(
                f"data position: replaying the epoch did not reach the generator state saved in "
                f"{ckpt.RNG_FILE}: that file was altered (its checksum was not checked: "
                "--no-verify?), or the batch pipeline is not deterministic; the resume would "
                "not be exact"
            )


# ------------------------------------------------------------------------------------- evaluation
def left_to_right_batch(batch: PLMBatch, *, sep_id: int, cls_id: int, has_memory: bool) -> PLMBatch:
    """The same windows with the factorization order z = identity and every text position a target.

    perm_mask[i, j] = 1 iff j >= i (the query stream at i sees only j < i; the model lets the content
    stream see itself), target_mapping = identity, target_ids = input_ids. SEP and CLS are not
    targets (as in pretraining). Without memory, position 0 has nothing to look at (its attention row
    would be fully masked and turn uniform over all keys, itself included), so it is not a target either.
    """
    b, seq_len = batch.input_ids.shape
    device = batch.input_ids.device
    ones = torch.ones(seq_len, seq_len, device=device)
    perm_mask = torch.triu(ones).expand(b, seq_len, seq_len)  # [b, i, j] 1 where j >= i
    target_mapping = torch.eye(seq_len, device=device).expand(b, seq_len, seq_len)  # [b, k = i, j]
    weights = ((batch.input_ids != sep_id) & (batch.input_ids != cls_id)).float()  # [b, k]
    if not has_memory:
        weights[:, 0] = 0
    arange = torch.arange(seq_len, device=device).expand(b, seq_len)
    return PLMBatch(
        input_ids=batch.input_ids,
        token_type_ids=batch.token_type_ids,
        perm_mask=perm_mask,
        target_mapping=target_mapping,
        target_ids=batch.input_ids,
        target_weights=weights,
        order=arange,
        is_target=weights.bool(),
    )


def build_model(config: TrainConfig) -> XLNetLMHeadModel:
    """The LM for ``config.implementation``: xlnet_ref's readable classes or xlnet_ref.fast's (the same
    parameters and state-dict names, so checkpoints move between the two)."""
    return (fast.XLNetLMHeadModel if config.implementation == "fast" else XLNetLMHeadModel)(config.model)


def forward_loss(model: XLNetLMHeadModel, batch: PLMBatch, mems, *, use_bf16: bool):
    """(loss, new mems) for one batch on the model's device."""
    device = next(model.parameters()).device
    # the fast path can skip the last layer's content stream: the loss needs only g
    inner = getattr(model, "_orig_mod", model)  # torch.compile's wrapper, then DistributedDataParallel's
    skip = {"content_output": False} if isinstance(getattr(inner, "module", inner), fast.XLNetLMHeadModel) else {}
    with autocast(device, use_bf16):
        out = model(
            batch.input_ids,
            token_type_ids=batch.token_type_ids,
            perm_mask=batch.perm_mask,
            target_mapping=batch.target_mapping,
            mems=mems,
            **skip,
        )
    return plm_loss(out.logits, batch.target_ids, batch.target_weights), out.mems  # logits [b, k, V]


@torch.no_grad()
def evaluate(model: XLNetLMHeadModel, batches: list[PLMBatch], *, tokenizer, use_bf16: bool = False) -> dict:
    """PLM loss and left-to-right loss on the held-out batches, memory carried from batch to batch.

    Each average is weighted by the number of targets. Runs in eval mode (no dropout) and draws no
    random numbers, so evaluating does not change the training run.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    totals = {"plm": [0.0, 0.0], "l2r": [0.0, 0.0]}
    mems_plm = mems_l2r = None
    for batch in batches:
        batch = batch.to(device)
        loss, mems_plm = forward_loss(model, batch, mems_plm, use_bf16=use_bf16)
        n = float(batch.target_weights.sum())
        totals["plm"][0] += float(loss) * n
        totals["plm"][1] += n
        l2r = left_to_right_batch(
            batch, sep_id=tokenizer.sep_id, cls_id=tokenizer.cls_id, has_memory=mems_l2r is not None
        )
        loss, mems_l2r = forward_loss(model, l2r, mems_l2r, use_bf16=use_bf16)
        n = float(l2r.target_weights.sum())
        totals["l2r"][0] += float(loss) * n
        totals["l2r"][1] += n
    model.train(was_training)
    return {"eval_plm_loss": totals["plm"][0] / totals["plm"][1], "eval_l2r_loss": totals["l2r"][0] / totals["l2r"][1]}


def held_out_batches(config: TrainConfig, data: TextData) -> list[PLMBatch]:
    """A fixed list of held-out batches (their own generator: the same every time, for every run with this seed)."""
    generator = torch.Generator().manual_seed(config.seed + 2)
    iterator = batch_stream(config, data.eval_tokens, data.eval_word_starts, data.tokenizer, generator)
    try:
        batches = [b for _, b in zip(range(config.eval_batches), iterator)]
    except ValueError as err:
        raise ValueError(
            f"corpus: the held-out part ({data.eval_tokens.numel()} tokens, eval_fraction="
            f"{config.eval_fraction}) is too short for one batch of {config.batch_size} x {config.seq_len}; "
            f"use a larger corpus, a larger eval_fraction or a smaller batch ({err})"
        ) from None
    return batches


# ----------------------------------------------------------------------------------------- train
@dataclass
class TrainResult:
    model: XLNetLMHeadModel  # in eval mode, on the training device
    tokenizer: object
    history: list[dict]  # {"kind": "train", "step", "loss", "lr", "grad_norm", "tokens_per_s"} / {"kind": "eval", ...}
    config: TrainConfig
    checkpoint: Path | None = None  # the last checkpoint written, if any
    mems: list | None = None  # the memory after the last step
    seconds: float = 0.0  # wall time of this call
    data: TextData | None = field(default=None, repr=False)

    def final(self, key: str) -> float | None:
        """The last logged value of ``key`` (e.g. "loss", "eval_plm_loss"), or None."""
        values = [row[key] for row in self.history if key in row]
        return values[-1] if values else None


def load_run(checkpoint: str | Path, *, device: str = "cpu", verify: bool = True) -> TrainResult:
    """A finished (or stopped) run back from its checkpoint: model (eval mode), tokenizer, history, config
    and the tokenized corpus, e.g. to plot it in a notebook without training again.
    verify: check every file against the checkpoint's manifest first."""
    path = latest_checkpoint(checkpoint)
    if verify:
        ckpt.verify_checkpoint(path)
    state = ckpt.read_training_state(path, verify=False)
    config = _saved_train_config(state, path)
    tokenizer = load_tokenizer(path)
    model = XLNetLMHeadModel(config.model).to(resolve_device(device))
    mems = ckpt.load_checkpoint(path, model=model, verify=False).mems  # weights in place; no optimizer state needed
    return TrainResult(
        model=model.eval(),
        tokenizer=tokenizer,
        history=state["extra"].get("history", []),
        config=config,
        checkpoint=path,
        mems=mems,
        data=prepare_data(config, tokenizer=tokenizer),
    )


# Fields that may differ when resuming; everything else must match the checkpoint. A new `steps`
# (train longer) re-shapes the decay from there on, so that run is no longer one straight run.
RESUME_MAY_CHANGE = (
    "steps",
    "device",
    "eval_every",
    "checkpoint_every",
    "keep_checkpoints",
    "implementation",
    "compile",
)


def latest_checkpoint(path: str | Path) -> Path:
    """``path`` itself if it is a checkpoint folder, else its newest ``checkpoint-*`` subfolder."""
    path = Path(path)
    if (path / ckpt.STATE_FILE).is_file():
        return path
    found = [p for p in run_folder.checkpoints_in(path) if (p / ckpt.STATE_FILE).is_file()]
    if not found:
        raise FileNotFoundError(
            f"resume: {str(path)!r} is neither a checkpoint folder (with {ckpt.STATE_FILE}) nor a run "
            f"folder holding checkpoint-* folders; {'it does not exist' if not path.exists() else 'none found'}"
        )
    return found[-1]


def _saved_train_config(state: dict, source: Path) -> TrainConfig:
    try:
        return TrainConfig.from_dict(state["extra"]["train_config"])
    except (KeyError, TypeError, ValueError) as err:
        raise ckpt.CheckpointError(
            f"resume from {str(source)!r}: expected the training config that train() saves in "
            f"{ckpt.STATE_FILE} under extra.train_config ({err!r}); was it written by save_model?"
        ) from None


def _resolve_corpus(config: TrainConfig) -> TrainConfig:
    """The corpus as an absolute path: a run resumes from any directory, and compares like with like."""
    if config.corpus is None:
        return config
    return dataclasses.replace(config, corpus=str(Path(config.corpus).expanduser().resolve()))


def _cross_check_state(state: ckpt.TrainingState, scheduler, source: Path) -> None:
    """The step the training state names must agree with the scheduler's count and the history's last row."""
    trained = [row["step"] for row in state.extra.get("history", []) if row.get("kind") == "train"]
    found = {
        "the scheduler's last_epoch": scheduler.last_epoch,
        "the history's last train step": trained[-1] if trained else 0,
    }
    bad = {k: v for k, v in found.items() if v != state.step}
    if bad:
        raise ckpt.CheckpointError(
            f"resume from {str(source)!r}: {ckpt.STATE_FILE} says step {state.step}, but "
            + ", ".join(f"{k} is {v}" for k, v in bad.items())
            + "; the checkpoint was edited or mixed"
        )


def _check_resume_config(config: TrainConfig, saved: TrainConfig, source: Path) -> None:
    mine, theirs = _resolve_corpus(config).to_dict(), _resolve_corpus(saved).to_dict()
    # model fields are compared one by one; vocab_size comes from the tokenizer, which the checkpoint holds
    my_model, their_model = mine.pop("model"), theirs.pop("model")
    my_model["vocab_size"] = their_model["vocab_size"]
    diffs = [(f"model.{k}", my_model[k], their_model[k]) for k in my_model if my_model[k] != their_model.get(k)]
    diffs += [(k, mine[k], theirs[k]) for k in mine if k not in RESUME_MAY_CHANGE and mine[k] != theirs[k]]
    if diffs:
        lines = "; ".join(f"{k}: given {a!r}, the checkpoint has {b!r}" for k, a, b in diffs)
        raise ckpt.CheckpointError(
            f"resume from {str(source)!r}: the config differs in {len(diffs)} field(s) that an "
            f"exact resume needs unchanged ({lines}); only {RESUME_MAY_CHANGE} may change"
        )


def train(
    config: TrainConfig | None = None,
    *,
    out_dir: str | Path | None = None,
    resume: str | Path | None = None,
    stop_at: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    log=print,
    verify: bool = True,
) -> TrainResult:
    """Pretrain an XLNetLMHeadModel with the permutation LM objective and return the model and its history.

    Args:
        config: the run's TrainConfig (e.g. ``preset("tiny")``); None with ``resume`` = the saved one.
        out_dir: where checkpoints (``checkpoint-<step>``) and ``history.json`` go; None = write nothing.
        resume: a checkpoint folder or a run folder (its latest checkpoint); continues exactly.
        stop_at: stop after this many steps (of ``config.steps``) and checkpoint there, as if interrupted;
            the schedule still runs over ``config.steps``.
        overwrite: ``out_dir`` may hold checkpoints that are not this run's (another run's, or later ones
            than the checkpoint being resumed): they are deleted before the first step. Without it that is
            an error (FileExistsError naming them), so that no run is mixed with or overwrites another.
        progress: show a tqdm bar (loss, tokens/s).
        log: where progress lines go (``print``); None = silent.
        verify: check every file of the resumed checkpoint against its manifest (SHA-256) first.

    On SIGINT (Ctrl-C) or SIGTERM the current step is finished, a checkpoint written (with an
    ``out_dir``) and :class:`~xlnet_ref.training.interrupt.TrainingInterrupted` raised (run_folder.py
    and interrupt.py have the folder rules).
    """
    world = distributed.world_from_env()  # torchrun's ranks (one process without torchrun)
    try:
        with StopRequests() as stop:
            return _train(
                config,
                out_dir=out_dir,
                resume=resume,
                stop_at=stop_at,
                overwrite=overwrite,
                progress=progress and world.is_main,
                log=log if world.is_main else None,
                verify=verify,
                stop=stop,
                world=world,
            )
    finally:
        distributed.stop(world)


def _train(
    config,
    *,
    out_dir,
    resume,
    stop_at,
    overwrite,
    progress,
    log,
    verify,
    stop: StopRequests,
    world: distributed.World = distributed.World(),  # noqa: B008 (frozen: one shared default is safe)
) -> TrainResult:
    from tqdm.auto import tqdm

    log = log or (lambda *a, **k: None)
    start_time = time.perf_counter()
    resume_from = latest_checkpoint(resume) if resume is not None else None
    saved_state = None
    if resume_from is not None:
        if verify:
            ckpt.verify_checkpoint(resume_from)  # every file, before any is read
        saved_state = ckpt.read_training_state(resume_from, verify=False)
        saved_config = _saved_train_config(saved_state, resume_from)
        if config is None:
            config = saved_config
        else:
            _check_resume_config(config, saved_config, resume_from)
            if config.steps != saved_config.steps:
                log(
                    f"resume: steps {saved_config.steps} -> {config.steps}; the learning-rate decay is stretched "
                    "from here on"
                )
        if out_dir is None:
            out_dir = resume_from.parent
    if config is None:
        raise ValueError(
            "train: config: expected a TrainConfig (e.g. preset('tiny')) or resume=<checkpoint>, got neither"
        )
    if stop_at is not None and not (isinstance(stop_at, int) and 0 < stop_at <= config.steps):
        raise ValueError(f"train: stop_at: expected an int in [1, steps={config.steps}], got {stop_at!r}")
    config = _resolve_corpus(config)
    if saved_state is not None and saved_state["step"] >= (config.steps if stop_at is None else stop_at):
        limit = f"steps={config.steps}" if stop_at is None else f"stop_at={stop_at}"
        raise ValueError(
            f"resume: {str(resume_from)!r} is at step {saved_state['step']}, already at or past {limit}: "
            "nothing to train; pass a larger steps (--steps) to train longer"
        )
    out_dir = Path(out_dir) if out_dir is not None else None
    folder = None
    if out_dir is not None and world.is_main:  # before any work: a folder that cannot be written is found now
        run_folder.check_writable(out_dir, what="out_dir (--out)")
        removed = run_folder.remove_stale_temporaries(out_dir)
        if removed:
            log(f"removed leftovers of an interrupted save in {str(out_dir)!r}: {', '.join(removed)}")
        folder = run_folder.plan_run_folder(
            out_dir,
            resume_from=resume_from,
            overwrite=overwrite,
            resume_step=None if saved_state is None else saved_state["step"],
        )
    device = distributed.start(world, resolve_device(config.device))  # cuda:LOCAL_RANK under torchrun
    use_bf16 = config.bf16 and device.type == "cuda"
    halves = 2 if config.model.bi_data else 1
    if world.active:
        distributed.check_batch_size(config.batch_size, world, halves=halves)

    # Data first (SentencePiece training must not touch torch's RNG; it has its own seed).
    tokenizer = load_tokenizer(resume_from) if resume_from is not None else None
    data = prepare_data(config, tokenizer=tokenizer)
    tokenizer = data.tokenizer
    if tokenizer.vocab_size != config.model.vocab_size:
        log(f"model.vocab_size {config.model.vocab_size} -> {tokenizer.vocab_size} (the tokenizer's)")
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, vocab_size=tokenizer.vocab_size))
    if saved_state is not None and saved_state["extra"].get("corpus_sha256") != data.corpus_sha256:
        raise ckpt.CheckpointError(
            f"resume from {str(resume_from)!r}: the corpus text differs from the one the checkpoint "
            "was trained on (sha256 mismatch); an exact resume needs the same corpus"
        )

    torch.manual_seed(config.seed)  # initial weights and dropout
    model = build_model(config).to(device)
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config)
    data_generator = torch.Generator().manual_seed(config.seed + 1)
    batches = TrainingBatches(
        lambda g: batch_stream(config, data.train_tokens, data.train_word_starts, tokenizer, g), data_generator
    )
    held_out = held_out_batches(config, data)
    if data.train_tokens.numel() < config.batch_size * config.seq_len:
        raise ValueError(
            f"corpus: the training part ({data.train_tokens.numel()} tokens) is too short for one batch of "
            f"{config.batch_size} x {config.seq_len} tokens; use a larger corpus or a smaller batch"
        )

    step, history, mems = 0, [], None
    if resume_from is not None:
        state = ckpt.load_checkpoint(resume_from, model=model, optimizer=optimizer, scheduler=scheduler, verify=False)
        _cross_check_state(state, scheduler, resume_from)
        step, history = state.step, state.extra["history"]
        mems = distributed.local_mems(state.mems, world, halves=halves)  # the checkpoint holds every row's
        batches.restore(state.extra["data"], state.rng)
        ckpt.restore_rng_state(state.rng)  # last: nothing after this may draw before step `step`
        log(f"resumed from {resume_from} at step {step}")
    distributed.seed_dropout(world, config.seed, step)  # several ranks: each its own dropout masks
    step_model = distributed.wrap(model, world, device)  # DDP: gradients averaged over the ranks
    if config.compile:
        step_model = torch.compile(step_model)

    if folder is not None:
        folder.clear_foreign(log)  # only with overwrite; plan_run_folder refused them otherwise
    last_checkpoint = None
    stop.armed = True  # from here a signal finishes the next step and saves (interrupt.py)
    n_params = sum(p.numel() for p in model.parameters())
    log(
        f"training {config.name}: {n_params / 1e6:.2f} M parameters, {config.steps} steps of {config.batch_size} x "
        f"{config.seq_len} tokens, {data.train_tokens.numel()} training tokens, device {device}"
        + (" (bf16 autocast)" if use_bf16 else "")
        + (f", {world.world_size} ranks of {config.batch_size // world.world_size} rows" if world.active else "")
    )

    def save(at_step: int) -> Path:
        all_mems = distributed.gather_rows(mems, world, halves=halves)  # every rank takes part; rank 0 writes
        path = out_dir / f"checkpoint-{at_step:07d}"
        if not world.is_main:
            return path
        data_meta, data_tensors = batches.state()
        extra = {
            "train_config": config.to_dict(),
            "history": history,
            "data": data_meta,
            "corpus_sha256": data.corpus_sha256,
        }
        ckpt.save_checkpoint(
            path,
            model=model,
            step=at_step,
            optimizer=optimizer,
            scheduler=scheduler,
            rng=ckpt.capture_rng_state() | data_tensors,
            mems=all_mems,
            extra=extra,
            tokenizer=tokenizer,
        )
        run_folder.atomic_write_text(out_dir / "history.json", json.dumps(history) + "\n")
        folder.wrote(path, keep=config.keep_checkpoints)  # rotates this run's checkpoints only
        return path

    end = config.steps if stop_at is None else stop_at
    model.train()
    bar = tqdm(total=end, initial=step, disable=not progress, desc=config.name, dynamic_ncols=True, leave=True)
    tokens_per_batch = config.batch_size * config.seq_len
    while step < end:
        t0 = time.perf_counter()
        batch, new_epoch = batches.next()
        if new_epoch:
            mems = None  # the text starts over: the memory holds unrelated text
        global_weights = batch.target_weights
        batch = distributed.rows_of(batch, world, halves=halves).to(device)  # this rank's rows
        loss, mems = forward_loss(step_model, batch, mems, use_bf16=use_bf16)
        if world.active:  # so that DDP's average of the gradients is the global masked mean's
            loss = loss * distributed.global_loss_factor(batch.target_weights, global_weights.to(device), world)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm)
        lr = optimizer.param_groups[0]["lr"]  # the rate this update uses
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        loss_value = float(distributed.mean_over_ranks(loss.detach(), world))
        if not math.isfinite(loss_value):
            raise FloatingPointError(
                f"train: the loss became {loss_value} at step {step}; lower learning_rate "
                f"(now {config.learning_rate}) or check the data"
            )
        dt = time.perf_counter() - t0
        history.append(
            {
                "kind": "train",
                "step": step,
                "loss": loss_value,
                "lr": lr,
                "grad_norm": float(grad_norm),
                "tokens_per_s": tokens_per_batch / dt,
            }
        )
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.3f}", tok_s=f"{tokens_per_batch / dt:,.0f}", refresh=False)

        if world.is_main and ((config.eval_every and step % config.eval_every == 0) or step == config.steps):
            scores = evaluate(model, held_out, tokenizer=tokenizer, use_bf16=use_bf16)
            history.append({"kind": "eval", "step": step, **scores})
            line = f"step {step}: eval PLM loss {scores['eval_plm_loss']:.3f}, left-to-right loss {scores['eval_l2r_loss']:.3f}"
            if progress:
                bar.write(line)  # above the bar, which stays at the bottom
            else:
                log(line)
        if out_dir is not None and ((config.checkpoint_every and step % config.checkpoint_every == 0) or step == end):
            last_checkpoint = save(step)
        # (on the last step the run is complete: just finish); with several ranks all stop together
        if distributed.any_rank(stop.signal is not None, world, device) and step < end:
            bar.close()
            if out_dir is not None and (last_checkpoint is None or run_folder.checkpoint_step(last_checkpoint) != step):
                last_checkpoint = save(step)
            where = (
                f"checkpoint {last_checkpoint}; resume with: python -m xlnet_ref.train --resume {out_dir}"
                if out_dir is not None
                else "nothing saved (no out_dir)"
            )
            raise TrainingInterrupted(
                f"interrupted by {stop.name or 'another rank'} after step {step} of {config.steps}: {where}",
                step=step,
                checkpoint=last_checkpoint,
                signum=stop.signal or signal.SIGTERM,
            )
    bar.close()
    model.eval()
    return TrainResult(
        model=model,
        tokenizer=tokenizer,
        history=history,
        config=config,
        checkpoint=last_checkpoint,
        mems=mems,
        seconds=time.perf_counter() - start_time,
        data=data,
    )


# -------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m xlnet_ref.train",
        description="Pretrain a small XLNet with the permutation LM objective on a local corpus (no download).",
        epilog="Examples:\n  python -m xlnet_ref.train --preset tiny --out runs/tiny\n"
        "  python -m xlnet_ref.train --resume runs/tiny --steps 600\n"
        "  python -m xlnet_ref.train --preset tiny --corpus my_texts/ --tokenizer sentencepiece --export-hf runs/tiny-hf",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--preset", choices=sorted(PRESETS), default=None, help="tiny (CPU, ~2 min) or small (GPU); default tiny"
    )
    p.add_argument("--corpus", help="a UTF-8 text file or a folder of .txt files (default: CPython's documentation)")
    p.add_argument("--tokenizer", choices=["byte", "sentencepiece"], help="default byte")
    p.add_argument("--vocab-size", type=int, dest="sp_vocab_size", help="SentencePiece vocabulary size (default 2000)")
    p.add_argument("--steps", type=int, help="total optimizer steps (the schedule spans them)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seq-len", type=int)
    p.add_argument("--lr", type=float, dest="learning_rate")
    p.add_argument("--warmup-steps", type=int, help="default: the preset's warm-up fraction of --steps")
    p.add_argument("--eval-every", type=int)
    p.add_argument("--checkpoint-every", type=int, help="0 = only at the end")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")
    p.add_argument("--no-bf16", action="store_true", help="no bf16 autocast on CUDA")
    p.add_argument("--dropout", type=float, help="the model's dropout (default: the preset's)")
    p.add_argument(
        "--implementation",
        choices=["fast", "readable"],
        help="the model class: fast (default: xlnet_ref.fast, the same equations in fewer passes; "
        "benchmarks/RESULTS.md has its speed) or "
        "readable (the notebooks' code, with which the experiments in results/ were recorded)",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the model (the first steps compile it)")
    p.add_argument("--out", help="run folder for checkpoints and history.json (default runs/<preset>)")
    p.add_argument("--resume", help="a checkpoint folder, or a run folder (its latest checkpoint)")
    p.add_argument("--stop-at", type=int, help="stop after this many steps as if interrupted (resume later)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="delete checkpoints in --out that are not this run's (another run's, or later than the one "
        "resumed); without it such a folder is refused",
    )
    p.add_argument(
        "--no-verify",
        action="store_true",
        help="resume without checking the checkpoint's files against their SHA-256 in manifest.json "
        "(for a checkpoint edited on purpose)",
    )
    p.add_argument("--export-hf", metavar="DIR", help="at the end, also write a transformers save_pretrained folder")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig | None:
    overrides = {
        k: getattr(args, k)
        for k in (
            "corpus",
            "tokenizer",
            "sp_vocab_size",
            "steps",
            "batch_size",
            "seq_len",
            "learning_rate",
            "warmup_steps",
            "eval_every",
            "checkpoint_every",
            "seed",
            "device",
            "implementation",
        )
        if getattr(args, k) is not None
    }
    if args.no_bf16:
        overrides["bf16"] = False
    if args.compile:
        overrides["compile"] = True
    if "steps" in overrides and "warmup_steps" not in overrides and args.resume is None:
        # keep the preset's warm-up fraction when only the length of the run changes
        base = PRESETS[args.preset or "tiny"]()
        overrides["warmup_steps"] = base.warmup_steps * overrides["steps"] // base.steps
    if args.resume is not None:
        source = latest_checkpoint(args.resume)
        base = _saved_train_config(ckpt.read_training_state(source, verify=not args.no_verify), source)
        if args.preset is not None and args.preset != base.name:
            raise ValueError(f"--preset {args.preset}: the checkpoint was trained with preset {base.name!r}")
        return with_dropout(dataclasses.replace(base, **overrides), args.dropout)
    return with_dropout(preset(args.preset or "tiny", **overrides), args.dropout)


def with_dropout(config: TrainConfig, dropout: float | None) -> TrainConfig:
    """--dropout: the model's dropout rate replaced (checked by XLNetConfig)."""
    if dropout is None:
        return config
    return dataclasses.replace(config, model=dataclasses.replace(config.model, dropout=dropout))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
        if args.print_config:
            print(json.dumps(config.to_dict(), indent=2))
            return 0
        out = args.out or (None if args.resume else f"runs/{config.name}")
        if args.export_hf:
            run_folder.check_writable(args.export_hf, what="--export-hf")
        result = train(
            config,
            out_dir=out,
            resume=args.resume,
            stop_at=args.stop_at,
            overwrite=args.overwrite,
            progress=not args.no_progress,
            verify=not args.no_verify,
        )
    except TrainingInterrupted as err:
        print(f"\n{err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt as err:
        print(f"\ninterrupted: {err or 'nothing was saved'}", file=sys.stderr)
        return 130
    except (ValueError, OSError) as err:  # OSError: FileNotFoundError, FileExistsError, a full disk, ...
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not distributed.world_from_env().is_main:  # under torchrun only rank 0 reports and exports
        return 0
    losses = ", ".join(
        f"{label} {result.final(key):.3f}"
        for key, label in (
            ("loss", "train loss"),
            ("eval_plm_loss", "eval PLM loss"),
            ("eval_l2r_loss", "left-to-right loss"),
        )
        if result.final(key) is not None
    )
    print(f"done in {result.seconds:.0f} s: {losses}")
    if result.checkpoint is not None:
        print(f"checkpoint: {result.checkpoint}")
    if args.export_hf:
        try:
            path = ckpt.export_hf(result.model, args.export_hf, tokenizer=result.tokenizer)
        except OSError as err:
            print(
                f"error: --export-hf {args.export_hf!r}: writing failed ({err}); the checkpoint above is complete",
                file=sys.stderr,
            )
            return 2
        print(f"transformers folder: {path} (transformers.XLNetLMHeadModel.from_pretrained({str(path)!r}))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
