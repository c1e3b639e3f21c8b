"""Checkpoints: safetensors round trips (tied weights once), full training state, transformers export,
and a clear error for each way a checkpoint can be wrong."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from xlnet_ref import XLNetConfig, XLNetLMHeadModel, XLNetModel
from xlnet_ref.interop import mems_from_hf, mems_to_hf
from xlnet_ref.training.checkpoint import (
    CheckpointError,
    capture_rng_state,
    export_hf,
    load_checkpoint,
    load_hf,
    load_model,
    load_weights,
    restore_rng_state,
    save_checkpoint,
    save_model,
)

CFG = dict(vocab_size=50, d_model=16, n_layer=2, n_head=2, d_inner=24, mem_len=6, reuse_len=3, dropout=0.0)


def make_lm(seed: int = 0, **overrides) -> XLNetLMHeadModel:
    torch.manual_seed(seed)
    model = XLNetLMHeadModel(XLNetConfig(**{**CFG, **overrides}))
    model.transformer.reset_parameters(std=0.3)  # large weights: every tensor moves the logits
    with torch.no_grad():
        model.lm_loss.bias.normal_()
    return model.eval()


def plm_inputs(seed: int = 1, b: int = 2, qlen: int = 5, k: int = 2) -> dict:
    g = torch.Generator().manual_seed(seed)
    target_mapping = torch.zeros(b, k, qlen)
    target_mapping[:, torch.arange(k), torch.arange(k) + 1] = 1
    return dict(
        input_ids=torch.randint(0, CFG["vocab_size"], (b, qlen), generator=g),
        token_type_ids=torch.randint(0, 2, (b, qlen), generator=g),
        perm_mask=(torch.rand(b, qlen, qlen, generator=g) < 0.5).float(),
        target_mapping=target_mapping,
    )


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


def test_model_round_trip_keeps_the_tie_and_stores_it_once(tmp_path):
    model = make_lm()
    save_model(tmp_path / "m", model=model)
    stored = load_file(str(tmp_path / "m" / "model.safetensors"))
    tied = {"lm_loss.weight", "transformer.word_embedding.weight"} & set(stored)
    assert len(tied) == 1  # the shared tensor is written once
    back = load_model(tmp_path / "m")
    assert_same_weights(model, back)
    assert back.lm_loss.weight.data_ptr() == back.transformer.word_embedding.weight.data_ptr()
    x = plm_inputs()
    assert torch.equal(model(**x).logits, back(**x).logits)
    assert not any(p.name.startswith(".m.tmp") for p in tmp_path.iterdir())  # no temporary folder left


def test_backbone_round_trip(tmp_path):
    torch.manual_seed(0)
    model = XLNetModel(XLNetConfig(**CFG)).eval()
    save_model(tmp_path, model=model)
    back = load_model(tmp_path)
    assert isinstance(back, XLNetModel)
    assert_same_weights(model, back)


def test_training_state_round_trip(tmp_path):
    model = make_lm().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.8, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    out = model(**plm_inputs())
    out.logits.square().mean().backward()
    opt.step()
    sched.step()
    generator = torch.Generator().manual_seed(5)
    rng = capture_rng_state({"data": generator})
    expected_draw = torch.rand(3)
    expected_data_draw = torch.rand(3, generator=generator)
    save_checkpoint(
        tmp_path,
        model=model,
        step=7,
        optimizer=opt,
        scheduler=sched,
        rng=rng,
        mems=out.mems,
        extra={"note": "hello", "history": [{"step": 1, "loss": 2.5}]},
    )

    model2 = make_lm(seed=1).train()
    opt2 = torch.optim.AdamW(model2.parameters(), lr=5.0)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: 1.0 / (1 + s))
    state = load_checkpoint(tmp_path, model=model2, optimizer=opt2, scheduler=sched2)
    assert state.step == 7 and state.extra == {"note": "hello", "history": [{"step": 1, "loss": 2.5}]}
    assert_same_weights(model, model2)
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]  # lr, betas (a tuple again), eps, weight decay
    for index in s1["state"]:
        for key, value in s1["state"][index].items():
            assert torch.equal(value, s2["state"][index][key]), (index, key)
    assert sched2.state_dict() == sched.state_dict()
    assert all(torch.equal(a, b) for a, b in zip(out.mems, state.mems))
    torch.manual_seed(123)  # move the global RNG away, then restore it
    data2 = torch.Generator()
    restore_rng_state(state.rng, {"data": data2})
    assert torch.equal(torch.rand(3), expected_draw)
    assert torch.equal(torch.rand(3, generator=data2), expected_data_draw)


def test_round_trip_through_transformers_gives_the_same_logits(tmp_path):
    import transformers

    model = make_lm()
    export_hf(model, tmp_path / "hf")
    hf = transformers.XLNetLMHeadModel.from_pretrained(str(tmp_path / "hf")).eval()
    x = plm_inputs()
    mems = model(**x).mems  # a memory from a first segment, passed to both models
    ours = model(**x, mems=mems)
    theirs = hf(**x, mems=mems_to_hf(mems), use_mems=True)
    torch.testing.assert_close(theirs.logits, ours.logits, rtol=1e-5, atol=1e-5)
    for a, b in zip(mems_from_hf(theirs.mems), ours.mems):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    back = load_hf(tmp_path / "hf")
    assert_same_weights(model, back)
    assert torch.equal(back(**x).logits, model(**x).logits)


def test_config_mismatch_names_the_field(tmp_path):
    save_model(tmp_path, model=make_lm())
    other = XLNetLMHeadModel(XLNetConfig(**{**CFG, "d_model": 32, "d_inner": 24}))
    with pytest.raises(CheckpointError) as err:
        load_weights(tmp_path, model=other)
    message = str(err.value)
    assert "d_model" in message and "32" in message and "16" in message
    assert "n_layer" not in message  # only the fields that differ
    with pytest.raises(CheckpointError, match="model_class"):
        load_weights(tmp_path, model=XLNetModel(XLNetConfig(**CFG)))


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    save_model(tmp_path, model=make_lm())
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])  # truncated mid-header
    with pytest.raises(CheckpointError) as err:
        load_model(tmp_path)
    assert "model.safetensors" in str(err.value) and "corrupt" in str(err.value)

    weights.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model(tmp_path)

    (tmp_path / "config.json").write_text('{"format": "xlnet_ref", "format_ver')
    with pytest.raises(CheckpointError, match=r"config.json' is corrupt: \d+ bytes, manifest.json recorded"):
        load_model(tmp_path)  # the checksum check comes first
    with pytest.raises(CheckpointError) as err:
        load_model(tmp_path, verify=False)  # and without it the JSON parser still names the file
    assert "config.json" in str(err.value) and "corrupt" in str(err.value) and "JSON" in str(err.value)


def test_a_weights_file_missing_a_tensor_is_refused(tmp_path):
    """Dropping the (tied) embedding from the file must not leave a random embedding behind silently."""
    from safetensors.torch import save_file

    save_model(tmp_path, model=make_lm())
    weights = tmp_path / "model.safetensors"
    kept = {k: v for k, v in load_file(str(weights)).items() if "word_embedding" not in k and k != "lm_loss.weight"}
    save_file(kept, str(weights))
    with pytest.raises(CheckpointError, match="missing"):
        load_model(tmp_path)


def test_corrupt_optimizer_state(tmp_path):
    model = make_lm()
    opt = torch.optim.AdamW(model.parameters())
    model(**plm_inputs()).logits.sum().backward()
    opt.step()
    save_checkpoint(tmp_path, model=model, step=1, optimizer=opt)
    (tmp_path / "optimizer.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(CheckpointError, match="optimizer.safetensors.*corrupt"):
        load_checkpoint(tmp_path, model=make_lm(), optimizer=torch.optim.AdamW(make_lm().parameters()))


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        load_checkpoint(tmp_path / "absent", model=make_lm())
    save_model(tmp_path, model=make_lm())
    with pytest.raises(FileNotFoundError) as err:
        load_checkpoint(tmp_path, model=make_lm())  # a weights-only folder has no training state
    assert "training_state.json" in str(err.value) and "model.safetensors" in str(err.value)  # lists what is there
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_model(tmp_path)


def test_a_transformers_folder_is_not_mistaken_for_ours(tmp_path):
    export_hf(make_lm(), tmp_path)
    with pytest.raises(CheckpointError, match="load_hf"):
        load_model(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["d_model"] == CFG["d_model"]


def test_every_file_is_checksummed_and_a_changed_byte_is_refused(tmp_path):
    save_model(tmp_path, model=make_lm())
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert sorted(manifest["files"]) == ["config.json", "model.safetensors"]
    weights = tmp_path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x10  # inside the last tensor's data: still a valid safetensors file
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model.safetensors' is corrupt: its SHA-256 differs"):
        load_model(tmp_path)
    load_model(tmp_path, verify=False)  # an edit on purpose still loads
    (tmp_path / "manifest.json").write_text('{"files": {"config.js')
    with pytest.raises(CheckpointError, match=r"manifest.json' is corrupt"):
        load_model(tmp_path)
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match=r"manifest.json' is missing.*verify=False"):
        load_model(tmp_path)


def test_a_failed_write_keeps_the_old_folder_and_leaves_no_partial_one(tmp_path, monkeypatch):
    import errno

    from xlnet_ref.training import checkpoint as ckpt

    save_model(tmp_path / "m", model=make_lm(seed=0))
    before = (tmp_path / "m" / "model.safetensors").read_bytes()

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt, "_st_save_model", full_disk)
    with pytest.raises(ckpt.CheckpointWriteError, match=r"writing '.*m' failed \(No space left on device\)"):
        save_model(tmp_path / "m", model=make_lm(seed=1))
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
