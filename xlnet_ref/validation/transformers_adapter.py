r"""transformers' XLNet as an adapter (``--against hf``): every stage captured from inside its forward pass.

transformers works length-first inside ([i, b, ...]); its query stream attends at every position
(queries scattered with target_mapping), so its query-stream scores are gathered at the targets.
Its stages are captured by wrapping the attention methods of each layer (this model instance only)
and recording the einsum / softmax calls they make.
"""

from __future__ import annotations

import torch

from ..interop import SHARED_FIELDS
from .cases import Case
from .recorder import gradient_stages
from .reference import FORWARD_ARGS


class _RecordCalls(torch.overrides.TorchFunctionMode):
    """Records every torch.einsum and softmax call (equation, operands, result) while active."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[str, tuple, torch.Tensor]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.einsum:
            self.calls.append((args[0], args[1:], out))
        elif func is torch.nn.functional.softmax:
            self.calls.append(("softmax", args, out))
        return out


def _instrument_hf_layer(layer) -> dict:
    """Wrap one transformers XLNetLayer's attention methods (on this instance only) to record its stages."""
    attn = layer.rel_attn
    rec: dict = {"core": [], "post": [], "shift": [], "ff": [], "mode": None}
    orig_forward, orig_core = attn.forward, attn.rel_attn_core
    orig_post, orig_shift = attn.post_attention, attn.rel_shift_bnij

    def forward(*args, **kwargs):
        with _RecordCalls() as mode:
            rec["mode"] = mode
            return orig_forward(*args, **kwargs)

    def rel_attn_core(q_head, k_head_h, v_head_h, k_head_r, seg_mat=None, attn_mask=None, output_attentions=False):
        start, n_shift = len(rec["mode"].calls), len(rec["shift"])
        out = orig_core(
            q_head,
            k_head_h,
            v_head_h,
            k_head_r,
            seg_mat=seg_mat,
            attn_mask=attn_mask,
            output_attentions=output_attentions,
        )
        rec["core"].append(
            dict(
                q=q_head,
                k_h=k_head_h,
                v_h=v_head_h,
                k_r=k_head_r,
                calls=rec["mode"].calls[start:],
                shift=rec["shift"][n_shift:],
            )
        )
        return out

    def rel_shift_bnij(x, klen=-1):
        out = orig_shift(x, klen=klen)
        rec["shift"].append((x, out))
        return out

    def post_attention(h, attn_vec, residual=True):
        out = orig_post(h, attn_vec, residual=residual)
        rec["post"].append(out)
        return out

    attn.forward, attn.rel_attn_core = forward, rel_attn_core
    attn.post_attention, attn.rel_shift_bnij = post_attention, rel_shift_bnij
    layer.ff.register_forward_hook(lambda module, inp, out: rec["ff"].append((inp[0], out)))
    return rec


def _hf_scores(core: dict) -> dict[str, torch.Tensor]:
    """ac, bd_raw, bd, ef, score, prob ([b, n, i, *]) from one recorded rel_attn_core call."""
    pair = [out for eq, _, out in core["calls"] if eq == "ibnd,jbnd->bnij"]  # ac first, then bd before the shift
    softmax = [c for c in core["calls"] if c[0] == "softmax"]
    if len(pair) != 2 or len(core["shift"]) != 1 or len(softmax) != 1:
        raise RuntimeError(
            "hf_adapter: transformers' XLNetRelativeAttention.rel_attn_core no longer computes its "
            "scores as written for transformers 5.x; update the hooks in xlnet_ref/validation/transformers_adapter.py"
        )
    terms = {"ac": pair[0], "bd_raw": pair[1], "bd": core["shift"][0][1]}
    ef = [out for eq, _, out in core["calls"] if eq == "ijbs,ibns->bnij"]
    if ef:
        terms["ef"] = ef[0]
    ((_, args, prob),) = softmax
    terms.update(score=args[0], prob=prob)
    return terms


