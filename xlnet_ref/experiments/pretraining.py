r"""Pretraining on real text: the permutation LM against count models, and against plain AR training.

What is compared
----------------
1. **The pretrained model against count models.** An XLNet trained with the permutation LM objective
   (XLNet Eq. 5, partial prediction, ``training.train``) on CPython's documentation (byte tokens),
   scored on held-out text with one fixed order, z = identity: the ordinary left-to-right loss
   :math:`-\frac1T\sum_t \ln p(x_t \mid x_{<t})` (``eval_l2r_loss`` of ``training.train.evaluate``).
   Baselines: unigram, bigram and trigram count models with interpolated modified Kneser-Ney
   smoothing (``training.baselines``), counted on the same training tokens and scored on exactly the
   same held-out targets with the same context. A model that does not beat the bigram has learned
   no more than which byte tends to follow which.
2. **PLM against plain AR training at equal compute.** The same model (same initial weights for a
   seed), the same steps, the same windows in the same order, the same memory, the same optimizer
   and schedule; the only difference is the training objective: the PLM arm predicts
   ``num_predict`` span targets per window in a random factorization order; the AR arm always uses
   z = identity with every text position a target (``train.left_to_right_batch``: a
   Transformer-XL-style language model, the AR baseline of XLNet Sec. 2.1). Both are judged on the
   held-out left-to-right loss, the AR arm's own task; the PLM arm's loss on its own objective is
   recorded too. (The AR arm has more targets per window, ~61 against ~10; its query stream has
   more rows, the rest of the compute is the same.)

Per-seed keys (nats/token on the held-out text)
-----------------------------------------------
* ``plm/ltr_loss``, ``ar/ltr_loss`` — held-out left-to-right loss (z = identity) of the PLM-trained and
  of the AR-trained model;
* ``plm/plm_loss``, ``ar/plm_loss`` — held-out permutation LM loss (random orders, span targets) of each;
* ``unigram/ltr_loss``, ``bigram/ltr_loss``, ``trigram/ltr_loss`` — the count models on the same
  held-out left-to-right targets (the same for every seed up to the held-out batches' random cuts);
* ``plm/train_seconds``, ``ar/train_seconds`` — wall time of each arm's training (one thread).

Sizes: ``full`` is the ``tiny`` preset of ``training.train`` (the ``make demo`` recipe: 600 steps of
32 x 32 tokens) on one CPU thread, ~2.5 CPU-minutes per arm; ``quick`` is a smaller model and run
(``CONFIGS["quick"]``: d_model 64, 2 layers, 300 steps of 16 x 32) that takes 35 s of CPU time per seed
(both arms; 61 s of wall time on 2 busy cores), for a notebook to re-run one seed live. At the quick
size both arms are still at about the unigram level; the comparison is the full size's.

Recorded (``results/pretraining.json``, seeds 0 1 2, nats/token): PLM left-to-right 2.315 ± 0.051 —
below the bigram count model (2.511) on every seed, above the trigram (1.742); AR at equal steps
1.630 ± 0.006 on the left-to-right loss it is trained for, but 3.33 on the PLM loss, where the PLM
model reaches 2.07.

Run: ``python -m xlnet_ref.experiments.pretraining --size full --seeds 0 1 2`` (and ``--size quick``).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import torch

from ..model import XLNetLMHeadModel
from ..training.baselines import NGramModel, held_out_ngram_loss
from ..training.train import (
    TextData,
    TrainConfig,
    TrainingBatches,
    batch_stream,
    evaluate,
    forward_loss,
    held_out_batches,
    left_to_right_batch,
    make_optimizer,
    make_scheduler,
    prepare_data,
    preset,
)
from .common import SIZES, write_result

NAME = "pretraining"
OBJECTIVES = ("plm", "ar")

# Overrides of preset("tiny"): full = none (the demo recipe); quick = a smaller model, fewer steps.
CONFIGS = {
    "full": dict(train={}, model={}),
    "quick": dict(
        train=dict(steps=300, warmup_steps=30, batch_size=16), model=dict(d_model=64, n_layer=2, n_head=4, d_inner=256)
    ),
}


def experiment_config(size: str, seed: int) -> TrainConfig:
    """The run's TrainConfig: preset("tiny") with this size's overrides, on the CPU, this seed."""
    if size not in SIZES:
        raise ValueError(f"size: expected one of {SIZES}, got {size!r}")
    base = preset("tiny")
    overrides = CONFIGS[size]
    model = dataclasses.replace(base.model, **overrides["model"])
    # the readable path (and unfused AdamW), with which results/pretraining*.json were recorded
    return dataclasses.replace(
        base, model=model, seed=seed, device="cpu", implementation="readable", **overrides["train"]
    )


def pretrain(config: TrainConfig, data: TextData, *, objective: str) -> tuple[XLNetLMHeadModel, float]:
    """Train from scratch with ``objective`` ("plm": the permutation LM of ``training.train.train``, step
    for step; "ar": the same windows with z = identity and every text position a target).
    Returns (model in eval mode, seconds)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective: expected one of {OBJECTIVES}, got {objective!r}")
    start = time.perf_counter()
    tokenizer = data.tokenizer
    torch.manual_seed(config.seed)  # initial weights and dropout, as train()
    model = XLNetLMHeadModel(config.model)
    optimizer, scheduler = make_optimizer(model, config), None
    scheduler = make_scheduler(optimizer, config)
    batches = TrainingBatches(
        lambda g: batch_stream(config, data.train_tokens, data.train_word_starts, tokenizer, g),
        torch.Generator().manual_seed(config.seed + 1),
    )
    mems = None
    model.train()
    for _ in range(config.steps):
        batch, new_epoch = batches.next()
        if new_epoch:
            mems = None  # the text starts over
        if objective == "ar":
            batch = left_to_right_batch(
                batch, sep_id=tokenizer.sep_id, cls_id=tokenizer.cls_id, has_memory=mems is not None
            )
        loss, mems = forward_loss(model, batch, mems, use_bf16=False)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return model.eval(), time.perf_counter() - start


