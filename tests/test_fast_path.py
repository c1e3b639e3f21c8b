"""The fast path (xlnet_ref.fast) gives the readable path's numbers: outputs, memories, loss and
gradients to float32 round-off, for every configuration switch that changes the attention, and it still
matches transformers. The two models share their weights exactly (a deep copy, switched to the fast
classes). Long calls are attended in blocks of query rows (fast.attention.QUERY_BLOCK); the same tests
run with blocks of 2 rows. In training, softmax, dropout and the sum over values are one autograd
Function (fast.attention.ProbsDropoutValues) that keeps 5 bytes per score: checked with gradcheck and by
counting."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import SMALL, random_inputs, random_lm, rel_err
from test_parity import CASES, hf_forward

from xlnet_ref import XLNetLMHeadModel
from xlnet_ref import fast as fast_path
from xlnet_ref.fast.attention import QUERY_BLOCK, ProbsDropoutValues
from xlnet_ref.interop import mems_from_hf, to_hf
from xlnet_ref.permutation import plm_loss


def fast_twin(model):
    """The same weights, run on the fast path."""
    twin = fast_path.to_fast(copy.deepcopy(model))
    assert type(twin) is fast_path.XLNetLMHeadModel and type(twin.transformer) is fast_path.XLNetModel
    return twin


def in_query_blocks(model, rows):
    """The model's attention on the fast path taken ``rows`` query rows at a time (None: all at once)."""
    model.transformer.query_block = rows
    return model


BLOCKS = pytest.mark.parametrize("query_block", [QUERY_BLOCK, 2], ids=["one-block", "blocks-of-2"])


def with_padding_target(kw: dict) -> dict:
    """The last target of row 0 becomes a padding target (an all-zero row of target_mapping)."""
    if "target_mapping" in kw:
        kw = dict(kw, target_mapping=kw["target_mapping"].clone())
        kw["target_mapping"][0, -1] = 0
    return kw


def chained_calls(model, overrides, opts, batch, *, seed=0, calls=3, dtype=torch.float32):
    """Three calls, each one's memory feeding the next (mlen 0, then > 0, then full)."""
    outs, mems = [], None
    for call in range(calls):
        kw = with_padding_target(
            random_inputs(batch=batch, seq_len=7, vocab_size=SMALL["vocab_size"], seed=100 * seed + call, **opts)
        )
        kw = {k: v.to(dtype) if v.is_floating_point() else v for k, v in kw.items()}
        out = model(**kw, mems=mems, output_hidden_states=True)
        outs.append(out)
        mems = out.mems
    return outs


@BLOCKS
@pytest.mark.parametrize("case_id, overrides, opts, batch", CASES, ids=[c[0] for c in CASES])
def test_fast_path_outputs_equal_the_readable_path(case_id, overrides, opts, batch, query_block):
    readable = random_lm(**{"mem_len": 6, **overrides})
    fast = in_query_blocks(fast_twin(readable), query_block)  # seq_len 7, 2 to 4 targets: blocks 2, 2, 2, 1
    for call, (a, b) in enumerate(
        zip(chained_calls(fast, overrides, opts, batch), chained_calls(readable, overrides, opts, batch))
    ):
        assert rel_err(a.logits, b.logits) <= 1e-5, f"call {call}: logits"
        assert rel_err(a.content, b.content) <= 1e-5, f"call {call}: content stream"
        if b.query is not None:
            assert rel_err(a.query, b.query) <= 1e-5, f"call {call}: query stream"
        for layer, (ma, mb) in enumerate(zip(a.mems, b.mems)):
            assert rel_err(ma, mb) <= 1e-5, f"call {call}: mems[{layer}]"
        for layer, (ha, hb) in enumerate(zip(a.hidden_states, b.hidden_states)):
            for sa, sb in zip(ha if isinstance(ha, tuple) else (ha,), hb if isinstance(hb, tuple) else (hb,)):
                assert rel_err(sa, sb) <= 1e-5, f"call {call}: hidden state {layer}"


