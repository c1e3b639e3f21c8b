"""A worked example of an adapter for ``python -m xlnet_ref.validate``: "my XLNet" is transformers' here.

Run it (from the repository root):

    python -m xlnet_ref.validate --against examples/my_xlnet_adapter.py:run
    python -m xlnet_ref.validate --against examples/my_xlnet_adapter.py:run --golden golden

The validator calls ``run(case)`` once per case. To check your own PyTorch implementation, keep the
shape of this file and replace the steps: build your model from ``case.config`` and ``case.weights``,
refuse what the reference refuses, call it on ``case.inputs`` inside a ``StageRecorder``, and return
what you have under the stage names of docs/validate.md (batch-first).

The recorder (xlnet_ref/validation/recorder.py) captures internal stages without touching the model's
code: module outputs by forward hooks, and einsum / softmax results by the module that computed them.
Which einsum is which comes from reading the code being checked, here transformers'
``XLNetRelativeAttention`` (``modeling_xlnet.py``). ``--against hf`` (transformers_adapter.py) goes
further and reports every stage; each stage returned narrows a failure down.
"""

from __future__ import annotations

import torch
from transformers import XLNetConfig, XLNetLMHeadModel

from xlnet_ref.validation.recorder import StageRecorder, gradient_stages

# config fields transformers' XLNetConfig shares with case.config (case.config also has untie_r)
FIELDS = (
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
)


def build_model(case) -> XLNetLMHeadModel:
    """Step 1: my model, with the case's config and weights (already under transformers' names)."""
    model = XLNetLMHeadModel(XLNetConfig(**{f: case.config[f] for f in FIELDS}))
    model = model.to(getattr(torch, case.dtype))  # "float32" or "float16"
    model.load_state_dict(case.weights)  # strict: every name must match
    return model.eval()  # dropout is 0 anyway


def run(case) -> dict:
    """Steps 2 to 4: refuse what the reference refuses, run my model while recording, return its stages."""
    inputs = case.inputs  # batch-first torch tensors; only the keys this case uses are present
    b = inputs["input_ids"].shape[0]
    if case.config["bi_data"] and b % 2:  # transformers would crash in an einsum: refuse it the documented way
        raise ValueError(f"input_ids: bi_data needs an even batch (half forwards, half backwards), got {b} rows")
    model = build_model(case)
    kwargs = {k: inputs[k] for k in ("token_type_ids", "attention_mask", "perm_mask", "target_mapping") if k in inputs}
    if "mems" in inputs:  # ours are [b, mlen, m]; transformers wants [mlen, b, m]
        kwargs["mems"] = [m.transpose(0, 1) for m in inputs["mems"]]
    if "target_ids" in inputs:  # transformers' loss ignores label -100: use it for the padding targets
        kwargs["labels"] = torch.where(inputs["target_weights"] > 0, inputs["target_ids"], -100)
    with StageRecorder(model) as rec:
        out = model(inputs["input_ids"], **kwargs, use_mems=bool(case.config["mem_len"]), output_hidden_states=True)

    stages = {"logits": out.logits}  # the only required stage: [b, k, V] with two streams, else [b, i, V]
    if out.loss is not None:
        stages["loss"] = out.loss  # mean cross-entropy over the real targets
    # transformers is length-first inside: [i, b, m] -> [b, i, m]
    word_emb = rec.output("transformer.word_embedding")
    stages["word_emb"] = word_emb.transpose(0, 1)
    two_stream = "target_mapping" in inputs
    hidden = out.hidden_states  # two streams: (h0, g0, h1, g1, ...), else (h0, h1, ...), all [b, len, m]
    for layer in range(case.config["n_layer"]):
        attn, pre = f"transformer.layer.{layer}.rel_attn", f"layer{layer}."
        # the projections W x: einsum "ibh,hnd->ibnd", in the order transformers' forward computes them
        proj = [t.transpose(0, 1) for t in rec.calls(attn, "einsum:ibh,hnd->ibnd")]
        q_h, k_h, v_h, k_r = (proj[3], proj[0], proj[1], proj[2]) if two_stream else proj[:4]
        stages.update({pre + "q_h": q_h, pre + "k_h": k_h, pre + "v_h": v_h, pre + "k_r": k_r})
        # rel_attn_core: (a)+(c), then (b)+(d) before the shift, both "ibnd,jbnd->bnij"; its softmax is prob
        ac, bd_raw = rec.calls(attn, "einsum:ibnd,jbnd->bnij")[:2]  # the content stream's call comes first
        stages.update(
            {
                pre + "content.ac": ac,
                pre + "content.bd_raw": bd_raw,
                pre + "content.prob": rec.calls(attn, "softmax")[0],
            }
        )
        if two_stream:
            stages[pre + "content_ff_out"] = hidden[2 * layer + 2]  # h after the layer
            stages[pre + "query_ff_out"] = hidden[2 * layer + 3]  # g after the layer
            # transformers' query stream attends at every position; the reference's only at the targets
            prob_g = rec.calls(attn, "softmax")[1]
            pos = inputs["target_mapping"].argmax(-1)  # [b, k] the position of each target
            stages[pre + "query.prob"] = prob_g.gather(
                2, pos[:, None, :, None].expand(-1, prob_g.shape[1], -1, prob_g.shape[3])
            )  # [b, n, k, j]
        else:
            stages[pre + "content_ff_out"] = hidden[layer + 1]
        if out.mems is not None:
            stages[pre + "new_mem"] = out.mems[layer].transpose(0, 1)  # back to [b, mlen, m]
    if case.gradients:  # the backward pass: transformers' parameter names are the stage names
        grads = gradient_stages(out.loss, dict(model.named_parameters()), word_emb=word_emb)
        grads["grad.word_emb"] = grads["grad.word_emb"].transpose(0, 1)
        stages.update(grads)
    return stages
