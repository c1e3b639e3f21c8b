"""Fine-tuning: the tasks (layout, determinism, held out by document), the loop (exact resume, layer-wise
learning rates, pretrained initialisation) and the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from xlnet_ref import XLNetConfig, XLNetLMHeadModel
from xlnet_ref.training import checkpoint as ckpt
from xlnet_ref.training.finetune import (
    FinetuneConfig,
    build_model,
    finetune,
    main,
    make_finetune_optimizer,
    span_f1,
)
from xlnet_ref.training.finetune_data import SEG_CLS, TASKS, task_examples
from xlnet_ref.training.tokenizer import ByteTokenizer

TOK = ByteTokenizer()
MICRO = XLNetConfig(vocab_size=260, d_model=32, n_layer=2, n_head=2, d_inner=64, dropout=0.1)


# ----------------------------------------------------------------------------------------- tasks
@pytest.mark.parametrize("task", TASKS)
def test_tasks_are_deterministic_and_held_out_by_document(task):
    a = task_examples(task, "train", 40)
    b = task_examples(task, "train", 40)
    assert torch.equal(a.input_ids, b.input_ids) and a.documents == b.documents
    held = task_examples(task, "held_out", 40)
    assert not set(a.documents) & set(held.documents), "a document is on both sides of the split"
    assert len(set(task_examples(task, "train", 200).documents)) > 3


@pytest.mark.parametrize("task", TASKS)
def test_rows_are_left_padded_and_end_with_sep_cls(task):
    ex = task_examples(task, "train", 30)
    assert (ex.input_ids[:, -1] == TOK.cls_id).all() and (ex.token_type_ids[:, -1] == SEG_CLS).all()
    assert (ex.input_ids[:, -2] == TOK.sep_id).all()
    for row, mask in zip(ex.input_ids, ex.attention_mask):
        pad = int((mask == 0).sum())
        assert (row[:pad] == TOK.pad_id).all() and (mask[pad:] == 1).all() and (row[pad:] != TOK.pad_id).all()


def test_next_positive_b_continues_a_and_segments_are_a_then_b():
    ex = task_examples("next", "train", 20)
    for row, types, label in zip(ex.input_ids, ex.token_type_ids, ex.labels):
        real = row[row != TOK.pad_id]
        seps = (real == TOK.sep_id).nonzero().flatten().tolist()
        assert len(seps) == 2
        a, b = TOK.decode(real[: seps[0]]), TOK.decode(real[seps[0] + 1 : seps[1]])
        t = types[row != TOK.pad_id]
        assert (t[: seps[0] + 1] == 0).all() and (t[seps[0] + 1 : seps[1] + 1] == 1).all()
        if label == 1:
            from xlnet_ref.training.finetune_data import stdlib_docstrings

            assert any(a + b in text for text in stdlib_docstrings().values()), (a, b)
    assert 0.4 <= float(ex.labels.float().mean()) <= 0.6


def test_span_answers_are_passage_words_found_by_the_question():
    ex = task_examples("span", "held_out", 30)
    for i in range(len(ex)):
        s, e = int(ex.start_positions[i]), int(ex.end_positions[i])
        answer = TOK.decode(ex.input_ids[i, s : e + 1])
        assert answer.isidentifier() and len(answer) >= 3
        assert (ex.p_mask[i, s : e + 1] == 0).all() and (ex.token_type_ids[i, s : e + 1] == 0).all()
        assert ex.p_mask[i, -1] == 1  # CLS is never an answer
        passage_and_question = TOK.decode(ex.input_ids[i])
        question = passage_and_question.split("?")[0].rsplit(chr(0xFFFD), 1)[-1]
        assert "?" in passage_and_question and question.strip()


def test_words_labels_mark_the_bytes_that_followed_a_removed_space():
    from xlnet_ref.training.finetune_data import stdlib_docstrings

    ex = task_examples("words", "held_out", 10)
    texts = list(stdlib_docstrings().values())
    for row, labels in zip(ex.input_ids, ex.labels):
        text_pos = labels != -100
        squeezed = TOK.decode(row[text_pos])
        assert " " not in squeezed
        # put the spaces back where the labels say: the result is a stretch of some docstring
        spaced = "".join((" " if flag else "") + ch for ch, flag in zip(squeezed, labels[text_pos].tolist())).lstrip()
        assert any(spaced in t for t in texts), spaced
        assert (labels[~text_pos] == -100).all() and labels[-1] == -100


def test_topic_classes_are_balanced():
    ex = task_examples("topic", "train", 90)
    assert torch.bincount(ex.labels).tolist() == [30, 30, 30]


def test_bad_task_arguments():
    with pytest.raises(ValueError, match="task: expected one of"):
        task_examples("squad", "train", 4)
    with pytest.raises(ValueError, match="split: expected 'train' or 'held_out'"):
        task_examples("topic", "test", 4)
    with pytest.raises(ValueError, match="n: expected a positive int"):
        task_examples("topic", "train", 0)
    with pytest.raises(ValueError, match="FinetuneConfig.layer_decay"):
        FinetuneConfig(layer_decay=1.5)


def test_span_f1():
    assert span_f1((3, 5), (3, 5)) == 1.0
    assert span_f1((0, 1), (3, 5)) == 0.0
    assert span_f1((3, 4), (3, 5)) == pytest.approx(2 * 1.0 * (2 / 3) / (1 + 2 / 3))


# ------------------------------------------------------------------------------------------ loop
def micro_config(task="topic", **kw) -> FinetuneConfig:
    base = dict(
        task=task, model=MICRO, steps=6, warmup_steps=2, batch_size=8, n_train=24, n_eval=16, eval_every=3, device="cpu"
    )
    return FinetuneConfig(**{**base, **kw})


@pytest.mark.parametrize("task", ["topic", "span"])
def test_stop_and_resume_gives_the_weights_of_one_run(tmp_path, task):
    whole = finetune(micro_config(task), progress=False, log=None)
    finetune(micro_config(task), out_dir=tmp_path / "run", stop_at=4, progress=False, log=None)
    resumed = finetune(None, resume=tmp_path / "run", progress=False, log=None)
    assert resumed.history == whole.history
    for (name, a), (_, b) in zip(whole.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), name
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["step"] == 6 and metrics == {**metrics, **resumed.metrics}


def test_layer_decay_gives_each_layer_its_rate():
    config = micro_config(layer_decay=0.5, learning_rate=1e-3)
    model = build_model(config)
    optimizer = make_finetune_optimizer(model, config)
    lr_of = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            lr_of[id(p)] = group["lr"]
    named = dict(model.named_parameters())
    assert lr_of[id(named["transformer.layer.1.rel_attn.q"])] == pytest.approx(1e-3)  # top layer: full rate
    assert lr_of[id(named["transformer.layer.0.rel_attn.q"])] == pytest.approx(5e-4)
    assert lr_of[id(named["transformer.word_embedding.weight"])] == pytest.approx(1e-3)
    assert lr_of[id(named["logits_proj.weight"])] == pytest.approx(1e-3)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(named)


def test_pretrained_init_copies_the_backbone_and_keeps_the_head_of_scratch(tmp_path):
    torch.manual_seed(3)
    lm = XLNetLMHeadModel(XLNetConfig(**{**MICRO.to_dict(), "mem_len": 8, "reuse_len": 4}))
    ckpt.save_checkpoint(tmp_path / "pre" / "checkpoint-0000001", model=lm, step=1)
    pre = build_model(FinetuneConfig(task="next", init=str(tmp_path / "pre"), model=MICRO, steps=6, warmup_steps=1))
    scratch = build_model(FinetuneConfig(task="next", init="scratch", model=MICRO, steps=6, warmup_steps=1))
    for name, tensor in lm.transformer.state_dict().items():
        assert torch.equal(pre.transformer.state_dict()[name], tensor), name
    assert not torch.equal(pre.transformer.word_embedding.weight, scratch.transformer.word_embedding.weight)
    assert torch.equal(pre.logits_proj.weight, scratch.logits_proj.weight)  # same seed: same head


def test_cli_runs_writes_metrics_and_refuses_a_used_folder(tmp_path, capsys):
    out = tmp_path / "ft"
    args = [
        "--task",
        "topic",
        "--from",
        "scratch",
        "--steps",
        "2",
        "--batch-size",
        "8",
        "--n-train",
        "16",
        "--n-eval",
        "9",
        "--out",
        str(out),
        "--no-progress",
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "held-out accuracy" in printed and (out / "metrics.json").is_file()
    acc = json.loads((out / "metrics.json").read_text())["accuracy"]
    assert 0.0 <= acc <= 1.0 and f"accuracy {acc:.3f}" in printed
    assert main(args) == 2  # the folder holds a run: refused without --overwrite
    assert "already holds checkpoints" in capsys.readouterr().err
    assert main(["--task", "topic", "--from", str(tmp_path / "missing"), "--no-progress"]) == 2


def test_experiment_compares_the_two_arms_on_the_same_head(tmp_path, monkeypatch):
    """The seeded experiment: pretrains (cached), fine-tunes both arms, one row per seed with every metric."""
    from xlnet_ref.experiments import finetune as experiment

    monkeypatch.setattr(experiment, "RUNS", tmp_path / "runs")
    monkeypatch.setitem(
        experiment.SIZES,
        "quick",
        dict(
            seeds=[0, 1],
            tasks=("topic",),
            pretrain_steps=2,
            pretrain_run="pre",
            finetune=dict(
                steps=2, batch_size=8, n_train=16, n_eval=9, learning_rate=1e-3, warmup_steps=1, eval_every=0
            ),
        ),
    )
    out = experiment.run("quick", write=False, log=None)
    assert [row["seed"] for row in out["per_seed"]] == [0, 1]
    assert set(out["per_seed"][0]) == {"seed", "topic/pretrained/accuracy", "topic/scratch/accuracy"}
    assert out["config"]["pretraining"]["train_config"]["steps"] == 2
    pre, scratch = out["models"][(0, "topic", "pretrained")], out["models"][(0, "topic", "scratch")]
    assert pre.config == scratch.config  # same architecture; only the backbone's starting weights differ
    assert experiment.pretrained_run("quick", log=None).name == "checkpoint-0000002"  # cached, not retrained
