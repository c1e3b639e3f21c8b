"""The seeded experiments (xlnet_ref/experiments/): plumbing at a minuscule size, and the pieces each relies on.

The recorded numbers live in results/; here each experiment runs for a few steps only, to show that it
writes a well-formed result file, that a seed repeats exactly, and that the masks and floors it is
built on are what its docstring says.
"""

import math

import pytest
import torch

from xlnet_ref.experiments import memory_on_text, plm_vs_ar_vs_independent, two_stream_vs_target_blind
from xlnet_ref.experiments.common import load_result

TINY_MODEL = dict(d_model=16, n_layer=1, n_head=2, d_inner=32)


@pytest.fixture
def tiny_sizes(monkeypatch):
    """Replace the 'quick' size of every experiment by a few-step one (the real sizes stay untouched)."""
    monkeypatch.setitem(
        memory_on_text.CONFIGS,
        "quick",
        dict(
            mem_lens=[0, 8],
            seg_len=8,
            batch_size=2,
            steps=3,
            learning_rate=1e-3,
            warmup_steps=1,
            eval_streams=2,
            eval_segments=3,
            **TINY_MODEL,
        ),
    )
    monkeypatch.setitem(
        plm_vs_ar_vs_independent.CONFIGS,
        "quick",
        dict(seq_len=8, batch_size=4, steps=3, learning_rate=1e-3, warmup_steps=1, eval_sequences=16, **TINY_MODEL),
    )
    monkeypatch.setitem(
        two_stream_vs_target_blind.CONFIGS,
        "quick",
        dict(seq_len=12, K=4, batch_size=2, steps=3, learning_rate=1e-3, warmup_steps=1, eval_windows=4, **TINY_MODEL),
    )


@pytest.fixture(scope="module")
def small_corpus():
    """A slice of the real byte corpus (train, held-out): enough for a few tiny steps."""
    train_tokens, eval_tokens = memory_on_text.byte_corpus()
    return train_tokens[:20_000], eval_tokens[:2_000]


EXPECTED_KEYS = {
    "memory_on_text": {f"mem_len={m}/{k}" for m in (0, 8) for k in ("loss", "loss_start", "loss_end")},
    "plm_vs_ar_vs_independent": {
        "plm/joint",
        "plm/a",
        "plm/b",
        "plm/joint_b_first",
        "ar/joint",
        "ar/a",
        "ar/b",
        "independent/joint",
        "independent/a",
        "independent/b",
        "bayes/joint",
        "bayes_independent/joint",
        "bayes_left_to_right/joint",
    },
    "two_stream_vs_target_blind": {
        f"{arm}/{k}" for arm in ("two_stream", "target_blind") for k in ("loss", "loss_first", "loss_last")
    }
    | {"unigram/loss"},
}
MODULES = {
    "memory_on_text": memory_on_text,
    "plm_vs_ar_vs_independent": plm_vs_ar_vs_independent,
    "two_stream_vs_target_blind": two_stream_vs_target_blind,
}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_run_writes_a_result_with_every_key_and_finite_numbers(name, tiny_sizes, tmp_path, small_corpus, monkeypatch):
    module = MODULES[name]
    if hasattr(module, "byte_corpus"):
        monkeypatch.setattr(module, "byte_corpus", lambda: small_corpus)
    path = module.run("quick", [0, 1], directory=tmp_path)
    record = load_result(name, size="quick", directory=tmp_path)
    assert path.name == f"{name}_quick.json"
    assert record["seeds"] == [0, 1]
    assert "--size quick --seeds 0 1" in record["command"]
    assert set(record["summary"]) == EXPECTED_KEYS[name]
    for row in record["per_seed"]:
        assert all(math.isfinite(v) and v >= 0 for k, v in row.items() if k != "seed")
    # two seeds differ (the seed reaches the weights and the data), one seed repeats exactly
    a, b = record["per_seed"]
    trained = [k for k in EXPECTED_KEYS[name] if not k.startswith(("bayes", "unigram"))]
    assert any(a[k] != b[k] for k in trained)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_a_seed_repeats_exactly(name, tiny_sizes, small_corpus):
    seed_fn = getattr(MODULES[name], f"{name}_seed")
    kwargs = {} if name == "plm_vs_ar_vs_independent" else {"data": small_corpus}
    assert seed_fn(3, size="quick", **kwargs) == seed_fn(3, size="quick", **kwargs)


def test_bad_size_and_seeds_are_refused():
    with pytest.raises(ValueError, match="size"):
        memory_on_text.run("medium", [0])
    with pytest.raises(ValueError, match="seeds"):
        plm_vs_ar_vs_independent.run("quick", [])


# ------------------------------------------------------------------------------------ memory_on_text
def test_text_streams_are_contiguous_rows_of_the_rotated_text():
    tokens = torch.arange(20)
    rows = memory_on_text.text_streams(tokens, 3, offset=5)
    assert rows.shape == (3, 6)
    assert rows[0].tolist() == list(range(5, 11)) and rows[2].tolist() == list(range(17, 20)) + [0, 1, 2]


def test_single_thread_restores_the_thread_count():
    before = torch.get_num_threads()
    with memory_on_text.single_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


