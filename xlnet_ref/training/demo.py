"""``python -m xlnet_ref.demo`` (``make demo``): pretrain a small XLNet here and now, then draw what it learned.

1. Train the preset that fits the machine — ``tiny`` on a CPU (a few minutes on 2 cores), ``small``
   on a GPU — on CPython's own documentation (no download), with the permutation LM objective.
2. Write three figures to ``figures/``:
   ``loss_curves.png`` (training and held-out losses, learning rate),
   ``two_stream_attention.png`` (one held-out example: what the query stream may see, and where the
   content stream h and the query stream g attend, over [memory | segment]),
   ``memory_attention.png`` (per layer, how much attention goes to the memory).
3. Print the final losses and where the checkpoint and figures went.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from pathlib import Path

import torch

from .interrupt import TrainingInterrupted
from .train import PRESETS, held_out_batches, load_run, preset, resolve_device, train


def attention_example(result):
    """Run consecutive held-out batches until the memory is full (mem_len / reuse_len of them), then one
    more with output_attentions=True. Returns what the attention plots need: (batch, attentions, mlen)."""
    model, config = result.model, result.config
    device = next(model.parameters()).device
    n_fill = math.ceil(config.model.mem_len / config.model.reuse_len)  # each batch caches reuse_len positions
    batches = held_out_batches(dataclasses.replace(config, eval_batches=n_fill + 1), result.data)
    n_fill = min(n_fill, len(batches) - 1)  # a short held-out text: less memory
    model.eval()
    mems = None
    with torch.no_grad():
        for batch in batches[:n_fill]:
            batch = batch.to(device)
            mems = model(
                batch.input_ids,
                token_type_ids=batch.token_type_ids,
                perm_mask=batch.perm_mask,
                target_mapping=batch.target_mapping,
                mems=mems,
            ).mems
        batch = batches[n_fill].to(device)
        out = model(
            batch.input_ids,
            token_type_ids=batch.token_type_ids,
            perm_mask=batch.perm_mask,
            target_mapping=batch.target_mapping,
            mems=mems,
            output_attentions=True,
        )
    return batch, out.attentions, mems[0].shape[1]


def make_figures(result, figures_dir: str | Path, *, baselines: dict[str, float] | None = None) -> list[Path]:
    """The demo's three figures from a finished :func:`xlnet_ref.training.train.train` result; ``baselines``
    (name -> held-out loss, e.g. the count models) are drawn as horizontal lines on the loss curves."""
    from ..drawing.plotting import (
        memory_attention_mass,
        plot_history,
        plot_memory_attention,
        plot_two_stream_attention,
        save_figure,
        token_labels,
        uniform_memory_mass,
    )

    figures_dir = Path(figures_dir)
    cfg = result.config
    paths = [
        save_figure(
            plot_history(result.history, title=f"XLNet permutation LM, preset {cfg.name!r}", baselines=baselines),
            figures_dir / "loss_curves.png",
        )
    ]

    batch, attentions, mlen = attention_example(result)
    b, layer = 0, len(attentions) - 1
    prob_h, prob_g = attentions[layer]  # [b, n, i, j], [b, n, k, j]
    real = batch.target_weights[b] > 0  # [k]
    target_positions = batch.target_mapping[b].argmax(-1)[real].tolist()
    fig = plot_two_stream_attention(
        prob_h[b].mean(0),
        prob_g[b].mean(0)[real],
        perm_mask=batch.perm_mask[b],
        target_positions=target_positions,
        mlen=mlen,
        labels=token_labels(result.tokenizer, batch.input_ids[b]),
        title=f"Two-stream attention, last layer (layer {layer}), heads averaged, one held-out window "
        f"with {mlen} tokens of memory; red boxes: each target's own position (hidden from g)",
    )
    paths.append(save_figure(fig, figures_dir / "two_stream_attention.png"))

    mass = memory_attention_mass(attentions, mlen=mlen)
    uniform = uniform_memory_mass(batch.perm_mask, batch.target_mapping, mlen=mlen)  # baseline from the masks
    fig = plot_memory_attention(
        mass,
        mlen=mlen,
        qlen=cfg.seq_len,
        uniform=uniform,
        title=f"Attention mass on the {mlen}-token memory (held-out batch, preset {cfg.name!r})",
    )
    paths.append(save_figure(fig, figures_dir / "memory_attention.png"))
    return paths


def count_model_baselines(result, orders=(1, 2, 3)) -> dict[int, float]:
    """Held-out loss of the Kneser-Ney count models of these orders (trained on the run's training tokens),
    on exactly the targets of the run's held-out left-to-right loss: {order: nats/token}."""
    from .baselines import NGramModel, held_out_ngram_loss

    data, config = result.data, result.config
    batches = held_out_batches(config, data)  # the very batches evaluate() scored (their own fixed generator)
    return {
        n: held_out_ngram_loss(
            NGramModel(data.train_tokens, order=n, vocab_size=config.model.vocab_size),
            batches,
            reuse_len=config.model.reuse_len,
            sep_id=data.tokenizer.sep_id,
            cls_id=data.tokenizer.cls_id,
        )
        for n in orders
    }


def count_model_lines(losses: dict[int, float]) -> dict[str, float]:
    """{order: loss} -> {"bigram count model (held-out L2R)": loss, ...}, the loss curves' baseline lines."""
    names = {1: "unigram", 2: "bigram", 3: "trigram"}
    return {f"{names.get(n, f'{n}-gram')} count model (held-out L2R)": loss for n, loss in sorted(losses.items())}


def note_threads() -> None:
    """On a CPU that other processes keep busy, torch's worker threads wait on each other and a step can
    take 10x longer; one thread then is the faster choice. Say so, and choose it, only in that case."""
    cores = os.cpu_count() or 1
    busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if cores > 1 and busy >= cores - 0.5 and torch.get_num_threads() > 1:
        print(
            f"  this machine is busy (load {busy:.1f} on {cores} cores): using 1 torch thread instead of "
            f"{torch.get_num_threads()}, which is faster when the cores are shared"
        )
        torch.set_num_threads(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xlnet_ref.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), help="default: small on a GPU, tiny otherwise")
    parser.add_argument("--steps", type=int, help="override the preset's number of steps")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="runs/demo", help="run folder for the checkpoint (default runs/demo)")
    parser.add_argument("--figures", default="figures", help="where the PNGs go (default figures/)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--figures-only", metavar="CHECKPOINT", help="no training: redraw the figures from a checkpoint"
    )
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")  # the demo writes files only: no window, works without a display
    if args.figures_only:
        run = load_run(args.figures_only)
        for p in make_figures(run, args.figures, baselines=count_model_lines(count_model_baselines(run))):
            print(p)
        return 0

    start = time.perf_counter()
    device = resolve_device(args.device)
    if device.type == "cpu":
        note_threads()
    name = args.preset or ("small" if device.type == "cuda" else "tiny")
    overrides = {"device": str(device)}
    if args.steps is not None:
        base = PRESETS[name]()
        overrides.update(
            steps=args.steps,
            warmup_steps=base.warmup_steps * args.steps // base.steps,
            eval_every=max(1, min(base.eval_every, args.steps // 4)),
        )
    config = preset(name, **overrides)
    print(
        f"xlnet_ref demo: preset {name!r} on {device} ({torch.get_num_threads()} CPU threads), "
        f"corpus {'CPython documentation (pydoc_data)' if config.corpus is None else config.corpus}"
    )
    print(
        f"  model: d_model {config.model.d_model}, {config.model.n_layer} layers, {config.model.n_head} heads, "
        f"memory {config.model.mem_len} tokens (reuse_len {config.model.reuse_len}); "
        f"{config.steps} steps of {config.batch_size} windows x {config.seq_len} tokens, "
        f"{config.num_predict} targets per window; {config.implementation} path"
    )
    try:
        result = train(config, out_dir=args.out, overwrite=True, progress=not args.no_progress)  # a demo starts afresh
    except TrainingInterrupted as err:  # Ctrl-C or SIGTERM: train() finished the step and saved a checkpoint
        print(f"\n{err}", file=sys.stderr)
        if err.checkpoint is not None:
            print(
                f"the demo stopped before drawing; to draw from what was trained so far: "
                f"python -m xlnet_ref.demo --figures-only {err.checkpoint}",
                file=sys.stderr,
            )
        return err.exit_code
    count_model_losses = count_model_baselines(result)
    paths = make_figures(result, args.figures, baselines=count_model_lines(count_model_losses))

    uniform = math.log(result.config.model.vocab_size)
    train_losses = [r["loss"] for r in result.history if r["kind"] == "train"]
    first, last = sum(train_losses[:10]) / 10, sum(train_losses[-10:]) / 10
    print()
    print(
        f"training took {result.seconds:.0f} s ({result.config.steps} steps); whole demo {time.perf_counter() - start:.0f} s"
    )
    dropout = f", with dropout {result.config.model.dropout}" if result.config.model.dropout else ""
    print(
        f"  train PLM loss (mean of 10 steps{dropout}): {first:.3f} (first) -> {last:.3f} (last); "
        f"uniform guess = ln {result.config.model.vocab_size} = {uniform:.3f}"
    )
    print(f"  held-out PLM loss (random factorization orders): {result.final('eval_plm_loss'):.3f} nats/token")
    print(f"  held-out left-to-right loss (z = identity):      {result.final('eval_l2r_loss'):.3f} nats/token")
    for order, name in ((2, "bigram"), (1, "unigram"), (3, "trigram")):
        print(f"  {name} count model, same held-out text: {count_model_losses[order]:.3f} nats/token")
    print(f"checkpoint: {result.checkpoint}  (resume: python -m xlnet_ref.train --resume {args.out})")
    print("figures:")
    for p in paths:
        print(f"  {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
