"""The permutation LM objective (XLNet Eq. 3-5) against its definition.

Expected values are derived here from the definitions — "the query stream at z_t sees x_{z<t}, the
content stream x_{z<=t}; the last |z|/K of the order are the targets" — never from the code under test.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from xlnet_ref import XLNetConfig, XLNetLMHeadModel
from xlnet_ref.naive import permutation_masks_naive
from xlnet_ref.permutation import (
    order_to_rank,
    partial_prediction_targets,
    permutation_masks,
    plm_loss,
    sample_factorization_order,
)

V = 23  # vocabulary of the tiny models


def tiny_lm(*, seed: int, attn_type: str = "bi", n_layer: int = 3, std: float = 0.3) -> XLNetLMHeadModel:
    """A small LM with weights N(0, std): far from the 0.02 init, so that every path moves the output."""
    torch.manual_seed(seed)
    cfg = XLNetConfig(
        vocab_size=V, d_model=32, n_layer=n_layer, n_head=4, d_inner=48, dropout=0.0, mem_len=0, attn_type=attn_type
    )
    lm = XLNetLMHeadModel(cfg)
    lm.transformer.reset_parameters(std=std)
    return lm.eval()


# ----------------------------------------------------------------------------- the definition, by hand


def expected_visibility(order: list[int], c: int) -> tuple[dict[int, set], dict[int, set]]:
    """Eq. 5 with cutting point c: what each position may see, straight from the paper.

    Targets z_t (t > c): query stream sees {z_s : s < t}, content stream {z_s : s <= t}.
    Context z_t (t <= c): both streams see the whole context {z_s : s <= c} (each other, no target).
    """
    query, content = {}, {}
    for t, z_t in enumerate(order):
        if t < c:
            query[z_t] = content[z_t] = set(order[:c])
        else:
            query[z_t] = set(order[:t])
            content[z_t] = set(order[: t + 1])
    return query, content


def as_sets(mask: torch.Tensor) -> dict[int, set]:
    """mask [i, j] (1 = may NOT see) -> {i: set of visible j}."""
    return {i: set(torch.nonzero(mask[i] == 0).flatten().tolist()) for i in range(mask.shape[0])}


# ----------------------------------------------------------------------------- orders


def test_uniform_order_covers_all_permutations_evenly():
    g = torch.Generator().manual_seed(0)
    T, n = 3, 6000
    counts = Counter(tuple(sample_factorization_order(T, generator=g).tolist()) for _ in range(n))
    assert set(counts) == set(itertools.permutations(range(T)))
    expected = n / math.factorial(T)
    tol = 5 * math.sqrt(expected)  # five binomial standard deviations
    assert all(abs(c - expected) < tol for c in counts.values()), counts


def test_block_local_order_is_one_shuffle_repeated_per_block():
    g = torch.Generator().manual_seed(1)
    T, P, n = 12, 3, 3000
    taus = Counter()
    for _ in range(n):
        z = sample_factorization_order(T, perm_size=P, generator=g).tolist()
        assert sorted(z) == list(range(T))
        blocks = [z[b * P : (b + 1) * P] for b in range(T // P)]
        # block b holds exactly positions bP..bP+P-1, in the same relative order as block 0
        for b, block in enumerate(blocks):
            assert sorted(block) == list(range(b * P, (b + 1) * P))
            assert [p - b * P for p in block] == blocks[0]
        taus[tuple(blocks[0])] += 1
    expected = n / math.factorial(P)
    assert set(taus) == set(itertools.permutations(range(P)))
    assert all(abs(c - expected) < 5 * math.sqrt(expected) for c in taus.values()), taus


def test_order_to_rank_inverts_the_order():
    z = torch.tensor([2, 0, 3, 1])
    rank = order_to_rank(z)
    assert all(z[rank[i]] == i for i in range(4))


@pytest.mark.parametrize("bad", [0, -2, 2.0, True])
def test_order_errors_name_the_argument(bad):
    with pytest.raises(ValueError, match="seq_len"):
        sample_factorization_order(bad)
    with pytest.raises(ValueError, match="perm_size"):
        sample_factorization_order(6, perm_size=4)
    with pytest.raises(ValueError, match="order"):
        permutation_masks(torch.tensor([0, 0, 1]), torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="is_target"):
        permutation_masks(torch.tensor([0, 2, 1]), torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="num_predict"):
        permutation_masks(torch.tensor([0, 2, 1]), torch.ones(3, dtype=torch.bool), num_predict=2)
    with pytest.raises(ValueError, match="K"):
        partial_prediction_targets(torch.tensor([0, 1]), K=0.5)


# ----------------------------------------------------------------------------- exhaustive, T <= 4


@pytest.mark.parametrize("T", [1, 2, 3, 4])
def test_every_order_and_cut_gives_the_masks_of_the_definition(T):
    for order in itertools.permutations(range(T)):
        z = torch.tensor(order)
        for c in range(T + 1):  # c = T: nothing predicted; c = 0: every token predicted
            is_target = torch.zeros(T, dtype=torch.bool)
            is_target[list(order[c:])] = True
            masks = permutation_masks(z, is_target)
            query, content = expected_visibility(list(order), c)
            assert as_sets(masks.perm_mask) == query, (order, c)
            assert as_sets(masks.content_mask) == content, (order, c)
            # the content stream is the query stream plus itself (how the model derives it)
            assert torch.equal(masks.content_mask, masks.perm_mask * (1 - torch.eye(T)))
            # one row per target, increasing positions, one-hot
            targets = sorted(order[c:])
            assert masks.target_mapping.shape == (len(targets), T)
            for k, p in enumerate(targets):
                assert masks.target_mapping[k].tolist() == [float(j == p) for j in range(T)]
            assert masks.target_weights.tolist() == [1.0] * len(targets)
            # the slow twin agrees
            slow_q, slow_h = permutation_masks_naive(z, is_target)
            assert torch.equal(slow_q, masks.perm_mask) and torch.equal(slow_h, masks.content_mask)


def test_partial_prediction_picks_the_end_of_the_order():
    g = torch.Generator().manual_seed(2)
    for T, K in [(4, 2), (12, 6), (13, 7), (30, 6.5), (5, 1), (3, 6)]:
        z = sample_factorization_order(T, generator=g)
        is_target = partial_prediction_targets(z, K=K)
        n = int(is_target.sum())
        assert n == max(1, math.floor(T / K))
        assert set(z[T - n :].tolist()) == set(torch.nonzero(is_target).flatten().tolist())


def test_fraction_of_predicted_tokens_is_one_over_K():
    g = torch.Generator().manual_seed(3)
    T, n = 42, 2000
    for K in (6, 7):
        hits = torch.zeros(T)
        for _ in range(n):
            hits += partial_prediction_targets(sample_factorization_order(T, generator=g), K=K).float()
        assert abs(hits.sum().item() / (n * T) - 1 / K) < 0.5 / T  # floor(T/K)/T, within rounding of 1/K
        # z is uniform, so every position is a target equally often
        p = 1 / K
        assert (hits / n - p).abs().max() < 5 * math.sqrt(p * (1 - p) / n)


def original_local_perm_mask(rank: np.ndarray, is_masked: np.ndarray, is_functional: np.ndarray) -> np.ndarray:
    """The original ``_local_perm``'s perm_mask, restated in numpy from its description (test oracle):
    non-masked, non-functional tokens get rank -1; targets cannot see themselves; i may not see j
    iff rank'(i) <= rank(j) and j is masked or functional, with rank'(i) = rank(i) (+1 if not a target)."""
    non_mask = ~is_masked & ~is_functional
    rev = np.where(non_mask, -1, rank)
    target = is_masked & ~is_functional
    self_rev = np.where(target, rev, rev + 1)
    return ((self_rev[:, None] <= rev[None, :]) & ~non_mask[None, :]).astype(np.float32)


def test_functional_tokens_follow_the_original_local_perm():
    g = torch.Generator().manual_seed(4)
    for _ in range(200):
        T = int(torch.randint(2, 10, (1,), generator=g))
        z = sample_factorization_order(T, generator=g)
        is_functional = torch.rand(T, generator=g) < 0.2
        is_target = (torch.rand(T, generator=g) < 0.4) & ~is_functional
        masks = permutation_masks(z, is_target, is_functional=is_functional)
        oracle = original_local_perm_mask(order_to_rank(z).numpy(), is_target.numpy(), is_functional.numpy())
        assert np.array_equal(masks.perm_mask.numpy(), oracle)
        slow_q, slow_h = permutation_masks_naive(z, is_target, is_functional=is_functional)
        assert torch.equal(slow_q, masks.perm_mask) and torch.equal(slow_h, masks.content_mask)


def test_padding_rows_and_positions():
    z = torch.tensor([3, 1, 0, 2, 4])
    is_target = torch.tensor([False, True, False, True, False])
    masks = permutation_masks(z, is_target, num_predict=4)
    assert masks.target_mapping.shape == (4, 5)
    assert masks.target_positions[:2].tolist() == [1, 3]
    assert masks.target_weights.tolist() == [1, 1, 0, 0]
    assert masks.target_mapping[2:].abs().sum() == 0  # padding rows are all-zero


# ----------------------------------------------------------------------------- through the whole model


def perturbation_dependence(lm, x, token_type_ids, perm_mask, target_mapping, mems=None):
    """Change each x_j in turn (one batch row per j) and report which outputs moved.

    Returns (query [k, j] bool: target row k's logits changed when x_j changed,
             content [i, j] bool: content stream at position i changed)."""
    T = x.shape[0]
    batch = x.repeat(T + 1, 1)  # row 0: x itself; row 1 + j: x with x_j replaced
    for j in range(T):
        batch[1 + j, j] = (x[j] + 1 + j) % V
    n = T + 1
    with torch.no_grad():
        out = lm(
            batch,
            token_type_ids=token_type_ids.expand(n, T),
            perm_mask=perm_mask.expand(n, T, T),
            target_mapping=target_mapping.expand(n, -1, -1),
            mems=None if mems is None else [m.expand(n, -1, -1) for m in mems],
        )
    d_logits = (out.logits[1:] - out.logits[:1]).abs().amax(-1).T  # [k, j]
    d_content = (out.content[1:] - out.content[:1]).abs().amax(-1).T  # [i, j]
    for d in (d_logits, d_content):  # either clearly moved or exactly unaffected, nothing in between
        assert ((d < 1e-5) | (d > 1e-3)).all(), d
    return d_logits > 1e-3, d_content > 1e-3


def check_information_flow(lm, T, z, c, g, mlen=0):
    order = z.tolist()
    is_target = torch.zeros(T, dtype=torch.bool)
    is_target[order[c:]] = True
    masks = permutation_masks(z, is_target)
    x = torch.randint(V, (T,), generator=g)
    token_type_ids = torch.randint(0, 2, (1, T), generator=g)
    mems = [torch.randn(1, mlen, 32, generator=g) for _ in range(lm.config.n_layer)] if mlen else None
    moved_q, moved_h = perturbation_dependence(
        lm, x, token_type_ids, masks.perm_mask[None], masks.target_mapping[None], mems
    )
    query, content = expected_visibility(order, c)
    for k, p in enumerate(sorted(order[c:])):
        t = order.index(p)
        # the prediction of x_{z_t} moves exactly when a token before z_t in the order changes
        assert set(torch.nonzero(moved_q[k]).flatten().tolist()) == set(order[:t]) == query[p], (order, c, p)
    for i in range(T):
        assert set(torch.nonzero(moved_h[i]).flatten().tolist()) == content[i], (order, c, i)


@pytest.mark.parametrize("perm_size", [None, 2, 3])
def test_information_flow_partial_prediction(perm_size):
    """Partial prediction (Eq. 5): the context z_{<=c} is never empty, so every target has something to see."""
    lm = tiny_lm(seed=10)
    g = torch.Generator().manual_seed(11 + (perm_size or 0))
    for _ in range(5):
        T = int(torch.randint(2, 4, (1,), generator=g)) * (perm_size or 2)  # 4..9 tokens, divisible by P
        z = sample_factorization_order(T, perm_size=perm_size, generator=g)
        c = int(torch.randint(1, T, (1,), generator=g))
        check_information_flow(lm, T, z, c, g)


@pytest.mark.parametrize("perm_size", [None, 2])
def test_information_flow_every_token_a_target_with_memory(perm_size):
    """Plain Eq. 3 (c = 0). Memory gives z_1 something to attend to: its prediction depends on no x_j.

    (Without memory z_1's attention row would be fully masked, and subtracting 1e30 from every score
    makes it uniform over all keys — as in transformers and the original; see the module docstring.)"""
    lm = tiny_lm(seed=12)
    g = torch.Generator().manual_seed(13 + (perm_size or 0))
    for _ in range(4):
        T = int(torch.randint(2, 4, (1,), generator=g)) * 2
        z = sample_factorization_order(T, perm_size=perm_size, generator=g)
        check_information_flow(lm, T, z, 0, g, mlen=2)


# ----------------------------------------------------------------------------- left to right = AR LM


def test_identity_order_is_the_ordinary_autoregressive_lm():
    r"""z = (0..T-1), every token a target: perm_mask is "cannot see itself or the future", and the
    one-pass query-stream loss equals -1/T \sum_t log p(x_t | x_{<t}) computed the ordinary way: T
    separate left-to-right ('uni') passes over the prefix x_{<t}, each predicting the next token."""
    T, mlen = 7, 3
    lm = tiny_lm(seed=20)
    causal_lm = tiny_lm(seed=20, attn_type="uni")  # the same weights, attn_type 'uni'
    causal_lm.load_state_dict(lm.state_dict())
    g = torch.Generator().manual_seed(21)
    x = torch.randint(V, (1, T), generator=g)
    mems = [torch.randn(1, mlen, 32, generator=g) for _ in range(lm.config.n_layer)]  # the text before x

    masks = permutation_masks(torch.arange(T), torch.ones(T, dtype=torch.bool))
    i, j = torch.meshgrid(torch.arange(T), torch.arange(T), indexing="ij")
    assert torch.equal(masks.perm_mask, (j >= i).float())  # x_t predicted from x_{<t} only
    assert torch.equal(masks.target_mapping, torch.eye(T))
    with torch.no_grad():
        out = lm(x, perm_mask=masks.perm_mask[None], target_mapping=masks.target_mapping[None], mems=mems)
    one_pass = plm_loss(out.logits, x, torch.ones(1, T))

    nll = []
    for t in range(T):  # ordinary AR: read x_{<t}, predict the next token; the slot at t holds junk
        prefix = torch.cat([x[:, :t], torch.tensor([[(x[0, t].item() + 5) % V]])], dim=1)  # [1, t+1]
        hide_next = torch.zeros(1, t + 1, t + 1)
        hide_next[:, :, t] = 1  # nobody sees the slot being predicted
        with torch.no_grad():
            step = causal_lm(
                prefix, perm_mask=hide_next, target_mapping=F.one_hot(torch.tensor([[t]]), t + 1).float(), mems=mems
            )
        nll.append(-torch.log_softmax(step.logits[0, 0], -1)[x[0, t]])
        # and the t-th row of the permuted pass is that very distribution
        torch.testing.assert_close(out.logits[0, t], step.logits[0, 0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(one_pass, torch.stack(nll).mean(), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- loss


def test_plm_loss_is_a_masked_mean_of_per_token_cross_entropies():
    g = torch.Generator().manual_seed(30)
    b, k = 3, 5
    logits = torch.randn(b, k, V, generator=g)
    target_ids = torch.randint(V, (b, k), generator=g)
    weights = (torch.rand(b, k, generator=g) < 0.6).float()
    weights[0, 0] = 1
    by_hand = [
        -torch.log_softmax(logits[r, q], -1)[target_ids[r, q]] for r in range(b) for q in range(k) if weights[r, q]
    ]
    torch.testing.assert_close(plm_loss(logits, target_ids, weights), torch.stack(by_hand).mean())


def test_plm_loss_padding_really_masks():
    g = torch.Generator().manual_seed(31)
    logits = torch.randn(2, 4, V, generator=g)
    target_ids = torch.randint(V, (2, 4), generator=g)
    weights = torch.tensor([[1.0, 1, 0, 0], [1, 0, 0, 0]])
    base = plm_loss(logits, target_ids, weights)
    wild_logits = logits.clone()
    wild_logits[weights == 0] = torch.tensor(float("nan"))  # padding rows may hold anything
    wild_ids = torch.where(weights > 0, target_ids, (target_ids + 7) % V)
    torch.testing.assert_close(plm_loss(wild_logits, wild_ids, weights), base)
    # the padding is not just scaled away: adding padding rows does not dilute the mean
    assert not torch.isclose(base, plm_loss(logits, target_ids, torch.ones(2, 4)))
    assert plm_loss(logits, target_ids, torch.zeros(2, 4)) == 0
    # gradients reach only the real targets
    logits.requires_grad_(True)
    plm_loss(logits, target_ids, weights).backward()
    assert (logits.grad[weights == 0] == 0).all() and (logits.grad[weights > 0] != 0).any()


def test_plm_loss_errors_name_the_argument():
    logits = torch.zeros(2, 3, V)
    with pytest.raises(ValueError, match="logits"):
        plm_loss(torch.zeros(2, V), torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3))
    with pytest.raises(ValueError, match="target_ids"):
        plm_loss(logits, torch.zeros(2, 4, dtype=torch.long), torch.ones(2, 3))
    with pytest.raises(ValueError, match="target_weights"):
        plm_loss(logits, torch.zeros(2, 3, dtype=torch.long), torch.ones(3, 2))