# -------------------------------------------------------------------------- plm_vs_ar_vs_independent
def test_entity_task_layout_and_the_pair_determine_each_other():
    m = plm_vs_ar_vs_independent
    batch = m.entity_batch(500, 8, generator=torch.Generator().manual_seed(0))
    ids, rows = batch.input_ids, torch.arange(500)
    a, b = ids[rows, batch.start], ids[rows, batch.start + 1]
    assert ((a >= m.FIRST) & (a < m.SECOND)).all() and ((b >= m.SECOND) & (b < m.FILLER)).all()
    # each first token always comes with the same second token, and the other way round
    pairs = set(zip(a.tolist(), b.tolist()))
    assert len({x for x, _ in pairs}) == len(pairs) == len({y for _, y in pairs})
    for r in range(500):
        s = int(batch.start[r])
        left = ids[r, :s].tolist()
        right = ids[r, s + 2 :].tolist()
        assert [t for t in left if t < m.RIGHT_CLUE] == [m.LEFT_CLUE + int(batch.u[r])]
        assert [t for t in right if m.RIGHT_CLUE <= t < m.FIRST] == [m.RIGHT_CLUE + int(batch.v[r])]


def test_bayes_floors_are_the_entropies_of_the_task():
    # 16 entities (u: 2 values, v: 2, w: 4), uniform: 4 remain given both clues, 8 given the left one
    m = plm_vs_ar_vs_independent
    batch = m.entity_batch(300, 8, generator=torch.Generator().manual_seed(1))
    assert m.bayes_joint_nll(batch, sees_u=True, sees_v=True, independent=False) == pytest.approx(math.log(4))
    assert m.bayes_joint_nll(batch, sees_u=True, sees_v=True, independent=True) == pytest.approx(2 * math.log(4))
    assert m.bayes_joint_nll(batch, sees_u=True, sees_v=False, independent=False) == pytest.approx(math.log(8))


def test_pair_masks_say_who_sees_what():
    m = plm_vs_ar_vs_independent
    T, s = 8, 3  # a at 3, b at 4; left 0..2, right 5..7
    perm, mapping = m.pair_masks(T, s, order_of_pair="ab")
    sees = perm == 0  # [i, j] query stream of i may see j
    assert mapping.argmax(-1).tolist() == [3, 4]
    assert sees[3].tolist() == [True, True, True, False, False, True, True, True]  # a: the context only
    assert sees[4].tolist() == [True, True, True, True, False, True, True, True]  # b: the context and a
    perm, _ = m.pair_masks(T, s, order_of_pair="ba")
    assert (perm == 0)[3, 4] and not (perm == 0)[4, 3]  # a sees b, b does not see a
    perm, _ = m.pair_masks(T, s, order_of_pair="left_to_right")
    sees = perm == 0
    assert sees[3].tolist() == [True, True, True, False, False, False, False, False]
    assert sees[4].tolist() == [True, True, True, True, False, False, False, False]


def test_the_independent_arm_sees_masks_where_the_pair_was(monkeypatch):
    m = plm_vs_ar_vs_independent
    batch = m.entity_batch(4, 8, generator=torch.Generator().manual_seed(2))
    seen = {}

    class Spy(torch.nn.Module):
        def forward(self, input_ids, **kwargs):
            seen["ids"], seen["kwargs"] = input_ids, kwargs
            return type("Out", (), {"logits": torch.zeros(*input_ids.shape, m.VOCAB_SIZE)})()

    m.pair_nll(Spy(), "independent", batch)
    rows = torch.arange(4)
    assert (seen["ids"][rows, batch.start] == m.MASK).all() and (seen["ids"][rows, batch.start + 1] == m.MASK).all()
    assert seen["kwargs"] == {}  # no perm_mask: bidirectional; no target_mapping: the content stream predicts
    unchanged = torch.ones_like(batch.input_ids, dtype=torch.bool)
    unchanged[rows, batch.start] = unchanged[rows, batch.start + 1] = False
    assert torch.equal(seen["ids"][unchanged], batch.input_ids[unchanged])


# ------------------------------------------------------------------------ two_stream_vs_target_blind
def test_target_blind_reads_a_state_that_sees_exactly_what_the_target_may_see():
    # the content stream at z_{t-1} sees x_{z<=t-1} = x_{z<t}: the same set as the query stream of z_t
    tokens = torch.arange(200) % 7
    starts = torch.tensor([0, 50, 100])
    ids, perm, mapping, target_ids, predictor, step = two_stream_vs_target_blind.plm_windows(
        tokens, starts, seq_len=12, K=4, generator=torch.Generator().manual_seed(0)
    )
    positions = mapping.argmax(-1)  # [b, k]
    assert torch.equal(target_ids, ids.gather(1, positions))
    for r in range(3):
        content_sees = perm[r] == 0
        content_sees.fill_diagonal_(True)  # the model clears the diagonal for the content stream
        for k in range(positions.shape[1]):
            query_row = perm[r, positions[r, k]] == 0
            assert torch.equal(content_sees[predictor[r, k]], query_row)
            assert not query_row[positions[r, k]]  # and never the target itself
        assert sorted(step[r].tolist()) == list(range(positions.shape[1]))


def test_unigram_log_probs_are_smoothed_frequencies():
    lp = two_stream_vs_target_blind.unigram_log_probs(torch.tensor([0, 0, 1]), 3)
    assert torch.allclose(lp.exp(), torch.tensor([3 / 6, 2 / 6, 1 / 6], dtype=torch.float64))
