"""Experiments: code with recorded results.

Each experiment is a module here with a function per seed and a ``run`` that repeats it over seeds and
writes ``results/<name>.json`` through :func:`xlnet_ref.experiments.common.write_result`: the config,
the list ``seeds``, the per-seed numbers and a summary (mean, standard deviation, min, max). Notebooks
draw from those files (:mod:`xlnet_ref.drawing.results`) and re-run one seed at the reduced size live.

    common.py   writing, reading and summarising result files
"""
