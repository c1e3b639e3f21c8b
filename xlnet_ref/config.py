"""The model configuration: one dataclass with transformers' field names.

Field names are those of ``transformers.XLNetConfig`` so that a config moves between the two
libraries field by field (see :mod:`xlnet_ref.interop`). The dataclass checks itself on
construction and names the field, what was expected and what came.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

ATTN_TYPES = ("bi", "uni")
# "gelu" is the exact erf GELU (transformers' default); "gelu_new" is the tanh approximation that
# the original TensorFlow code uses. They differ by at most ~4.7e-4.
FF_ACTIVATIONS = ("gelu", "gelu_new", "relu")


@dataclass
class XLNetConfig:
    vocab_size: int = 32000
    d_model: int = 1024
    n_layer: int = 24
    n_head: int = 16
    d_inner: int = 4096
    ff_activation: str = "gelu"
    # untie_r=True: every layer has its own u (r_w_bias), v (r_r_bias) and r_s_bias, as transformers
    # stores them. untie_r=False: one set shared by all layers, as the original code does by default.
    untie_r: bool = True
    attn_type: str = "bi"
    bi_data: bool = False
    clamp_len: int = -1
    same_length: bool = False
    # mem_len 0 or None: no new memory is returned (the original's meaning). transformers instead keeps
    # every past state when mem_len is 0/None and use_mems is on; see docs/differences.md.
    mem_len: int | None = None
    reuse_len: int | None = None
    dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_layer", "n_head", "d_inner"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"XLNetConfig.{name}: expected a positive int, got {value!r}")
        if self.d_model % self.n_head != 0:
            raise ValueError(f"XLNetConfig.d_model: expected a multiple of n_head={self.n_head}, got {self.d_model}")
        if self.attn_type not in ATTN_TYPES:
            raise ValueError(f"XLNetConfig.attn_type: expected one of {ATTN_TYPES}, got {self.attn_type!r}")
        if self.ff_activation not in FF_ACTIVATIONS:
            raise ValueError(f"XLNetConfig.ff_activation: expected one of {FF_ACTIVATIONS}, got {self.ff_activation!r}")
        if isinstance(self.clamp_len, bool) or not isinstance(self.clamp_len, int):
            raise ValueError(f"XLNetConfig.clamp_len: expected an int (<= 0 means no clamping), got {self.clamp_len!r}")
        for name in ("mem_len", "reuse_len"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"XLNetConfig.{name}: expected None or an int >= 0, got {value!r}")
        if not (isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0):
            raise ValueError(f"XLNetConfig.dropout: expected a float in [0, 1), got {self.dropout!r}")
        if not (isinstance(self.layer_norm_eps, (int, float)) and self.layer_norm_eps > 0):
            raise ValueError(f"XLNetConfig.layer_norm_eps: expected a float > 0, got {self.layer_norm_eps!r}")
        for name in ("untie_r", "bi_data", "same_length"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"XLNetConfig.{name}: expected a bool, got {getattr(self, name)!r}")

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_head

    def to_dict(self) -> dict:
        """Every field, as saved in checkpoints and moved to transformers' config."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> XLNetConfig:
        return dataclass_from_dict(cls, d)


def check_int_fields(obj, names, *, minimum: int) -> None:
    """Each field in ``names`` of the dataclass ``obj`` must be an int (not a bool) >= ``minimum``: a
    ValueError naming ``Class.field`` otherwise (shared by TrainConfig and FinetuneConfig)."""
    expected = "a positive int" if minimum == 1 else f"an int >= {minimum}"
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{type(obj).__name__}.{name}: expected {expected}, got {value!r}")


def dataclass_from_dict(cls, d: dict):
    """Build the dataclass ``cls`` from a dict, naming any field it does not have (a typo in a saved
    config fails here instead of being dropped)."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"{cls.__name__}.from_dict: unknown fields {unknown}; expected a subset of {sorted(known)}")
    return cls(**d)
