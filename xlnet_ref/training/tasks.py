r"""Synthetic tasks with a known answer, for the notebooks' checked claims.

The copy-from-the-previous-segment task (notebook 01). A stream is cut into segments of ``seg_len``
random tokens; at every position of segment :math:`\tau + 1` the label is the token at the *same*
position of segment :math:`\tau`. The tokens of a segment are independent of its labels, so a model
that sees one segment at a time can do no better than chance (loss :math:`\ln V`). A model with
segment-level recurrence (Transformer-XL Sec. 3.2) reads the previous segment from its memory

.. math::
    \tilde h^{n-1}_{\tau+1} = [\mathrm{SG}(h^{n-1}_\tau) \circ h^{n-1}_{\tau+1}]

and can copy the answer from relative distance ``seg_len``.

With a memory of ``mem_len = m < seg_len`` tokens, what can be copied depends on the depth. In a
**one-layer** model the only memory is the word embeddings of the last m tokens of segment
:math:`\tau`, so only positions ``i >= seg_len - m`` can be answered and the best expected loss is
:func:`copy_task_one_layer_best_loss` :math:`= (1 - m / L) \ln V` (accuracy
:func:`copy_task_one_layer_best_accuracy` :math:`= m/L + (1 - m/L)/V`). This is **not** a bound for
two layers or more: layer n >= 2 caches :math:`h^{n-1}_\tau`, states that already attended to the whole
of segment :math:`\tau` (and its memory), so m cached vectors of width d_model can carry more than m
tokens. :func:`one_layer_bound_run` trains one-layer and two-layer models with ``mem_len = 1`` and
measures it (``python -m xlnet_ref.training.tasks`` records 3 seeds in
``results/copy_task_one_layer_bound.json``).

The labels are read from the content stream h (``XLNetLMHeadModel`` without ``target_mapping``):
logits [b, i, V] at every position of the segment. Layout: tokens and labels [b, s, i]
(batch, segment, position in the segment).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import XLNetConfig
from ..model import XLNetLMHeadModel

IGNORE = -100  # label of the first segment: it has no previous segment to copy from


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")


def copy_task_batch(
    *,
    batch_size: int,
    n_segments: int,
    seg_len: int,
    vocab_size: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random segments and their labels: ``(tokens [b, s, i], labels [b, s, i])``, both long.

    ``labels[:, s] = tokens[:, s - 1]`` for s >= 1; ``labels[:, 0] = IGNORE`` (-100, skipped by the loss).
    Tokens are uniform over ``0..vocab_size-1``, drawn from ``generator`` on the CPU and moved to ``device``.
    """
    for name, value in (
        ("batch_size", batch_size),
        ("n_segments", n_segments),
        ("seg_len", seg_len),
        ("vocab_size", vocab_size),
    ):
        _check_positive_int(name, value)
    if n_segments < 2:
        raise ValueError(f"n_segments: expected at least 2 (the first segment has nothing to copy), got {n_segments}")
    tokens = torch.randint(vocab_size, (batch_size, n_segments, seg_len), generator=generator)  # [b, s, i]
    labels = torch.full_like(tokens, IGNORE)
    labels[:, 1:] = tokens[:, :-1]  # the answer lies in the previous segment
    return tokens.to(device), labels.to(device)


def _check_memory_args(mem_len, seg_len, vocab_size) -> None:
    if isinstance(mem_len, bool) or not isinstance(mem_len, int) or mem_len < 0:
        raise ValueError(f"mem_len: expected an int >= 0, got {mem_len!r}")
    _check_positive_int("seg_len", seg_len)
    _check_positive_int("vocab_size", vocab_size)


def copy_task_one_layer_best_loss(*, mem_len: int, seg_len: int, vocab_size: int) -> float:
    r"""The lowest expected loss of a **one-layer** model with memory ``mem_len``: :math:`(1 - m/L)\ln V`.

    One layer's memory is the embeddings of the last m tokens of the previous segment: positions whose
    answer is among them cost 0, the others :math:`\ln V` (the current segment says nothing about its
    labels). Not a bound for two layers or more (see the module docstring).
    """
    _check_memory_args(mem_len, seg_len, vocab_size)
    answerable = min(mem_len, seg_len) / seg_len
    return (1.0 - answerable) * math.log(vocab_size)


