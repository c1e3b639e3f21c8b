r"""Fine-tuning a (pre)trained XLNet on a task: a flat loop, evaluation, checkpoints with exact resume, CLI.

    python -m xlnet_ref.finetune --task next  --from runs/tiny      # the pretrained backbone
    python -m xlnet_ref.finetune --task next  --from scratch        # same model and recipe, random weights
    python -m xlnet_ref.finetune --resume runs/finetune-next-runs_tiny-seed0

One step (the original ``run_classifier.py`` / ``run_squad.py`` recipe, scaled down): a batch of task
examples (``finetune_data``) through the task head (``xlnet_ref.heads``), backward, clip the global
gradient norm, AdamW, learning-rate schedule — linear warm-up, then linear decay (``train.lr_factor``).
Optionally the original's layer-wise learning-rate decay (``lr_layer_decay_rate``): layer l of
``n_layer`` learns at :math:`\eta\,\gamma^{\,n\_layer - 1 - l}`; the embedding, u/v/segment biases and
the head learn at :math:`\eta` (as the original, which scales only ``layer_<l>`` variables).

The optimizer's decay / no-decay rule, the schedule, the device choice and the checkpoint format are
the pretraining loop's (``training/train.py``, ``training/checkpoint.py``). Batches are a fixed
function of (seed, step): each epoch is a permutation of the training examples drawn from a generator
seeded by (seed, epoch), so a checkpoint needs only the step, the weights, the optimizer, the scheduler
and the RNG (dropout) to resume exactly.

Metrics on the held-out documents: accuracy (``next``, ``topic``); exact match and F1 over the answer's
characters (``span``: the best span of the beam search, start <= end, at most ``max_answer_length``);
F1 of finding the word starts and accuracy over text bytes (``words``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import XLNetConfig, check_int_fields, dataclass_from_dict
from ..heads import HEADS, HeadConfig, best_span
from . import checkpoint as ckpt
from .finetune_data import TASK_HEADS, TASK_LABELS, TASKS, task_examples
from .tokenizer import ByteTokenizer
from .train import PRESETS, latest_checkpoint, make_scheduler, resolve_device, uses_weight_decay

METRICS_FILE = "metrics.json"


@dataclass
class FinetuneConfig:
    """Everything a fine-tuning run depends on. ``init``: "scratch" or a pretraining checkpoint/run folder."""

    task: str = "next"
    init: str = "scratch"
    model: XLNetConfig | None = None  # None: the init checkpoint's (or the preset's, from scratch) without memory
    preset: str = "tiny"
    seq_len: int = 64
    # defaults = the recipe measured in results/finetune.json (xlnet_ref.experiments.finetune, size full)
    n_train: int = 1600
    n_eval: int = 400
    steps: int = 100
    batch_size: int = 16
    learning_rate: float = 1e-3
    warmup_steps: int = 10
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.01
    adam_epsilon: float = 1e-6
    clip_norm: float = 1.0
    layer_decay: float = 1.0  # the original's lr_layer_decay_rate; 1.0 = off
    summary_type: str = "last"  # "last" = XLNet's CLS at the end; "mean", "first" as transformers
    summary_last_dropout: float = 0.1
    max_answer_length: int = 20
    eval_every: int = 50
    checkpoint_every: int = 0  # 0: only at the end (when there is an out_dir)
    keep_checkpoints: int = 2
    seed: int = 0
    device: str = "auto"

    def __post_init__(self):
        if isinstance(self.model, dict):
            self.model = XLNetConfig.from_dict(self.model)
        if self.task not in TASKS:
            raise ValueError(f"FinetuneConfig.task: expected one of {TASKS}, got {self.task!r}")
        if self.preset not in PRESETS:
            raise ValueError(f"FinetuneConfig.preset: expected one of {sorted(PRESETS)}, got {self.preset!r}")
        if not isinstance(self.init, str) or not self.init:
            raise ValueError(f"FinetuneConfig.init: expected 'scratch' or a checkpoint folder, got {self.init!r}")
        check_int_fields(self, ("seq_len", "n_train", "n_eval", "steps", "batch_size", "max_answer_length"), minimum=1)
        check_int_fields(
            self, ("warmup_steps", "eval_every", "checkpoint_every", "keep_checkpoints", "seed"), minimum=0
        )
        if self.batch_size > self.n_train:
            raise ValueError(
                f"FinetuneConfig.batch_size: expected at most n_train={self.n_train}, got {self.batch_size}"
            )
        if self.warmup_steps >= self.steps:
            raise ValueError(
                f"FinetuneConfig.warmup_steps: expected fewer than steps={self.steps}, got {self.warmup_steps}"
            )
        for name in ("learning_rate", "adam_epsilon", "clip_norm"):
            if not (isinstance(getattr(self, name), (int, float)) and getattr(self, name) > 0):
                raise ValueError(f"FinetuneConfig.{name}: expected a number > 0, got {getattr(self, name)!r}")
        if not (isinstance(self.layer_decay, (int, float)) and 0 < self.layer_decay <= 1):
            raise ValueError(f"FinetuneConfig.layer_decay: expected a number in (0, 1], got {self.layer_decay!r}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"FinetuneConfig.min_lr_ratio: expected a number in [0, 1], got {self.min_lr_ratio!r}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["model"] = self.model.to_dict() if self.model is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> FinetuneConfig:
        return dataclass_from_dict(cls, d)


# ------------------------------------------------------------------------------------ model
def backbone_config(config: FinetuneConfig) -> XLNetConfig:
    """The backbone's config: the init checkpoint's (or the preset's), without memory (one segment per example)."""
    if config.model is not None:
        return config.model
    if config.init == "scratch":
        base = PRESETS[config.preset]().model
    else:
        _, base = ckpt.read_config(latest_checkpoint(config.init))
    return dataclasses.replace(base, mem_len=None, reuse_len=None)


def head_config(config: FinetuneConfig) -> HeadConfig:
    labels = TASK_LABELS[config.task]
    return HeadConfig(
        num_labels=len(labels) if labels else 2,
        summary_type=config.summary_type,
        summary_last_dropout=config.summary_last_dropout,
    )


def build_model(config: FinetuneConfig) -> torch.nn.Module:
    """The task head on a backbone: random (seeded by ``config.seed``) or the pretrained one.

    The same draws make the head's weights in both cases, so for one seed "pretrained" and "scratch"
    differ only in the backbone's weights."""
    torch.manual_seed(config.seed)
    model = HEADS[TASK_HEADS[config.task]](config.model, head_config(config))
    if config.init != "scratch":
        pretrained = ckpt.load_model(latest_checkpoint(config.init))  # XLNetLMHeadModel (or XLNetModel)
        backbone = getattr(pretrained, "transformer", pretrained)
        model.transformer.load_state_dict(backbone.state_dict(), strict=True)  # every tensor, same shapes
    return model


def make_finetune_optimizer(model: torch.nn.Module, config: FinetuneConfig) -> torch.optim.AdamW:
    """AdamW; decay / no-decay by the pretraining rule (``train.uses_weight_decay``); with ``layer_decay``
    < 1, one group per (layer, decay) at lr * layer_decay ** (n_layer - 1 - layer)."""
    n_layer = config.model.n_layer
    groups: dict[tuple[float, bool], list] = {}
    for name, p in model.named_parameters():
        scale = 1.0
        if name.startswith("transformer.layer."):
            layer = int(name.split(".")[2])
            scale = config.layer_decay ** (n_layer - 1 - layer)
        groups.setdefault((scale, uses_weight_decay(name)), []).append(p)
    param_groups = [
        {"params": ps, "lr": config.learning_rate * scale, "weight_decay": config.weight_decay if decay else 0.0}
        for (scale, decay), ps in sorted(groups.items(), key=lambda kv: (-kv[0][0], not kv[0][1]))
    ]
    return torch.optim.AdamW(param_groups, lr=config.learning_rate, betas=(0.9, 0.999), eps=config.adam_epsilon)


def batch_index(config: FinetuneConfig, step: int, n: int) -> torch.Tensor:
    """The training rows of update ``step`` (0-based): epoch e is a permutation drawn from seed (seed, e)."""
    per_epoch = n // config.batch_size
    epoch, k = divmod(step, per_epoch)
    g = torch.Generator().manual_seed(1_000_003 * (config.seed + 1) + epoch)
    perm = torch.randperm(n, generator=g)
    return perm[k * config.batch_size : (k + 1) * config.batch_size]


# ------------------------------------------------------------------------------------- evaluation
def span_f1(pred: tuple[int, int], gold: tuple[int, int]) -> float:
    """F1 of the characters of two inclusive spans [start, end]."""
    overlap = max(0, min(pred[1], gold[1]) - max(pred[0], gold[0]) + 1)
    if overlap == 0:
        return 0.0
    precision = overlap / (pred[1] - pred[0] + 1)
    recall = overlap / (gold[1] - gold[0] + 1)
    return 2 * precision * recall / (precision + recall)


@torch.no_grad()
def evaluate(model: torch.nn.Module, examples, config: FinetuneConfig, *, batch_size: int = 100) -> dict:
    """Held-out metrics in eval mode (no dropout, no random draws): accuracy, or exact match and F1."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct, f1, n = 0.0, 0.0, len(examples)
    counts = dict.fromkeys(("tp", "fp", "fn", "right", "text"), 0.0)
    for start in range(0, n, batch_size):
        index = torch.arange(start, min(n, start + batch_size))
        kw = {k: v.to(device) for k, v in examples.batch(index).items()}
        if config.task == "span":
            gold_start, gold_end = kw.pop("start_positions"), kw.pop("end_positions")
            out = model(**kw)
            s, e = best_span(
                out,
                start_n_top=model.start_n_top,
                end_n_top=model.end_n_top,
                max_answer_length=config.max_answer_length,
            )
            correct += float(((s == gold_start) & (e == gold_end)).sum())
            f1 += sum(
                span_f1((a, b), (c, d))
                for a, b, c, d in zip(s.tolist(), e.tolist(), gold_start.tolist(), gold_end.tolist())
            )
        elif config.task == "words":
            labels = kw.pop("labels")
            pred, text = model(**kw).logits.argmax(-1), labels != -100
            counts["tp"] += float(((pred == 1) & (labels == 1)).sum())
            counts["fp"] += float(((pred == 1) & (labels == 0)).sum())
            counts["fn"] += float(((pred == 0) & (labels == 1)).sum())
            counts["right"] += float(((pred == labels) & text).sum())
            counts["text"] += float(text.sum())
        else:
            labels = kw.pop("labels")
            correct += float((model(**kw).logits.argmax(-1) == labels).sum())
    model.train(was_training)
    if config.task == "span":
        return {"exact_match": correct / n, "f1": f1 / n}
    if config.task == "words":  # F1 of finding the word starts; accuracy over text positions
        f1 = 2 * counts["tp"] / max(1.0, 2 * counts["tp"] + counts["fp"] + counts["fn"])
        return {"f1": f1, "accuracy": counts["right"] / counts["text"]}
    return {"accuracy": correct / n}


# ----------------------------------------------------------------------------------------- loop
@dataclass
class FinetuneResult:
    model: torch.nn.Module
    config: FinetuneConfig
    history: list[dict]
    metrics: dict  # the held-out metrics after the last step
    checkpoint: Path | None = None
    seconds: float = 0.0


def _check_resume_config(config: FinetuneConfig, saved: FinetuneConfig, source: Path) -> None:
    mine, theirs = config.to_dict(), saved.to_dict()
    may_change = ("steps", "device", "eval_every", "checkpoint_every", "keep_checkpoints")
    diffs = [(k, mine[k], theirs[k]) for k in mine if k not in may_change and mine[k] != theirs[k]]
    if diffs:
        lines = "; ".join(f"{k}: given {a!r}, the checkpoint has {b!r}" for k, a, b in diffs)
        raise ckpt.CheckpointError(
            f"resume from {str(source)!r}: the config differs in {len(diffs)} field(s) ({lines})"
        )


def finetune(
    config: FinetuneConfig | None = None,
    *,
    out_dir: str | Path | None = None,
    resume: str | Path | None = None,
    stop_at: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    log=print,
    data: tuple | None = None,
) -> FinetuneResult:
    """Fine-tune on ``config.task`` and return the model, history and held-out metrics.

    out_dir: checkpoints, history.json and metrics.json (None = write nothing); resume: a fine-tuning
    checkpoint or run folder, continued exactly; stop_at: stop after this many steps as if interrupted;
    data: (train, held_out) TaskExamples to reuse (built from the config when None).
    """
    from tqdm.auto import tqdm

    log = log or (lambda *a, **k: None)
    start_time = time.perf_counter()
    resume_from = latest_checkpoint(resume) if resume is not None else None
    saved_state = None
    if resume_from is not None:
        saved_state = ckpt.read_training_state(resume_from)
        try:
            saved = FinetuneConfig.from_dict(saved_state["extra"]["finetune_config"])
        except (KeyError, TypeError, ValueError) as err:
            raise ckpt.CheckpointError(
                f"resume from {str(resume_from)!r}: expected a fine-tuning checkpoint "
                f"(extra.finetune_config), got {err!r}"
            ) from None
        if config is None:
            config = saved
        else:
            config = dataclasses.replace(config, model=config.model or saved.model)
            _check_resume_config(config, saved, resume_from)
        out_dir = out_dir if out_dir is not None else resume_from.parent
    if config is None:
        raise ValueError("finetune: config: expected a FinetuneConfig or resume=<checkpoint>, got neither")
    if config.model is None:
        config = dataclasses.replace(config, model=backbone_config(config))
    if stop_at is not None and not (isinstance(stop_at, int) and 0 < stop_at <= config.steps):
        raise ValueError(f"finetune: stop_at: expected an int in [1, steps={config.steps}], got {stop_at!r}")
    device = resolve_device(config.device)
    tokenizer = ByteTokenizer()
    if config.model.vocab_size != tokenizer.vocab_size:
        raise ValueError(
            f"model.vocab_size: expected {tokenizer.vocab_size} (the byte tokenizer the tasks use), "
            f"got {config.model.vocab_size}"
        )
    train_ex, eval_ex = (
        data
        if data is not None
        else (
            task_examples(config.task, "train", config.n_train, seq_len=config.seq_len),
            task_examples(config.task, "held_out", config.n_eval, seq_len=config.seq_len),
        )
    )

    model = build_model(config).to(device)
    optimizer = make_finetune_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config)  # the pretraining schedule (warm-up, linear decay)
    step, history = 0, []
    if resume_from is not None:
        state = ckpt.load_checkpoint(resume_from, model=model, optimizer=optimizer, scheduler=scheduler)
        step, history = state.step, state.extra["history"]
        ckpt.restore_rng_state(state.rng)
        log(f"resumed from {resume_from} at step {step}")

    out_dir = Path(out_dir) if out_dir is not None else None
    if out_dir is not None and resume_from is None:
        earlier = sorted(p for p in out_dir.glob("checkpoint-*") if p.is_dir())
        if earlier and not overwrite:
            raise FileExistsError(
                f"finetune: out_dir {str(out_dir)!r} already holds checkpoints ({earlier[-1].name}); "
                "expected an empty or new folder: continue with --resume, or pass --overwrite"
            )
        for p in earlier:
            shutil.rmtree(p)

    def save(at_step: int) -> Path:
        path = out_dir / f"checkpoint-{at_step:07d}"
        ckpt.save_checkpoint(
            path,
            model=model,
            step=at_step,
            optimizer=optimizer,
            scheduler=scheduler,
            rng=ckpt.capture_rng_state(),
            extra={"finetune_config": config.to_dict(), "history": history},
            tokenizer=tokenizer,
        )
        (out_dir / "history.json").write_text(json.dumps(history) + "\n")
        old = sorted(p for p in out_dir.glob("checkpoint-*") if p.is_dir() and p != path)
        for p in old[: max(0, len(old) - max(0, config.keep_checkpoints - 1))]:
            shutil.rmtree(p)
        return path

    n_params = sum(p.numel() for p in model.parameters())
    log(
        f"fine-tuning {TASK_HEADS[config.task]} on '{config.task}' from {config.init}: {n_params / 1e6:.2f} M parameters, "
        f"{len(train_ex)} training / {len(eval_ex)} held-out examples, {config.steps} steps of {config.batch_size}, "
        f"device {device}"
    )
    end = config.steps if stop_at is None else stop_at
    last_checkpoint, metrics = None, {}
    model.train()
    bar = tqdm(total=end, initial=step, disable=not progress, desc=f"{config.task} ({config.init})", dynamic_ncols=True)
    while step < end:
        kw = {k: v.to(device) for k, v in train_ex.batch(batch_index(config, step, len(train_ex))).items()}
        loss = model(**kw).loss
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm)
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise FloatingPointError(
                f"finetune: the loss became {loss_value} at step {step}; lower learning_rate "
                f"(now {config.learning_rate})"
            )
        history.append({"kind": "train", "step": step, "loss": loss_value, "lr": lr, "grad_norm": float(grad_norm)})
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.3f}", refresh=False)
        if (config.eval_every and step % config.eval_every == 0) or step == config.steps:
            metrics = evaluate(model, eval_ex, config)
            history.append({"kind": "eval", "step": step, **metrics})
            line = f"step {step}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items())
            bar.write(line) if progress else log(line)
        if out_dir is not None and ((config.checkpoint_every and step % config.checkpoint_every == 0) or step == end):
            last_checkpoint = save(step)
    bar.close()
    if not metrics or history[-1].get("kind") != "eval":
        metrics = evaluate(model, eval_ex, config)
    if out_dir is not None:
        (out_dir / METRICS_FILE).write_text(
            json.dumps(
                {"task": config.task, "init": config.init, "step": step, "seed": config.seed, **metrics}, indent=1
            )
            + "\n"
        )
    model.eval()
    return FinetuneResult(
        model=model,
        config=config,
        history=history,
        metrics=metrics,
        checkpoint=last_checkpoint,
        seconds=time.perf_counter() - start_time,
    )


def load_finetuned(path: str | Path, *, device: str = "cpu") -> tuple[torch.nn.Module, FinetuneConfig]:
    """A fine-tuned head (eval mode) and its config from a fine-tuning checkpoint or run folder."""
    source = latest_checkpoint(path)
    config = FinetuneConfig.from_dict(ckpt.read_training_state(source)["extra"]["finetune_config"])
    model = HEADS[TASK_HEADS[config.task]](config.model, head_config(config)).to(resolve_device(device))
    ckpt.load_weights(source, model=model)
    return model.eval(), config


# -------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m xlnet_ref.finetune",
        description="Fine-tune XLNet on a task built from text on this machine (no download): "
        "next (is B the text after A?), topic (3-way reference-topic classification), span (extractive QA), "
        "words (where do words start in text without spaces: token classification).",
        epilog="Examples:\n  python -m xlnet_ref.train --preset tiny --out runs/tiny\n"
        "  python -m xlnet_ref.finetune --task next --from runs/tiny --out runs/ft-next\n"
        "  python -m xlnet_ref.finetune --task next --from scratch --out runs/ft-next-scratch\n"
        "  python -m xlnet_ref.finetune --resume runs/ft-next --steps 400",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--task", choices=TASKS, help="default next")
    p.add_argument("--from", dest="init", help="a pretraining checkpoint or run folder, or 'scratch' (default)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="model size for --from scratch (default tiny)")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, dest="learning_rate")
    p.add_argument("--warmup-steps", type=int)
    p.add_argument(
        "--layer-decay", type=float, help="layer-wise learning-rate decay (the original's lr_layer_decay_rate)"
    )
    p.add_argument("--n-train", type=int, help="training examples (default 1600)")
    p.add_argument("--n-eval", type=int, help="held-out examples (default 400)")
    p.add_argument("--eval-every", type=int)
    p.add_argument("--checkpoint-every", type=int, help="0 = only at the end")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--out", help="run folder (default runs/finetune-<task>-<from>-seed<seed>)")
    p.add_argument("--resume", help="a fine-tuning checkpoint or run folder")
    p.add_argument("--stop-at", type=int, help="stop after this many steps as if interrupted")
    p.add_argument("--overwrite", action="store_true", help="start again in an --out folder that holds checkpoints")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    return p


ARG_FIELDS = (
    "task",
    "init",
    "preset",
    "steps",
    "batch_size",
    "learning_rate",
    "warmup_steps",
    "layer_decay",
    "n_train",
    "n_eval",
    "eval_every",
    "checkpoint_every",
    "seed",
    "device",
)


def config_from_args(args: argparse.Namespace) -> FinetuneConfig | None:
    overrides = {k: getattr(args, k) for k in ARG_FIELDS if getattr(args, k) is not None}
    if args.resume is not None:
        source = latest_checkpoint(args.resume)
        saved = FinetuneConfig.from_dict(ckpt.read_training_state(source)["extra"]["finetune_config"])
        return dataclasses.replace(saved, **overrides)
    if "steps" in overrides and "warmup_steps" not in overrides:
        overrides["warmup_steps"] = FinetuneConfig.warmup_steps * overrides["steps"] // FinetuneConfig.steps
    config = FinetuneConfig(**overrides)
    return dataclasses.replace(config, model=backbone_config(config))


def default_out(config: FinetuneConfig) -> str:
    source = "scratch" if config.init == "scratch" else Path(config.init).name
    return f"runs/finetune-{config.task}-{source}-seed{config.seed}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
        if args.print_config:
            print(json.dumps(config.to_dict(), indent=2))
            return 0
        out = args.out or (None if args.resume else default_out(config))
        result = finetune(
            config,
            out_dir=out,
            resume=args.resume,
            stop_at=args.stop_at,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    metrics = ", ".join(f"{k} {v:.3f}" for k, v in result.metrics.items())
    print(f"done in {result.seconds:.0f} s: {result.config.task} from {result.config.init}, held-out {metrics}")
    if result.checkpoint is not None:
        print(f"checkpoint: {result.checkpoint}  (metrics: {result.checkpoint.parent / METRICS_FILE})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
