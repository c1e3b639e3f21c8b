"""Figures for the notebooks and the demo.

viz.py       matrices, masks, panels, the sinusoid table, rel_shift, per-stage errors
plotting.py  training figures: loss curves, both streams' attention, attention on memory
results.py   seeded experiment results (results/<name>.json): means, error bars, every seed
diagrams.py  schematics drawn by hand (labelled so): segment recurrence, the two streams
"""
