r"""Memory vs no memory on real text: held-out loss against ``mem_len`` (Transformer-XL Sec. 3.2).

What is compared
----------------
Left-to-right byte-level language models on CPython's documentation (``training.corpus``, byte tokens),
identical in everything (size, steps, learning rate, the same training segments in the same order,
the same initial weights for a given seed) except the length of the memory ``mem_len``
(0, 16, 32, 64 at the full size) with one segment length ``seg_len``. Each model is trained and
evaluated with its own ``mem_len``: the stream is read segment after segment, and layer n of
segment :math:`\tau+1` attends over

.. math::
    \tilde h^{n-1}_{\tau+1} = [\mathrm{SG}(h^{n-1}_\tau) \circ h^{n-1}_{\tau+1}]

cut to the last ``mem_len`` positions of the memory. The model is ``XLNetLMHeadModel`` with causal
attention (``attn_type="uni"``) read from the content stream: the logits at position i predict the
byte at i + 1 (Transformer-XL's language model, XLNet's backbone).

Why this baseline
-----------------
``mem_len = 0`` is the vanilla segment-level model that Transformer-XL argues against: each segment is
processed alone, so the first bytes of a segment are predicted from almost no context (context
fragmentation). The claim under test: longer context through memory lowers held-out loss, most at
the start of each segment, where the no-memory model has the least context.

Per-seed keys (nats per byte on the held-out text; every segment but the first of each stream, whose
memory is empty for every arm)
------------------------------------------------------------------------------------------------
* ``mem_len=M/loss`` — mean next-byte loss over all positions of the segment;
* ``mem_len=M/loss_start`` — the same over the first quarter of the positions of each segment
  (positions 0 .. seg_len/4 - 1), where the memory matters most;
* ``mem_len=M/loss_end`` — the same over the last quarter (the no-memory model has seen most of the
  segment there too).

Recorded (results/memory_on_text.json, full size, 3 seeds, mean ± std of ``loss``): mem_len 0: 1.80 ± 0.04,
16: 1.66 ± 0.03, 32: 1.69 ± 0.04, 64: 1.70 ± 0.05 nats/byte. Every memory beats no memory, almost all
of it at the start of the segment (``loss_start`` 2.12 without memory, 1.66-1.71 with); a memory longer
than 16 did not help further at this budget (1500 steps), its mean is slightly worse, within about one
std. The quick size (300 steps) is too short for the memory to pay off: it only checks that a seed
repeats.

Run: ``python -m xlnet_ref.experiments.memory_on_text --size full --seeds 0 1 2`` (and ``--size quick``).
Every run uses one CPU thread, so a seed gives the same numbers each time on one machine.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
import types

import torch
import torch.nn.functional as F

from ..config import XLNetConfig
from ..model import XLNetLMHeadModel
from ..training.corpus import load_corpus, split_corpus
from ..training.tokenizer import ByteTokenizer
from ..training.train import lr_factor, make_optimizer
from .common import SIZES, write_result

NAME = "memory_on_text"

# full: all 4 arms x 3 seeds in ~10 minutes of one CPU thread; quick: one seed (4 arms) in ~20 s
CONFIGS = {
    "full": dict(
        mem_lens=[0, 16, 32, 64],
        seg_len=16,
        batch_size=16,
        steps=1500,
        learning_rate=2e-3,
        warmup_steps=75,
        d_model=64,
        n_layer=2,
        n_head=4,
        d_inner=256,
        eval_streams=8,
        eval_segments=None,
    ),
    "quick": dict(
        mem_lens=[0, 16, 32, 64],
        seg_len=16,
        batch_size=8,
        steps=300,
        learning_rate=2e-3,
        warmup_steps=15,
        d_model=64,
        n_layer=2,
        n_head=4,
        d_inner=256,
        eval_streams=8,
        eval_segments=40,
    ),
}


# --------------------------------------------------------------------- shared by the experiments
@contextlib.contextmanager
def single_thread():
    """Run torch on one CPU thread inside the block (then restore): the same seed gives the same numbers."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def make_adamw(model: torch.nn.Module, *, learning_rate: float, steps: int, warmup_steps: int):
    """(optimizer, scheduler): the pretraining recipe of ``training.train`` (AdamW with its decay groups,
    linear warm-up, linear decay to ``min_lr_ratio``) for a run of ``steps`` updates."""
    recipe = types.SimpleNamespace(
        learning_rate=learning_rate, weight_decay=0.01, adam_epsilon=1e-6, implementation="readable"
    )  # the fields make_optimizer reads; unfused AdamW
    optimizer = make_optimizer(model, recipe)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, warmup_steps=warmup_steps, total_steps=steps, min_lr_ratio=0.001)
    )
    return optimizer, scheduler