def copy_task_one_layer_best_accuracy(*, mem_len: int, seg_len: int, vocab_size: int) -> float:
    r"""The highest expected accuracy of a **one-layer** model with memory ``mem_len``: :math:`m/L + (1 - m/L)/V`."""
    _check_memory_args(mem_len, seg_len, vocab_size)
    answerable = min(mem_len, seg_len) / seg_len
    return answerable + (1.0 - answerable) / vocab_size


@dataclass
class SegmentRun:
    """What :func:`run_segments` returns (s = segments with a label, i.e. all but the first)."""

    loss: torch.Tensor  # scalar: mean cross-entropy over segments 1.. (the first has no label)
    accuracy: float  # share of argmax predictions equal to the label, same positions
    per_position_accuracy: torch.Tensor  # [i] accuracy at each position of the segment
    outputs: list  # one XLNetOutput per segment (attentions when asked for)


def run_segments(
    model: XLNetLMHeadModel,
    tokens: torch.Tensor,
    labels: torch.Tensor,
    *,
    use_memory: bool = True,
    mem_len: int | None = None,
    output_attentions: bool = False,
) -> SegmentRun:
    """Feed segment after segment, passing the memory on (``use_memory``) or not, and score the labels.

    tokens, labels: [b, s, i]. With ``use_memory=False`` every segment is processed alone (``mems=None``),
    whatever the model's ``mem_len``: the same weights, no recurrence. ``mem_len`` (an int <= the model's
    ``config.mem_len``) passes on only the last ``mem_len`` positions of each layer's memory (0 = none):
    the same weights with a shorter memory. The memory returned by the model is already detached
    (stop-gradient), so a backward pass through ``loss`` reaches only each segment's own computation.
    """
    if mem_len is not None and (isinstance(mem_len, bool) or not isinstance(mem_len, int) or mem_len < 0):
        raise ValueError(f"mem_len: expected None or an int >= 0, got {mem_len!r}")
    if tokens.shape != labels.shape or tokens.dim() != 3:
        raise ValueError(
            f"tokens, labels: expected two tensors of one shape [b, s, i], got {list(tokens.shape)} "
            f"and {list(labels.shape)}"
        )
    mems, outputs, losses, hits, counts = None, [], [], 0, 0
    per_position_hits = torch.zeros(tokens.shape[2], device=tokens.device)
    for s in range(tokens.shape[1]):
        out = model(tokens[:, s], mems=mems if use_memory else None, output_attentions=output_attentions)
        outputs.append(out)
        mems = out.mems
        if mems is not None and mem_len is not None:
            mems = [m[:, m.shape[1] - mem_len :] for m in mems] if mem_len > 0 else None  # the last mem_len positions
        if s == 0:
            continue  # nothing to copy yet
        logits = out.logits  # [b, i, V], from the content stream
        losses.append(F.cross_entropy(logits.flatten(0, 1), labels[:, s].flatten()))
        correct = logits.argmax(-1) == labels[:, s]  # [b, i]
        per_position_hits += correct.float().sum(0)
        hits += int(correct.sum())
        counts += correct.numel()
    n_scored = tokens.shape[0] * (tokens.shape[1] - 1)
    return SegmentRun(
        loss=torch.stack(losses).mean(),
        accuracy=hits / counts,
        per_position_accuracy=(per_position_hits / n_scored).cpu(),
        outputs=outputs,
    )


def train_copy_task(
    model: XLNetLMHeadModel,
    *,
    steps: int,
    batch_size: int,
    n_segments: int,
    seg_len: int,
    learning_rate: float = 3e-3,
    mem_lens: list[int] | None = None,
    generator: torch.Generator | None = None,
) -> list[float]:
    """Train on fresh random batches with memory carried across segments (AdamW, gradient clip 1.0).

    mem_lens: None = the model's own memory at every step; a list = each step keeps a memory length drawn
    uniformly from it (see :func:`run_segments`), so that one model learns to use whatever memory it gets.
    Returns the loss of every step. The model is left in eval mode.
    """
    _check_positive_int("steps", steps)
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    model.train()
    history = []
    for _ in range(steps):
        tokens, labels = copy_task_batch(
            batch_size=batch_size,
            n_segments=n_segments,
            seg_len=seg_len,
            vocab_size=model.config.vocab_size,
            generator=generator,
            device=device,
        )
        mem_len = None
        if mem_lens is not None:
            mem_len = mem_lens[int(torch.randint(len(mem_lens), (1,), generator=generator))]
        loss = run_segments(model, tokens, labels, use_memory=True, mem_len=mem_len).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        history.append(float(loss.detach()))
    model.eval()
    return history


