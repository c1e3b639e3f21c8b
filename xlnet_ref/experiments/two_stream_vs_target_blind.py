r"""Two-stream attention vs a trained target-blind model on the permutation LM objective (XLNet Sec. 2.3).

What is compared
----------------
The paper's argument for two streams: with the standard softmax parameterisation

.. math::
    p_\theta(X_{z_t} = x \mid x_{z_{<t}}) = \frac{\exp(e(x)^\top h_\theta(x_{z_{<t}}))}
                                                 {\sum_{x'} \exp(e(x')^\top h_\theta(x_{z_{<t}}))}

the representation :math:`h_\theta(x_{z_{<t}})` does not depend on *which* position :math:`z_t` it
predicts, so every target that could come next gets the same distribution. XLNet replaces it by
:math:`g_\theta(x_{z_{<t}}, z_t)` (Eq. 4), computed by the query stream.

Both arms are ``XLNetLMHeadModel`` with the same size, initial weights, training windows, factorization
orders and targets (partial prediction, Eq. 5, K = ``K``), trained on the PLM loss for the same steps:

* ``two_stream`` — the query stream predicts each target: ``model(x, perm_mask, target_mapping)``
  (Eq. 4).
* ``target_blind`` — the standard parameterisation, trained: :math:`x_{z_t}` is predicted from the
  content-stream state of the position that comes just before it in the order, :math:`h_{z_{t-1}}`,
  whose mask lets it see exactly :math:`x_{z_{\le t-1}} = x_{z_{<t}}` (for the first target,
  :math:`z_{t-1}` is a context position, and a context position sees the whole context
  :math:`x_{z_{\le c}}`). This is how an ordinary Transformer LM predicts (a left-to-right model is
  the case z = identity) and it is a faithful :math:`h_\theta(x_{z_{<t}})`: it is computed from the
  visible tokens and their positions only, never from :math:`z_t`. (The other reading — a query stream
  that carries no information about :math:`z_t` — cannot be built from this model: the relative
  position terms of the attention tell any query where it sits.)

The text: CPython's documentation as UTF-8 bytes (``training.corpus``), held-out windows from the
held-out blocks, where knowing the target's position matters (the byte right after "impor" is not
the byte three places later).

Why this baseline: it is the model the paper says fails ("Sec. 2.3: a naive implementation with
standard Transformer parameterization may not work"), trained on the same objective and budget, so
the gap is what the query stream buys. A unigram count model (the byte frequencies of the training
text, add-one smoothed) on the same targets shows where "no context at all" would be.

Per-seed keys (nats per target byte, mean over the targets of the held-out windows)
-----------------------------------------------------------------------------------
* ``two_stream/loss``, ``target_blind/loss`` — all targets;
* ``two_stream/loss_first``, ``target_blind/loss_first`` — the first target of each order (step c+1:
  the most targets still hidden, the blind model is the least sure where it predicts);
* ``two_stream/loss_last``, ``target_blind/loss_last`` — the last target (one position left hidden: in
  principle the blind model could tell where it predicts from what it cannot see; at this budget it
  does not, its loss_last is no lower than its loss_first);
* ``unigram/loss`` — the count model on the same targets.

Recorded (results/two_stream_vs_target_blind.json, full size, 3 seeds, mean ± std): two_stream/loss
2.16 ± 0.05, target_blind/loss 3.15 ± 0.03, unigram/loss 3.26: the trained target-blind model stays
close to the count model, the query stream is a nat per byte lower.

Run: ``python -m xlnet_ref.experiments.two_stream_vs_target_blind --size full --seeds 0 1 2`` (and ``--size quick``).
"""

from __future__ import annotations

import sys

import torch

from ..config import XLNetConfig
from ..model import XLNetLMHeadModel
from ..permutation import (
    order_to_rank,
    partial_prediction_targets,
    permutation_masks,
    plm_loss,
    sample_factorization_order,
)
from ..training.tokenizer import ByteTokenizer
from .common import write_result
from .memory_on_text import byte_corpus, check_size_and_seeds, experiment_main, make_adamw, single_thread

