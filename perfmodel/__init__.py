"""perfmodel: predicts a training step's time and memory for a layout.

Pure Python + numpy + pyyaml; never imports torch (calibrate/ aside). The rules it shares
with the engine (layouts, model shapes, layout rules, stage split, pipeline schedules, the
FLOP convention) live in the engine's torch-free `axon.spec`, which both sides import.
"""
