"""The embedded default run, ``co2sam demo`` (see :mod:`co2sam.demo.pipeline`).

data.py      the source and target domains (generated shapes, co-occurring classes)
model.py     the demo SAM's architecture and its shipped weights
pretrain.py  box -> mask pretraining on the source (what scripts/make_demo_sam.py runs)
detector.py  the simulated detector (perturbed ground-truth boxes)
pipeline.py  data -> before -> Co2SAM fit -> after (+ ablations)
report.py    report.json, the printed table, overlays, the before/after figure
"""
