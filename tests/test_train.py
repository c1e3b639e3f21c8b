"""Training: schedule, weight-decay groups, left-to-right evaluation, repeatability, exact resume, CLI."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from helpers import micro_train_config

from xlnet_ref import XLNetConfig, XLNetLMHeadModel
from xlnet_ref.pretraining_data import plm_batches
from xlnet_ref.training.checkpoint import CheckpointError
from xlnet_ref.training.corpus import default_corpus_text
from xlnet_ref.training.tokenizer import ByteTokenizer
from xlnet_ref.training.train import (
    TrainConfig,
    evaluate,
    left_to_right_batch,
    lr_factor,
    main,
    make_optimizer,
    preset,
    train,
    uses_weight_decay,
)

micro = micro_train_config  # 16 steps of 4 x 24 tokens, evaluated every 5


def train_losses(history):
    return [row["loss"] for row in history if row["kind"] == "train"]


# ------------------------------------------------------------------------------------- pieces
def test_lr_schedule_by_hand():
    f = lambda s: lr_factor(s, warmup_steps=4, total_steps=14, min_lr_ratio=0.1)  # noqa: E731
    assert [f(s) for s in range(5)] == [0.0, 0.25, 0.5, 0.75, 1.0]  # warm-up from 0
    assert f(9) == pytest.approx(1 - 0.9 * 5 / 10)  # halfway through the decay
    assert f(14) == pytest.approx(0.1) and f(20) == pytest.approx(0.1)  # ends at min_lr_ratio
    assert lr_factor(0, warmup_steps=0, total_steps=10, min_lr_ratio=0.0) == 1.0


def test_weight_decay_groups_follow_the_original_rule():
    assert uses_weight_decay("transformer.word_embedding.weight")
    assert uses_weight_decay("transformer.r_w_bias") and uses_weight_decay("transformer.r_s_bias")
    assert not uses_weight_decay("transformer.layer.0.rel_attn.layer_norm.weight")
    assert not uses_weight_decay("transformer.layer.0.ff.layer_1.bias") and not uses_weight_decay("lm_loss.bias")
    model = XLNetLMHeadModel(micro("x").model)
    opt = make_optimizer(model, micro("x"))
    n_params = len(list(model.parameters()))  # the tied LM weight counts once
    assert sum(len(g["params"]) for g in opt.param_groups) == n_params
    assert opt.param_groups[1]["weight_decay"] == 0.0 and opt.param_groups[0]["weight_decay"] == 0.01


def test_left_to_right_batch_sees_only_the_past():
    """z = identity: the logits at position t must not change when any token at or after t changes."""
    tok = ByteTokenizer()
    cfg = XLNetConfig(vocab_size=260, d_model=32, n_layer=2, n_head=2, d_inner=48, mem_len=8, reuse_len=4, dropout=0.0)
    torch.manual_seed(0)
    model = XLNetLMHeadModel(cfg).eval()
    tokens = torch.tensor(tok.encode(default_corpus_text()[:400]))
    batch = next(
        plm_batches(
            tokens,
            seq_len=12,
            reuse_len=4,
            batch_size=2,
            num_predict=2,
            perm_size=None,
            bi_data=False,
            sep_id=tok.sep_id,
            cls_id=tok.cls_id,
            generator=torch.Generator().manual_seed(0),
        )
    )
    l2r = left_to_right_batch(batch, sep_id=tok.sep_id, cls_id=tok.cls_id, has_memory=False)
    assert l2r.target_weights[:, 0].eq(0).all()  # nothing to look at without memory
    assert l2r.target_weights[batch.input_ids == tok.sep_id].eq(0).all()
    kw = dict(token_type_ids=l2r.token_type_ids, perm_mask=l2r.perm_mask, target_mapping=l2r.target_mapping)
    logits = model(l2r.input_ids, **kw).logits  # [b, k = i, V]
    for t in (3, 7, 10):
        changed = l2r.input_ids.clone()
        changed[:, t:] = (changed[:, t:] + 1) % 256
        other = model(changed, **kw).logits
        # positions 1..t (t included) are unchanged; position 0 has an empty visible set without memory, its
        # fully masked row turns uniform over all keys (permutation.py), which is why it is not a target
        torch.testing.assert_close(other[:, 1 : t + 1], logits[:, 1 : t + 1], rtol=0, atol=1e-6)
        assert not torch.allclose(other[:, t + 1 :], logits[:, t + 1 :])  # later positions do see the change


# ------------------------------------------------------------------------------------- training
def test_training_learns_is_repeatable_and_evaluation_draws_no_random_numbers(corpus_file):
    cfg = micro(corpus_file, steps=30, eval_every=30)
    first = train(cfg, progress=False, log=None)
    losses = train_losses(first.history)
    assert len(losses) == 30 and all(r["lr"] >= 0 for r in first.history if r["kind"] == "train")
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5  # from ~5.6 (uniform over 260) downwards
    evals = [r for r in first.history if r["kind"] == "eval"]
    assert len(evals) == 1 and evals[0]["eval_plm_loss"] < 5.0 and evals[0]["eval_l2r_loss"] < 5.0
    assert [m.shape for m in first.mems] == [torch.Size([4, 16, 32])] * 2  # memory carried, mem_len kept

    again = train(dataclasses.replace(cfg, steps=10, eval_every=0), progress=False, log=None)
    other_seed = train(dataclasses.replace(cfg, steps=10, eval_every=0, seed=1), progress=False, log=None)
    assert train_losses(again.history) != train_losses(other_seed.history)
    # same seed, same data and initial weights: the first losses agree (later ones differ through the
    # schedule, which spans `steps`; the exact-repeat check over a whole run is test_resume_is_exact)
    assert train_losses(again.history)[:2] == losses[:2]

    held_out = [
        next(
            plm_batches(
                first.data.eval_tokens,
                seq_len=24,
                reuse_len=8,
                batch_size=4,
                num_predict=4,
                perm_size=None,
                bi_data=False,
                sep_id=257,
                cls_id=258,
                generator=torch.Generator().manual_seed(0),
            )
        )
    ]
    state = torch.get_rng_state()
    evaluate(first.model.train(), held_out, tokenizer=first.tokenizer)
    assert torch.equal(torch.get_rng_state(), state)  # eval mode inside: no dropout draws
    assert first.model.training  # and the mode is put back


def test_resume_is_exact(corpus_file, tmp_path):
    """N steps, checkpoint, a fresh process state, M more steps == N + M steps straight through (bit for bit)."""
    cfg = micro(corpus_file, steps=20, eval_every=6)
    straight = train(cfg, progress=False, log=None)
    stopped = train(cfg, out_dir=tmp_path, stop_at=9, progress=False, log=None)
    assert stopped.checkpoint.name == "checkpoint-0000009"
    torch.manual_seed(999)  # disturb every RNG the resume must restore
    torch.rand(100)
    resumed = train(resume=tmp_path, progress=False, log=None)
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert [(r["kind"], r.get("loss"), r.get("eval_plm_loss")) for r in resumed.history] == [
        (r["kind"], r.get("loss"), r.get("eval_plm_loss")) for r in straight.history
    ]
    assert all(torch.equal(a, b) for a, b in zip(straight.mems, resumed.mems))
    saved = json.loads((tmp_path / "history.json").read_text())
    assert len(train_losses(saved)) == 20


def test_resume_refuses_a_changed_config(corpus_file, tmp_path):
    cfg = micro(corpus_file, steps=4, eval_every=0)
    train(cfg, out_dir=tmp_path, stop_at=2, progress=False, log=None)
    with pytest.raises(CheckpointError) as err:
        train(dataclasses.replace(cfg, learning_rate=1e-2), resume=tmp_path, progress=False, log=None)
    assert "learning_rate" in str(err.value) and "0.01" in str(err.value) and "0.003" in str(err.value)
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        train(cfg, resume=tmp_path / "absent", progress=False, log=None)
    with pytest.raises(FileExistsError, match="resume.*overwrite"):  # a new run would mix with the old one
        train(cfg, out_dir=tmp_path, progress=False, log=None)


def test_bad_corpus_in_a_run(tmp_path, corpus_file):
    with pytest.raises(ValueError, match="held-out part"):
        train(micro(corpus_file, eval_fraction=0.02), progress=False, log=None)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train(micro(tmp_path / "missing.txt"), progress=False, log=None)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="empty"):
        train(micro(tmp_path / "empty.txt"), progress=False, log=None)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="batch_size"):
        preset("tiny", batch_size=0)
    with pytest.raises(ValueError, match="seq_len"):
        preset("tiny", seq_len=20)  # shorter than reuse_len + 5
    with pytest.raises(ValueError, match="preset"):
        preset("huge")
    assert TrainConfig.from_dict(preset("small").to_dict()) == preset("small")


def test_cli(corpus_file, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0 and "--resume" in capsys.readouterr().out
    assert main(["--preset", "tiny", "--steps", "7", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 7
    assert main(["--corpus", str(tmp_path / "absent.txt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    # a short real run through the CLI, exported to transformers at the end
    args = [
        "--preset",
        "tiny",
        "--steps",
        "2",
        "--warmup-steps",
        "1",
        "--batch-size",
        "2",
        "--eval-every",
        "0",
        "--out",
        str(tmp_path / "run"),
        "--export-hf",
        str(tmp_path / "hf"),
        "--no-progress",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "checkpoint-0000002" in out and (tmp_path / "hf" / "config.json").is_file()


# ------------------------------------------------------------------------------------- demo figures
def test_memory_attention_mass_by_hand():
    from xlnet_ref.drawing.plotting import memory_attention_mass

    # one layer, b = 1, n = 1: content rows put 0.25 and 0.75 on the 2 memory keys; query row puts 0.5
    prob_h = torch.tensor([[[[0.1, 0.15, 0.5, 0.25], [0.5, 0.25, 0.25, 0.0]]]])  # [b, n, i, j], mlen = 2
    prob_g = torch.tensor([[[[0.2, 0.3, 0.0, 0.5]]]])  # [b, n, k, j]
    mass = memory_attention_mass([(prob_h, prob_g)], mlen=2)
    torch.testing.assert_close(mass, torch.tensor([[0.5, 0.5]]))
    mass = memory_attention_mass([prob_h], mlen=1)  # one stream only
    assert mass[0, 0].item() == pytest.approx(0.3) and math.isnan(mass[0, 1].item())


def test_demo_figures(corpus_file, tmp_path):
    from xlnet_ref.training.demo import make_figures
    from xlnet_ref.training.train import load_run

    trained = train(micro(corpus_file, steps=3, eval_every=2), out_dir=tmp_path / "run", progress=False, log=None)
    result = load_run(tmp_path / "run")  # back from the checkpoint, as a notebook would
    assert result.history == trained.history and result.config == trained.config
    assert all(
        torch.equal(a, b) for a, b in zip(result.model.state_dict().values(), trained.model.state_dict().values())
    )
    paths = make_figures(result, tmp_path)
    assert [p.name for p in paths] == ["loss_curves.png", "two_stream_attention.png", "memory_attention.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000


def test_demo_stops_cleanly_on_ctrl_c(tmp_path, monkeypatch, capsys):
    """make demo interrupted: the message of train()'s TrainingInterrupted (where the checkpoint is, how to
    resume), how to draw from that checkpoint, the shell's exit code, no figures, no traceback."""
    import signal

    from xlnet_ref.training import demo
    from xlnet_ref.training.interrupt import TrainingInterrupted

    checkpoint = tmp_path / "run" / "checkpoint-0000042"

    def interrupted_train(config, **kwargs):
        raise TrainingInterrupted(
            f"interrupted by SIGINT after step 42 of {config.steps}: checkpoint {checkpoint}",
            step=42,
            checkpoint=checkpoint,
            signum=signal.SIGINT,
        )

    monkeypatch.setattr(demo, "train", interrupted_train)
    monkeypatch.setattr(demo, "note_threads", lambda: None)
    try:
        code = demo.main(
            ["--out", str(tmp_path / "run"), "--figures", str(tmp_path / "figs"), "--no-progress", "--device", "cpu"]
        )
    except KeyboardInterrupt:  # TrainingInterrupted is one: uncaught, it would also stop pytest itself
        pytest.fail("demo.main let TrainingInterrupted through (a traceback for the user)")
    err = capsys.readouterr().err
    assert code == 130
    assert "interrupted by SIGINT after step 42 of 600" in err
    assert f"python -m xlnet_ref.demo --figures-only {checkpoint}" in err
    assert not (tmp_path / "figs").exists()
