"""Plumbing of xlnet_ref.experiments.pretraining at a minuscule size: the PLM arm is train() step for
step, the AR arm trains something else on the same data, the result file has the documented keys."""

from __future__ import annotations

import pytest
import torch

from xlnet_ref.experiments import pretraining
from xlnet_ref.experiments.common import load_result
from xlnet_ref.training.train import prepare_data, train

MINUSCULE = dict(
    train=dict(steps=3, warmup_steps=1, batch_size=2, seq_len=24, num_predict=4, eval_every=0, eval_batches=2),
    model=dict(d_model=16, n_layer=1, n_head=2, d_inner=32, mem_len=16, reuse_len=8),
)
KEYS = {
    "seed",
    "plm/ltr_loss",
    "ar/ltr_loss",
    "plm/plm_loss",
    "ar/plm_loss",
    "plm/train_seconds",
    "ar/train_seconds",
    "unigram/ltr_loss",
    "bigram/ltr_loss",
    "trigram/ltr_loss",
}


@pytest.fixture
def minuscule(monkeypatch):
    monkeypatch.setitem(pretraining.CONFIGS, "quick", MINUSCULE)
    return pretraining.experiment_config("quick", 0)


def test_plm_arm_is_the_training_loop_step_for_step(minuscule):
    config = minuscule
    data = prepare_data(config)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ours, _ = pretraining.pretrain(config, data, objective="plm")
        theirs = train(config, progress=False, log=None).model
    finally:
        torch.set_num_threads(before)
    for (name, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items()):
        assert torch.equal(a, b), name


def test_ar_arm_trains_differently_from_the_same_start(minuscule):
    data = prepare_data(minuscule)
    plm, _ = pretraining.pretrain(minuscule, data, objective="plm")
    ar, _ = pretraining.pretrain(minuscule, data, objective="ar")
    differ = [n for (n, a), (_, b) in zip(plm.state_dict().items(), ar.state_dict().items()) if not torch.equal(a, b)]
    assert differ
    with pytest.raises(ValueError, match="objective"):
        pretraining.pretrain(minuscule, data, objective="bert")


def test_run_writes_every_documented_key_per_seed(minuscule, tmp_path):
    path = pretraining.run("quick", [0, 1], directory=tmp_path, log=None)
    record = load_result("pretraining", size="quick", directory=tmp_path)
    assert path.name == "pretraining_quick.json"
    assert record["seeds"] == [0, 1]
    assert all(set(row) == KEYS for row in record["per_seed"])
    for row in record["per_seed"]:
        # the count models: a longer context never hurts much on English text; all beat a uniform guess
        assert row["unigram/ltr_loss"] < 5.57 and row["trigram/ltr_loss"] < row["unigram/ltr_loss"]
    assert record["per_seed"][0]["plm/ltr_loss"] != record["per_seed"][1]["plm/ltr_loss"]  # seeds differ
    assert record["config"]["model"]["d_model"] == 16


def test_errors_name_the_argument(minuscule, tmp_path):
    with pytest.raises(ValueError, match="size"):
        pretraining.experiment_config("huge", 0)
    with pytest.raises(ValueError, match="seeds"):
        pretraining.run("quick", [], directory=tmp_path)