# the recorded run of "the one-layer bound is not a bound for two layers" (results/copy_task_one_layer_bound.json)
BOUND_RUN = dict(
    vocab_size=4,
    seg_len=6,
    mem_len=1,
    d_model=32,
    n_head=4,
    d_inner=64,
    steps=2000,
    batch_size=64,
    n_segments=3,
    learning_rate=3e-3,
    eval_batch=2048,
    eval_seed=99,
)


def one_layer_bound_run(n_layer: int, *, seed: int, steps: int | None = None) -> dict[str, float]:
    """Train an ``n_layer`` copier with memory ``BOUND_RUN["mem_len"]`` (V 4, L 6) and score it on held-out
    segments with the same memory: ``{"accuracy", "loss", "one_layer_best_accuracy", "one_layer_best_loss"}``.

    The model keeps ``mem_len = seg_len`` in its config; :func:`run_segments` passes on only the last
    ``mem_len`` positions of each layer's memory, in training and in evaluation. One CPU thread is the
    caller's choice (the recorded run used one).
    """
    _check_positive_int("n_layer", n_layer)
    cfg = BOUND_RUN
    torch.manual_seed(seed)
    config_kw = dict(
        vocab_size=cfg["vocab_size"],
        d_model=cfg["d_model"],
        n_layer=n_layer,
        n_head=cfg["n_head"],
        d_inner=cfg["d_inner"],
        dropout=0.0,
        mem_len=cfg["seg_len"],
    )
    model = XLNetLMHeadModel(XLNetConfig(**config_kw))
    train_copy_task(
        model,
        steps=steps or cfg["steps"],
        batch_size=cfg["batch_size"],
        n_segments=cfg["n_segments"],
        seg_len=cfg["seg_len"],
        learning_rate=cfg["learning_rate"],
        mem_lens=[cfg["mem_len"]],
        generator=torch.Generator().manual_seed(seed),
    )
    tokens, labels = copy_task_batch(
        batch_size=cfg["eval_batch"],
        n_segments=cfg["n_segments"],
        seg_len=cfg["seg_len"],
        vocab_size=cfg["vocab_size"],
        generator=torch.Generator().manual_seed(cfg["eval_seed"]),
    )
    with torch.no_grad():
        scored = run_segments(model, tokens, labels, mem_len=cfg["mem_len"])
    bound = dict(mem_len=cfg["mem_len"], seg_len=cfg["seg_len"], vocab_size=cfg["vocab_size"])
    return {
        "accuracy": scored.accuracy,
        "loss": float(scored.loss),
        "one_layer_best_accuracy": copy_task_one_layer_best_accuracy(**bound),
        "one_layer_best_loss": copy_task_one_layer_best_loss(**bound),
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m xlnet_ref.training.tasks [--seeds 0 1 2]``: record :func:`one_layer_bound_run` for 1 and 2 layers."""
    import argparse

    from ..experiments.common import write_result

    parser = argparse.ArgumentParser(
        prog="python -m xlnet_ref.training.tasks",
        description="Copy task, mem_len 1: one layer vs two layers against the one-layer bound.",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default=None, help="folder for the result file (default: results/)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    per_seed = []
    for seed in args.seeds:
        row = {"seed": seed}
        for n_layer in (1, 2):
            for key, value in one_layer_bound_run(n_layer, seed=seed).items():
                row[f"n_layer={n_layer}/{key}"] = value
        print(row, flush=True)
        per_seed.append(row)
    path = write_result(
        "copy_task_one_layer_bound",
        size="full",
        config=dict(BOUND_RUN, n_layers=[1, 2], threads=1),
        command=f"python -m xlnet_ref.training.tasks --seeds {' '.join(map(str, args.seeds))}",
        seeds=args.seeds,
        per_seed=per_seed,
        directory=args.out,
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
