"""The fast path: XLNet's equations with fewer passes, for training. Imports the readable core
(xlnet_ref) and is never imported by it.

    from xlnet_ref.fast import XLNetLMHeadModel      # the switch is the class
    model = XLNetLMHeadModel(config)                 # same parameters and state-dict names as xlnet_ref's
    to_fast(readable_model); to_readable(model)      # switch a model in place (the same tensors)

Modules: attention, two_stream, feed_forward, masks and model shadow the readable modules of the same
name (query blocks and one autograd Function for softmax, dropout and the sum over values; additive
masks; the forward pass and the sparse tied-embedding gradient); dropout is the fast path's own (two
elements per random draw; the readable path uses nn.Dropout).
"""

from .model import XLNetLMHeadModel, XLNetModel, to_fast, to_readable

__all__ = ["XLNetLMHeadModel", "XLNetModel", "to_fast", "to_readable"]
