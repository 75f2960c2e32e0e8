"""A small training config for tests."""
from __future__ import annotations

from pathlib import Path

import yaml


def small_config(tmp: Path, partitions: Path, **sections) -> Path:
    cfg = {
        "data": {"partitions": str(partitions)},
        "model": {"dim": 16, "hidden": 16, "layers": 2, "heads": 2},
        "embedding": {"optimizer": "adam", "lr": 0.05},
        "train": {"epochs": 2, "batch_size": 128, "fanouts": [5, 5], "num_negatives": 2,
                  "eval_every": 0, "log_every": 5, "threads": 2, "progress": False},
        "eval": {"split": "valid"},
    }
    for sec, vals in sections.items():
        cfg.setdefault(sec, {}).update(vals)
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path
