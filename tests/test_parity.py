"""xlnet_ref against transformers' XLNet on the same random weights: outputs, mems, attentions, gradients.

Each case runs three consecutive calls, the mems of one feeding the next, so memory is exercised
with mlen = 0, then mlen > 0, then a full (or reused) memory.
"""

from __future__ import annotations

import pytest
import torch
from helpers import SMALL, random_inputs, random_lm, rel_err

from xlnet_ref.interop import from_hf, mems_from_hf, mems_to_hf, to_hf

# (id, config overrides, input options, batch)
CASES = [
    ("bi-plain", {}, {}, 2),
    ("bi-segments-leftpad", {}, dict(token_types=True, left_padding=True), 3),
    ("bi-two-stream", {}, dict(token_types=True, perm=True, num_predict=3), 2),
    ("bi-two-stream-padding", {}, dict(left_padding=True, perm=True, num_predict=4), 2),
    ("bi-shared-biases", dict(untie_r=False), dict(token_types=True, perm=True, num_predict=3), 2),
    ("bi-bi_data", dict(bi_data=True), dict(token_types=True, perm=True, num_predict=3), 4),
    ("bi-clamp", dict(clamp_len=3), dict(perm=True, num_predict=2), 2),
    ("bi-reuse", dict(mem_len=5, reuse_len=3), dict(token_types=True, perm=True, num_predict=3), 2),
    ("bi-gelu_new", dict(ff_activation="gelu_new"), dict(token_types=True), 2),
    ("bi-relu", dict(ff_activation="relu"), dict(perm=True, num_predict=2), 2),
    ("uni-plain", dict(attn_type="uni"), {}, 2),
    ("uni-same_length", dict(attn_type="uni", same_length=True), dict(token_types=True), 2),
    ("uni-bi_data-clamp", dict(attn_type="uni", bi_data=True, clamp_len=4, same_length=True), {}, 2),
    ("uni-two-stream", dict(attn_type="uni"), dict(token_types=True, perm=True, num_predict=3), 3),
    ("uni-leftpad", dict(attn_type="uni"), dict(token_types=True, left_padding=True), 2),
    ("uni-reuse-two-stream", dict(attn_type="uni", mem_len=4, reuse_len=2), dict(perm=True, num_predict=2), 2),
]


def hf_forward(hf, kw: dict, mems):
    """transformers' forward. 'uni' with a data mask and batch > 1 trips transformers' in-place add
    (huggingface/transformers#21626), so those cases run one row at a time and are stacked back."""
    has_data_mask = any(k in kw for k in ("perm_mask", "attention_mask", "input_mask"))
    args = dict(use_mems=True, output_hidden_states=True, output_attentions=True)
    if hf.config.attn_type == "bi" or not has_data_mask or kw["input_ids"].shape[0] == 1:
        return hf(**kw, mems=mems, **args)
    rows = []
    for b in range(kw["input_ids"].shape[0]):
        row_mems = None if mems is None else [m[:, b : b + 1] for m in mems]
        rows.append(hf(**{k: v[b : b + 1] for k, v in kw.items()}, mems=row_mems, **args))

    class Stacked:
        logits = torch.cat([r.logits for r in rows])
        mems = [torch.cat([r.mems[layer] for r in rows], dim=1) for layer in range(len(rows[0].mems))]
        hidden_states = [torch.cat([r.hidden_states[s] for r in rows]) for s in range(len(rows[0].hidden_states))]
        attentions = [
            tuple(torch.cat([r.attentions[layer][s] for r in rows]) for s in range(2))
            if isinstance(rows[0].attentions[layer], tuple)
            else torch.cat([r.attentions[layer] for r in rows])
            for layer in range(len(rows[0].attentions))
        ]

    return Stacked