def hf_adapter(case: Case) -> dict:
    """transformers' XLNetLMHeadModel with the case's weights; every stage captured with hooks.

    transformers works length-first inside ([i, b, ...]); its query stream attends at every position
    (queries scattered with target_mapping), so its query-stream scores are gathered at the targets.
    """
    from transformers import XLNetConfig as HFConfig
    from transformers import XLNetLMHeadModel as HFLM

    b = case.inputs["input_ids"].shape[0]
    if case.config["bi_data"] and b % 2:
        # transformers does not check this: it would crash inside an einsum (a RuntimeError, not a
        # refusal). The adapter refuses it as the reference does, with a ValueError naming the input.
        raise ValueError(f"input_ids: bi_data needs an even batch (half forwards, half backwards), got {b} rows")
    hf = HFLM(HFConfig(**{f: case.config[f] for f in SHARED_FIELDS})).to(case.torch_dtype)
    hf.load_state_dict(case.weights)
    hf.eval()
    inputs = case.inputs
    b, qlen = inputs["input_ids"].shape
    recs = [_instrument_hf_layer(layer) for layer in hf.transformer.layer]
    top: dict = {}
    hf.transformer.word_embedding.register_forward_hook(lambda m, inp, out: top.update(word_emb=out))
    hf.transformer.layer[0].register_forward_pre_hook(lambda m, args, kwargs: top.update(kwargs), with_kwargs=True)

    kw = {k: inputs[k] for k in FORWARD_ARGS if k in inputs and k != "mems"}
    if "mems" in inputs:
        kw["mems"] = [m.transpose(0, 1) for m in inputs["mems"]]  # transformers' mems are [mlen, b, m]
    if "target_ids" in inputs:
        kw["labels"] = torch.where(inputs["target_weights"] > 0, inputs["target_ids"], -100)  # -100 = ignored
    out = hf(inputs["input_ids"], **kw, use_mems=bool(case.config["mem_len"]))

    mlen = inputs["mems"][0].shape[1] if "mems" in inputs else 0

    def mask(m):  # [i or 1, j, b or 1, 1] float or None -> [b, i, j] bool
        if m is None:
            return torch.zeros(b, qlen, mlen + qlen, dtype=torch.bool)
        return m[..., 0].permute(2, 0, 1).expand(b, qlen, mlen + qlen) > 0

    stages = {
        "word_emb": top["word_emb"].transpose(0, 1),
        "pos_emb": top["r"].transpose(0, 1),  # [r, b, m] -> [b, r, m]
        "attn_mask": mask(top["attn_mask_g"]),
        "non_tgt_mask": mask(top["attn_mask_h"]),
    }
    if top["seg_mat"] is not None:  # one-hot [i, j, b, 2]; index 1 = different segments
        stages["seg_diff"] = top["seg_mat"][..., 1].permute(2, 0, 1) > 0
    pos = inputs["target_mapping"].argmax(-1) if "target_mapping" in inputs else None  # [b, k]

    def at_targets(t):  # [b, n, i, x] -> [b, n, k, x]
        return t.gather(2, pos[:, None, :, None].expand(-1, t.shape[1], -1, t.shape[3]))

    for layer, rec in enumerate(recs):
        pre = f"layer{layer}."
        if out.mems is not None:
            stages[pre + "new_mem"] = out.mems[layer].transpose(0, 1)
        content = rec["core"][0]
        stages.update(
            {
                pre + "q_h": content["q"].transpose(0, 1),
                pre + "k_h": content["k_h"].transpose(0, 1),
                pre + "v_h": content["v_h"].transpose(0, 1),
                pre + "k_r": content["k_r"].transpose(0, 1),
            }
        )
        stages.update({pre + "content." + k: v for k, v in _hf_scores(content).items()})
        stages[pre + "content_attn_out"] = rec["post"][0].transpose(0, 1)
        if len(rec["core"]) > 1:  # two streams: the second call is the query stream
            scatter = [ops for eq, ops, _ in rec["mode"].calls if eq == "mbnd,mlb->lbnd"]
            stages[pre + "q_g"] = scatter[0][0].transpose(0, 1)  # [k, b, n, d] before scattering
            stages.update({pre + "query." + k: at_targets(v) for k, v in _hf_scores(rec["core"][1]).items()})
            stages[pre + "query_attn_out"] = rec["post"][1].transpose(0, 1)
        for inp, ff_out in rec["ff"]:  # transformers runs the feed-forward on g first, then h
            name = "content_ff_out" if inp is rec["post"][0] else "query_ff_out"
            stages[pre + name] = ff_out.transpose(0, 1)
    stages["logits"] = out.logits
    if out.loss is not None:
        stages["loss"] = out.loss
    if case.gradients:  # transformers' parameter names are the golden names; word_emb is [i, b, m] inside
        grads = gradient_stages(out.loss, dict(hf.named_parameters()), word_emb=top["word_emb"])
        grads["grad.word_emb"] = grads["grad.word_emb"].transpose(0, 1)
        stages.update(grads)
    return stages
