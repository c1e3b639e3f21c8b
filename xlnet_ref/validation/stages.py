r"""The stages of a forward (and backward) pass that the validator compares: names, layouts, meanings.

A stage is one intermediate tensor of the reference, named ``word_emb``, ``pos_emb``, ...,
``layer{L}.q_h``, ``layer{L}.content.bd``, ``layer{L}.query.prob``, ..., ``logits``, ``loss``, and
for cases with gradients ``grad.word_emb`` and ``grad.<parameter>`` (transformers' parameter names).

Layout letters (one letter, one meaning, everywhere): b batch row, i query position, j key over
[memory | current], r row of the positional table (one per distance), k prediction target, n head,
d head width, m d_model, V vocabulary, t cached memory position, f d_inner, s segment relation
(0 same, 1 different). This module is plain Python: no torch, no numpy.
"""

from __future__ import annotations

import difflib
import re

STAGES = {
    "input_check": ("-", "input check: the reference refuses this input"),
    "word_emb": ("b i m", "word embeddings (the content stream's input h)"),
    "pos_emb": ("b r m", "relative positional encoding R: one sinusoid row per distance klen, klen-1, ..."),
    "attn_mask": ("b i j", "query stream's mask: which keys each position may NOT see (itself included)"),
    "non_tgt_mask": ("b i j", "content stream's mask: like the query stream's, but each position sees itself"),
    "seg_diff": ("b i j", "relative segments s_ij: are positions i and j in different segments?"),
    "new_mem": ("b t m", "memory cached for the next segment (the content stream entering this layer)"),
    "new_mem_grad": ("b t m", "gradient from the cached memory back into the past (must be 0: detach the memory)"),
    "q_h": ("b i n d", "content-stream queries W_q h"),
    "k_h": ("b j n d", "keys W_k [mem; h]"),
    "v_h": ("b j n d", "values W_v [mem; h]"),
    "k_r": ("b r n d", "positional keys W_r R"),
    "ac": ("b n i j", "content score (a)+(c) = (q + u).k"),
    "bd_raw": ("b n i r", "position score (b)+(d) = (q + v).W_r R, one column per distance (before rel_shift)"),
    "bd": ("b n i j", "position score after rel_shift (one column per key)"),
    "ef": ("b n i j", "segment score (q + b).s_ij"),
    "score": ("b n i j", "attention score (ac + bd + ef) / sqrt(d), masked"),
    "prob": ("b n i j", "attention probabilities (softmax over the keys)"),
    "content_attn_out": ("b i m", "content stream after attention (output projection, residual, LayerNorm)"),
    "q_g": ("b k n d", "query-stream queries W_q g (one per prediction target)"),
    "query_attn_out": ("b k m", "query stream after attention (output projection, residual, LayerNorm)"),
    "content_ff_out": ("b i m", "content stream after the feed-forward (GELU, residual, LayerNorm)"),
    "query_ff_out": ("b k m", "query stream after the feed-forward (GELU, residual, LayerNorm)"),
    "logits": ("b k V", "LM logits (one row per target with two streams, else per position)"),
    "loss": ("scalar", "masked LM loss: mean cross-entropy over the real targets only"),
    "run": ("-", "running the case"),
    "unknown": ("-", "a stage name the validator does not know"),
}
LAYER_STAGE = re.compile(r"layer(\d+)\.(?:(content|query)\.)?(\w+)$")
SCORE_TERMS = ("ac", "bd_raw", "bd", "ef", "score", "prob")

# gradient stages: "grad." + transformers' XLNetLMHeadModel parameter name (or word_emb, the embeddings' output)
GRAD = "grad."
PARAMETERS = {  # name suffix -> (layout, what it is)
    "rel_attn.q": ("m n d", "W_q"),
    "rel_attn.k": ("m n d", "W_k"),
    "rel_attn.v": ("m n d", "W_v"),
    "rel_attn.o": ("m n d", "W_o (output projection)"),
    "rel_attn.r": ("m n d", "W_r (positional keys)"),
    "rel_attn.r_w_bias": ("n d", "u (r_w_bias, content bias)"),
    "rel_attn.r_r_bias": ("n d", "v (r_r_bias, position bias)"),
    "rel_attn.r_s_bias": ("n d", "b (r_s_bias, segment bias)"),
    "rel_attn.seg_embed": ("s n d", "s_+ / s_- (seg_embed)"),
    "rel_attn.layer_norm.weight": ("m", "the attention LayerNorm's scale"),
    "rel_attn.layer_norm.bias": ("m", "the attention LayerNorm's shift"),
    "ff.layer_1.weight": ("f m", "the feed-forward's W_1"),
    "ff.layer_1.bias": ("f", "the feed-forward's b_1"),
    "ff.layer_2.weight": ("m f", "the feed-forward's W_2"),
    "ff.layer_2.bias": ("m", "the feed-forward's b_2"),
    "ff.layer_norm.weight": ("m", "the feed-forward LayerNorm's scale"),
    "ff.layer_norm.bias": ("m", "the feed-forward LayerNorm's shift"),
    "transformer.word_embedding.weight": ("V m", "the word embedding E (tied to the LM head)"),
    "transformer.mask_emb": ("1 1 m", "w (mask_emb, the query stream's start)"),
    "lm_loss.bias": ("V", "the LM head's output bias"),
    "word_emb": ("b i m", "the word embeddings' output h^(0) (the input of layer 0)"),
}
PARAMETER = re.compile(r"transformer\.layer\.(\d+)\.(.+)$")
# the order of a backward pass: output side first, so the first failing gradient is nearest the bug
LAYER_PARAMETERS_BACKWARD = (
    "ff.layer_norm.weight",
    "ff.layer_norm.bias",
    "ff.layer_2.weight",
    "ff.layer_2.bias",
    "ff.layer_1.weight",
    "ff.layer_1.bias",
    "rel_attn.layer_norm.weight",
    "rel_attn.layer_norm.bias",
    "rel_attn.o",
    "rel_attn.q",
    "rel_attn.k",
    "rel_attn.v",
    "rel_attn.r",
    "rel_attn.r_w_bias",
    "rel_attn.r_r_bias",
    "rel_attn.r_s_bias",
    "rel_attn.seg_embed",
)


