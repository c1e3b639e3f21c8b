"""A worked example of an adapter for ``python -m xlnet_ref.validate``: "my XLNet" is transformers' here.

Run it (from the repository root):

    python -m xlnet_ref.validate --against examples/my_xlnet_adapter.py:run
    python -m xlnet_ref.validate --against examples/my_xlnet_adapter.py:run --golden golden

The validator calls ``run(case)`` once per case. To check your own implementation, keep the shape of
this file and replace the three steps: build your model from ``case.config`` and ``case.weights``,
call it on ``case.inputs``, return what you have under the stage names of docs/validate.md.

This adapter uses only transformers' public outputs (hidden_states, attentions, mems, loss), so it
reports the stages those give: the word embeddings, each layer's attention probabilities and output,
the memory, the logits and the loss. ``--against hf`` (xlnet_ref/validate.py, ``hf_adapter``) hooks
into transformers to report every stage; returning more stages from your adapter narrows a failure
down the same way.
"""

from __future__ import annotations

import torch
from transformers import XLNetConfig, XLNetLMHeadModel

# config fields transformers' XLNetConfig shares with case.config (case.config also has untie_r)
FIELDS = ("vocab_size", "d_model", "n_layer", "n_head", "d_inner", "ff_activation", "attn_type", "bi_data",
          "clamp_len", "same_length", "mem_len", "reuse_len", "dropout", "layer_norm_eps")


def build_model(case) -> XLNetLMHeadModel:
    """Step 1: my model, with the case's config and weights (already under transformers' names)."""
    model = XLNetLMHeadModel(XLNetConfig(**{f: case.config[f] for f in FIELDS}))
    model = model.to(getattr(torch, case.dtype))  # "float32" or "float16"
    model.load_state_dict(case.weights)  # strict: every name must match
    return model.eval()  # dropout is 0 anyway


def run(case) -> dict:
    """Step 2 and 3: run my model on the case and return its stages, batch-first, in the documented layouts."""
    model = build_model(case)
    inputs = case.inputs  # batch-first torch tensors; only the keys this case uses are present
    kwargs = {k: inputs[k] for k in ("token_type_ids", "attention_mask", "perm_mask", "target_mapping") if k in inputs}
    if "mems" in inputs:  # ours are [b, mlen, m]; transformers wants [mlen, b, m]
        kwargs["mems"] = [m.transpose(0, 1) for m in inputs["mems"]]
    if "target_ids" in inputs:  # transformers' loss ignores label -100: use it for the padding targets
        kwargs["labels"] = torch.where(inputs["target_weights"] > 0, inputs["target_ids"], -100)
    out = model(
        inputs["input_ids"], **kwargs,
        use_mems=bool(case.config["mem_len"]),  # return the memory only when the config keeps one
        output_hidden_states=True, output_attentions=True,
    )

    stages = {"logits": out.logits}  # the only required stage: [b, k, V] with two streams, else [b, i, V]
    if out.loss is not None:
        stages["loss"] = out.loss  # mean cross-entropy over the real targets

    two_stream = "target_mapping" in inputs
    hidden = out.hidden_states  # two streams: (h0, g0, h1, g1, ...), else (h0, h1, ...), all [b, len, m]
    stages["word_emb"] = hidden[0]  # h0 = the word embeddings
    for layer in range(case.config["n_layer"]):
        if two_stream:
            stages[f"layer{layer}.content_ff_out"] = hidden[2 * layer + 2]  # h after layer `layer`
            stages[f"layer{layer}.query_ff_out"] = hidden[2 * layer + 3]  # g after layer `layer`
            prob_h, prob_g = out.attentions[layer]  # [b, n, i, j] each
            # transformers' query stream attends at every position; the reference's only at the targets
            pos = inputs["target_mapping"].argmax(-1)  # [b, k] the position of each target
            prob_g = prob_g.gather(2, pos[:, None, :, None].expand(-1, prob_g.shape[1], -1, prob_g.shape[3]))
            stages[f"layer{layer}.content.prob"] = prob_h
            stages[f"layer{layer}.query.prob"] = prob_g  # [b, n, k, j]
        else:
            stages[f"layer{layer}.content_ff_out"] = hidden[layer + 1]
            stages[f"layer{layer}.content.prob"] = out.attentions[layer]
        if out.mems is not None:
            stages[f"layer{layer}.new_mem"] = out.mems[layer].transpose(0, 1)  # back to [b, mlen, m]
    return stages
