r"""The backbone and the LM head on the fast path: the readable classes' parameters, state-dict names
and equations (xlnet_ref.model), computed with fewer passes.

What differs from :meth:`xlnet_ref.model.XLNetModel.forward`, all of it arithmetic the tests check to
round-off (tests/test_fast_path.py: outputs, memories, losses and gradients for every parity case):

- the masks become additive once per forward pass (fast.masks), dropout draws two elements per random
  number (fast.dropout), attention and the feed-forward are fast.two_stream / fast.feed_forward;
- ``content_output=False`` (with target_mapping): the last layer's content stream, which neither the
  logits nor the memories use, is not computed and ``content`` is None, what the PLM loss needs;
- with the LM head tied to the word embedding, on a CPU and eager, the lookup's gradient is kept sparse
  and added into the head's dense gradient in place (:class:`TiedHead`, :class:`LateAlias`) instead of a
  dense [V, m] zero-filled matrix and an out-of-place add (~4% of the benchmark's training step at
  V = 32000; benchmarks/RESULTS.md).

No attention probabilities: a call that asks for them (``output_attentions``) runs the readable forward
pass instead, with the same weights.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .. import model as readable
from ..checks import check_inputs
from ..memory import cache_mem
from .attention import QUERY_BLOCK
from .dropout import fast_dropout
from .feed_forward import feed_forward
from .masks import additive_mask
from .two_stream import two_stream_attention


class XLNetModel(readable.XLNetModel):
    """transformers' ``XLNetModel`` on the fast path; the same parameters as :class:`xlnet_ref.XLNetModel`."""

    # query rows attended at a time (fast.attention.QUERY_BLOCK; None: all at once)
    query_block: int | None = QUERY_BLOCK
    # set by the fast XLNetLMHeadModel: its output matrix is word_embedding.weight
    tied_head: bool = False

    def embed_words(self, input_ids: torch.Tensor) -> torch.Tensor:
        """E[x]: [b, i] -> [b, i, m]. Tied to an LM head, eager on a CPU: the lookup's gradient is sparse
        (b*i rows), summed into the head's dense one in place (XLNetLMHeadModel below)."""
        emb = self.word_embedding
        # nn.Embedding reads its ``sparse`` flag on every call (only the gradient's layout depends on it).
        # Set for this call only and looked up through the module, so that hooks on word_embedding see every
        # lookup; at rest it is an ordinary dense embedding (what DistributedDataParallel inspects when it wraps)
        emb.sparse = self.tied_head and emb.weight.device.type == "cpu" and not torch.compiler.is_compiling()
        out = emb(input_ids)
        emb.sparse = False
        return out

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        token_type_ids=None,
        attention_mask=None,
        input_mask=None,
        perm_mask=None,
        target_mapping=None,
        mems=None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        content_output: bool = True,
    ) -> readable.XLNetOutput:
        """:meth:`xlnet_ref.model.XLNetModel.forward`'s arguments and outputs, plus ``content_output``."""
        inputs = dict(
            token_type_ids=token_type_ids,
            attention_mask=attention_mask,
            input_mask=input_mask,
            perm_mask=perm_mask,
            target_mapping=target_mapping,
            mems=mems,
        )
        if output_attentions:  # the readable path's probabilities
            return super().forward(
                input_ids, **inputs, output_attentions=True, output_hidden_states=output_hidden_states
            )
        cfg = self.config
        dtype = self.word_embedding.weight.dtype
        if not torch.compiler.is_compiling():  # the value checks read tensors: a compiled graph skips them
            check_inputs(cfg, input_ids=input_ids, **inputs, dtype=dtype, device=self.word_embedding.weight.device)
        drop = lambda x: fast_dropout(x, self.dropout.p, self.training)  # noqa: E731
        shared, pos_emb = self.attention_inputs(input_ids, **inputs)  # the readable model's, then:
        for name in ("attn_mask", "non_tgt_mask"):  # additive, once for all layers
            shared[name] = additive_mask(shared[name], dtype)
        h = drop(self.embed_words(input_ids))  # h^(0): [b, i, m]
        g = None
        if target_mapping is not None:  # g^(0) = w: [b, k, m]
            g = drop(self.mask_emb.expand(input_ids.shape[0], target_mapping.shape[1], -1))
        pos_emb = drop(pos_emb)  # [p, r, m]

        new_mems = [] if cfg.mem_len else None
        hidden_states = [] if output_hidden_states else None
        for layer_index, layer in enumerate(self.layer):
            mem = mems[layer_index] if mems is not None else None
            if new_mems is not None:
                new_mems.append(cache_mem(h, mem, mem_len=cfg.mem_len, reuse_len=cfg.reuse_len))
            if hidden_states is not None:
                hidden_states.append(h if g is None else (h, g))
            k_r = layer.rel_attn.project(pos_emb, layer.rel_attn.r)  # [p, r, n, d]
            skip_content = (
                not content_output and g is not None and hidden_states is None and layer_index == cfg.n_layer - 1
            )
            h, g = two_stream_attention(
                layer.rel_attn,
                h,
                g,
                mem,
                k_r,
                **shared,
                skip_content=skip_content,
                query_block=self.query_block,
                **self.layer_biases(layer_index),
            )
            h = feed_forward(layer.ff, h) if h is not None else None
            g = feed_forward(layer.ff, g) if g is not None else None
        if hidden_states is not None:
            hidden_states.append(h if g is None else (h, g))
        return readable.XLNetOutput(
            content=drop(h) if h is not None else None,
            query=drop(g) if g is not None else None,
            mems=new_mems,
            hidden_states=hidden_states,
        )


