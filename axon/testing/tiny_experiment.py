"""A memorization experiment small enough for a test: two 2-layer models (hidden 16 and 32),
byte tokens, 4 targets, 3 controls, 2 canaries, 2 epochs. Shared by the memorize tests."""

from __future__ import annotations

from pathlib import Path

import yaml

# Shape keys both models share: byte vocabulary, 32-token sequences.
TINY = {"heads": 2, "kv_heads": 1, "vocab": 257, "seq_len": 32}


def write_tiny_experiment(path: Path, out_dir: Path, layout: dict | None = None, acr: str = "largest") -> Path:
    """Writes the experiment's YAML to `path` (results go to `out_dir`) and returns `path`."""
    config = {
        "models": [{"name": "a", "layers": 2, "hidden": 16, "ffn": 32, **TINY},
                   {"name": "b", "layers": 2, "hidden": 32, "ffn": 64, "lr": 4e-3, **TINY}],
        "losses": ["standard", {"kind": "goldfish", "k": 3, "h": 4}],
        "experiment": {"documents": 4, "controls": 3, "canaries": 2, "epochs": 2, "filler_per_epoch": 6,
                       "prefix": 8, "suffix": 8, "val_sequences": 4, "exposure_samples": 15, "eval_batch": 4,
                       "acr": acr, "acr_iterations": 2, "acr_candidates": 4, "acr_top_k": 4,
                       "extraction_tail": 20},
        "layout": layout or {"data": 1},
        "train": {"global_batch": 4, "lr": 3e-3, "seed": 5, "checkpoint_every": 1000},
        "out_dir": str(out_dir),
    }
    path.write_text(yaml.safe_dump(config))
    return path
