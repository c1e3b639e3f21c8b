r"""Task heads on the XLNet backbone: what fine-tuning puts on top (XLNet Sec. 3, GLUE / SQuAD / RACE).

Every head reads the backbone's last hidden states :math:`h \in \mathbb R^{b \times i \times m}` (the
content stream, or the query stream g when ``target_mapping`` is given, as transformers does) and adds
a few linear layers. Class names, argument names, parameter names and output field names are
transformers' (``XLNetForSequenceClassification`` ...), so :mod:`xlnet_ref.interop` copies weights
by name and the parity tests compare field by field.

The CLS token is at the END of an XLNet input, ``[A SEP B SEP CLS]`` with padding on the left
(original ``classifier_utils.py``), so the default summary ``"last"`` reads the CLS state whatever
the padding. BERT reads the first token instead (``"first"``).

    SequenceSummary                    s = dropout_2(act(W_s dropout_1(pool(h)) + b_s))
    XLNetForSequenceClassification     logits = W_l s + b_l          [b, l]
    XLNetForTokenClassification        logits_i = W_l h_i + b_l      [b, i, l]
    XLNetForMultipleChoice             logits_c = w^T s_c + b        [b, c]  (input [b, c, i])
    XLNetForQuestionAnsweringSimple    start_i, end_i = W h_i + b    [b, i] each
    XLNetForQuestionAnswering          start logits with p_mask, end logits conditioned on the start,
                                       beam search start_n_top x end_n_top, answer class from CLS

Axis letters (see ``xlnet_ref/__init__.py``) plus: ``l`` label, ``c`` choice, ``t`` start candidate
(top start_n_top), ``e`` end candidate (top end_n_top).

Where we differ from transformers (on purpose, outputs unchanged): transformers decides
``problem_type`` on the first call with labels and stores it in the config; we decide it per call
from ``num_labels`` and the labels' dtype (or take ``HeadConfig.problem_type`` when set). Labels out
of range raise a ValueError naming the argument, except the ignore index -100 (and, in
``XLNetForQuestionAnsweringSimple``, positions at or past the sequence end, which transformers
ignores on purpose: an answer cut off by truncation).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import XLNetConfig, dataclass_from_dict
from .model import XLNetModel, XLNetOutput

SUMMARY_TYPES = ("last", "first", "mean", "cls_index")
SUMMARY_ACTIVATIONS = ("tanh", "linear")  # transformers: "linear" (or no activation) = identity
PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification", None)
IGNORE_INDEX = -100  # torch's CrossEntropyLoss default, which transformers relies on


@dataclass
class HeadConfig:
    """The head's settings, with transformers' ``XLNetConfig`` field names and defaults (except
    ``summary_first_dropout``, which transformers' XLNetConfig does not define: 0 = none)."""

    num_labels: int = 2
    problem_type: str | None = None  # None: from num_labels and the labels' dtype, as transformers
    summary_type: str = "last"
    summary_use_proj: bool = True
    summary_activation: str = "tanh"
    summary_first_dropout: float = 0.0
    summary_last_dropout: float = 0.1
    start_n_top: int = 5
    end_n_top: int = 5

    def __post_init__(self):
        for name in ("num_labels", "start_n_top", "end_n_top"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"HeadConfig.{name}: expected a positive int, got {value!r}")
        if self.summary_type not in SUMMARY_TYPES:
            raise ValueError(f"HeadConfig.summary_type: expected one of {SUMMARY_TYPES}, got {self.summary_type!r}")
        if self.summary_activation not in SUMMARY_ACTIVATIONS:
            raise ValueError(
                f"HeadConfig.summary_activation: expected one of {SUMMARY_ACTIVATIONS}, got {self.summary_activation!r}"
            )
        if self.problem_type not in PROBLEM_TYPES:
            raise ValueError(f"HeadConfig.problem_type: expected one of {PROBLEM_TYPES}, got {self.problem_type!r}")
        if not isinstance(self.summary_use_proj, bool):
            raise ValueError(f"HeadConfig.summary_use_proj: expected a bool, got {self.summary_use_proj!r}")
        for name in ("summary_first_dropout", "summary_last_dropout"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value < 1.0):
                raise ValueError(f"HeadConfig.{name}: expected a float in [0, 1), got {value!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> HeadConfig:
        return dataclass_from_dict(cls, d)


@dataclass
class XLNetHeadOutput:
    """What a head returns: transformers' field names; only the fields of the head that ran are set."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None  # [b, l] / [b, i, l] / [b, c]
    start_logits: torch.Tensor | None = None  # [b, i]  (QA simple)
    end_logits: torch.Tensor | None = None  # [b, i]  (QA simple)
    start_top_log_probs: torch.Tensor | None = None  # [b, t]  (QA beam; probabilities, as transformers)
    start_top_index: torch.Tensor | None = None  # [b, t]
    end_top_log_probs: torch.Tensor | None = None  # [b, e * t]  (flattened end-major, as transformers)
    end_top_index: torch.Tensor | None = None  # [b, e * t]
    cls_logits: torch.Tensor | None = None  # [b]  answerability logit from CLS and the expected start
    mems: list | None = None
    hidden_states: list | None = None
    attentions: list | None = None
    backbone: XLNetOutput | None = None  # the whole backbone output (content and query streams)


# ------------------------------------------------------------------------------------ checks
def _check_index(name: str, t: torch.Tensor, *, shape: tuple, upper: int, what: str, allow_ignore: bool = False):
    """t: an integer tensor of ``shape`` whose values are in [0, upper) (or the ignore index)."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dtype.is_floating_point or t.dtype == torch.bool:
        raise ValueError(f"{name}: expected an integer tensor ({what}), got dtype {t.dtype}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {list(shape)}, got {list(t.shape)}")
    ok = (t >= 0) & (t < upper)
    if allow_ignore:
        ok |= t == IGNORE_INDEX
    if not bool(ok.all()):
        bad = t[~ok].flatten()[0].item()
        extra = f" or {IGNORE_INDEX} (ignored)" if allow_ignore else ""
        raise ValueError(f"{name}: expected values in [0, {upper}){extra} ({what}), got {bad}")


def _init_linear(module: nn.Module, std: float) -> None:
    """transformers' _init_weights: Linear weight N(0, std), bias 0; LayerNorm weight 1, bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# ---------------------------------------------------------------------------------- summary
class SequenceSummary(nn.Module):
    r"""One vector per sequence (transformers' ``XLNetSequenceSummary``, the original ``summarize_sequence``):

    .. math::
        s = \mathrm{dropout}_2\big(\mathrm{act}(W_s\,\mathrm{dropout}_1(\mathrm{pool}(h)) + b_s)\big)

    pool: ``"last"`` :math:`h_{b,-1}` (XLNet's CLS, at the end), ``"first"`` :math:`h_{b,0}`, ``"mean"``
    :math:`\frac1{I}\sum_i h_{b,i}` (padding included, as transformers), ``"cls_index"``
    :math:`h_{b,\mathrm{cls\_index}_b}` (the last token when cls_index is None). act: tanh or identity.
    :math:`W_s` is [m, m] (``summary_use_proj``) or absent.
    """

    def __init__(self, config: XLNetConfig, head: HeadConfig):
        super().__init__()
        self.summary_type = head.summary_type
        self.summary = nn.Linear(config.d_model, config.d_model) if head.summary_use_proj else nn.Identity()
        self.activation = nn.Tanh() if head.summary_activation == "tanh" else nn.Identity()
        self.first_dropout = nn.Dropout(head.summary_first_dropout) if head.summary_first_dropout > 0 else nn.Identity()
        self.last_dropout = nn.Dropout(head.summary_last_dropout) if head.summary_last_dropout > 0 else nn.Identity()

    def pool(self, h: torch.Tensor, cls_index: torch.Tensor | None = None) -> torch.Tensor:
        """[..., i, m] -> [..., m]: the token (or mean) that summarises the sequence."""
        if self.summary_type == "last":
            return h[..., -1, :]
        if self.summary_type == "first":
            return h[..., 0, :]
        if self.summary_type == "mean":
            return h.mean(dim=-2)
        if cls_index is None:
            return h[..., -1, :]
        _check_index("cls_index", cls_index, shape=h.shape[:-2], upper=h.shape[-2], what="position of the CLS token")
        return h.gather(-2, cls_index[..., None, None].expand(*cls_index.shape, 1, h.shape[-1])).squeeze(-2)

    def forward(self, h: torch.Tensor, cls_index: torch.Tensor | None = None) -> torch.Tensor:
        """h [b, i, m] (or [b, c, i, m]); cls_index [b] (or [b, c]) for summary_type "cls_index". -> [b, m]."""
        s = self.first_dropout(self.pool(h, cls_index))
        return self.last_dropout(self.activation(self.summary(s)))


class _Head(nn.Module):
    """Backbone + head settings; subclasses add their layers and a forward."""

    def __init__(self, config: XLNetConfig, head: HeadConfig | None = None):
        super().__init__()
        if head is not None and not isinstance(head, HeadConfig):
            raise ValueError(f"head: expected a HeadConfig, got {type(head).__name__}")
        self.config = config
        self.head_config = head if head is not None else HeadConfig()
        self.transformer = XLNetModel(config)

    def head_parameters_init(self) -> None:
        """transformers' initialisation of every layer outside the backbone."""
        for name, child in self.named_children():
            if name != "transformer":
                _init_linear(child, self.config.initializer_range)

    def _backbone(self, input_ids, backbone_kwargs) -> XLNetOutput:
        return self.transformer(input_ids, **backbone_kwargs)

    @staticmethod
    def _output(out: XLNetOutput, **fields) -> XLNetHeadOutput:
        return XLNetHeadOutput(
            mems=out.mems, hidden_states=out.hidden_states, attentions=out.attentions, backbone=out, **fields
        )


# ------------------------------------------------------------------------- classification heads
class XLNetForSequenceClassification(_Head):
    r"""Sentence (pair) classification or regression (GLUE; XLNet Sec. 3.3):

    .. math::
        \mathrm{logits} = W_l\, s + b_l,\qquad s = \mathrm{SequenceSummary}(h)

    loss: ``num_labels == 1`` mean squared error (regression); integer labels cross-entropy
    :math:`-\frac1B\sum_b \log\mathrm{softmax}(\mathrm{logits}_b)_{y_b}`; float labels with
    ``num_labels > 1`` binary cross-entropy per label (multi-label), as transformers.
    """

    def __init__(self, config: XLNetConfig, head: HeadConfig | None = None):
        super().__init__(config, head)
        self.num_labels = self.head_config.num_labels
        self.sequence_summary = SequenceSummary(config, self.head_config)
        self.logits_proj = nn.Linear(config.d_model, self.num_labels)
        self.head_parameters_init()

    def problem_type(self, labels: torch.Tensor) -> str:
        if self.head_config.problem_type is not None:
            return self.head_config.problem_type
        if self.num_labels == 1:
            return "regression"
        if labels.dtype in (torch.long, torch.int):
            return "single_label_classification"
        return "multi_label_classification"

    def forward(self, input_ids: torch.Tensor, *, labels: torch.Tensor | None = None, **backbone_kwargs):
        """input_ids [b, i] and the backbone's keyword arguments; labels [b] (int class or float target)
        or [b, l] (float, multi-label). Returns loss (with labels) and logits [b, l]."""
        out = self._backbone(input_ids, backbone_kwargs)
        logits = self.logits_proj(self.sequence_summary(out.last_hidden_state))  # [b, l]
        loss = None
        if labels is not None:
            b = input_ids.shape[0]
            kind = self.problem_type(labels)
            if kind == "regression":
                loss = (
                    F.mse_loss(logits.squeeze(), labels.squeeze())
                    if self.num_labels == 1
                    else F.mse_loss(logits, labels)
                )
            elif kind == "single_label_classification":
                _check_index(
                    "labels",
                    labels.reshape(-1),
                    shape=(b,),
                    upper=self.num_labels,
                    allow_ignore=True,
                    what=f"class of each sequence, num_labels={self.num_labels}",
                )
                loss = F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
            else:
                if tuple(labels.shape) != tuple(logits.shape):
                    raise ValueError(
                        f"labels: expected shape {list(logits.shape)} (multi-label targets), got {list(labels.shape)}"
                    )
                loss = F.binary_cross_entropy_with_logits(logits, labels)
        return self._output(out, loss=loss, logits=logits)


class XLNetForTokenClassification(_Head):
    r"""A label per position (e.g. tagging): :math:`\mathrm{logits}_{b,i} = W_l h_{b,i} + b_l`, loss the mean
    cross-entropy over positions whose label is not -100."""

    def __init__(self, config: XLNetConfig, head: HeadConfig | None = None):
        super().__init__(config, head)
        self.num_labels = self.head_config.num_labels
        self.classifier = nn.Linear(config.d_model, self.num_labels)
        self.head_parameters_init()

    def forward(self, input_ids: torch.Tensor, *, labels: torch.Tensor | None = None, **backbone_kwargs):
        """labels [b, i]: class per position, -100 = ignored (padding). Returns loss and logits [b, i, l]."""
        out = self._backbone(input_ids, backbone_kwargs)
        logits = self.classifier(out.last_hidden_state)  # [b, i, l]
        loss = None
        if labels is not None:
            _check_index(
                "labels",
                labels,
                shape=logits.shape[:-1],
                upper=self.num_labels,
                allow_ignore=True,
                what=f"class of each position, num_labels={self.num_labels}",
            )
            loss = F.cross_entropy(logits.reshape(-1, self.num_labels), labels.reshape(-1))
        return self._output(out, loss=loss, logits=logits)


class XLNetForMultipleChoice(_Head):
    r"""Pick one of c candidates (RACE; XLNet Sec. 3.1): each [context SEP choice SEP CLS] runs through the
    backbone as its own row, the summary is scored,

    .. math::
        \mathrm{logits}_{b,c} = w^\top s_{b,c} + b,\qquad
        \mathcal L = -\frac1B\sum_b \log\mathrm{softmax}_c(\mathrm{logits}_b)_{y_b}
    """

    def __init__(self, config: XLNetConfig, head: HeadConfig | None = None):
        super().__init__(config, head)
        self.sequence_summary = SequenceSummary(config, self.head_config)
        self.logits_proj = nn.Linear(config.d_model, 1)
        self.head_parameters_init()

    def forward(self, input_ids: torch.Tensor, *, labels: torch.Tensor | None = None, **backbone_kwargs):
        """input_ids [b, c, i]; token_type_ids / attention_mask / input_mask [b, c, i]; other backbone
        arguments (mems, perm_mask, target_mapping) for the flattened [b * c] rows, as transformers.
        labels [b]: the right choice. Returns loss and logits [b, c]."""
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 3:
            got = list(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
            raise ValueError(f"input_ids: expected shape [batch, choices, length] (3 dimensions), got {got}")
        b, c, i = input_ids.shape
        flat = {}
        for name, value in backbone_kwargs.items():
            if name in ("token_type_ids", "attention_mask", "input_mask") and value is not None:
                if not isinstance(value, torch.Tensor) or tuple(value.shape) != (b, c, i):
                    got = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                    raise ValueError(
                        f"{name}: expected shape [{b}, {c}, {i}] ([batch, choices, length]) like input_ids, got {got}"
                    )
                value = value.reshape(b * c, i)
            flat[name] = value
        out = self._backbone(input_ids.reshape(b * c, i), flat)
        logits = self.logits_proj(self.sequence_summary(out.last_hidden_state)).view(b, c)  # [b, c]
        loss = None
        if labels is not None:
            _check_index(
                "labels",
                labels.reshape(-1),
                shape=(b,),
                upper=c,
                allow_ignore=True,
                what=f"index of the right choice, {c} choices",
            )
            loss = F.cross_entropy(logits, labels.view(-1))
        return self._output(out, loss=loss, logits=logits)


# ------------------------------------------------------------------------------------ QA heads
class XLNetForQuestionAnsweringSimple(_Head):
    r"""Extractive QA, the plain span head:

    .. math::
        [\mathrm{start}_{b,i}, \mathrm{end}_{b,i}] = W h_{b,i} + b,\qquad
        \mathcal L = \tfrac12\big(\mathrm{CE}(\mathrm{start}_b, y^{s}_b) + \mathrm{CE}(\mathrm{end}_b, y^{e}_b)\big)

    Positions at or past the sequence end are ignored (clamped to I and ignored, as transformers).
    """

    def __init__(self, config: XLNetConfig, head: HeadConfig | None = None):
        super().__init__(config, head)
        if self.head_config.num_labels != 2:
            raise ValueError(
                f"head.num_labels: expected 2 (start and end) for question answering, got {self.head_config.num_labels}"
            )
        self.num_labels = 2
        self.qa_outputs = nn.Linear(config.d_model, 2)
        self.head_parameters_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        start_positions: torch.Tensor | None = None,
        end_positions: torch.Tensor | None = None,
        **backbone_kwargs,
    ):
        """start_positions, end_positions [b]. Returns loss (with both), start_logits and end_logits [b, i]."""
        out = self._backbone(input_ids, backbone_kwargs)
        start_logits, end_logits = self.qa_outputs(out.last_hidden_state).unbind(-1)  # [b, i] each
        loss = None
        if start_positions is not None and end_positions is not None:
            b, i = start_logits.shape
            for name, pos in (("start_positions", start_positions), ("end_positions", end_positions)):
                # at or past the end is allowed: ignored, as transformers does
                _check_index(
                    name, pos.reshape(-1), shape=(b,), upper=torch.iinfo(torch.long).max, what="answer position"
                )
            ignored = i
            start = start_positions.reshape(-1).clamp(0, ignored)
            end = end_positions.reshape(-1).clamp(0, ignored)
            loss = (
                F.cross_entropy(start_logits, start, ignore_index=ignored)
                + F.cross_entropy(end_logits, end, ignore_index=ignored)
            ) / 2
        return self._output(out, loss=loss, start_logits=start_logits.contiguous(), end_logits=end_logits.contiguous())


def mask_logits(x: torch.Tensor, p_mask: torch.Tensor | None) -> torch.Tensor:
    r"""Positions that cannot be in an answer (p_mask = 1: question, SEP, CLS, padding) get a logit of
    about :math:`-10^{30}`: :math:`x (1 - p) - 10^{30} p` (-65500 in float16), as the original code."""
    if p_mask is None:
        return x
    big = 65500 if p_mask.dtype == torch.float16 else 1e30
    return x * (1 - p_mask) - big * p_mask


class PoolerStartLogits(nn.Module):
    r""":math:`\mathrm{start}_{b,i} = w_s^\top h_{b,i} + b_s`, masked by p_mask (transformers' ``XLNetPoolerStartLogits``)."""

    def __init__(self, config: XLNetConfig):
        super().__init__()
        self.dense = nn.Linear(config.d_model, 1)

    def forward(self, h: torch.Tensor, p_mask: torch.Tensor | None = None) -> torch.Tensor:
        return mask_logits(self.dense(h).squeeze(-1), p_mask)  # [b, i]


class PoolerEndLogits(nn.Module):
    r"""End logits conditioned on the start (the original ``run_squad.py`` end_logits):

    .. math::
        \mathrm{end}_{b,i} = w_e^\top\,\mathrm{LN}\big(\tanh(W_0 [h_{b,i}; h_{b,\mathrm{start}}] + b_0)\big) + b_e

    In training ``h_start`` is the true start's state; in beam search one per start candidate.
    """

    def __init__(self, config: XLNetConfig):
        super().__init__()
        self.dense_0 = nn.Linear(2 * config.d_model, config.d_model)
        self.activation = nn.Tanh()
        self.LayerNorm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)  # transformers' name
        self.dense_1 = nn.Linear(config.d_model, 1)

    def forward(self, h: torch.Tensor, start_states: torch.Tensor, p_mask: torch.Tensor | None = None) -> torch.Tensor:
        """h, start_states: [..., m] with the same leading axes ([b, i, m] or [b, i, t, m]) -> [...]."""
        x = self.LayerNorm(self.activation(self.dense_0(torch.cat([h, start_states], dim=-1))))
        return mask_logits(self.dense_1(x).squeeze(-1), p_mask)


class PoolerAnswerClass(nn.Module):
    r"""Is there an answer at all (SQuAD 2.0)? From the CLS state and the start state:

    .. math::
        \mathrm{cls\_logits}_b = w_c^\top \tanh(W_0 [h_{b,\mathrm{start}}; h_{b,\mathrm{CLS}}] + b_0)
    """

    def __init__(self, config: XLNetConfig):
        super().__init__()
        self.dense_0 = nn.Linear(2 * config.d_model, config.d_model)
        self.activation = nn.Tanh()
        self.dense_1 = nn.Linear(config.d_model, 1, bias=False)

    def forward(
        self, h: torch.Tensor, start_states: torch.Tensor, cls_index: torch.Tensor | None = None
    ) -> torch.Tensor:
        """h [b, i, m], start_states [b, m], cls_index [b] (None: the last token, XLNet's CLS) -> [b]."""
        if cls_index is None:
            cls_state = h[:, -1]  # [b, m]
        else:
            cls_state = h.gather(1, cls_index[:, None, None].expand(-1, 1, h.shape[-1])).squeeze(1)
        return self.dense_1(self.activation(self.dense_0(torch.cat([start_states, cls_state], dim=-1)))).squeeze(-1)


class XLNetForQuestionAnswering(_Head):
    r"""XLNet's SQuAD head (original ``run_squad.py``; transformers' ``XLNetForQuestionAnswering``).

    Training (start_positions and end_positions given), with :math:`y^s, y^e` the true span:

    .. math::
        \mathcal L = \tfrac12\big(\mathrm{CE}(\mathrm{start}_b, y^s_b) + \mathrm{CE}(\mathrm{end}_b(h_{y^s_b}), y^e_b)\big)
                     + \tfrac12\,\mathrm{BCE}(\mathrm{cls\_logits}_b, \mathrm{is\_impossible}_b)

    (the last term only with cls_index and is_impossible). Evaluation, beam search:
    :math:`p^s = \mathrm{softmax}_i(\mathrm{start})`, its top ``start_n_top`` positions t; for each,
    :math:`p^e_{\cdot|t} = \mathrm{softmax}_i(\mathrm{end}(h_t))` and its top ``end_n_top``; the answer
    class reads the expected start state :math:`\sum_i p^s_i h_i`. The ``*_log_probs`` outputs are
    probabilities (softmax), not logs, exactly as transformers returns them.
    """

    def __init__(self, config: XLNetConfig, head: HeadConfig | None = None):
        super().__init__(config, head)
        self.start_n_top = self.head_config.start_n_top
        self.end_n_top = self.head_config.end_n_top
        self.start_logits = PoolerStartLogits(config)
        self.end_logits = PoolerEndLogits(config)
        self.answer_class = PoolerAnswerClass(config)
        self.head_parameters_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        start_positions: torch.Tensor | None = None,
        end_positions: torch.Tensor | None = None,
        is_impossible: torch.Tensor | None = None,
        cls_index: torch.Tensor | None = None,
        p_mask: torch.Tensor | None = None,
        **backbone_kwargs,
    ):
        """start_positions, end_positions, is_impossible (float 0/1), cls_index: [b]; p_mask [b, i]
        (1 = cannot be in the answer). Training: loss. Otherwise the beam outputs and cls_logits."""
        out = self._backbone(input_ids, backbone_kwargs)
        h = out.last_hidden_state  # [b, i, m]
        b, i, m = h.shape
        if p_mask is not None and (not isinstance(p_mask, torch.Tensor) or tuple(p_mask.shape) != (b, i)):
            got = list(p_mask.shape) if isinstance(p_mask, torch.Tensor) else type(p_mask).__name__
            raise ValueError(f"p_mask: expected shape [{b}, {i}] ([batch, length]), got {got}")
        if cls_index is not None:
            cls_index = cls_index.reshape(-1)
            _check_index("cls_index", cls_index, shape=(b,), upper=i, what="position of the CLS token")
        start_logits = self.start_logits(h, p_mask=p_mask)  # [b, i]

        if start_positions is not None and end_positions is not None:
            start_positions, end_positions = start_positions.reshape(-1), end_positions.reshape(-1)
            _check_index("start_positions", start_positions, shape=(b,), upper=i, what="answer start")
            _check_index("end_positions", end_positions, shape=(b,), upper=i, what="answer end")
            h_start = h.gather(1, start_positions[:, None, None].expand(-1, 1, m)).expand(-1, i, -1)  # [b, i, m]
            end_logits = self.end_logits(h, h_start, p_mask=p_mask)  # [b, i]
            loss = (F.cross_entropy(start_logits, start_positions) + F.cross_entropy(end_logits, end_positions)) / 2
            if cls_index is not None and is_impossible is not None:
                cls_logits = self.answer_class(
                    h, h.gather(1, start_positions[:, None, None].expand(-1, 1, m)).squeeze(1), cls_index=cls_index
                )
                loss = loss + 0.5 * F.binary_cross_entropy_with_logits(cls_logits, is_impossible.reshape(-1))
            return self._output(out, loss=loss)

        if self.start_n_top > i or self.end_n_top > i:
            raise ValueError(
                f"input_ids: expected at least max(start_n_top, end_n_top) = "
                f"{max(self.start_n_top, self.end_n_top)} positions for the beam search, got {i}"
            )
        start_probs = start_logits.softmax(dim=-1)  # p^s [b, i]
        start_top_probs, start_top_index = start_probs.topk(self.start_n_top, dim=-1)  # [b, t]
        h_top = h.gather(1, start_top_index[..., None].expand(-1, -1, m))  # [b, t, m]
        h_top = h_top[:, None].expand(-1, i, -1, -1)  # [b, i, t, m]
        end_logits = self.end_logits(
            h[:, :, None].expand_as(h_top), h_top, p_mask=None if p_mask is None else p_mask[..., None]
        )  # [b, i, t]
        end_probs = end_logits.softmax(dim=1)  # p^e over i for each start candidate t
        end_top_probs, end_top_index = end_probs.topk(self.end_n_top, dim=1)  # [b, e, t]
        expected_start = torch.einsum("bim,bi->bm", h, start_probs)  # sum_i p^s_i h_i
        cls_logits = self.answer_class(h, expected_start, cls_index=cls_index)  # [b]
        return self._output(
            out,
            start_top_log_probs=start_top_probs,
            start_top_index=start_top_index,
            end_top_log_probs=end_top_probs.reshape(b, -1),
            end_top_index=end_top_index.reshape(b, -1),
            cls_logits=cls_logits,
        )


HEADS = {
    cls.__name__: cls
    for cls in (
        XLNetForSequenceClassification,
        XLNetForTokenClassification,
        XLNetForMultipleChoice,
        XLNetForQuestionAnsweringSimple,
        XLNetForQuestionAnswering,
    )
}
HEAD_CLASS_NAMES = tuple(HEADS)


def best_span(out: XLNetHeadOutput, *, start_n_top: int, end_n_top: int, max_answer_length: int | None = None):
    r"""The best (start, end) per row from the beam outputs: argmax of :math:`p^s_t\,p^e_{e|t}` over
    candidates with start <= end (< start + max_answer_length). Returns two [b] long tensors."""
    b = out.start_top_index.shape[0]
    start = out.start_top_index[:, None, :].expand(b, end_n_top, start_n_top).reshape(b, -1)  # [b, e * t]
    start_p = out.start_top_log_probs[:, None, :].expand(b, end_n_top, start_n_top).reshape(b, -1)
    score = start_p * out.end_top_log_probs
    valid = out.end_top_index >= start
    if max_answer_length is not None:
        valid &= out.end_top_index < start + max_answer_length
    score = score.masked_fill(~valid, -1.0)
    best = score.argmax(dim=-1, keepdim=True)
    return start.gather(1, best).squeeze(1), out.end_top_index.gather(1, best).squeeze(1)