NAME = "two_stream_vs_target_blind"
ARMS = ("two_stream", "target_blind")
EVAL_SEED = 12_345  # the held-out windows' orders: the same for every seed and arm

CONFIGS = {
    "full": dict(
        seq_len=32,
        K=6,
        batch_size=16,
        steps=800,
        learning_rate=2e-3,
        warmup_steps=40,
        d_model=64,
        n_layer=2,
        n_head=4,
        d_inner=256,
        eval_windows=600,
    ),
    "quick": dict(
        seq_len=32,
        K=6,
        batch_size=16,
        steps=200,
        learning_rate=2e-3,
        warmup_steps=10,
        d_model=64,
        n_layer=2,
        n_head=4,
        d_inner=256,
        eval_windows=200,
    ),
}


def plm_windows(tokens: torch.Tensor, starts: torch.Tensor, *, seq_len: int, K: int, generator: torch.Generator):
    """Windows of the text at ``starts`` with one factorization order and its partial-prediction targets each.

    Returns ``(input_ids [b, i], perm_mask [b, i, j], target_mapping [b, k, j], target_ids [b, k],
    predictor [b, k], step [b, k])``: ``predictor`` is :math:`z_{t-1}`, the position just before each target
    in the order (the target-blind arm reads its content state), ``step`` counts the targets in the
    order (0 = the first target, step c + 1 of Eq. 5).
    """
    input_ids = torch.stack([tokens[s : s + seq_len] for s in starts.tolist()])  # [b, i]
    perm, mapping, predictor, step = [], [], [], []
    for _ in range(input_ids.shape[0]):
        z = sample_factorization_order(seq_len, generator=generator)  # [T]
        is_target = partial_prediction_targets(z, K=K)  # the last T // K of z
        masks = permutation_masks(z, is_target)
        rank = order_to_rank(z)
        t = rank[masks.target_positions]  # [k] steps of the targets (target rows are in position order)
        perm.append(masks.perm_mask)
        mapping.append(masks.target_mapping)
        predictor.append(z[t - 1])  # z_{t-1}
        step.append(t - (seq_len - is_target.sum()))
    positions = torch.stack(mapping).argmax(-1)  # [b, k]
    target_ids = input_ids.gather(1, positions)
    return input_ids, torch.stack(perm), torch.stack(mapping), target_ids, torch.stack(predictor), torch.stack(step)


def target_logits(model: XLNetLMHeadModel, arm: str, input_ids, perm_mask, target_mapping, predictor) -> torch.Tensor:
    """Logits [b, k, V] at the targets: the query stream's (two_stream) or the content stream's at z_{t-1} (blind)."""
    if arm == "two_stream":
        return model(input_ids, perm_mask=perm_mask, target_mapping=target_mapping).logits  # Eq. 4: g(x_{z<t}, z_t)
    if arm == "target_blind":
        logits = model(input_ids, perm_mask=perm_mask).logits  # [b, i, V]: h at every position, content mask
        return logits.gather(1, predictor[:, :, None].expand(-1, -1, logits.shape[-1]))  # h(x_{z<t}) at z_{t-1}
    raise ValueError(f"arm: expected one of {ARMS}, got {arm!r}")