GRADIENT_CASES = [c for c in CASES if "num_predict" in c[2]]  # the training setting: two streams, a PLM loss


@BLOCKS
@pytest.mark.parametrize("case_id, overrides, opts, batch", GRADIENT_CASES, ids=[c[0] for c in GRADIENT_CASES])
def test_fast_path_loss_and_gradients_equal_the_readable_path(case_id, overrides, opts, batch, query_block):
    readable = random_lm(**{"mem_len": 6, **overrides}).train()  # dropout is 0
    fast = in_query_blocks(fast_twin(readable), query_block).train()
    kw = with_padding_target(random_inputs(batch=batch, seq_len=7, vocab_size=SMALL["vocab_size"], seed=5, **opts))
    mems = [
        torch.randn(batch, 4, SMALL["d_model"], generator=torch.Generator().manual_seed(layer))
        for layer in range(SMALL["n_layer"])
    ]
    k = kw["target_mapping"].shape[1]
    targets = torch.randint(0, SMALL["vocab_size"], (batch, k), generator=torch.Generator().manual_seed(9))
    weights = (kw["target_mapping"].sum(-1) > 0).float()
    losses = []
    for model in (readable, fast):
        loss = plm_loss(model(**kw, mems=mems).logits, targets, weights)
        loss.backward()
        losses.append(loss)
    assert abs(float(losses[0].detach()) - float(losses[1].detach())) <= 1e-5 * abs(float(losses[0].detach()))
    grads_fast = dict(fast.named_parameters())
    checked = 0
    for name, p in readable.named_parameters():
        if p.grad is None:
            continue
        assert grads_fast[name].grad is not None, f"{name}: no gradient on the fast path"
        # sums over every (b, n, i, j) in a different order: round-off grows with them, hence 5e-5
        assert rel_err(grads_fast[name].grad, p.grad) <= 5e-5, f"gradient of {name} differs"
        checked += 1
    assert checked >= 10