def gradient_stage_names(n_layer: int) -> list[str]:
    """grad.<name> for every parameter of the LM model (transformers' names) and for the word embeddings'
    output, in backward order: LM head, last layer ... layer 0, then the embeddings."""
    names = [GRAD + "lm_loss.bias"]
    for layer in reversed(range(n_layer)):
        names += [f"{GRAD}transformer.layer.{layer}.{p}" for p in LAYER_PARAMETERS_BACKWARD]
    return names + [GRAD + "transformer.mask_emb", GRAD + "word_emb", GRAD + "transformer.word_embedding.weight"]


def split_stage(name: str) -> tuple[int | None, str | None, str]:
    """'layer1.query.bd' -> (1, 'query', 'bd'); 'logits' -> (None, None, 'logits')."""
    m = LAYER_STAGE.match(name)
    return (int(m.group(1)), m.group(2), m.group(3)) if m else (None, None, name)


def _parameter(name: str) -> tuple[int | None, str] | None:
    """'grad.transformer.layer.0.rel_attn.q' -> (0, 'rel_attn.q'); 'grad.lm_loss.bias' -> (None, 'lm_loss.bias')."""
    if not name.startswith(GRAD):
        return None
    rest = name[len(GRAD) :]
    m = PARAMETER.match(rest)
    if m and m.group(2) in PARAMETERS:
        return int(m.group(1)), m.group(2)
    return (None, rest) if rest in PARAMETERS and not rest.startswith(("rel_attn.", "ff.")) else None


def is_known_stage(name: str) -> bool:
    """Is this a stage name the validator knows (in some case)?"""
    if name.startswith(GRAD):
        return _parameter(name) is not None
    layer, stream, base = split_stage(name)
    if base not in STAGES or base in ("input_check", "run", "unknown"):
        return False
    per_layer = base in (
        "new_mem",
        "new_mem_grad",
        "q_h",
        "k_h",
        "v_h",
        "k_r",
        "q_g",
        "content_attn_out",
        "query_attn_out",
        "content_ff_out",
        "query_ff_out",
    )
    if base in SCORE_TERMS:
        return layer is not None and stream is not None
    return (layer is not None and stream is None) if per_layer else layer is None


def closest_stage(name: str, known) -> str | None:
    """The known stage name closest to a misspelt one (difflib), or None."""
    match = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return match[0] if match else None


def stage_layout(name: str, *, two_stream: bool | None = None) -> str:
    """Axis letters of a stage, batch-first: 'b n i j', 'm n d', ...; logits are 'b k V' with two streams
    and 'b i V' without ('b k V (two streams) or b i V' when two_stream is not given)."""
    param = _parameter(name)
    if param is not None:
        return PARAMETERS[param[1]][0]
    layer, stream, base = split_stage(name)
    layout = STAGES.get(base, ("?", ""))[0]
    if stream == "query":  # the query stream's scores have one row per target k instead of per position i
        layout = layout.replace(" i ", " k ")
    if base == "logits":
        layout = "b k V (two streams) or b i V" if two_stream is None else ("b k V" if two_stream else "b i V")
    return layout


def stage_description(name: str) -> str:
    """A stage's name in words, e.g. 'layer 0, query stream: position score after rel_shift (...)'."""
    param = _parameter(name)
    if param is not None:
        layer, suffix = param
        where = "" if layer is None else f"layer {layer}: "
        return f"{where}gradient of the loss with respect to {PARAMETERS[suffix][1]}"
    layer, stream, base = split_stage(name)
    what = STAGES.get(base, ("", name))[1]
    where = [] if layer is None else [f"layer {layer}"]
    if stream is not None:
        where.append(f"{stream} stream")
    return f"{', '.join(where)}: {what}" if where else what
