"""Task heads against transformers' XLNetFor* on the same random weights: every output field, the loss,
the memory, float32 and float64; the check can fail; bad input gets a ValueError naming the argument.

Inputs are laid out as XLNet lays them out: left padding, ``[A SEP B SEP CLS]`` with token types
A = 0, B = 1, CLS = 2. Each case runs three chained calls (the memory of one feeds the next).
"""

from __future__ import annotations

import itertools

import pytest
import torch
from helpers import SMALL, rel_err

from xlnet_ref.heads import (
    HeadConfig,
    SequenceSummary,
    XLNetForMultipleChoice,
    XLNetForQuestionAnswering,
    XLNetForQuestionAnsweringSimple,
    XLNetForSequenceClassification,
    XLNetForTokenClassification,
    best_span,
)
from xlnet_ref.interop import from_hf, mems_from_hf, mems_to_hf, to_hf

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


def random_head(
    cls, head: HeadConfig | None = None, *, seed: int = 0, std: float = 0.3, dtype=torch.float32, **overrides
):
    """A head whose every weight is drawn N(0, std) (LayerNorm weights around 1): each term moves the output."""
    from xlnet_ref import XLNetConfig

    torch.manual_seed(seed)
    model = cls(XLNetConfig(**{**SMALL, "mem_len": 6, **overrides}), head)
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_ln_weight = ("layer_norm" in name or "LayerNorm" in name) and name.endswith("weight")
            p.normal_(mean=1.0 if is_ln_weight else 0.0, std=std)
    return model.to(dtype).eval()


def pair_inputs(*, batch: int, seq_len: int, seed: int, padding: bool = True, dtype=torch.float32) -> dict:
    """[pad ... A SEP B SEP CLS] rows: token types A = 0, B = 1, CLS = 2; attention_mask 0 on the left padding."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, SMALL["vocab_size"], (batch, seq_len), generator=g)
    token_type_ids = torch.zeros(batch, seq_len, dtype=torch.long)
    attention_mask = torch.ones(batch, seq_len, dtype=dtype)
    for b in range(batch):
        pad = int(torch.randint(0, seq_len // 3 + 1, (1,), generator=g)) if padding else 0
        real = seq_len - pad
        len_a = int(torch.randint(1, real - 3, (1,), generator=g))  # A, SEP | B, SEP | CLS
        token_type_ids[b, pad + len_a + 1 :] = 1
        token_type_ids[b, -1] = 2
        attention_mask[b, :pad] = 0
    return dict(input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask)


def hf_mems(out):
    return out.mems


def run_chained(ours, kws: list[dict], *, compare: list[str], dtype=torch.float32) -> list[tuple[str, float]]:
    """Three calls on ours and on transformers' copy, mems chained; the worst relative error per call."""
    hf = to_hf(ours).eval()
    mems_ours = mems_hf = None
    worst = []
    for kw in kws:
        out_ours = ours(**kw, mems=mems_ours)
        out_hf = hf(**kw, mems=mems_hf, use_mems=True)
        errs = {}
        for field in compare:
            a, b = getattr(out_ours, field), getattr(out_hf, field)
            assert a is not None and b is not None, field
            if a.dtype in (torch.long, torch.int):
                errs[field] = 0.0 if torch.equal(a, b) else float("inf")
            else:
                assert a.dtype == dtype, f"{field}: dtype {a.dtype}, expected {dtype}"
                errs[field] = rel_err(a, b)
        if out_ours.mems is not None:
            for layer, (m_ours, m_hf) in enumerate(zip(out_ours.mems, mems_from_hf(out_hf.mems))):
                errs[f"mem{layer}"] = rel_err(m_ours, m_hf)
        worst.append(max(errs.items(), key=lambda kv: kv[1]))
        mems_ours, mems_hf = out_ours.mems, out_hf.mems
    return worst


def assert_close(worst, dtype):
    for call, (name, err) in enumerate(worst):
        assert err <= TOL[dtype], f"call {call}: {name} differs from transformers by {err:.2e} (relative, {dtype})"


