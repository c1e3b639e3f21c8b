"""The fast path: XLNet's equations with fewer passes, for training. Imports the readable core
(xlnet_ref) and is never imported by it.

    from xlnet_ref.fast import XLNetLMHeadModel      # the switch is the class
    model = XLNetLMHeadModel(config)                 # same parameters and state-dict names as xlnet_ref's
    to_fast(readable_model); to_readable(model)      # switch a model in place (the same tensors)

Each module shadows the readable one of the same name: attention (query blocks, one autograd Function for
softmax, dropout and the sum over values), two_stream, feed_forward, dropout (two elements per random
draw), masks (additive), model (the forward pass, the sparse tied-embedding gradient).
"""

from .model import XLNetLMHeadModel, XLNetModel, to_fast, to_readable

__all__ = ["XLNetLMHeadModel", "XLNetModel", "to_fast", "to_readable"]
