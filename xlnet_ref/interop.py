"""Moving weights between xlnet_ref and transformers' XLNet, one tensor at a time, with a shape check each.

- ``from_hf(XLNetModel | XLNetLMHeadModel)`` -> our ``XLNetModel`` | ``XLNetLMHeadModel``, same weights.
- ``from_hf`` of a task head (``XLNetForSequenceClassification``, ``...TokenClassification``,
  ``...MultipleChoice``, ``...QuestionAnsweringSimple``, ``...QuestionAnswering``) -> our head of the same
  name (:mod:`xlnet_ref.heads`), its settings in a ``HeadConfig``; head tensors have the same names on
  both sides.
- ``to_hf(ours)`` -> transformers' model of the matching class, same weights.
- ``mems_from_hf`` / ``mems_to_hf``: transformers keeps memory length-first [mlen, b, m], we batch-first.
  Always convert with these: when mlen equals the batch size both layouts have the same shape, so a
  memory passed in the wrong layout cannot be detected and silently gives wrong outputs.

Names are the same on both sides except u, v and the segment bias: transformers stores a copy in
every layer (``layer.N.rel_attn.r_w_bias`` [n, d]); we keep them on the backbone, stacked [n_layer, n, d]
(untie_r=True) or as one shared [n, d] set (untie_r=False, the original code's default). A pretrained
checkpoint converted from TF with untie_r=False has identical copies in every layer; ``from_hf`` with
``untie_r=False`` checks that they really are identical before sharing them.

transformers is imported lazily: the rest of xlnet_ref does not need it.
"""

from __future__ import annotations

import torch

from .config import XLNetConfig
from .heads import HEADS, HeadConfig
from .model import XLNetLMHeadModel, XLNetModel

# fields that mean the same on both sides (XLNetConfig uses transformers' names)
SHARED_FIELDS = (
    "vocab_size",
    "d_model",
    "n_layer",
    "n_head",
    "d_inner",
    "ff_activation",
    "attn_type",
    "bi_data",
    "clamp_len",
    "same_length",
    "mem_len",
    "reuse_len",
    "dropout",
    "layer_norm_eps",
    "initializer_range",
)
BIASES = ("r_w_bias", "r_r_bias", "r_s_bias")


def config_from_hf(hf_config, *, untie_r: bool = True) -> XLNetConfig:
    return XLNetConfig(**{f: getattr(hf_config, f) for f in SHARED_FIELDS}, untie_r=untie_r)


# HeadConfig fields that transformers' XLNetConfig holds under the same name
HEAD_FIELDS = (
    "num_labels",
    "problem_type",
    "summary_type",
    "summary_use_proj",
    "summary_activation",
    "summary_first_dropout",
    "summary_last_dropout",
    "start_n_top",
    "end_n_top",
)


def config_to_hf(config: XLNetConfig, head: HeadConfig | None = None):
    from transformers import XLNetConfig as HFConfig

    head_fields = {f: getattr(head, f) for f in HEAD_FIELDS} if head is not None else {}
    return HFConfig(**{f: getattr(config, f) for f in SHARED_FIELDS}, **head_fields)


def head_config_from_hf(hf_config) -> HeadConfig:
    """transformers' head settings -> HeadConfig (summary_first_dropout is absent there unless set: 0)."""
    if getattr(hf_config, "summary_proj_to_labels", False):
        raise ValueError(
            "hf_model.config.summary_proj_to_labels: expected False/absent (XLNet projects the summary "
            "to d_model, then logits_proj to the labels), got True"
        )
    values = {f: getattr(hf_config, f) for f in HEAD_FIELDS if hasattr(hf_config, f)}
    values["summary_activation"] = values.get("summary_activation") or "linear"  # none given = identity
    return HeadConfig(**values)


