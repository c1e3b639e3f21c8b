r"""The XLNet backbone and its language-modelling head.

One forward pass (XLNet Sec. 2.3 / Transformer-XL Sec. 3):

1. h^(0) = dropout(word embedding of x); g^(0) = dropout(w) at each prediction target (w = ``mask_emb``).
2. The masks from the factorization order (masks.py), the relative segment matrix (segments.py) and
   the sinusoid table R (relative_position.py).
3. For each layer m: cache the memory from h^(m-1) (memory.py), two-stream relative attention
   (two_stream.py, attention.py), then the same feed-forward on h and g (feed_forward.py).
4. Output: dropout(g) for the query stream and dropout(h) for the content stream.

Parameter names and shapes are transformers' (``transformer.layer.0.rel_attn.q`` ...), except u, v
and the segment bias: they live on the backbone as ``r_w_bias``, ``r_r_bias``, ``r_s_bias`` with a
leading [n_layer] axis when untie_r is True, or one shared [n, d] set when untie_r is False (the
original code's layout). interop.py moves them to and from transformers' per-layer copies.

All tensors are batch-first: input_ids [b, i], mems [b, mlen, m]. transformers' mems are [mlen, b, m];
when mlen equals the batch size the shapes agree and a wrong layout cannot be detected, so convert
them only with ``xlnet_ref.interop.mems_from_hf`` / ``mems_to_hf``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .attention import RelativeAttention
from .checks import check_inputs
from .config import XLNetConfig
from .feed_forward import PositionwiseFF
from .masks import attention_masks
from .memory import cache_mem
from .relative_position import relative_positional_encoding
from .segments import segment_difference
from .two_stream import target_positions, two_stream_attention


@dataclass
class XLNetOutput:
    """What a forward pass returns. Axis letters: b batch, i position, k prediction target, m model width."""

    content: torch.Tensor | None  # [b, i, m] content stream h after the last layer (and dropout); None
    # only where a caller asked not to compute it (xlnet_ref.fast, content_output=False)
    query: torch.Tensor | None  # [b, k, m] query stream g, when target_mapping was given
    mems: list[torch.Tensor] | None  # n_layer tensors [b, mlen, m]; None when mem_len is 0/None
    attentions: list | None = None  # per layer: prob_h [b, n, i, j], or (prob_h, prob_g [b, n, k, j])
    hidden_states: list | None = None  # per layer input and final output: h, or (h, g)
    logits: torch.Tensor | None = None  # LM head only: [b, k, V] (two streams) or [b, i, V]

    @property
    def last_hidden_state(self) -> torch.Tensor:
        """transformers' ``last_hidden_state``: the query stream if there is one, else the content stream."""
        return self.query if self.query is not None else self.content


class XLNetLayer(nn.Module):
    """One layer: two-stream relative attention, then the shared feed-forward on each stream."""

    def __init__(self, config: XLNetConfig):
        super().__init__()
        self.rel_attn = RelativeAttention(config)
        self.ff = PositionwiseFF(config)

    def forward(self, h, g, *, mem, k_r, **attn_kwargs):
        h, g, prob_h, prob_g = two_stream_attention(self.rel_attn, h, g, mem, k_r, **attn_kwargs)
        h = self.ff(h)
        g = self.ff(g) if g is not None else None
        return h, g, prob_h, prob_g


