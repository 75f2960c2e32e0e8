"""Checkpoints: one directory per checkpoint, committed by a marker file written last.

```
RUN/checkpoints/step-000001234/
    meta.json             format, epoch/step position, counters, the full resolved config
    dense.pt              {"model", "optimizer", "rng"}: plain tensors/containers only, loaded with
                          torch.load(weights_only=True) (no arbitrary unpickling)
    embeddings/user.parquet, embeddings/item.parquet
                          orig_id + embedding rows + sparse optimizer state, keyed by orig id
    COMMITTED             written last: a directory without it is ignored
RUN/checkpoints/best.json {"checkpoint": "step-...", "metric", "value", "split"} (atomic replace):
                          the checkpoint selected on the validation split ``split``
```
The directory is built under a hidden temporary name (``distgnn.atomic.AtomicDir``), the marker is
written inside it, every file is fsynced, and it is renamed into place; older checkpoints beyond
``keep`` are pruned (the best one is kept). An unreadable ``best.json`` makes evaluate/recommend
fall back to the latest checkpoint with a warning, never silently.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from distgnn import atomic
from distgnn.errors import UserError

FORMAT = "distgnn-checkpoint"
VERSION = 1
MARKER = "COMMITTED"


def ckpt_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def committed(run_dir: str | Path) -> list[Path]:
    root = ckpt_root(run_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir()
                  if p.is_dir() and p.name.startswith("step-") and (p / MARKER).is_file())


def latest(run_dir: str | Path) -> Path | None:
    c = committed(run_dir)
    return c[-1] if c else None


def best_record(run_dir: str | Path, warn: bool = False) -> dict[str, Any] | None:
    """``best.json`` with ``path`` added, if it names a committed checkpoint; None without one.
    With ``warn``, a ``best.json`` that cannot be read, or names a missing checkpoint, is reported
    on stderr (the caller then falls back to the latest checkpoint)."""
    f = ckpt_root(run_dir) / "best.json"
    if not f.is_file():
        return None
    try:
        rec = json.loads(f.read_text())
        name = rec["checkpoint"]
        p = ckpt_root(run_dir) / str(name)
        if (p / MARKER).is_file():
            return {**rec, "path": p}
        problem = f"names {name!r}, which is not a committed checkpoint"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        problem = f"is unreadable ({type(exc).__name__})"
    if warn:
        print(f"distgnn: warning: {f} {problem}; using the latest checkpoint instead", file=sys.stderr)
    return None


def best(run_dir: str | Path, warn: bool = False) -> Path | None:
    rec = best_record(run_dir, warn)
    return rec["path"] if rec else None


def for_inference(run_dir: str | Path) -> Path:
    """The checkpoint evaluate/recommend use: the best one if validation ran, else the latest."""
    p = best(run_dir, warn=True) or latest(run_dir)
    if p is None:
        raise UserError(f"{run_dir} has no committed checkpoint; train first with "
                        f"'distgnn train --config CFG --out {run_dir}'")
    return p


def write(run_dir: str | Path, global_step: int, meta: dict[str, Any], dense: dict[str, Any],
          save_embeddings, keep: int) -> Path:
    root = ckpt_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{global_step:09d}"
    final = root / name
    with atomic.AtomicDir(final, overwrite=True) as tmp:  # fsynced, then renamed into place
        torch.save(dense, tmp / "dense.pt")
        save_embeddings(tmp / "embeddings")
        (tmp / "meta.json").write_text(json.dumps({"format": FORMAT, "version": VERSION, **meta}, indent=2))
        atomic.fsync_tree(tmp)  # the data is durable before the marker that vouches for it
        (tmp / MARKER).write_text(name + "\n")
    prune(run_dir, keep)
    return final


def mark_best(run_dir: str | Path, ckpt: Path, metric: str, value: float, split: str = "valid") -> None:
    """Record ``ckpt`` as the selected checkpoint: best ``metric`` (= ``value``) on ``split``."""
    atomic.write_json(ckpt_root(run_dir) / "best.json",
                      {"checkpoint": ckpt.name, "metric": metric, "value": value, "split": split}, indent=None)


def prune(run_dir: str | Path, keep: int) -> None:
    keep_best = best(run_dir)
    for p in committed(run_dir)[:-keep]:
        if keep_best is None or p.name != keep_best.name:
            shutil.rmtree(p, ignore_errors=True)


def read_meta(ckpt: Path) -> dict[str, Any]:
    try:
        meta = json.loads((ckpt / "meta.json").read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"checkpoint {ckpt} has no readable meta.json ({exc}); it is damaged")
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise UserError(f"checkpoint {ckpt} is {meta.get('format')} v{meta.get('version')}, "
                        f"this distgnn reads {FORMAT} v{VERSION}")
    return meta


def read_dense(ckpt: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    try:
        return torch.load(ckpt / "dense.pt", map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means an unusable file
        raise UserError(f"cannot load {ckpt / 'dense.pt'} ({type(exc).__name__}); the checkpoint is "
                        f"damaged or not a distgnn checkpoint")


def check_compatible(ckpt: Path, saved_cfg: dict, cfg_dict: dict) -> None:
    """The checkpoint's model and embedding settings must equal the config's."""
    for section, keys in (("model", None), ("embedding", ("optimizer",))):
        a, b = saved_cfg.get(section, {}), cfg_dict.get(section, {})
        for key in (keys or sorted(set(a) | set(b))):
            if a.get(key) != b.get(key):
                raise UserError(f"checkpoint {ckpt} was written with {section}.{key}={a.get(key)!r} but "
                                f"the config has {section}.{key}={b.get(key)!r}; use the run's own "
                                f"config.yaml or start a new run with another --out")


def load_partition_rows(ckpt: Path, partitions_root: str | Path, part_id: int,
                        names: tuple[str, ...] = ("weight",)) -> dict[str, Any]:
    """Rows of partition ``part_id``'s gid range (users then items, gid order) from a checkpoint.

    (Interim version for v1 checkpoints: re-keys by orig id against the partition's own id-map
    slices.)"""
    import numpy as np

    from distgnn import format as fmt
    from distgnn.embedding_store import read_rows

    manifest = fmt.load_manifest(partitions_root)
    meta = read_meta(Path(ckpt))
    emb_cfg, model_cfg = meta["config"]["embedding"], meta["config"]["model"]
    out: dict[str, list] = {n: [] for n in names}
    for ntype in ("user", "item"):
        start, n = fmt.id_map_rows(manifest, ntype, part_id)
        _, orig = fmt.read_id_map_slice(partitions_root, ntype, start, n)
        pos, cols = read_rows(Path(ckpt) / "embeddings", ntype, orig, emb_cfg["optimizer"],
                              model_cfg["dim"], list(names))
        for name in names:
            out[name].append(cols[name][pos])
    return {name: np.concatenate(v) for name, v in out.items()}