def test_probs_dropout_values_has_the_gradient_of_softmax_dropout_and_values():
    """ProbsDropoutValues' hand-written backward against numerical derivatives (float64), with a mask
    that drops about a third of the probabilities."""
    g = torch.Generator().manual_seed(0)
    score = torch.randn(3, 5, 7, dtype=torch.float64, generator=g, requires_grad=True)
    keep = torch.rand(3, 5, 7, generator=g) > 0.3
    v = torch.randn(3, 7, 4, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(ProbsDropoutValues.apply, (score, keep, v))
    plain = torch.bmm(torch.softmax(score, dim=-1) * keep, v)
    assert torch.allclose(ProbsDropoutValues.apply(score, keep, v), plain, rtol=0, atol=1e-12)


def test_probs_dropout_values_under_autocast_with_a_float32_softmax():
    """As under CUDA autocast: the scores (hence P) in float32, V in bfloat16, the forward's matmul cast to
    bfloat16 by autocast, the backward run without autocast. (CPU autocast leaves softmax alone, so a
    float32 score gives the float32 P that CUDA's autocast makes.) Gradients agree with autograd's own."""
    g = torch.Generator().manual_seed(1)
    score = torch.randn(3, 5, 7, generator=g, requires_grad=True)
    v = torch.randn(3, 7, 4, generator=g).to(torch.bfloat16).requires_grad_()
    keep = torch.rand(3, 5, 7, generator=g) > 0.3
    grads = []
    for fn in (ProbsDropoutValues.apply, plain_probs_dropout_values):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = fn(score, keep, v)
        assert out.dtype == torch.bfloat16
        grads.append(torch.autograd.grad(out.float().square().sum(), (score, v)))
    for ours, plain in zip(*grads):
        assert ours.dtype == plain.dtype
        assert rel_err(ours.float(), plain.float()) <= 2e-2


def test_training_step_under_autocast_is_as_close_to_float32_as_the_readable_path():
    """A training step under bfloat16 autocast (the CUDA setting; on a CPU the matmuls go to bfloat16 the
    same way): the fast path's custom Functions (TiedHead, ProbsDropoutValues) take the gradients that
    come back in bfloat16, and every gradient is as close to the float32 one as the readable path's
    under the same autocast (bfloat16 round-off through 3 layers of N(0, 0.3) weights reaches ~10-30%)."""
    reference = random_lm(mem_len=6).train()
    readable = copy.deepcopy(reference)
    fast = in_query_blocks(fast_twin(reference), 2).train()
    kw = random_inputs(
        batch=2, seq_len=7, vocab_size=SMALL["vocab_size"], seed=7, token_types=True, perm=True, num_predict=3
    )
    targets = torch.randint(0, SMALL["vocab_size"], (2, 3), generator=torch.Generator().manual_seed(8))
    for model, bf16 in ((reference, False), (readable, True), (fast, True)):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(**kw).logits
        assert logits.dtype == (torch.bfloat16 if bf16 else torch.float32)
        plm_loss(logits.float(), targets, torch.ones(2, 3)).backward()
    readable_grads, fast_grads = dict(readable.named_parameters()), dict(fast.named_parameters())
    for name, p in reference.named_parameters():
        assert fast_grads[name].grad.dtype == torch.float32, name
        fast_err, readable_err = rel_err(fast_grads[name].grad, p.grad), rel_err(readable_grads[name].grad, p.grad)
        assert fast_err <= 2 * readable_err + 1e-2, f"{name}: {fast_err:.3f} vs the readable path's {readable_err:.3f}"


def plain_probs_dropout_values(score, keep, v):
    """What ProbsDropoutValues computes, left to autograd (which keeps more for the backward pass)."""
    return torch.bmm(torch.softmax(score, dim=-1) * keep, v)


def test_fast_path_with_dropout_has_autograds_loss_and_gradients(monkeypatch):
    """Training with dropout, the same seed: the fast path's loss and gradients with ProbsDropoutValues
    equal those with autograd's own softmax, mask and matmul (the same masks are drawn)."""
    model = in_query_blocks(fast_twin(random_lm(mem_len=6, dropout=0.3)), 2).train()
    kw = random_inputs(
        batch=2, seq_len=7, vocab_size=SMALL["vocab_size"], seed=7, token_types=True, perm=True, num_predict=3
    )
    mems = [
        torch.randn(2, 4, SMALL["d_model"], generator=torch.Generator().manual_seed(layer))
        for layer in range(SMALL["n_layer"])
    ]
    targets = torch.randint(0, SMALL["vocab_size"], (2, 3), generator=torch.Generator().manual_seed(8))

    def loss_and_grads():
        model.zero_grad()
        torch.manual_seed(11)
        loss = plm_loss(model(**kw, mems=mems).logits, targets, torch.ones(2, 3))
        loss.backward()
        return float(loss.detach()), {
            name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None
        }

    loss, ours = loss_and_grads()
    monkeypatch.setattr(ProbsDropoutValues, "apply", plain_probs_dropout_values)
    plain_loss, plain = loss_and_grads()
    assert abs(loss - plain_loss) <= 1e-6 * abs(plain_loss)
    assert ours.keys() == plain.keys() and len(ours) >= 10
    for name in ours:
        assert rel_err(ours[name], plain[name]) <= 1e-5, name


@pytest.mark.parametrize("mem_len", [0, 24])
def test_training_keeps_five_bytes_per_attention_score(monkeypatch, mem_len):
    """What a training forward (one stream, dropout, blocks of 6 query rows) keeps for the backward pass,
    seen through saved-tensor hooks: of tensors shaped like a block's scores [b n, rows, j], the
    probabilities (4 bytes) and the bool mask (1 byte) per score. Left to autograd, the dropped
    probabilities are kept as well: 9 bytes (the check can fail)."""
    b, seq, rows, n = 2, 48, 6, SMALL["n_head"]  # rows != d_head, so that K^T [b n, d, j] is not counted
    klen = mem_len + seq
    model = in_query_blocks(fast_twin(random_lm(mem_len=mem_len, dropout=0.1)), rows).train()
    kw = random_inputs(batch=b, seq_len=seq, vocab_size=SMALL["vocab_size"], seed=9)
    mems = [torch.randn(b, mem_len, SMALL["d_model"]) for _ in range(SMALL["n_layer"])] if mem_len else None
    scores = SMALL["n_layer"] * b * n * seq * klen  # every layer's [b, n, i, j]

    def kept_bytes_per_score():
        kept = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t) or t, lambda t: t):
            model(**kw, mems=mems)
        return sum(t.numel() * t.element_size() for t in kept if t.shape[-2:] == (rows, klen)) / scores

    assert kept_bytes_per_score() == 5
    monkeypatch.setattr(ProbsDropoutValues, "apply", plain_probs_dropout_values)
    assert kept_bytes_per_score() == 9


