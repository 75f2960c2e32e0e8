"""Test support for checkpoints: the committed v1 fixture, re-partitioning its input, writing a
checkpoint from a bare embedding store, and comparing stores with checkpoint rows by orig id."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from distgnn import checkpoint as ckpt
from distgnn import format as fmt

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "ckpt_v1"
V1_PARTS = FIXTURE / "parts"      # 2 partitions, string ids, 60 users, 40 items
V1_RUN = FIXTURE / "run"
V1_CKPT = V1_RUN / "checkpoints" / "step-000000001"  # Adam, dim 8
V1_DIM = 8


def repartition(out: Path, num_parts: int, seed: int = 1) -> Path:
    """The v1 fixture's input partitioned another way: other gids, other shard ranges."""
    from partition.pipeline import CreateOptions, create

    raw = FIXTURE / "raw"
    create(CreateOptions(train=str(raw / "train.parquet"), test=str(raw / "test.parquet"),
                         valid=str(raw / "valid.parquet"), out=str(out), num_parts=num_parts,
                         method="random", seed=seed, progress=False))
    return out


def save_checkpoint(store, run_dir: Path, partitions_root: Path, step: int = 1) -> Path:
    """A complete checkpoint (meta, an empty dense.pt, the store's files, manifest, marker)
    through ``checkpoint.write``, as the trainer writes one."""
    manifest = fmt.load_manifest(partitions_root)
    return ckpt.write(run_dir, step, {}, {}, lambda d: store.save(d, partitions_root), keep=10,
                      embeddings=ckpt.embeddings_section(manifest, store.optimizer, store.dim))


def checkpoint_rows(path: Path) -> dict[str, tuple[pd.Index, dict[str, np.ndarray]]]:
    """Every embedding row of a v1 or v2 checkpoint, read whole (tests only):
    ``{ntype: (orig ids as an Index, {column: array})}``."""
    out = {}
    for ntype in fmt.NTYPES:
        files = sorted((path / "embeddings").glob(f"{ntype}-*.parquet")) or [path / "embeddings" / f"{ntype}.parquet"]
        table = pa.concat_tables([pq.read_table(f) for f in files])
        cols = {}
        for name in table.column_names[1:]:
            col = table.column(name).combine_chunks()
            cols[name] = (col.flatten().to_numpy().reshape(len(col), -1) if pa.types.is_fixed_size_list(col.type)
                          else col.to_numpy())
        out[ntype] = (pd.Index(table.column("orig_id").to_pylist()), cols)
    return out


def assert_state_matches(state: dict, partitions_root: Path, reference: dict) -> None:
    """``state[name][gid]`` (a whole store's state over ``partitions_root``'s gids) equals the
    reference rows (``checkpoint_rows``) of the same orig id, for every node and column."""
    for ntype in fmt.NTYPES:
        t = fmt.read_table(partitions_root, fmt.id_map_path(ntype))
        gids, orig = t.column("gid").to_numpy(), t.column("orig_id").to_pylist()
        index, cols = reference[ntype]
        pos = index.get_indexer(orig)
        assert (pos >= 0).all(), f"{ntype}: nodes missing from the reference"
        assert set(cols) == set(state), (sorted(cols), sorted(state))
        for name, ref in cols.items():
            got = np.asarray(state[name])[gids]
            np.testing.assert_array_equal(got, ref[pos], err_msg=f"{ntype} {name}")
