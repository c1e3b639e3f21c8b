r"""XLNet's forward pass in numpy alone, checked against the golden files: proof that they are enough.

Nothing here imports torch, transformers or xlnet_ref. It reads each case of the golden folder
(config, weights, inputs), runs a small XLNet written from the papers, and writes every stage it
computes to an outputs file under ``<case>/<stage>``, which golden/compare.py judges:

    python examples/numpy_xlnet.py --golden golden --out /tmp/numpy_outputs.safetensors
    python golden/compare.py /tmp/numpy_outputs.safetensors          # exit 0: every stage agrees

It covers what the golden cases exercise: relative positions (Transformer-XL Sec. 3.3) with
'bi'/'uni' attention, same_length, clamp_len and bi_data; the segment term (XLNet Sec. 2.5); the
content and query streams (XLNet Sec. 2.3, Eq. 4) with perm_mask and target_mapping; the memory
(Transformer-XL Sec. 3.2) with mem_len and reuse_len; padding; float16 masking; the LM loss. It has no
backward pass, so the gradients case's grad.* stages are simply not provided. Axis letters: b batch,
i query, j key over [memory | current], r table row, k target, n head, d head width, m d_model.
Everything is computed in float64; only the masking step is done in the case's dtype, as the
reference does (in float16 the masked scores are -65504, not -1e30).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

_erf = np.vectorize(math.erf)


def gelu(x):
    r"""Exact GELU :math:`x\,\Phi(x)` (transformers' "gelu")."""
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def layer_norm(x, weight, bias, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def positional_table(qlen, klen, cfg, b):
    """R [b, r, m]: sinusoids of the distances klen, klen-1, ... ('bi': down to -qlen+1; 'uni': to 0);
    bi_data: rows [0, b/2) forwards, [b/2, b) with negated distances; clamp_len clips the distances."""
    m = cfg["d_model"]
    inv_freq = 1.0 / np.power(10000.0, np.arange(0, m, 2, dtype=np.float32) / np.float32(m))
    end = -qlen if cfg["attn_type"] == "bi" else -1
    fwd = np.arange(klen, end, -1, dtype=np.float64)
    halves = [fwd, -fwd] if cfg["bi_data"] else [fwd]
    if cfg["clamp_len"] > 0:
        halves = [np.clip(s, -cfg["clamp_len"], cfg["clamp_len"]) for s in halves]
    tables = [np.concatenate([np.sin(np.outer(s, inv_freq)), np.cos(np.outer(s, inv_freq))], -1) for s in halves]
    return np.stack([tables[row // (b // len(tables))] for row in range(b)])


def masks(cfg, inputs, qlen, mlen):
    """(attn_mask, non_tgt_mask) [b, i, j] bool, True = may NOT attend: causal ('uni', same_length) OR
    padding keys OR perm_mask; the content stream's mask lets each position see itself."""
    b = inputs["input_ids"].shape[0]
    i = np.arange(qlen)[:, None]
    j = np.arange(mlen + qlen)[None, :]
    mask = np.zeros((b, qlen, mlen + qlen), dtype=bool)
    if cfg["attn_type"] == "uni":
        causal = j > mlen + i
        if cfg["same_length"]:
            causal |= (j < i) & (j < qlen)
        mask |= causal
    if "attention_mask" in inputs:
        mask[:, :, mlen:] |= (inputs["attention_mask"] == 0)[:, None, :]
    if "perm_mask" in inputs:
        mask[:, :, mlen:] |= inputs["perm_mask"] != 0
    own = np.zeros_like(mask[0])
    own[np.arange(qlen), mlen + np.arange(qlen)] = True
    return mask, mask & ~own


def rel_shift(bd, klen):
    """bd [..., i, r] indexed by distance -> [..., i, j] indexed by key: out[i, j] = bd[i, j + qlen - i]."""
    *lead, qlen, rlen = bd.shape
    x = bd.reshape(*lead, rlen, qlen)[..., 1:, :].reshape(*lead, qlen, rlen - 1)
    return x[..., :klen]


def attention(x, q, k_h, v_h, k_r, W, u, v, s_bias, seg_diff, mask, pos, valid, qlen, dtype):
    r"""One stream's relative attention: score = [(q+u).k + (q+v).W_r R + (q+b).s_ij] / sqrt(d), masked,
    softmax over j, then LayerNorm(x + (prob . v) W_o). pos: [b, i] each query's position (None: 0..qlen-1)."""
    klen, d = k_h.shape[1], q.shape[-1]
    t = {"ac": np.einsum("bind,bjnd->bnij", q + u, k_h), "bd_raw": np.einsum("bind,brnd->bnir", q + v, k_r)}
    if pos is None:
        t["bd"] = rel_shift(t["bd_raw"], klen)
    else:  # the query stream: the row of target k at position pos is shifted by qlen - pos
        col = np.minimum(np.arange(klen)[None, None, :] + qlen - pos[:, :, None], t["bd_raw"].shape[-1] - 1)
        t["bd"] = np.take_along_axis(t["bd_raw"], col[:, None], axis=3)
    score = t["ac"] + t["bd"]
    if seg_diff is not None:
        ef = np.einsum("bind,snd->bnis", q + s_bias, W["seg_embed"])  # [b, n, i, 2]: same / different
        t["ef"] = np.where(seg_diff[:, None], ef[..., 1:2], ef[..., 0:1])
        score = score + t["ef"]
    score = score / math.sqrt(d)
    big = 65500.0 if dtype == np.float16 else 1e30  # in float16, 1e30 would be inf and the row nan
    t["score"] = (score.astype(dtype) - dtype(big) * mask[:, None].astype(dtype)).astype(np.float64)
    t["prob"] = softmax(t["score"])
    vec = np.einsum("bnij,bjnd->bind", t["prob"], v_h)
    if valid is not None:
        vec = vec * valid[:, :, None, None]  # padding targets attend to nothing
    out = layer_norm(
        x + np.einsum("bind,mnd->bim", vec, W["o"]), W["layer_norm.weight"], W["layer_norm.bias"], W["eps"]
    )
    return t, out


def feed_forward(x, W, activation, eps):
    hidden = activation(x @ W["layer_1.weight"].T + W["layer_1.bias"])
    return layer_norm(
        x + hidden @ W["layer_2.weight"].T + W["layer_2.bias"], W["layer_norm.weight"], W["layer_norm.bias"], eps
    )


def xlnet_forward(cfg, weights, inputs, dtype=None):
    """Every stage of the forward pass, batch-first, as golden/README.md lays them out.
    dtype: the case's (np.float32 or np.float16); by default the weights'."""
    dtype = dtype or weights["transformer.word_embedding.weight"].dtype.type
    w = {k: v.astype(np.float64) for k, v in weights.items()}
    ids = inputs["input_ids"]
    b, qlen = ids.shape
    if cfg["bi_data"] and b % 2:
        raise ValueError(f"input_ids: bi_data needs an even batch, got {b} rows")
    mems = (
        [inputs[f"mems.{layer}"].astype(np.float64) for layer in range(cfg["n_layer"])] if "mems.0" in inputs else None
    )
    mlen = mems[0].shape[1] if mems else 0
    klen = mlen + qlen
    act = {"gelu": gelu, "relu": lambda x: np.maximum(x, 0)}[cfg["ff_activation"]]
    S = {}
    h = w["transformer.word_embedding.weight"][ids]  # [b, i, m]
    S["word_emb"] = h
    pos_emb = positional_table(qlen, klen, cfg, b)  # [b, r, m]
    S["pos_emb"] = pos_emb
    attn_mask, non_tgt_mask = masks(cfg, inputs, qlen, mlen)
    S["attn_mask"], S["non_tgt_mask"] = attn_mask, non_tgt_mask
    seg_diff = None
    if "token_type_ids" in inputs:
        tt = inputs["token_type_ids"]
        keys = np.concatenate([np.zeros((b, mlen), dtype=tt.dtype), tt], 1)  # memory is segment 0
        seg_diff = S["seg_diff"] = tt[:, :, None] != keys[:, None, :]
    g = pos = valid = None
    if "target_mapping" in inputs:
        tm = inputs["target_mapping"]
        pos, valid = tm.argmax(-1), tm.sum(-1) > 0  # [b, k]
        g = np.broadcast_to(w["transformer.mask_emb"], (b, tm.shape[1], cfg["d_model"]))
    for layer in range(cfg["n_layer"]):
        W = {
            k.split(f"transformer.layer.{layer}.", 1)[1].replace("rel_attn.", ""): v
            for k, v in w.items()
            if k.startswith(f"transformer.layer.{layer}.rel_attn.")
        }
        W["eps"] = cfg["layer_norm_eps"]
        F = {
            k.split(f"transformer.layer.{layer}.ff.", 1)[1]: v
            for k, v in w.items()
            if k.startswith(f"transformer.layer.{layer}.ff.")
        }
        p = f"layer{layer}."
        mem = mems[layer] if mems else None
        if cfg["mem_len"]:
            cached = h[:, : cfg["reuse_len"]] if cfg["reuse_len"] else h
            S[p + "new_mem"] = (cached if mem is None else np.concatenate([mem, cached], 1))[:, -cfg["mem_len"] :]
        cat = h if mem is None else np.concatenate([mem, h], 1)  # [b, j, m]
        q_h = np.einsum("bim,mnd->bind", h, W["q"])
        k_h, v_h = np.einsum("bjm,mnd->bjnd", cat, W["k"]), np.einsum("bjm,mnd->bjnd", cat, W["v"])
        k_r = np.einsum("brm,mnd->brnd", pos_emb, W["r"])
        S.update({p + "q_h": q_h, p + "k_h": k_h, p + "v_h": v_h, p + "k_r": k_r})
        common = (k_h, v_h, k_r, W, W["r_w_bias"], W["r_r_bias"], W["r_s_bias"])
        t, h_out = attention(h, q_h, *common, seg_diff, non_tgt_mask, None, None, qlen, dtype)
        S.update({f"{p}content.{k}": v for k, v in t.items()})
        S[p + "content_attn_out"] = h_out
        if g is not None:
            q_g = np.einsum("bkm,mnd->bknd", g, W["q"])
            S[p + "q_g"] = q_g
            rows = lambda x: np.take_along_axis(x, pos[:, :, None], axis=1)  # noqa: E731 — [b, i, j] at the targets
            t, g_out = attention(
                g, q_g, *common, None if seg_diff is None else rows(seg_diff), rows(attn_mask), pos, valid, qlen, dtype
            )
            S.update({f"{p}query.{k}": v for k, v in t.items()})
            S[p + "query_attn_out"] = g_out
        h = S[p + "content_ff_out"] = feed_forward(h_out, F, act, cfg["layer_norm_eps"])
        if g is not None:
            g = S[p + "query_ff_out"] = feed_forward(g_out, F, act, cfg["layer_norm_eps"])
    out = g if g is not None else h
    S["logits"] = out @ w["transformer.word_embedding.weight"].T + w["lm_loss.bias"]
    if "target_ids" in inputs:  # mean cross-entropy over the real targets only
        logits, y, wt = S["logits"], inputs["target_ids"], inputs["target_weights"].astype(np.float64)
        lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
        ce = lse - np.take_along_axis(logits, y[..., None], -1)[..., 0]
        S["loss"] = np.array((ce * wt).sum() / max(wt.sum(), 1e-30))
    return S


def main(argv=None) -> int:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--golden", default=str(here.parent / "golden"), help="golden folder (default: %(default)s)")
    parser.add_argument("--out", default="numpy_xlnet_outputs.safetensors", help="outputs file to write")
    args = parser.parse_args(argv)
    golden = Path(args.golden)
    manifest = json.loads((golden / "manifest.json").read_text())
    outputs = {}
    for entry in manifest["cases"]:
        tensors = load_file(str(golden / entry["file"]))
        weights = {k[len("weights/") :]: v for k, v in tensors.items() if k.startswith("weights/")}
        inputs = {k[len("inputs/") :]: v for k, v in tensors.items() if k.startswith("inputs/")}
        try:
            stages = xlnet_forward(entry["config"], weights, inputs, np.dtype(entry["dtype"]).type)
        except ValueError as error:  # the documented way to refuse an input
            outputs[f"{entry['name']}/refused"] = np.array(1)
            print(f"{entry['name']:<24} refused: {error}")
            continue
        outputs.update({f"{entry['name']}/{k}": np.ascontiguousarray(v) for k, v in stages.items()})
        print(f"{entry['name']:<24} {len(stages)} stages")
    save_file(outputs, args.out)
    print(f"wrote {args.out}; check it with: python {golden / 'compare.py'} {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