def backbone_tensors_in_hf_names(model: XLNetModel) -> dict[str, torch.Tensor]:
    """Our backbone's tensors under transformers' XLNetModel names (biases copied into every layer)."""
    out = {}
    for name, tensor in model.state_dict().items():
        if name not in BIASES:
            out[name] = tensor
    for layer in range(model.config.n_layer):
        for bias_name, bias in model.layer_biases(layer).items():
            out[f"layer.{layer}.rel_attn.{bias_name}"] = bias.detach()
    return out


def _copy(dst: torch.Tensor, src: torch.Tensor, name: str) -> None:
    if dst.shape != src.shape:
        raise ValueError(f"{name}: expected shape {list(dst.shape)}, got {list(src.shape)}")
    with torch.no_grad():
        dst.copy_(src)


def _load_backbone_from_hf(ours: XLNetModel, hf_tensors: dict[str, torch.Tensor]) -> None:
    cfg = ours.config
    for name, p in ours.state_dict().items():
        if name in BIASES:
            copies = [hf_tensors[f"layer.{layer}.rel_attn.{name}"] for layer in range(cfg.n_layer)]
            if cfg.untie_r:
                _copy(p, torch.stack(copies), name)
            else:
                for layer, c in enumerate(copies):
                    if not torch.equal(c, copies[0]):
                        raise ValueError(
                            f"untie_r=False: expected every layer's {name} to be identical (one shared set), "
                            f"but layer {layer} differs from layer 0; use untie_r=True for this model"
                        )
                _copy(p, copies[0], name)
        else:
            if name not in hf_tensors:
                raise ValueError(f"from_hf: the transformers model has no tensor named {name!r}")
            _copy(p, hf_tensors[name], name)


def load_hf_state_dict(model, tensors: dict[str, torch.Tensor]) -> None:
    """Copy tensors named as transformers names them (``XLNetLMHeadModel``: ``transformer.…`` and
    ``lm_loss.bias``; ``XLNetModel``: no prefix) into our model of the matching kind, no transformers needed."""
    if isinstance(model, XLNetLMHeadModel):
        backbone = {k[len("transformer.") :]: v for k, v in tensors.items() if k.startswith("transformer.")}
        _load_backbone_from_hf(model.transformer, backbone)
        if "lm_loss.bias" not in tensors:
            raise ValueError("tensors: expected 'lm_loss.bias' for an XLNetLMHeadModel, found none")
        _copy(model.lm_loss.bias, tensors["lm_loss.bias"], "lm_loss.bias")
    elif isinstance(model, XLNetModel):
        _load_backbone_from_hf(model, tensors)
    else:
        raise ValueError(f"model: expected xlnet_ref's XLNetModel or XLNetLMHeadModel, got {type(model).__name__}")


def _copy_head_tensors(dst: torch.nn.Module, src: torch.nn.Module) -> None:
    """Every tensor outside the backbone (``transformer.``), by name: both sides use transformers' names."""
    dst_params = {k: v for k, v in dst.state_dict().items() if not k.startswith("transformer.")}
    src_params = {k: v for k, v in src.state_dict().items() if not k.startswith("transformer.")}
    if dst_params.keys() != src_params.keys():
        raise ValueError(f"head tensors: expected {sorted(dst_params)}, got {sorted(src_params)}")
    for name, tensor in dst_params.items():
        _copy(tensor, src_params[name], name)


