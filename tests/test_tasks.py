"""The copy-from-the-previous-segment task (xlnet_ref.training.tasks): labels, best loss, memory handling, learning."""

import math

import pytest
import torch

from xlnet_ref import XLNetConfig, XLNetLMHeadModel
from xlnet_ref.training.tasks import (
    IGNORE,
    copy_task_batch,
    copy_task_one_layer_best_accuracy,
    copy_task_one_layer_best_loss,
    run_segments,
    train_copy_task,
)


def small_model(mem_len=4, seed=0):
    torch.manual_seed(seed)
    config = XLNetConfig(vocab_size=6, d_model=16, n_layer=2, n_head=2, d_inner=32, dropout=0.0, mem_len=mem_len)
    return XLNetLMHeadModel(config).eval()


def test_labels_are_the_previous_segment():
    tokens, labels = copy_task_batch(
        batch_size=3, n_segments=4, seg_len=5, vocab_size=7, generator=torch.Generator().manual_seed(0)
    )
    assert tokens.shape == labels.shape == (3, 4, 5)
    assert (labels[:, 0] == IGNORE).all()
    assert torch.equal(labels[:, 1:], tokens[:, :-1])
    assert tokens.min() >= 0 and tokens.max() < 7


def test_batch_is_reproducible_and_checks_arguments():
    a = copy_task_batch(batch_size=2, n_segments=2, seg_len=3, vocab_size=5, generator=torch.Generator().manual_seed(1))
    b = copy_task_batch(batch_size=2, n_segments=2, seg_len=3, vocab_size=5, generator=torch.Generator().manual_seed(1))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    with pytest.raises(ValueError, match="n_segments"):
        copy_task_batch(batch_size=2, n_segments=1, seg_len=3, vocab_size=5)
    with pytest.raises(ValueError, match="seg_len"):
        copy_task_batch(batch_size=2, n_segments=2, seg_len=0, vocab_size=5)


def test_one_layer_bound_is_linear_in_the_memory_length():
    # by hand: a fraction m/L of the positions is answerable (loss 0, accuracy 1), the rest costs ln V (accuracy 1/V)
    assert copy_task_one_layer_best_loss(mem_len=0, seg_len=8, vocab_size=10) == pytest.approx(math.log(10))
    assert copy_task_one_layer_best_loss(mem_len=4, seg_len=8, vocab_size=10) == pytest.approx(math.log(10) / 2)
    assert copy_task_one_layer_best_loss(mem_len=8, seg_len=8, vocab_size=10) == 0.0
    assert copy_task_one_layer_best_loss(mem_len=20, seg_len=8, vocab_size=10) == 0.0
    assert copy_task_one_layer_best_accuracy(mem_len=1, seg_len=6, vocab_size=4) == pytest.approx(1 / 6 + 5 / 24)
    assert copy_task_one_layer_best_accuracy(mem_len=0, seg_len=6, vocab_size=4) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="mem_len"):
        copy_task_one_layer_best_loss(mem_len=-1, seg_len=8, vocab_size=10)
    with pytest.raises(ValueError, match="vocab_size"):
        copy_task_one_layer_best_accuracy(mem_len=1, seg_len=8, vocab_size=0)