def test_fast_path_matches_transformers():
    """The fast path against transformers directly (test_parity.py checks the readable one)."""
    for case_id, overrides, opts, batch in CASES:
        fast = fast_twin(random_lm(**{"mem_len": 6, **overrides}))
        hf = to_hf(fast).eval()
        mems_ours = mems_hf = None
        for call in range(3):
            kw = random_inputs(batch=batch, seq_len=7, vocab_size=SMALL["vocab_size"], seed=call, **opts)
            ours = fast(**kw, mems=mems_ours)
            theirs = hf_forward(hf, kw, mems_hf)
            assert rel_err(ours.logits, theirs.logits) <= 1e-5, f"{case_id}, call {call}: logits"
            for layer, (a, b) in enumerate(zip(ours.mems, mems_from_hf(theirs.mems))):
                assert rel_err(a, b) <= 1e-5, f"{case_id}, call {call}: mems[{layer}]"
            mems_ours, mems_hf = ours.mems, theirs.mems


def test_fast_path_is_sensitive_to_the_segment_and_position_terms():
    """The comparison can fail: change s_- or W_{k,R} on the fast twin only and it must show."""
    readable = random_lm(mem_len=6)
    kw = random_inputs(
        batch=2, seq_len=7, vocab_size=SMALL["vocab_size"], seed=1, token_types=True, perm=True, num_predict=3
    )
    for name in ("seg_embed", "r"):
        fast = fast_twin(readable)
        with torch.no_grad():
            getattr(fast.transformer.layer[1].rel_attn, name)[1, 2, 3] += 1e-2
        assert rel_err(fast(**kw).logits, readable(**kw).logits) > 1e-5, name


def test_fully_masked_rows_stay_finite_in_float16():
    """'uni' without memory: the query stream at position 0 sees nothing (its row is fully masked).
    Both paths set masked scores to -65500 in float16 (subtracting would overflow to -inf and give NaN)."""
    readable = random_lm(attn_type="uni", mem_len=0, std=0.5, dtype=torch.float16)
    fast = fast_twin(readable)
    kw = random_inputs(
        batch=2, seq_len=6, vocab_size=SMALL["vocab_size"], seed=2, token_types=True, perm=True, num_predict=6
    )
    kw["target_mapping"] = torch.eye(6).expand(2, 6, 6).to(torch.float16)  # position 0 is a target
    kw["perm_mask"] = kw["perm_mask"].to(torch.float16)
    a, b = fast(**kw).logits, readable(**kw).logits
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    assert rel_err(a.float(), b.float()) <= 2e-2  # float16 round-off, through 3 layers


def test_fast_path_falls_back_when_attentions_are_asked_for():
    fast = fast_twin(random_lm())
    kw = random_inputs(batch=2, seq_len=5, vocab_size=SMALL["vocab_size"], seed=3, perm=True, num_predict=2)
    out = fast(**kw, output_attentions=True)
    assert len(out.attentions) == SMALL["n_layer"] and out.attentions[0][0].shape == (2, SMALL["n_head"], 5, 5)