def experiment_main(name: str, run, description: str, argv: list[str] | None = None) -> int:
    """The CLI of an experiment module: ``--size full|quick --seeds 0 1 2``; prints mean ± std per key."""
    parser = argparse.ArgumentParser(prog=f"python -m xlnet_ref.experiments.{name}", description=description)
    parser.add_argument("--size", choices=SIZES, default="full")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default=None, help="folder for the result file (default: results/)")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    path = run(args.size, args.seeds, directory=args.out)
    from .common import load_result

    record = load_result(name, size=args.size, directory=path.parent)
    for key, s in record["summary"].items():
        print(f"{key:40s} {s['mean']:.4f} ± {s['std']:.4f}  (n={s['n']}, min {s['min']:.4f}, max {s['max']:.4f})")
    print(f"wrote {path} in {time.perf_counter() - t0:.0f} s")
    return 0


def check_size_and_seeds(size: str, seeds) -> list[int]:
    if size not in SIZES:
        raise ValueError(f"size: expected one of {SIZES}, got {size!r}")
    seeds = list(seeds)
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise ValueError(f"seeds: expected a non-empty list of ints >= 0, got {seeds!r}")
    return seeds


# ------------------------------------------------------------------------------------ the data
def text_streams(tokens: torch.Tensor, n_streams: int, *, offset: int = 0) -> torch.Tensor:
    """Cut a token stream (rotated left by ``offset``) into ``n_streams`` contiguous rows [b, N // b]
    (Transformer-XL's ``batchify``): row r continues its own text from one segment to the next."""
    tokens = torch.roll(tokens, -offset)
    per_stream = tokens.numel() // n_streams
    return tokens[: per_stream * n_streams].view(n_streams, per_stream)  # [b, n]


def byte_corpus() -> tuple[torch.Tensor, torch.Tensor]:
    """(train tokens, held-out tokens) of the default corpus, UTF-8 bytes, split as ``training.train`` does."""
    train_text, eval_text = split_corpus(load_corpus(), eval_fraction=0.05)
    tok = ByteTokenizer()
    return torch.tensor(tok.encode(train_text)), torch.tensor(tok.encode(eval_text))


def segment_loss(model: XLNetLMHeadModel, x: torch.Tensor, y: torch.Tensor, mems):
    """Per-position next-byte losses [b, i] of one segment x [b, i] with labels y [b, i], and the new memory."""
    out = model(x, mems=mems)  # logits [b, i, V] from the content stream, causal attention over [mem; x]
    losses = F.cross_entropy(out.logits.flatten(0, 1), y.flatten(), reduction="none").view_as(y)
    return losses, out.mems