@pytest.mark.parametrize("n_layer", [1, 2])
def test_what_the_memory_can_carry_depends_on_the_depth(n_layer):
    """The one-layer bound's premise: with memory m, segment tau+1 depends on the last m tokens of segment tau
    only. True for one layer; with two, layer 1's memory holds states that attended to all of segment tau."""
    torch.manual_seed(0)
    config = XLNetConfig(vocab_size=6, d_model=16, n_layer=n_layer, n_head=2, d_inner=32, dropout=0.0, mem_len=5)
    model = XLNetLMHeadModel(config).eval()
    tokens, _ = copy_task_batch(
        batch_size=1, n_segments=2, seg_len=5, vocab_size=6, generator=torch.Generator().manual_seed(0)
    )
    store = []
    hook = model.transformer.word_embedding.register_forward_hook(lambda mod, inp, out: store.append(out))
    first = model(tokens[:, 0], output_hidden_states=True)
    # mem_len 1: the last position of each layer's input. out.mems is detached (SG), so the memory is rebuilt
    # from the hidden states with the graph kept, to measure what it carries
    mems = [h[:, -1:] for h in first.hidden_states[:n_layer]]
    logits = model(tokens[:, 1], mems=mems).logits
    hook.remove()
    reach = torch.autograd.grad(logits.sum(), store[0])[0][0].norm(dim=-1)  # [i] over segment tau
    if n_layer == 1:
        assert (reach[:-1] == 0).all() and reach[-1] > 0  # only the one token in memory
    else:
        assert (reach > 0).all()  # every token of segment tau reaches segment tau+1 through one memory slot


def test_without_memory_each_segment_is_processed_alone():
    model = small_model()
    tokens, labels = copy_task_batch(
        batch_size=2, n_segments=3, seg_len=4, vocab_size=6, generator=torch.Generator().manual_seed(2)
    )
    with torch.no_grad():
        run = run_segments(model, tokens, labels, use_memory=False)
        alone = model(tokens[:, 2]).logits
        with_mem = run_segments(model, tokens, labels, use_memory=True)
    assert torch.equal(run.outputs[2].logits, alone)
    assert not torch.allclose(with_mem.outputs[2].logits, alone)
    assert len(run.outputs) == 3 and run.per_position_accuracy.shape == (4,)


def test_mem_len_keeps_the_last_positions_of_each_layer():
    model = small_model(mem_len=4)
    tokens, labels = copy_task_batch(
        batch_size=2, n_segments=2, seg_len=4, vocab_size=6, generator=torch.Generator().manual_seed(3)
    )
    with torch.no_grad():
        run = run_segments(model, tokens, labels, mem_len=2)
        mems = [m[:, -2:] for m in model(tokens[:, 0]).mems]
        expected = model(tokens[:, 1], mems=mems).logits
        none = run_segments(model, tokens, labels, mem_len=0)
    assert torch.equal(run.outputs[1].logits, expected)
    assert torch.equal(none.outputs[1].logits, model(tokens[:, 1]).logits)
    with pytest.raises(ValueError, match="mem_len"):
        run_segments(model, tokens, labels, mem_len=-1)


def test_memory_is_detached_so_the_loss_reaches_only_the_last_segment():
    model = small_model().train()
    tokens, labels = copy_task_batch(
        batch_size=2, n_segments=2, seg_len=4, vocab_size=6, generator=torch.Generator().manual_seed(4)
    )
    run = run_segments(model, tokens, labels)
    assert not any(m.requires_grad for m in run.outputs[0].mems)
    run.loss.backward()  # must not fail, and must train the weights
    assert model.transformer.word_embedding.weight.grad.abs().sum() > 0


def test_a_model_with_memory_learns_to_copy():
    model = small_model(mem_len=4)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add hand-over cost (10x slower on a busy 2-core machine)
    try:
        losses = train_copy_task(
            model,
            steps=120,
            batch_size=16,
            n_segments=3,
            seg_len=4,
            learning_rate=1e-2,
            generator=torch.Generator().manual_seed(0),
        )
    finally:
        torch.set_num_threads(threads)
    assert not model.training
    tokens, labels = copy_task_batch(
        batch_size=64, n_segments=3, seg_len=4, vocab_size=6, generator=torch.Generator().manual_seed(9)
    )
    with torch.no_grad():
        with_memory = run_segments(model, tokens, labels).accuracy
        without = run_segments(model, tokens, labels, use_memory=False).accuracy
    assert losses[-1] < 0.5 * losses[0]
    assert with_memory > 0.9
    assert without < 0.35
