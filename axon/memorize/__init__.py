"""Catastrophic-memorization experiments: does a model reproduce its training text verbatim,
and does the Goldfish loss (axon/data/goldfish.py) stop it?

documents.py   target, control and canary documents (generated, or the user's file)
stream.py      the training stream: filler with the targets injected at recorded places
evaluate.py    exact match, token accuracy, Rouge-L, exposure, validation loss on any layout
adversarial_compression.py  ACR: the shortest prompt that makes the model produce a target
experiment.py  the sweep's config
runner.py      `python -m axon memorize`: train every model x loss, evaluate each epoch
report.py      results.csv/json, plots, summary.md
cli.py         the memorize and memorize-eval commands
"""
