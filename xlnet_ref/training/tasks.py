r"""Synthetic tasks with a known answer, for the notebooks' checked claims.

The copy-from-the-previous-segment task (notebook 01). A stream is cut into segments of ``seg_len``
random tokens; at every position of segment :math:`\tau + 1` the label is the token at the *same*
position of segment :math:`\tau`. The tokens of a segment are independent of its labels, so a model
that sees one segment at a time can do no better than chance (loss :math:`\ln V`). A model with
segment-level recurrence (Transformer-XL Sec. 3.2) reads the previous segment from its memory

.. math::
    \tilde h^{n-1}_{\tau+1} = [\mathrm{SG}(h^{n-1}_\tau) \circ h^{n-1}_{\tau+1}]

and can copy the answer from relative distance ``seg_len``. With a memory of ``mem_len < seg_len``
tokens only the last ``mem_len`` positions of segment :math:`\tau` are there, so only positions
``i >= seg_len - mem_len`` can be answered: the best possible loss is
:func:`copy_task_best_loss` :math:`= (1 - \text{mem\_len} / \text{seg\_len}) \ln V`.

The labels are read from the content stream h (``XLNetLMHeadModel`` without ``target_mapping``):
logits [b, i, V] at every position of the segment. Layout: tokens and labels [b, s, i]
(batch, segment, position in the segment).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

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
    for name, value in (("batch_size", batch_size), ("n_segments", n_segments), ("seg_len", seg_len),
                        ("vocab_size", vocab_size)):
        _check_positive_int(name, value)
    if n_segments < 2:
        raise ValueError(f"n_segments: expected at least 2 (the first segment has nothing to copy), got {n_segments}")
    tokens = torch.randint(vocab_size, (batch_size, n_segments, seg_len), generator=generator)  # [b, s, i]
    labels = torch.full_like(tokens, IGNORE)
    labels[:, 1:] = tokens[:, :-1]  # the answer lies in the previous segment
    return tokens.to(device), labels.to(device)


def copy_task_best_loss(*, mem_len: int, seg_len: int, vocab_size: int) -> float:
    r"""The lowest expected loss: positions whose answer is in memory cost 0, the others :math:`\ln V`."""
    answerable = min(max(mem_len, 0), seg_len) / seg_len
    return (1.0 - answerable) * math.log(vocab_size)


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
        raise ValueError(f"tokens, labels: expected two tensors of one shape [b, s, i], got {list(tokens.shape)} "
                         f"and {list(labels.shape)}")
    mems, outputs, losses, hits, counts = None, [], [], 0, 0
    per_position_hits = torch.zeros(tokens.shape[2], device=tokens.device)
    for s in range(tokens.shape[1]):
        out = model(tokens[:, s], mems=mems if use_memory else None, output_attentions=output_attentions)
        outputs.append(out)
        mems = out.mems
        if mems is not None and mem_len is not None:
            mems = [m[:, m.shape[1] - mem_len:] for m in mems] if mem_len > 0 else None  # the last mem_len positions
        if s == 0:
            continue  # nothing to copy yet
        logits = out.logits  # [b, i, V], from the content stream
        losses.append(F.cross_entropy(logits.flatten(0, 1), labels[:, s].flatten()))
        correct = logits.argmax(-1) == labels[:, s]  # [b, i]
        per_position_hits += correct.float().sum(0)
        hits += int(correct.sum())
        counts += correct.numel()
    n_scored = tokens.shape[0] * (tokens.shape[1] - 1)
    return SegmentRun(loss=torch.stack(losses).mean(), accuracy=hits / counts,
                      per_position_accuracy=(per_position_hits / n_scored).cpu(), outputs=outputs)


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
        tokens, labels = copy_task_batch(batch_size=batch_size, n_segments=n_segments, seg_len=seg_len,
                                         vocab_size=model.config.vocab_size, generator=generator, device=device)
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