# --------------------------------------------------------------------------------- one arm, one seed
def train_and_evaluate(
    mem_len: int, *, seed: int, cfg: dict, train_tokens: torch.Tensor, eval_tokens: torch.Tensor
) -> dict[str, float]:
    """Train one model with memory ``mem_len`` and return its held-out losses (see the module docstring)."""
    L = cfg["seg_len"]
    config = XLNetConfig(
        vocab_size=ByteTokenizer().vocab_size,
        d_model=cfg["d_model"],
        n_layer=cfg["n_layer"],
        n_head=cfg["n_head"],
        d_inner=cfg["d_inner"],
        attn_type="uni",
        mem_len=mem_len,
        dropout=0.0,
    )
    torch.manual_seed(seed)  # initial weights: the same for every arm of a seed
    model = XLNetLMHeadModel(config)
    optimizer, scheduler = make_adamw(
        model, learning_rate=cfg["learning_rate"], steps=cfg["steps"], warmup_steps=cfg["warmup_steps"]
    )
    offset = int(torch.randint(train_tokens.numel(), (1,), generator=torch.Generator().manual_seed(seed)))
    streams = text_streams(train_tokens, cfg["batch_size"], offset=offset)  # the same data for every arm
    n_segments = (streams.shape[1] - 1) // L
    mems = None
    model.train()
    for step in range(cfg["steps"]):
        s = step % n_segments
        if s == 0:
            mems = None  # the text starts again: the memory would hold the end of the stream
        x, y = streams[:, s * L : (s + 1) * L], streams[:, s * L + 1 : (s + 1) * L + 1]
        losses, mems = segment_loss(model, x, y, mems)
        losses.mean().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

    model.eval()
    streams = text_streams(eval_tokens, cfg["eval_streams"])
    n_eval = (streams.shape[1] - 1) // L
    if cfg["eval_segments"] is not None:  # None: the whole held-out text
        n_eval = min(cfg["eval_segments"], n_eval)
    quarter = max(1, L // 4)
    total = torch.zeros(L)
    mems, scored = None, 0
    with torch.no_grad():
        for s in range(n_eval):
            x, y = streams[:, s * L : (s + 1) * L], streams[:, s * L + 1 : (s + 1) * L + 1]
            losses, mems = segment_loss(model, x, y, mems)
            if s > 0:  # the first segment has no memory in any arm
                total += losses.sum(0)
                scored += losses.shape[0]
    per_position = total / scored  # [i] mean loss at each position of a segment
    key = f"mem_len={mem_len}"
    return {
        f"{key}/loss": float(per_position.mean()),
        f"{key}/loss_start": float(per_position[:quarter].mean()),
        f"{key}/loss_end": float(per_position[-quarter:].mean()),
    }


def memory_on_text_seed(seed: int, *, size: str = "full", data=None) -> dict[str, float]:
    """Every arm (``mem_len``) of one seed: ``{"seed": seed, "mem_len=M/loss": ..., ...}``."""
    cfg = CONFIGS[size]
    train_tokens, eval_tokens = data if data is not None else byte_corpus()
    row = {"seed": seed}
    with single_thread():
        for mem_len in cfg["mem_lens"]:
            row.update(
                train_and_evaluate(mem_len, seed=seed, cfg=cfg, train_tokens=train_tokens, eval_tokens=eval_tokens)
            )
    return row


def run(size: str = "full", seeds=(0, 1, 2), *, directory=None):
    """Every seed at ``size``; writes ``results/memory_on_text[_quick].json`` and returns its path."""
    seeds = check_size_and_seeds(size, seeds)
    data = byte_corpus()
    per_seed = [memory_on_text_seed(seed, size=size, data=data) for seed in seeds]
    command = f"python -m xlnet_ref.experiments.{NAME} --size {size} --seeds {' '.join(map(str, seeds))}"
    config = dict(
        CONFIGS[size],
        corpus="pydoc_data.topics (CPython docs), UTF-8 bytes",
        eval_fraction=0.05,
        model="XLNetLMHeadModel, attn_type='uni', content stream, dropout 0",
        threads=1,
        loss_start="positions 0 .. seg_len/4 - 1",
        loss_end="the last seg_len/4 positions",
    )
    return write_result(
        NAME, size=size, command=command, config=config, seeds=seeds, per_seed=per_seed, directory=directory
    )


def main(argv: list[str] | None = None) -> int:
    return experiment_main(NAME, run, "Held-out loss on real text against the memory length mem_len.", argv)


if __name__ == "__main__":
    sys.exit(main())