# ------------------------------------------------------------------------- sequence classification
SUMMARIES = list(itertools.product(["last", "first", "mean", "cls_index"], [True, False], ["tanh", "linear"]))
DTYPES = [torch.float32, torch.float64]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize(
    "summary_type, use_proj, activation",
    SUMMARIES,
    ids=[f"{t}-{'proj' if p else 'noproj'}-{a}" for t, p, a in SUMMARIES],
)
def test_sequence_classification_matches_transformers(summary_type, use_proj, activation, dtype):
    head = HeadConfig(
        num_labels=3,
        summary_type=summary_type,
        summary_use_proj=use_proj,
        summary_activation=activation,
        summary_first_dropout=0.2,
    )
    ours = random_head(XLNetForSequenceClassification, head, dtype=dtype)
    kws = []
    for call in range(3):
        kw = pair_inputs(batch=3, seq_len=9, seed=call, dtype=dtype)
        kw["labels"] = torch.tensor([0, 2, 1])
        kws.append(kw)
    assert_close(run_chained(ours, kws, compare=["logits", "loss"], dtype=dtype), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("problem", ["regression", "multi_label"])
def test_sequence_regression_and_multi_label_losses_match(problem, dtype):
    num_labels = 1 if problem == "regression" else 4
    ours = random_head(XLNetForSequenceClassification, HeadConfig(num_labels=num_labels), dtype=dtype)
    g = torch.Generator().manual_seed(5)
    kws = []
    for call in range(3):
        kw = pair_inputs(batch=3, seq_len=8, seed=10 + call, dtype=dtype)
        shape = (3,) if problem == "regression" else (3, num_labels)
        labels = torch.randn(shape, generator=g) if problem == "regression" else (torch.rand(shape, generator=g) < 0.5)
        kw["labels"] = labels.to(dtype)
        kws.append(kw)
    assert_close(run_chained(ours, kws, compare=["logits", "loss"], dtype=dtype), dtype)


def test_sequence_classification_two_stream_matches_transformers():
    """With perm_mask + target_mapping the heads read the query stream, as transformers' do."""
    ours = random_head(XLNetForSequenceClassification, HeadConfig(num_labels=2))
    g = torch.Generator().manual_seed(3)
    kws = []
    for call in range(3):
        kw = pair_inputs(batch=2, seq_len=7, seed=20 + call)
        kw["perm_mask"] = (torch.rand(2, 7, 7, generator=g) < 0.4).float()
        tm = torch.zeros(2, 3, 7)
        for b in range(2):
            tm[b, torch.arange(3), torch.randperm(7, generator=g)[:3]] = 1
        kw["target_mapping"] = tm
        kws.append(kw)
    assert_close(run_chained(ours, kws, compare=["logits"]), torch.float32)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("summary_type", ["last", "first", "mean", "cls_index"])
def test_sequence_summary_alone_matches_transformers_with_cls_index(summary_type, dtype):
    """transformers' heads never pass cls_index to the summary; the summary module itself takes it."""
    from transformers.models.xlnet.modeling_xlnet import XLNetSequenceSummary

    from xlnet_ref.interop import config_to_hf

    head = HeadConfig(summary_type=summary_type)
    torch.manual_seed(0)
    ours = SequenceSummary(random_head(XLNetForSequenceClassification).config, head).to(dtype).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_(std=0.3)
    hf = XLNetSequenceSummary(config_to_hf(random_head(XLNetForSequenceClassification).config, head)).to(dtype).eval()
    hf.load_state_dict(ours.state_dict())
    h = torch.randn(3, 6, SMALL["d_model"], dtype=dtype)
    cls_index = torch.tensor([5, 2, 0])
    assert rel_err(ours(h, cls_index), hf(h, cls_index)) <= TOL[dtype]
    assert rel_err(ours(h), hf(h)) <= TOL[dtype]


# ----------------------------------------------------------------------- token / multiple choice
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_token_classification_matches_transformers(dtype):
    ours = random_head(XLNetForTokenClassification, HeadConfig(num_labels=5), dtype=dtype)
    g = torch.Generator().manual_seed(1)
    kws = []
    for call in range(3):
        kw = pair_inputs(batch=3, seq_len=8, seed=30 + call, dtype=dtype)
        labels = torch.randint(0, 5, (3, 8), generator=g)
        labels[kw["attention_mask"] == 0] = -100  # padding is not labelled
        kw["labels"] = labels
        kws.append(kw)
    assert_close(run_chained(ours, kws, compare=["logits", "loss"], dtype=dtype), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("summary_type", ["last", "mean"])
def test_multiple_choice_matches_transformers(summary_type, dtype):
    ours = random_head(XLNetForMultipleChoice, HeadConfig(summary_type=summary_type), dtype=dtype)
    kws = []
    for call in range(3):
        flat = pair_inputs(batch=2 * 3, seq_len=8, seed=40 + call, dtype=dtype)
        kw = {k: v.view(2, 3, 8) for k, v in flat.items()}
        kw["labels"] = torch.tensor([2, 0])
        kws.append(kw)
    assert_close(run_chained(ours, kws, compare=["logits", "loss"], dtype=dtype), dtype)


# ------------------------------------------------------------------------------------------- QA
def qa_inputs(*, batch: int, seq_len: int, seed: int, dtype=torch.float32) -> dict:
    """[pad ... passage SEP question SEP CLS] with p_mask = 1 outside the passage; CLS index = last."""
    kw = pair_inputs(batch=batch, seq_len=seq_len, seed=seed, dtype=dtype)
    p_mask = torch.ones(batch, seq_len, dtype=dtype)
    passage = (kw["token_type_ids"] == 0) & (kw["attention_mask"] == 1)
    for b in range(batch):
        cols = passage[b].nonzero().flatten()[:-1]  # the passage without its SEP
        p_mask[b, cols] = 0
        if len(cols) == 0:
            p_mask[b, -2] = 0
    kw["p_mask"] = p_mask
    return kw


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_question_answering_simple_matches_transformers(dtype):
    ours = random_head(XLNetForQuestionAnsweringSimple, dtype=dtype)
    kws = []
    for call in range(3):
        kw = pair_inputs(batch=3, seq_len=9, seed=50 + call, dtype=dtype)
        kw["start_positions"] = torch.tensor([1, 4, 20])  # 20 >= seq_len: ignored by both, as transformers
        kw["end_positions"] = torch.tensor([3, 4, 6])
        kws.append(kw)
    assert_close(run_chained(ours, kws, compare=["start_logits", "end_logits", "loss"], dtype=dtype), dtype)


BEAM_FIELDS = ["start_top_log_probs", "start_top_index", "end_top_log_probs", "end_top_index", "cls_logits"]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("with_cls_index", [False, True], ids=["cls-last", "cls-index"])
def test_question_answering_beam_search_matches_transformers(with_cls_index, dtype):
    ours = random_head(XLNetForQuestionAnswering, HeadConfig(start_n_top=3, end_n_top=2), dtype=dtype)
    kws = []
    for call in range(3):
        kw = qa_inputs(batch=3, seq_len=10, seed=60 + call, dtype=dtype)
        if with_cls_index:
            kw["cls_index"] = torch.tensor([9, 9, 4])
        kws.append(kw)
    assert_close(run_chained(ours, kws, compare=BEAM_FIELDS, dtype=dtype), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("answerability", [False, True], ids=["spans", "spans+is_impossible"])
def test_question_answering_training_loss_matches_transformers(answerability, dtype):
    ours = random_head(XLNetForQuestionAnswering, dtype=dtype)
    kws = []
    for call in range(3):
        kw = qa_inputs(batch=3, seq_len=10, seed=70 + call, dtype=dtype)
        kw["start_positions"] = torch.tensor([3, 5, 7])
        kw["end_positions"] = torch.tensor([4, 5, 8])
        if answerability:
            kw["cls_index"] = torch.tensor([9, 9, 9])
            kw["is_impossible"] = torch.tensor([0.0, 1.0, 0.0], dtype=dtype)
        kws.append(kw)
    assert_close(run_chained(ours, kws, compare=["loss"], dtype=dtype), dtype)


def test_best_span_picks_the_highest_joint_probability_with_start_before_end():
    """Hand-made beam: the best pair by p_s * p_e has end < start and must be skipped."""
    from xlnet_ref.heads import XLNetHeadOutput

    out = XLNetHeadOutput(
        start_top_log_probs=torch.tensor([[0.6, 0.3]]),
        start_top_index=torch.tensor([[5, 2]]),
        # [e, t] flattened end-major: (e0,t0) (e0,t1) (e1,t0) (e1,t1)
        end_top_log_probs=torch.tensor([[0.9, 0.5, 0.1, 0.4]]),
        end_top_index=torch.tensor([[3, 4, 6, 2]]),
    )
    start, end = best_span(out, start_n_top=2, end_n_top=2)
    # (5,3) has 0.54 but end < start; (2,4): 0.15; (5,6): 0.06; (2,2): 0.12
    assert start.tolist() == [2] and end.tolist() == [4]


# ------------------------------------------------------------------------- gradients, round trip
def test_gradients_of_every_parameter_match():
    ours = random_head(XLNetForQuestionAnswering).train()
    for m in ours.modules():  # dropout off: only autograd bookkeeping differs between train and eval
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    hf = to_hf(ours).train()
    kw = qa_inputs(batch=3, seq_len=10, seed=80)
    kw.update(
        start_positions=torch.tensor([3, 5, 7]),
        end_positions=torch.tensor([4, 5, 8]),
        cls_index=torch.tensor([9, 9, 9]),
        is_impossible=torch.tensor([0.0, 1.0, 0.0]),
    )
    mems = [torch.randn(3, 4, SMALL["d_model"]) for _ in range(SMALL["n_layer"])]
    ours(**kw, mems=mems).loss.backward()
    hf(**kw, mems=mems_to_hf(mems)).loss.backward()
    ours_grads = {}
    for name, p in ours.named_parameters():
        if name.startswith("transformer.r_"):
            for layer in range(SMALL["n_layer"]):
                ours_grads[f"transformer.layer.{layer}.rel_attn.{name.split('.')[-1]}"] = p.grad[layer]
        else:
            ours_grads[name] = p.grad
    checked = 0
    for name, p in hf.named_parameters():
        if p.grad is None:  # transformers' mask_emb gets no gradient without target_mapping
            assert ours_grads[name] is None or not ours_grads[name].any(), name
            continue
        assert rel_err(ours_grads[name], p.grad) <= 1e-5, f"gradient of {name} differs"
        checked += 1
    assert checked > 40


@pytest.mark.parametrize(
    "cls",
    [
        XLNetForSequenceClassification,
        XLNetForTokenClassification,
        XLNetForMultipleChoice,
        XLNetForQuestionAnsweringSimple,
        XLNetForQuestionAnswering,
    ],
    ids=lambda c: c.__name__,
)
def test_round_trip_is_bit_exact_for_every_head(cls):
    head = HeadConfig(
        num_labels=2,
        summary_type="mean",
        summary_activation="linear",
        summary_last_dropout=0.0,
        summary_first_dropout=0.3,
        start_n_top=4,
        end_n_top=3,
    )
    ours = random_head(cls, head)
    hf = to_hf(ours)
    assert type(hf).__name__ == cls.__name__
    back = from_hf(hf)
    assert type(back) is cls and back.head_config == ours.head_config
    sd, sd_back = ours.state_dict(), back.state_dict()
    assert sd.keys() == sd_back.keys()
    for name in sd:
        assert torch.equal(sd[name], sd_back[name]), name


def test_from_hf_reads_transformers_default_head_config():
    """A head made in transformers (its defaults: tanh summary, last dropout 0.1, n_top 5) converts as is."""
    import transformers

    from xlnet_ref.interop import config_to_hf

    cfg = config_to_hf(random_head(XLNetForSequenceClassification).config)
    cfg.num_labels = 3
    torch.manual_seed(0)
    hf = transformers.XLNetForSequenceClassification(cfg).eval()
    ours = from_hf(hf)
    assert ours.head_config == HeadConfig(num_labels=3)
    kw = pair_inputs(batch=2, seq_len=7, seed=90)
    assert rel_err(ours(**kw).logits, hf(**kw).logits) <= 1e-5


# ---------------------------------------------------------------------- the check can fail
@pytest.mark.parametrize(
    "cls, tensor",
    [
        (XLNetForSequenceClassification, "sequence_summary.summary.weight"),
        (XLNetForMultipleChoice, "logits_proj.weight"),
        (XLNetForTokenClassification, "classifier.bias"),
        (XLNetForQuestionAnsweringSimple, "qa_outputs.weight"),
        (XLNetForQuestionAnswering, "answer_class.dense_1.weight"),
        (XLNetForQuestionAnswering, "end_logits.LayerNorm.weight"),
    ],
)
def test_parity_detects_one_perturbed_head_weight(cls, tensor):
    ours = random_head(cls)
    param = dict(ours.named_parameters())[tensor]
    with torch.no_grad():
        param.view(-1)[0] += 1e-3
    hf = to_hf(ours).eval()
    with torch.no_grad():
        param.view(-1)[0] -= 1e-3
    if cls is XLNetForMultipleChoice:
        kw = {k: v.view(2, 2, 8) for k, v in pair_inputs(batch=4, seq_len=8, seed=1).items()}
    else:
        kw = (
            qa_inputs(batch=3, seq_len=10, seed=1)
            if cls is XLNetForQuestionAnswering
            else pair_inputs(batch=3, seq_len=10, seed=1)
        )
    out_ours, out_hf = ours(**kw), hf(**kw)
    fields = {
        XLNetForQuestionAnsweringSimple: ["start_logits", "end_logits"],
        XLNetForQuestionAnswering: ["start_top_log_probs", "end_top_log_probs", "cls_logits"],
    }.get(cls, ["logits"])
    err = max(rel_err(getattr(out_ours, f), getattr(out_hf, f)) for f in fields)
    assert err > 1e-5, f"a perturbed {tensor} went unnoticed (error {err:.1e})"


def test_parity_detects_a_wrong_summary_token():
    """Reading the first token instead of XLNet's CLS at the end is caught."""
    ours = random_head(XLNetForSequenceClassification, HeadConfig(summary_type="last"))
    hf = to_hf(ours).eval()
    ours.sequence_summary.summary_type = "first"
    kw = pair_inputs(batch=3, seq_len=9, seed=2)
    assert rel_err(ours(**kw).logits, hf(**kw).logits) > 1e-3


# ------------------------------------------------------------------------------------ bad input
def test_bad_input_raises_value_error_naming_the_argument():
    seq = random_head(XLNetForSequenceClassification, HeadConfig(num_labels=2))
    kw = pair_inputs(batch=2, seq_len=7, seed=0)
    with pytest.raises(ValueError, match=r"labels: expected values in \[0, 2\).*got 2"):
        seq(**kw, labels=torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="labels: expected values in .*got -1"):
        random_head(XLNetForTokenClassification, HeadConfig(num_labels=3))(**kw, labels=torch.full((2, 7), -1))

    mc = random_head(XLNetForMultipleChoice)
    with pytest.raises(ValueError, match=r"input_ids: expected shape \[batch, choices, length\]"):
        mc(**kw)
    kw3 = {k: v.view(1, 2, 7) for k, v in kw.items()}
    with pytest.raises(ValueError, match=r"token_type_ids: expected shape \[1, 2, 7\]"):
        mc(**{**kw3, "token_type_ids": kw["token_type_ids"]})
    with pytest.raises(ValueError, match=r"labels: expected values in \[0, 2\)"):
        mc(**kw3, labels=torch.tensor([2]))

    qa = random_head(XLNetForQuestionAnswering)
    qkw = qa_inputs(batch=2, seq_len=7, seed=0)
    with pytest.raises(ValueError, match=r"cls_index: expected values in \[0, 7\).*got 7"):
        qa(**qkw, cls_index=torch.tensor([6, 7]))
    with pytest.raises(ValueError, match=r"start_positions: expected values in \[0, 7\)"):
        qa(**qkw, start_positions=torch.tensor([0, 9]), end_positions=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"p_mask: expected shape \[2, 7\]"):
        qa(**{**qkw, "p_mask": qkw["p_mask"][:, :5]})
    with pytest.raises(ValueError, match="input_ids: expected at least max"):
        qa(**{k: v[:, -4:] for k, v in qkw.items()})

    summary = SequenceSummary(seq.config, HeadConfig(summary_type="cls_index"))
    with pytest.raises(ValueError, match=r"cls_index: expected values in \[0, 4\)"):
        summary(torch.randn(2, 4, SMALL["d_model"]), torch.tensor([1, -1]))
    with pytest.raises(ValueError, match="HeadConfig.summary_type"):
        HeadConfig(summary_type="attn")
    with pytest.raises(ValueError, match="head.num_labels: expected 2"):
        XLNetForQuestionAnsweringSimple(seq.config, HeadConfig(num_labels=3))