def from_hf(hf_model, *, untie_r: bool = True):
    """transformers' XLNetModel -> our XLNetModel; XLNetLMHeadModel -> our XLNetLMHeadModel; a task head
    (XLNetForSequenceClassification ...) -> our head of the same name. Same weights, same dtype."""
    from transformers import XLNetLMHeadModel as HFLM
    from transformers import XLNetModel as HFModel

    head_class = HEADS.get(type(hf_model).__name__)
    if head_class is not None and type(hf_model).__module__.startswith("transformers"):
        ours = head_class(config_from_hf(hf_model.config, untie_r=untie_r), head_config_from_hf(hf_model.config))
        ours = ours.to(hf_model.transformer.word_embedding.weight.dtype)
        _load_backbone_from_hf(ours.transformer, hf_model.transformer.state_dict())
        _copy_head_tensors(ours, hf_model)
        return ours.train(hf_model.training)
    if isinstance(hf_model, HFLM):
        hf_backbone, is_lm = hf_model.transformer, True
    elif isinstance(hf_model, HFModel):
        hf_backbone, is_lm = hf_model, False
    else:
        raise ValueError(
            f"hf_model: expected transformers' XLNetModel, XLNetLMHeadModel or one of {sorted(HEADS)}, "
            f"got {type(hf_model).__name__}"
        )
    config = config_from_hf(hf_model.config, untie_r=untie_r)
    dtype = hf_backbone.word_embedding.weight.dtype
    ours = (XLNetLMHeadModel if is_lm else XLNetModel)(config).to(dtype)
    backbone = ours.transformer if is_lm else ours
    _load_backbone_from_hf(backbone, hf_backbone.state_dict())
    if is_lm:
        if not torch.equal(hf_model.lm_loss.weight, hf_backbone.word_embedding.weight):
            raise ValueError("hf_model.lm_loss.weight: expected it tied to the word embedding, got a different tensor")
        _copy(ours.lm_loss.bias, hf_model.lm_loss.bias, "lm_loss.bias")
    return ours.train(hf_model.training)


def to_hf(model):
    """Our XLNetModel / XLNetLMHeadModel / task head -> transformers' model of the matching class, same
    weights and dtype."""
    import transformers
    from transformers import XLNetLMHeadModel as HFLM
    from transformers import XLNetModel as HFModel

    if isinstance(model, tuple(HEADS.values())):
        hf_class = getattr(transformers, type(model).__name__)
        hf = hf_class(config_to_hf(model.config, model.head_config)).to(model.transformer.word_embedding.weight.dtype)
        hf_params = hf.transformer.state_dict()
        for name, tensor in backbone_tensors_in_hf_names(model.transformer).items():
            if name not in hf_params:
                raise ValueError(f"to_hf: transformers' model has no tensor named {name!r}")
            _copy(hf_params[name], tensor, name)
        _copy_head_tensors(hf, model)
        return hf.train(model.training)
    if isinstance(model, XLNetLMHeadModel):
        backbone, hf_class = model.transformer, HFLM
    elif isinstance(model, XLNetModel):
        backbone, hf_class = model, HFModel
    else:
        raise ValueError(
            f"model: expected xlnet_ref's XLNetModel, XLNetLMHeadModel or one of {sorted(HEADS)}, "
            f"got {type(model).__name__}"
        )
    dtype = backbone.word_embedding.weight.dtype
    hf = hf_class(config_to_hf(model.config)).to(dtype)
    hf_backbone = hf.transformer if hf_class is HFLM else hf
    hf_params = hf_backbone.state_dict()
    for name, tensor in backbone_tensors_in_hf_names(backbone).items():
        if name not in hf_params:
            raise ValueError(f"to_hf: transformers' model has no tensor named {name!r}")
        _copy(hf_params[name], tensor, name)
    if hf_class is HFLM:
        _copy(hf.lm_loss.bias, model.lm_loss.bias, "lm_loss.bias")
        assert hf.lm_loss.weight.data_ptr() == hf_backbone.word_embedding.weight.data_ptr(), "LM head not tied"
    return hf.train(model.training)


def mems_from_hf(mems):
    """transformers' mems ([mlen, b, m] per layer) -> ours ([b, mlen, m]).

    The only supported way to pass transformers' memory to our model: when mlen equals the batch size
    the two layouts have the same shape, so the model cannot detect a memory that was not converted."""
    return None if mems is None else [m.transpose(0, 1) for m in mems]


def mems_to_hf(mems):
    """Our mems ([b, mlen, m] per layer) -> transformers' ([mlen, b, m])."""
    return None if mems is None else [m.transpose(0, 1) for m in mems]
