"""Machinery around the model: text, tokenizers, the pretraining loop, checkpoints, the demo.

    corpus.py      CPython's own documentation as a corpus (no download), held-out split
    tokenizer.py   byte tokenizer and a locally trained SentencePiece model (XLNet's special ids)
    train.py       the pretraining loop, presets, evaluation, exact resume  (python -m xlnet_ref.train)
    checkpoint.py  safetensors checkpoints with the whole training state, transformers export
    demo.py        `make demo`: pretrain the tiny preset and draw figures    (python -m xlnet_ref.demo)
    tasks.py       synthetic tasks that isolate one mechanism (the copy task for memory)
"""