def pretraining_seed(seed: int, *, size: str = "full", data: TextData | None = None) -> dict[str, float]:
    """One seed: both arms trained and scored, and the count models on the same held-out targets."""
    config = experiment_config(size, seed)
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: a seed gives the same numbers every time on one machine
    try:
        data = data if data is not None else prepare_data(config)
        if data.tokenizer.vocab_size != config.model.vocab_size:
            config = dataclasses.replace(
                config, model=dataclasses.replace(config.model, vocab_size=data.tokenizer.vocab_size)
            )
        held_out = held_out_batches(config, data)
        row = {"seed": seed}
        for objective in OBJECTIVES:
            model, seconds = pretrain(config, data, objective=objective)
            scores = evaluate(model, held_out, tokenizer=data.tokenizer)
            row[f"{objective}/ltr_loss"] = scores["eval_l2r_loss"]
            row[f"{objective}/plm_loss"] = scores["eval_plm_loss"]
            row[f"{objective}/train_seconds"] = seconds
        for order, name in ((1, "unigram"), (2, "bigram"), (3, "trigram")):
            counts = NGramModel(data.train_tokens, order=order, vocab_size=config.model.vocab_size)
            row[f"{name}/ltr_loss"] = held_out_ngram_loss(
                counts,
                held_out,
                reuse_len=config.model.reuse_len,
                sep_id=data.tokenizer.sep_id,
                cls_id=data.tokenizer.cls_id,
            )
    finally:
        torch.set_num_threads(before)
    return row


def run(size: str = "full", seeds=(0, 1, 2), *, directory=None, log=print):
    """All seeds at one size; writes ``results/pretraining[_quick].json`` and returns its path."""
    seeds = list(seeds)
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise ValueError(f"seeds: expected a non-empty list of ints >= 0, got {seeds!r}")
    config = experiment_config(size, seeds[0])
    data = prepare_data(config)
    per_seed = []
    for seed in seeds:
        row = pretraining_seed(seed, size=size, data=data)
        per_seed.append(row)
        if log:
            log(f"seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items() if k != "seed"))
    command = f"python -m xlnet_ref.experiments.{NAME} --size {size} --seeds {' '.join(map(str, seeds))}"
    recorded = {k: v for k, v in config.to_dict().items() if k != "seed"}
    recorded["objectives"] = {
        "plm": "permutation LM, span targets (training.train)",
        "ar": "z = identity, every text position a target",
    }
    return write_result(
        NAME, size=size, command=command, config=recorded, seeds=seeds, per_seed=per_seed, directory=directory
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=f"python -m xlnet_ref.experiments.{NAME}", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--size", choices=SIZES, default="full")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default=None, help="folder for the result file (default: results/)")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    try:
        path = run(args.size, args.seeds, directory=args.out)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from .common import load_result

    record = load_result(NAME, size=args.size, directory=path.parent)
    for key, s in record["summary"].items():
        print(f"{key:22s} {s['mean']:.4f} ± {s['std']:.4f}  (n={s['n']}, min {s['min']:.4f}, max {s['max']:.4f})")
    print(f"wrote {path} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