class XLNetModel(nn.Module):
    """The backbone (transformers' ``XLNetModel``)."""

    def __init__(self, config: XLNetConfig):
        super().__init__()
        self.config = config
        n, d = config.n_head, config.d_head
        self.word_embedding = nn.Embedding(config.vocab_size, config.d_model)  # E
        self.mask_emb = nn.Parameter(torch.empty(1, 1, config.d_model))  # w, the query stream's start
        bias_shape = (config.n_layer, n, d) if config.untie_r else (n, d)
        self.r_w_bias = nn.Parameter(torch.empty(bias_shape))  # u  (terms (c))
        self.r_r_bias = nn.Parameter(torch.empty(bias_shape))  # v  (terms (d))
        self.r_s_bias = nn.Parameter(torch.empty(bias_shape))  # b  (segment term)
        self.layer = nn.ModuleList([XLNetLayer(config) for _ in range(config.n_layer)])
        self.dropout = nn.Dropout(config.dropout)
        self.reset_parameters()

    def reset_parameters(self, std: float | None = None):
        """transformers' initialisation: N(0, initializer_range) everywhere, LayerNorm 1/0, Linear biases 0."""
        std = self.config.initializer_range if std is None else std
        for name, p in self.named_parameters():
            if "layer_norm.weight" in name:
                nn.init.ones_(p)
            elif "layer_norm.bias" in name or (name.startswith("layer.") and name.endswith(".bias")):
                nn.init.zeros_(p)
            else:
                nn.init.normal_(p, mean=0.0, std=std)

    def layer_biases(self, layer: int) -> dict[str, torch.Tensor]:
        """u, v and the segment bias for one layer: its own row (untie_r) or the shared set."""
        pick = (lambda p: p[layer]) if self.config.untie_r else (lambda p: p)
        return dict(r_w_bias=pick(self.r_w_bias), r_r_bias=pick(self.r_r_bias), r_s_bias=pick(self.r_s_bias))

    def attention_inputs(
        self, input_ids, *, token_type_ids, attention_mask, input_mask, perm_mask, target_mapping, mems
    ):
        """What every layer's attention reads besides its own input and weights, from forward's arguments:
        ({attn_mask, non_tgt_mask: the two streams' masks (masks.py), seg_diff: s_ij (segments.py),
        target_pos, target_valid: the query stream's targets (two_stream.py)}, R [p, r, m]: the sinusoid
        table (relative_position.py), before dropout)."""
        cfg = self.config
        qlen, mlen = input_ids.shape[1], (mems[0].shape[1] if mems is not None else 0)
        if attention_mask is not None:
            input_mask = attention_mask == 0
        attn_mask, non_tgt_mask = attention_masks(
            qlen=qlen,
            mlen=mlen,
            attn_type=cfg.attn_type,
            same_length=cfg.same_length,
            input_mask=None if input_mask is None else input_mask.bool(),
            perm_mask=None if perm_mask is None else perm_mask.bool(),
            device=input_ids.device,
        )
        seg_diff = segment_difference(token_type_ids, mlen) if token_type_ids is not None else None
        target_pos, target_valid = target_positions(target_mapping) if target_mapping is not None else (None, None)
        # R in float32 as both reference codes compute it, then in the model's dtype
        pos_emb = relative_positional_encoding(
            qlen,
            mlen + qlen,
            d_model=cfg.d_model,
            attn_type=cfg.attn_type,
            bi_data=cfg.bi_data,
            clamp_len=cfg.clamp_len,
            device=input_ids.device,
        ).to(self.word_embedding.weight.dtype)  # [p, r, m]
        masks = dict(attn_mask=attn_mask, non_tgt_mask=non_tgt_mask, seg_diff=seg_diff)
        return dict(masks, target_pos=target_pos, target_valid=target_valid), pos_emb

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        input_mask: torch.Tensor | None = None,
        perm_mask: torch.Tensor | None = None,
        target_mapping: torch.Tensor | None = None,
        mems: list[torch.Tensor] | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> XLNetOutput:
        """input_ids [b, i]; token_type_ids [b, i]; attention_mask [b, i] (1 = real token) or input_mask
        [b, i] (1 = padding); perm_mask [b, i, j] (1 = i may NOT attend to j); target_mapping [b, k, j]
        (one-hot rows: the k-th prediction is at position j; zero rows = padding targets); mems: n_layer
        tensors [b, mlen, m], BATCH-FIRST (see the module docstring), in the model's dtype. input_ids are
        torch.long (or int32); every tensor is on the model's device. Every intermediate stage can be
        recorded without changing this code (``xlnet_ref.validation.reference.reference_stages``)."""
        cfg, weight = self.config, self.word_embedding.weight
        inputs = dict(token_type_ids=token_type_ids, attention_mask=attention_mask, input_mask=input_mask)
        inputs.update(perm_mask=perm_mask, target_mapping=target_mapping, mems=mems)
        check_inputs(cfg, input_ids=input_ids, **inputs, dtype=weight.dtype, device=weight.device)
        shared, pos_emb = self.attention_inputs(input_ids, **inputs)  # masks, s_ij, targets; the table R
        h = self.dropout(self.word_embedding(input_ids))  # h^(0) = E[x]: [b, i, m]
        g = None
        if target_mapping is not None:  # g^(0) = w at each of the k targets: [b, k, m]
            g = self.dropout(self.mask_emb.expand(input_ids.shape[0], target_mapping.shape[1], -1))
        pos_emb = self.dropout(pos_emb)

        new_mems = [] if cfg.mem_len else None
        attentions = [] if output_attentions else None
        hidden_states = [] if output_hidden_states else None
        for layer_index, layer in enumerate(self.layer):
            mem = mems[layer_index] if mems is not None else None
            if new_mems is not None:
                new_mems.append(cache_mem(h, mem, mem_len=cfg.mem_len, reuse_len=cfg.reuse_len))
            if hidden_states is not None:
                hidden_states.append(h if g is None else (h, g))
            # W_{k,R} R is the same for every batch row of a half: project it once per layer
            k_r = layer.rel_attn.project(pos_emb, layer.rel_attn.r)  # [p, r, n, d]
            h, g, prob_h, prob_g = layer(h, g, mem=mem, k_r=k_r, **shared, **self.layer_biases(layer_index))
            if attentions is not None:
                attentions.append(prob_h if g is None else (prob_h, prob_g))
        if hidden_states is not None:
            hidden_states.append(h if g is None else (h, g))

        content = self.dropout(h)
        query = self.dropout(g) if g is not None else None
        return XLNetOutput(
            content=content, query=query, mems=new_mems, attentions=attentions, hidden_states=hidden_states
        )


class XLNetLMHeadModel(nn.Module):
    """Backbone + LM head: logits = h W_E^T + bias, the output matrix tied to the word embedding."""

    def __init__(self, config: XLNetConfig):
        super().__init__()
        self.config = config
        self.transformer = XLNetModel(config)
        self.lm_loss = nn.Linear(config.d_model, config.vocab_size)  # transformers' name for the LM head
        self.lm_loss.weight = self.transformer.word_embedding.weight  # tied
        nn.init.zeros_(self.lm_loss.bias)

    def forward(self, input_ids: torch.Tensor, **kwargs) -> XLNetOutput:
        """Same arguments as :meth:`XLNetModel.forward`; adds ``logits`` over the query stream's targets
        ([b, k, V]) when target_mapping is given, else over every position ([b, i, V])."""
        out = self.transformer(input_ids, **kwargs)
        out.logits = self.lm_loss(out.last_hidden_state)
        return out
