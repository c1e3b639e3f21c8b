"""Segment-level recurrence memory: what is cached, how much, and that the gradient stops there."""

import torch
from helpers import SMALL, random_inputs, random_lm

from xlnet_ref.memory import cache_mem


def test_cache_mem_keeps_the_last_mem_len_of_prev_then_reused_part():
    prev = torch.arange(4.0).reshape(1, 4, 1)  # positions 0..3 of the past
    h = torch.arange(10.0, 16.0).reshape(1, 6, 1)  # the current window
    assert cache_mem(h, prev, mem_len=5, reuse_len=None).flatten().tolist() == [11, 12, 13, 14, 15]
    assert cache_mem(h, prev, mem_len=5, reuse_len=2).flatten().tolist() == [1, 2, 3, 10, 11]
    assert cache_mem(h, None, mem_len=3, reuse_len=None).flatten().tolist() == [13, 14, 15]


def test_memory_is_the_state_entering_each_layer_and_is_detached():
    model = random_lm(mem_len=4)
    kw = random_inputs(batch=2, seq_len=6, vocab_size=SMALL["vocab_size"], seed=0)
    out = model(**kw, output_hidden_states=True)
    assert len(out.mems) == SMALL["n_layer"]  # n_layer memories, not n_layer + 1
    for layer, mem in enumerate(out.mems):
        assert torch.equal(mem, out.hidden_states[layer][:, -4:])  # input of layer `layer`, last mem_len
        assert not mem.requires_grad  # stop-gradient


def test_no_gradient_flows_into_the_previous_segment():
    """Segment 1 uses token ids 0..9, segment 2 ids 20..29. With the memory detached, a loss on
    segment 2's outputs gives the embedding rows of segment 1's tokens exactly zero gradient."""
    backbone = random_lm(mem_len=4).transformer.train()
    g = torch.Generator().manual_seed(0)
    seg1 = torch.randint(0, 10, (2, 6), generator=g)
    seg2 = torch.randint(20, 30, (2, 6), generator=g)
    mems = backbone(seg1).mems
    backbone(seg2, mems=mems).content.sum().backward()
    grad = backbone.word_embedding.weight.grad
    assert grad[20:30].abs().sum() > 0  # the current segment learns
    assert torch.count_nonzero(grad[0:10]) == 0  # the past does not


def test_memory_changes_the_output():
    model = random_lm(mem_len=4)
    kw1 = random_inputs(batch=2, seq_len=6, vocab_size=SMALL["vocab_size"], seed=1)
    kw2 = random_inputs(batch=2, seq_len=6, vocab_size=SMALL["vocab_size"], seed=2)
    with_mem = model(**kw2, mems=model(**kw1).mems).logits
    without = model(**kw2).logits
    assert (with_mem - without).abs().max() > 1e-3