def test_the_fast_classes_have_the_readable_parameters_and_switch_both_ways():
    """The switch is the class: the same parameter names, shapes and tensors, so that a state dict or a
    checkpoint moves between the two; to_fast / to_readable switch a model in place."""
    from xlnet_ref import XLNetConfig

    torch.manual_seed(0)
    ours = fast_path.XLNetLMHeadModel(XLNetConfig(**SMALL))
    torch.manual_seed(0)
    plain = XLNetLMHeadModel(XLNetConfig(**SMALL))
    assert list(ours.state_dict()) == list(plain.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), plain.state_dict().values()))
    assert ours.lm_loss.weight is ours.transformer.word_embedding.weight  # still tied
    tensors = [p.data_ptr() for p in plain.parameters()]
    assert fast_path.to_readable(fast_path.to_fast(plain)) is plain and type(plain) is XLNetLMHeadModel
    assert [p.data_ptr() for p in plain.parameters()] == tensors
    with pytest.raises(TypeError, match="model: expected an xlnet_ref XLNetModel or XLNetLMHeadModel"):
        fast_path.to_fast(torch.nn.Linear(2, 2))


def test_fast_path_with_dropout_equals_readable_in_eval_mode_and_differs_in_train_mode():
    readable = random_lm(mem_len=6, dropout=0.3)
    fast = fast_twin(readable)
    kw = random_inputs(
        batch=2, seq_len=7, vocab_size=SMALL["vocab_size"], seed=4, token_types=True, perm=True, num_predict=3
    )
    assert rel_err(fast(**kw).logits, readable(**kw).logits) <= 1e-5  # eval mode: no dropout
    fast.train()
    assert rel_err(fast(**kw).logits, readable(**kw).logits) > 1e-3  # the dropout is really applied


def test_skipping_the_last_content_stream_keeps_logits_mems_and_gradients():
    """content_output=False: the last layer's content stream (unused by the logits and the memories) is
    not computed; logits, memories, loss and gradients are those of the full forward."""
    full = fast_twin(random_lm(mem_len=6, bi_data=True)).train()
    skipping = copy.deepcopy(full)
    kw = with_padding_target(
        random_inputs(
            batch=4, seq_len=7, vocab_size=SMALL["vocab_size"], seed=6, token_types=True, perm=True, num_predict=3
        )
    )
    weights = (kw["target_mapping"].sum(-1) > 0).float()
    targets = torch.randint(0, SMALL["vocab_size"], (4, 3), generator=torch.Generator().manual_seed(1))
    a, b = full(**kw), skipping(**kw, content_output=False)
    assert b.content is None and a.content is not None
    assert torch.equal(a.logits, b.logits)
    assert all(torch.equal(x, y) for x, y in zip(a.mems, b.mems))
    plm_loss(a.logits, targets, weights).backward()
    plm_loss(b.logits, targets, weights).backward()
    grads = dict(skipping.named_parameters())
    for name, p in full.named_parameters():
        assert rel_err(grads[name].grad, p.grad) <= 1e-6, name


def test_residual_dropout_and_the_feed_forwards_inner_dropout_have_nn_dropouts_distribution():
    from xlnet_ref.fast.dropout import keep_mask, residual_dropout
    from xlnet_ref.fast.feed_forward import feed_forward

    torch.manual_seed(0)
    y = residual_dropout(torch.full((200_000,), 2.0), torch.ones(200_000), 0.3, True)  # 2 + dropout(1)
    assert abs(float((y == 2.0).float().mean()) - 0.3) < 0.005
    assert torch.allclose(y[y != 2.0], torch.full_like(y[y != 2.0], 2 + 1 / 0.7), rtol=1e-4)
    # the feed-forward with dropout averages to the one without (each mask keeps 1 - p, scaled back)
    ff = random_lm(dropout=0.3).transformer.layer[0].ff
    x = torch.randn(1, 3, SMALL["d_model"])
    ff.eval()
    with torch.no_grad():
        plain = ff.layer_2(ff.activation(ff.layer_1(x)))
        ff.train()
        # isolate the inner dropout: mean of layer_2(dropout(inner)) over many draws, without the outer one
        inner = ff.activation(ff.layer_1(x))
        draws = torch.stack(
            [
                torch.addmm(
                    ff.layer_2.bias,
                    (inner * keep_mask(inner, 0.3, True)).flatten(0, -2),
                    ff.layer_2.weight.t(),
                    alpha=1 / 0.7,
                )
                for _ in range(3000)
            ]
        ).mean(0)
        assert rel_err(draws.view_as(plain), plain) < 0.05
        assert feed_forward(ff, x).shape == x.shape