def compare_call(ref_out, hf_out, kw) -> dict[str, float]:
    """Relative errors of every returned tensor of one call."""
    errs = {"logits": rel_err(ref_out.logits, hf_out.logits)}
    two_stream = "target_mapping" in kw
    final_h = hf_out.hidden_states[-2] if two_stream else hf_out.hidden_states[-1]
    errs["content"] = rel_err(ref_out.content, final_h)
    for layer, (m_ref, m_hf) in enumerate(zip(ref_out.mems, mems_from_hf(hf_out.mems))):
        errs[f"mem{layer}"] = rel_err(m_ref, m_hf)
    pos = kw["target_mapping"].argmax(-1) if two_stream else None
    for layer, (a_ref, a_hf) in enumerate(zip(ref_out.attentions, hf_out.attentions)):
        if two_stream:
            errs[f"prob_h{layer}"] = rel_err(a_ref[0], a_hf[0])
            # transformers' query stream attends at every position; ours only at the targets
            a_hf_g = a_hf[1].gather(2, pos[:, None, :, None].expand(-1, a_hf[1].shape[1], -1, a_hf[1].shape[3]))
            errs[f"prob_g{layer}"] = rel_err(a_ref[1], a_hf_g)
        else:
            errs[f"prob{layer}"] = rel_err(a_ref, a_hf)
    return errs


def run_case(overrides, opts, batch, *, dtype=torch.float32, seed=0, ref=None):
    """Three chained calls on both implementations; returns the worst relative error per call."""
    overrides = {"mem_len": 6, **overrides}
    ref = ref if ref is not None else random_lm(seed=seed, dtype=dtype, **overrides)
    hf = to_hf(ref).eval()
    mems_ref = mems_hf = None
    worst = []
    for call in range(3):
        kw = random_inputs(batch=batch, seq_len=7, vocab_size=SMALL["vocab_size"], seed=100 * seed + call, **opts)
        if dtype != torch.float32:
            kw = {k: v.to(dtype) if v.is_floating_point() else v for k, v in kw.items()}
        out_ref = ref(**kw, mems=mems_ref, output_attentions=True, output_hidden_states=True)
        out_hf = hf_forward(hf, kw, mems_hf)
        errs = compare_call(out_ref, out_hf, kw)
        worst.append(max(errs.items(), key=lambda kv: kv[1]))
        mems_ref, mems_hf = out_ref.mems, out_hf.mems
    return worst


@pytest.mark.parametrize("case_id, overrides, opts, batch", CASES, ids=[c[0] for c in CASES])
def test_matches_transformers_float32(case_id, overrides, opts, batch):
    worst = run_case(overrides, opts, batch)
    for call, (name, err) in enumerate(worst):
        assert err <= 1e-5, f"call {call}: {name} differs from transformers by {err:.2e} (relative)"


# transformers runs float64 end to end only in one-stream mode: in two-stream mode it multiplies its
# float32 positional table by float64 weights and raises. Those cases are covered in float32 above.
FLOAT64 = [c for c in CASES if "num_predict" not in c[2]]


@pytest.mark.parametrize("case_id, overrides, opts, batch", FLOAT64, ids=[c[0] for c in FLOAT64])
def test_matches_transformers_float64(case_id, overrides, opts, batch):
    worst = run_case(overrides, opts, batch, dtype=torch.float64)
    for call, (name, err) in enumerate(worst):
        assert err <= 1e-10, f"call {call}: {name} differs from transformers by {err:.2e} (relative, float64)"


def test_mem_len_zero_uses_given_mems_and_returns_none():
    """mem_len 0: we return no new memory (the original's meaning; transformers returns all states).
    Memory passed in is still attended to, exactly as transformers does."""
    ref = random_lm(mem_len=0)
    hf = to_hf(ref).eval()
    kw1 = random_inputs(batch=2, seq_len=5, vocab_size=SMALL["vocab_size"], seed=1)
    kw2 = random_inputs(batch=2, seq_len=7, vocab_size=SMALL["vocab_size"], seed=2, perm=True, num_predict=3)
    hf_mems = hf(**kw1, use_mems=True).mems  # transformers keeps every state: mlen = 5
    assert ref(**kw1).mems is None
    out_ref = ref(**kw2, mems=mems_from_hf(hf_mems))
    out_hf = hf(**kw2, mems=hf_mems, use_mems=True)
    assert rel_err(out_ref.logits, out_hf.logits) <= 1e-5


