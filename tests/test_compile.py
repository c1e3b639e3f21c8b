"""torch.compile takes the fast path's model (xlnet_ref.fast, what training compiles) and the training step
whole: dynamo's explain finds one graph and no graph break, for the configurations that change the code
taken. (The readable path checks its inputs' values, which breaks a graph; it is not compiled.) A compiled step (the
aot_eager backend: dynamo + AOTAutograd, no C++ compiler needed) gives the eager loss and gradients."""

from __future__ import annotations

import pytest
import torch
from helpers import SMALL, random_inputs, random_lm, rel_err

from xlnet_ref.fast import to_fast
from xlnet_ref.permutation import plm_loss


def train_step(model, kw, mems, targets, weights):
    """What train.py's step runs under torch.compile: forward and the PLM loss (backward is traced by AOTAutograd)."""
    out = model(**kw, mems=mems)
    return plm_loss(out.logits, targets, weights), out.mems


N_LAYER = 1  # dynamo traces every layer the same way: one keeps the test quick


def step_inputs(batch=2, seed=0, **opts):
    kw = random_inputs(
        batch=batch, seq_len=7, vocab_size=SMALL["vocab_size"], seed=seed, perm=True, num_predict=3, **opts
    )
    g = torch.Generator().manual_seed(seed)
    mems = [torch.randn(batch, 4, SMALL["d_model"], generator=g) for _ in range(N_LAYER)]
    targets = torch.randint(0, SMALL["vocab_size"], (batch, 3), generator=g)
    weights = torch.ones(batch, 3)
    weights[0, -1] = 0  # one padding target
    return kw, mems, targets, weights


CONFIGS = [  # (id, config overrides, input options)
    ("bi_data-segments-padding", dict(bi_data=True), dict(token_types=True, left_padding=True)),
    ("uni-same_length", dict(attn_type="uni", same_length=True), {}),
    ("bi-segments", {}, dict(token_types=True)),
]


@pytest.mark.parametrize("name, overrides, opts", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_training_step_has_no_graph_break(name, overrides, opts):
    torch._dynamo.reset()
    model = to_fast(random_lm(mem_len=6, dropout=0.1, n_layer=N_LAYER, **overrides).train())
    kw, mems, targets, weights = step_inputs(batch=4 if overrides.get("bi_data") else 2, **opts)
    explained = torch._dynamo.explain(train_step)(model, kw, mems, targets, weights)
    reasons = [r.reason for r in explained.break_reasons]
    assert explained.graph_break_count == 0, f"graph breaks: {reasons}"
    assert explained.graph_count == 1


def test_explain_finds_a_graph_break_when_there_is_one():
    """The check can fail: reading a value into Python (.item()) and printing it breaks the graph."""
    torch._dynamo.reset()

    def step_with_a_break(x):
        loss = (x * x).sum()
        print(f"loss {loss.item():.3f}")  # a Python side effect on a tensor's value
        return loss * 2

    explained = torch._dynamo.explain(step_with_a_break)(torch.randn(3))
    assert explained.graph_break_count >= 1


def test_compiled_step_gives_the_eager_loss_and_gradients():
    torch._dynamo.reset()
    eager = to_fast(random_lm(mem_len=6, bi_data=True, n_layer=N_LAYER).train())  # dropout 0
    # the same seed: the same weights
    compiled_model = to_fast(random_lm(mem_len=6, bi_data=True, n_layer=N_LAYER).train())
    kw, mems, targets, weights = step_inputs(batch=4, token_types=True)
    loss_eager, _ = train_step(eager, kw, mems, targets, weights)
    loss_eager.backward()
    step = torch.compile(train_step, backend="aot_eager", fullgraph=True)  # fullgraph: a break would raise
    loss_compiled, _ = step(compiled_model, kw, mems, targets, weights)
    loss_compiled.backward()
    assert abs(float(loss_compiled.detach()) - float(loss_eager.detach())) <= 1e-5 * abs(float(loss_eager.detach()))
    grads = dict(compiled_model.named_parameters())
    for name, p in eager.named_parameters():
        assert rel_err(grads[name].grad, p.grad) <= 5e-5, f"gradient of {name}"