def test_tied_embedding_gradient_is_dense_and_equal_without_the_logits():
    """The fast path's lookup gradient is sparse (XLNetModel.embed_words) and is added into the LM head's.
    A backward pass that never reaches the logits leaves only the sparse one: the model hands back a dense
    gradient equal to the readable path's, and hooks on word_embedding still see the lookup."""
    readable = random_lm(mem_len=6).train()  # dropout 0
    fast = fast_twin(readable)
    kw = random_inputs(
        batch=2, seq_len=7, vocab_size=SMALL["vocab_size"], seed=8, token_types=True, perm=True, num_predict=3
    )
    seen = []
    fast.transformer.word_embedding.register_forward_hook(lambda mod, inp, out: seen.append(out.shape))
    for model in (readable, fast):
        (model(**kw).content ** 2).sum().backward()
    assert seen == [(2, 7, SMALL["d_model"])]
    grad_fast = fast.transformer.word_embedding.weight.grad
    assert grad_fast.layout == torch.strided and not grad_fast.is_sparse
    assert rel_err(grad_fast, readable.transformer.word_embedding.weight.grad) <= 1e-5
    assert not fast.transformer.word_embedding.sparse  # at rest a dense embedding (DDP inspects the flag)
    # the lookup the fast path makes really has a sparse gradient (this test would pass without it otherwise)
    (lookup_grad,) = torch.autograd.grad(
        fast.transformer.embed_words(kw["input_ids"]).sum(), fast.transformer.word_embedding.weight
    )
    assert lookup_grad.is_sparse


def test_tied_gradients_are_added_in_place(monkeypatch):
    """The tied [V, m] matrix gets the LM head's dense gradient and the word lookup's sparse one. On the
    fast path (fast.model.TiedHead, fast.model.LateAlias) autograd adds them in place: no [V, m] copy or out-of-place
    add in the backward pass, and the gradient equals the readable path's. With nn.Linear's head and no
    alias the copy shows (the check can fail)."""
    from torch.profiler import profile

    from xlnet_ref.fast import model as model_module

    readable = random_lm(mem_len=6).train()
    kw = random_inputs(batch=2, seq_len=7, vocab_size=SMALL["vocab_size"], seed=8, perm=True, num_predict=3)
    readable(**kw).logits.square().sum().backward()
    matrix = [SMALL["vocab_size"], SMALL["d_model"]]

    def out_of_place_matrix_ops():
        fast = fast_twin(readable)
        fast.zero_grad(set_to_none=True)
        loss = fast(**kw).logits.square().sum()
        with profile(record_shapes=True) as prof:
            loss.backward()
        grad = fast.transformer.word_embedding.weight.grad
        assert not grad.is_sparse and rel_err(grad, readable.transformer.word_embedding.weight.grad) <= 1e-5
        return [
            e.key
            for e in prof.key_averages(group_by_input_shape=True)
            if e.key in ("aten::copy_", "aten::add")
            and e.input_shapes[:2] == [matrix, matrix]
            and len(e.input_shapes) == 3
        ]  # add(a, b, alpha) or copy_(dst, src, non_blocking); not add.out

    assert out_of_place_matrix_ops() == []
    monkeypatch.setattr(model_module.TiedHead, "apply", torch.nn.functional.linear)
    monkeypatch.setattr(model_module.LateAlias, "apply", lambda weight: weight)
    assert out_of_place_matrix_ops() != []
