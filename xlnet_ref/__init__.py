"""xlnet_ref — a readable reference implementation of XLNet (Yang et al., 2019).

One file per mechanism:
    config.py            the configuration dataclass (transformers' field names)
    relative_position.py sinusoid table R, relative distances, rel_shift (Transformer-XL Sec. 3.3)
    attention.py         the four relative attention terms + segment term, masking, softmax, post-LN
    segments.py          relative segment encoding (XLNet Sec. 2.5)
    masks.py             causal / data / permutation masks for both streams
    two_stream.py        content stream h and query stream g (XLNet Sec. 2.3)
    memory.py            segment-level recurrence memory (Transformer-XL Sec. 3.2)
    feed_forward.py      position-wise feed-forward, GELU variants
    model.py             the backbone and the LM head
    permutation.py       the permutation LM objective: orders, masks, partial prediction (XLNet Sec. 2.2-2.3)
    pretraining_data.py  span targets and [reuse | A SEP B SEP CLS] examples (original data_utils.py)
    checks.py            input checks with clear errors
    interop.py           weights to and from transformers' XLNet (backbone, LM head, every task head)
    heads.py             task heads: sequence summary, classification, multiple choice, question answering
    naive.py             the slow twins (loops) the vectorised functions are tested against

Machinery around the model, in subpackages named for their job:
    fast/                the same equations in fewer passes, what training runs (same parameters;
                         imports the readable modules above, never imported by them)
    training/            corpus, tokenizers, the pretraining loop, checkpoints, the demo, synthetic tasks
    validation/          golden cases, stage-by-stage comparison, mutants (known bugs)
    drawing/             figures for the notebooks and the demo
    experiments/         seeded experiments that write results/<name>.json
    labs/                graders and feedback for the classroom labs (notebooks/labs)

Entry points (thin modules): python -m xlnet_ref.train | .demo | .finetune | .validate | .golden

Axis letters used in shapes and einsum strings, one meaning each:
    b batch, i query position, j key position (over [memory | current]), k prediction target,
    r row of the relative-position table, p half of the table (bi_data), n head, d head width,
    m model width (d_model), s same/different segment.
"""

from .config import XLNetConfig
from .model import XLNetLMHeadModel, XLNetModel, XLNetOutput

__all__ = ["XLNetConfig", "XLNetModel", "XLNetLMHeadModel", "XLNetOutput"]