class TiedHead(torch.autograd.Function):
    """logits = h W^T + bias for h [N, m] and the tied W [V, m]: nn.Linear's numbers, with W's gradient
    made as a fresh [V, m] tensor (grad^T h) where nn.Linear's is a transposed view. See LateAlias."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(h, weight)
        return torch.addmm(bias, h, weight.t())

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        h, weight = ctx.saved_tensors
        # under autocast the forward's matmul ran in bfloat16 and its gradient comes in that dtype: the
        # backward's matmuls run in it too, as nn.Linear's do (autograd casts each gradient to its input's dtype)
        h, weight = h.to(grad.dtype), weight.to(grad.dtype)
        return grad.mm(weight), grad.t().mm(h), grad.sum(0)  # dh, dW [V, m] (not a view), dbias


class LateAlias(torch.autograd.Function):
    """W itself, for the LM head, through a node of its own recorded before the word lookup.

    The tied matrix gets two gradients in one backward pass: the head's, dense, and the lookup's, sparse
    (XLNetModel.embed_words). Autograd adds them in place only when the sparse one comes first and the
    dense one is a tensor of its own (torch/csrc/autograd/input_buffer.cpp); otherwise it allocates and
    copies the whole [V, m] matrix (~12 ms of the benchmark's step). The head's backward runs before the
    lookup's, because it was recorded later; its gradient then waits in this node, which was recorded
    first and so runs last."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor) -> torch.Tensor:
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


def densify_grad(param: torch.Tensor) -> None:
    """A sparse gradient made dense (see XLNetLMHeadModel.keep_tied_gradient_dense)."""
    if param.grad is not None and param.grad.is_sparse:
        param.grad = param.grad.to_dense()


class XLNetLMHeadModel(readable.XLNetLMHeadModel):
    """:class:`xlnet_ref.XLNetLMHeadModel` on the fast path: the same parameters and state-dict names."""

    def __init__(self, config):
        super().__init__(config)
        to_fast(self)

    def forward(self, input_ids: torch.Tensor, **kwargs) -> readable.XLNetOutput:
        """:meth:`xlnet_ref.model.XLNetLMHeadModel.forward`'s arguments (and ``content_output``)."""
        if not torch.compiler.is_compiling():  # compiled, the lookup's gradient is dense anyway
            self.keep_tied_gradient_dense()
        tied = not torch.compiler.is_compiling()
        weight = LateAlias.apply(self.lm_loss.weight) if tied else None  # before the lookup (see LateAlias)
        out = self.transformer(input_ids, **kwargs)
        h = out.last_hidden_state
        if tied:
            out.logits = TiedHead.apply(h.reshape(-1, h.shape[-1]), weight, self.lm_loss.bias).view(*h.shape[:-1], -1)
        else:
            out.logits = self.lm_loss(h)
        return out

    def keep_tied_gradient_dense(self) -> None:
        """The lookup's gradient is sparse and is summed into the head's dense one (XLNetModel.embed_words).
        A backward pass that never reaches the logits would leave it sparse: a hook makes it dense, as
        optimizers and clipping expect. Registered on the first call rather than in __init__, because
        copy.deepcopy and pickling do not carry a tensor's hooks over."""
        weight = self.lm_loss.weight
        if densify_grad not in (getattr(weight, "_post_accumulate_grad_hooks", None) or {}).values():
            weight.register_post_accumulate_grad_hook(densify_grad)


def to_fast(model: torch.nn.Module) -> torch.nn.Module:
    """Switch a readable :class:`xlnet_ref.XLNetLMHeadModel` or :class:`xlnet_ref.XLNetModel` to the fast
    path in place (the same parameter tensors) and return it. The fast classes' __init__ does this."""
    if isinstance(model, readable.XLNetLMHeadModel):
        model.__class__ = XLNetLMHeadModel
        to_fast(model.transformer)
        model.transformer.tied_head = True
    elif isinstance(model, readable.XLNetModel):
        model.__class__ = XLNetModel
    else:
        raise TypeError(f"model: expected an xlnet_ref XLNetModel or XLNetLMHeadModel, got {type(model).__name__}")
    return model


def to_readable(model: torch.nn.Module) -> torch.nn.Module:
    """The inverse of :func:`to_fast`: the same module on the readable path, in place."""
    if isinstance(model, readable.XLNetLMHeadModel):
        model.__class__ = readable.XLNetLMHeadModel
        to_readable(model.transformer)
    elif isinstance(model, readable.XLNetModel):
        model.__class__ = readable.XLNetModel
        model.__dict__.pop("tied_head", None)
        model.__dict__.pop("query_block", None)
    else:
        raise TypeError(f"model: expected an xlnet_ref XLNetModel or XLNetLMHeadModel, got {type(model).__name__}")
    return model