def train_arm(arm: str, *, seed: int, cfg: dict, train_tokens: torch.Tensor) -> XLNetLMHeadModel:
    """Train one arm; the windows, orders and initial weights depend on the seed only, not on the arm."""
    config = XLNetConfig(
        vocab_size=ByteTokenizer().vocab_size,
        d_model=cfg["d_model"],
        n_layer=cfg["n_layer"],
        n_head=cfg["n_head"],
        d_inner=cfg["d_inner"],
        attn_type="bi",
        dropout=0.0,
    )
    torch.manual_seed(seed)
    model = XLNetLMHeadModel(config)
    optimizer, scheduler = make_adamw(
        model, learning_rate=cfg["learning_rate"], steps=cfg["steps"], warmup_steps=cfg["warmup_steps"]
    )
    data = torch.Generator().manual_seed(seed + 1)
    T = cfg["seq_len"]
    model.train()
    for _ in range(cfg["steps"]):
        starts = torch.randint(train_tokens.numel() - T, (cfg["batch_size"],), generator=data)
        ids, perm, mapping, target_ids, predictor, _ = plm_windows(
            train_tokens, starts, seq_len=T, K=cfg["K"], generator=data
        )
        logits = target_logits(model, arm, ids, perm, mapping, predictor)
        loss = plm_loss(logits, target_ids, torch.ones_like(target_ids, dtype=torch.float))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return model.eval()


def unigram_log_probs(train_tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """log p(x) of the byte frequencies of the training text, add-one smoothed: [V]."""
    counts = torch.bincount(train_tokens, minlength=vocab_size).double() + 1.0
    return (counts / counts.sum()).log()


def two_stream_vs_target_blind_seed(seed: int, *, size: str = "full", data=None) -> dict[str, float]:
    """Train both arms of one seed and score them on the held-out windows (keys: see the module docstring)."""
    cfg = CONFIGS[size]
    train_tokens, eval_tokens = data if data is not None else byte_corpus()
    T = cfg["seq_len"]
    n_windows = min(cfg["eval_windows"], eval_tokens.numel() // T)
    starts = torch.arange(n_windows) * T  # non-overlapping held-out windows
    ids, perm, mapping, target_ids, predictor, step = plm_windows(
        eval_tokens, starts, seq_len=T, K=cfg["K"], generator=torch.Generator().manual_seed(EVAL_SEED)
    )
    first, last = step == 0, step == step.max(dim=1, keepdim=True).values  # [b, k]
    row = {"seed": seed}
    with single_thread():
        for arm in ARMS:
            model = train_arm(arm, seed=seed, cfg=cfg, train_tokens=train_tokens)
            with torch.no_grad():
                logits = target_logits(model, arm, ids, perm, mapping, predictor)
                nll = torch.nn.functional.cross_entropy(
                    logits.flatten(0, 1), target_ids.flatten(), reduction="none"
                ).view_as(target_ids)
            row[f"{arm}/loss"] = float(nll.mean())
            row[f"{arm}/loss_first"] = float(nll[first].mean())
            row[f"{arm}/loss_last"] = float(nll[last].mean())
    row["unigram/loss"] = float(-unigram_log_probs(train_tokens, ByteTokenizer().vocab_size)[target_ids].mean())
    return row


def run(size: str = "full", seeds=(0, 1, 2), *, directory=None):
    """Every seed at ``size``; writes ``results/two_stream_vs_target_blind[_quick].json`` and returns its path."""
    seeds = check_size_and_seeds(size, seeds)
    data = byte_corpus()
    per_seed = [two_stream_vs_target_blind_seed(seed, size=size, data=data) for seed in seeds]
    command = f"python -m xlnet_ref.experiments.{NAME} --size {size} --seeds {' '.join(map(str, seeds))}"
    config = dict(
        CONFIGS[size],
        corpus="pydoc_data.topics (CPython docs), UTF-8 bytes",
        eval_fraction=0.05,
        eval_seed=EVAL_SEED,
        model="XLNetLMHeadModel, attn_type='bi', dropout 0, no memory",
        threads=1,
        targets="partial prediction: the last seq_len // K positions of a uniform order",
    )
    return write_result(
        NAME, size=size, command=command, config=config, seeds=seeds, per_seed=per_seed, directory=directory
    )


def main(argv: list[str] | None = None) -> int:
    return experiment_main(
        NAME,
        run,
        "Loss at the targets: two-stream (query stream) vs a trained target-blind "
        "model on the permutation LM objective.",
        argv,
    )


if __name__ == "__main__":
    sys.exit(main())
