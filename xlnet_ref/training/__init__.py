"""Machinery around the model: text, tokenizers, the pretraining loop, checkpoints, the demo.

corpus.py      CPython's own documentation as a corpus (no download), held-out split
tokenizer.py   byte tokenizer and a locally trained SentencePiece model (XLNet's special ids)
train.py       the pretraining loop, presets, evaluation, exact resume  (python -m xlnet_ref.train)
checkpoint.py  safetensors checkpoints with the whole training state and SHA-256 manifest, transformers export
run_folder.py  output-folder safety: refuse another run's checkpoints, clean stale temporaries, atomic history
interrupt.py   SIGINT/SIGTERM: finish the step, checkpoint, exit non-zero
baselines.py   unigram / bigram / trigram count models (Kneser-Ney) on the same text
finetune.py    fine-tuning the task heads                                (python -m xlnet_ref.finetune)
finetune_data.py  fine-tuning tasks built from documentation on the machine, split by document
demo.py        `make demo`: pretrain the tiny preset and draw figures    (python -m xlnet_ref.demo)
tasks.py       synthetic tasks that isolate one mechanism (the copy task for memory)
"""