def test_gradients_match():
    ref = random_lm(mem_len=6, bi_data=True)
    hf = to_hf(ref).train()  # dropout is 0, so train mode only switches autograd bookkeeping
    ref.train()
    kw = random_inputs(
        batch=2, seq_len=7, vocab_size=SMALL["vocab_size"], seed=3, token_types=True, perm=True, num_predict=3
    )
    mems = [torch.randn(2, 4, SMALL["d_model"]) for _ in range(SMALL["n_layer"])]
    weights = torch.randn(2, 3, SMALL["vocab_size"])
    (ref(**kw, mems=mems).logits * weights).sum().backward()
    (hf(**kw, mems=mems_to_hf(mems)).logits * weights).sum().backward()

    ref_grads = {n: p.grad for n, p in ref.named_parameters()}
    as_hf = {}  # our gradients laid out under transformers' names
    for name, g in ref_grads.items():
        if name.startswith("transformer.r_"):
            for layer in range(SMALL["n_layer"]):
                as_hf[f"transformer.layer.{layer}.rel_attn.{name.split('.')[-1]}"] = g[layer]
        else:
            as_hf[name] = g
    checked = 0
    for name, p in hf.named_parameters():
        assert name in as_hf, f"no gradient of ours for transformers' {name}"
        assert rel_err(as_hf[name], p.grad) <= 1e-5, f"gradient of {name} differs"
        checked += 1
    assert checked == len(list(hf.parameters()))


def test_round_trip_is_bit_exact():
    for untie_r in (True, False):
        ref = random_lm(untie_r=untie_r)
        back = from_hf(to_hf(ref), untie_r=untie_r)
        sd, sd_back = ref.state_dict(), back.state_dict()
        assert sd.keys() == sd_back.keys()
        for name in sd:
            assert torch.equal(sd[name], sd_back[name]), name
    hf = to_hf(random_lm(seed=5))
    hf2 = to_hf(from_hf(hf))
    for (n1, t1), (n2, t2) in zip(hf.state_dict().items(), hf2.state_dict().items()):
        assert n1 == n2 and torch.equal(t1, t2), n1


def test_from_hf_backbone_gives_backbone():
    from xlnet_ref import XLNetModel

    hf_lm = to_hf(random_lm())
    ours = from_hf(hf_lm.transformer)
    assert isinstance(ours, XLNetModel)
    kw = random_inputs(batch=2, seq_len=6, vocab_size=SMALL["vocab_size"], seed=4, perm=True, num_predict=2)
    assert rel_err(ours(**kw).last_hidden_state, hf_lm.transformer(**kw).last_hidden_state) <= 1e-5


def test_from_hf_untie_false_refuses_different_layer_biases():
    hf = to_hf(random_lm(untie_r=True))
    with pytest.raises(ValueError, match="r_w_bias.*identical"):
        from_hf(hf, untie_r=False)


# --- the parity check can fail: perturb one weight or switch off one mechanism ----------------------


def test_parity_detects_one_perturbed_weight():
    ref = random_lm()
    with torch.no_grad():
        ref.transformer.r_r_bias[1, 2, 3] += 1e-3  # v of layer 1, head 2, one coordinate
    hf = to_hf(ref).eval()
    with torch.no_grad():
        ref.transformer.r_r_bias[1, 2, 3] -= 1e-3  # ours back to the original weights
    kw = random_inputs(batch=2, seq_len=7, vocab_size=SMALL["vocab_size"], seed=7)
    err = rel_err(ref(**kw).logits, hf(**kw).logits)
    assert err > 1e-5, f"a perturbed weight went unnoticed (error {err:.1e})"


@pytest.mark.parametrize("mechanism", ["rel_shift", "segment", "memory", "query_mask"])
def test_parity_detects_a_switched_off_mechanism(monkeypatch, mechanism):
    import xlnet_ref.attention as attention
    import xlnet_ref.model as model

    if mechanism == "rel_shift":  # keep the first klen columns instead of shifting: absolute-like positions
        monkeypatch.setattr(attention, "rel_shift", lambda bd, klen: bd[..., :klen])
    elif mechanism == "segment":
        monkeypatch.setattr(model, "segment_difference", lambda tt, mlen: None)
    elif mechanism == "memory":  # the cached states are replaced by zeros before attention reads them
        real_attention = model.two_stream_attention
        monkeypatch.setattr(
            model,
            "two_stream_attention",
            lambda attn, h, g, mem, *a, **k: real_attention(attn, h, g, None if mem is None else 0 * mem, *a, **k),
        )
    elif mechanism == "query_mask":  # one mask for both streams: the query stream sees its own token
        real_masks = model.attention_masks
        monkeypatch.setattr(model, "attention_masks", lambda **k: (real_masks(**k)[1],) * 2)
    worst = run_case({}, dict(token_types=True, perm=True, num_predict=3), 2)
    assert max(err for _, err in worst) > 1e-3, f"switching off {mechanism} went unnoticed: {worst}"
