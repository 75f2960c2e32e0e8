"""Checkpoints, format version 2: one directory per checkpoint, sharded by partition, committed by a
marker file written last. This docstring and the "Checkpoint format" section of ``docs/format.md``
are its specification (``tests/test_checkpoint_format.py`` checks both against this code).

```
RUN/checkpoints/step-000001234/
    meta.json                      {"format": "distgnn-checkpoint", "version": 2, epoch/step position,
                                   counters, the full resolved config}
    dense.pt                       {"model", "optimizer", "rng"}: plain tensors/containers only,
                                   loaded with torch.load(weights_only=True) (no arbitrary unpickling)
    embeddings/user-00000.parquet  partition 0's users [gid_start, item_gid_start), in gid order
    embeddings/item-00000.parquet  partition 0's items [item_gid_start, gid_end), in gid order
    embeddings/user-00001.parquet  ... one user file and one item file per partition of the book
    manifest.json                  shards, partition identity, {"rows", "bytes", "sha256"} per file
    COMMITTED                      written last: a directory without it is ignored
RUN/checkpoints/best.json          {"checkpoint": "step-...", "metric", "value", "split"} (atomic
                                   replace): the checkpoint selected on the validation split ``split``
```

Every embedding file has the columns ``orig_id`` (the partitions' id type), then the state of the
store's optimizer: ``weight``, ``exp_avg``, ``exp_avg_sq`` (``fixed_size_list<float32>[dim]``) and
``step`` (int64) for Adam, or ``weight`` and ``sum_sq`` for Adagrad; the schema metadata key
``distgnn`` holds ``{"optimizer", "dim"}``. ``manifest.json`` is::

    {"format": "distgnn-checkpoint", "version": 2,
     "embeddings": {"optimizer": "adam"|"adagrad", "dim": D, "num_shards": P,
                    "shards": [{"part_id", "gid_start", "item_gid_start", "gid_end"}],
                    "partitions": {"id_map_sha256": {"id_map/user.parquet": sha256,
                                                     "id_map/item.parquet": sha256}}},
     "files": {relpath: {"rows", "bytes", "sha256"}}}

``files`` lists every file but ``manifest.json`` and ``COMMITTED`` (``rows`` is null for files that
are not Parquet). Version 1 (read, no longer written) had ``embeddings/{user,item}.parquet`` with the
same columns, every node of a type in one file, and no ``manifest.json``.

Writing: each embedding store writes its partitions' files itself (``write_partition_files``: in the
Ray backend every parameter-server shard writes its own two files in parallel, nothing goes through
rank 0), each atomically and fsynced, into the checkpoint's temporary directory
(``distgnn.atomic.AtomicDir``); then ``write`` adds ``dense.pt``, ``meta.json`` and ``manifest.json``,
fsyncs the tree, writes ``COMMITTED`` and renames the directory into place. Older checkpoints beyond
``keep`` are pruned (the best one is kept). An unreadable ``best.json`` makes evaluate/recommend
fall back to the latest checkpoint with a warning, never silently.

Reading: ``load_partition_rows(ckpt, partitions_root, p)`` returns partition ``p``'s rows of any
version-1 or -2 checkpoint. When the checkpoint's shards are the partition book's and its id maps'
sha256 are the partition manifest's, it reads just that partition's two files, positionally;
otherwise (v1, or another partitioning) it re-keys by orig id, holding only the partition's own
ids and rows plus one source row group at a time. ``verify`` recomputes the recorded checksums (it is
not run on every load).
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from distgnn import atomic
from distgnn import format as fmt
from distgnn.errors import UserError

FORMAT = "distgnn-checkpoint"
VERSION = 2
READABLE_VERSIONS = (1, 2)
MARKER = "COMMITTED"
MANIFEST = "manifest.json"
META = "meta.json"
DENSE = "dense.pt"
EMBEDDINGS = "embeddings"
SHARD_KEYS = ("part_id", "gid_start", "item_gid_start", "gid_end")
# Optimizer state per row, in column order after orig_id (the embedding stores' tensor names).
STATE_NAMES = {"adam": ("weight", "exp_avg", "exp_avg_sq", "step"), "adagrad": ("weight", "sum_sq")}
VECTOR = "fixed_size_list<float32>[dim]"
# Every column an embedding file may have, with its type (None: the partitions' orig id type).
EMBEDDING_COLUMNS: dict[str, str | None] = {"orig_id": None, "weight": VECTOR, "exp_avg": VECTOR,
                                            "exp_avg_sq": VECTOR, "step": "int64", "sum_sq": VECTOR}
ROW_GROUP_ROWS = 1 << 16  # rows per row group of an embedding file: the unit a re-keying load streams


# --- where things are ------------------------------------------------------------------------
def ckpt_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def shard_relpath(ntype: str, part_id: int) -> str:
    """``embeddings/<ntype>-PPPPP.parquet``: partition ``part_id``'s rows of ``ntype`` (version 2)."""
    return f"{EMBEDDINGS}/{ntype}-{part_id:05d}.parquet"


def v1_relpath(ntype: str) -> str:
    """``embeddings/<ntype>.parquet``: every row of ``ntype`` (version 1)."""
    return f"{EMBEDDINGS}/{ntype}.parquet"


def state_names(optimizer: str) -> list[str]:
    """The per-row state an embedding store with ``optimizer`` keeps (and a checkpoint holds)."""
    if optimizer not in STATE_NAMES:
        raise UserError(f"embedding optimizer {optimizer!r} is not one of {', '.join(STATE_NAMES)}")
    return list(STATE_NAMES[optimizer])


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


# --- writing --------------------------------------------------------------------------------
def embeddings_section(partition_manifest: dict[str, Any], optimizer: str, dim: int) -> dict[str, Any]:
    """The manifest's ``embeddings`` entry for a store over ``partition_manifest``'s partitions:
    the shard ranges and the id maps' sha256 are what a later load compares with its own
    partitions to decide whether a shard's files can be read positionally."""
    files = partition_manifest.get("files", {})
    return {"optimizer": optimizer, "dim": int(dim), "num_shards": len(partition_manifest["parts"]),
            "shards": [{k: int(p[k]) for k in SHARD_KEYS} for p in partition_manifest["parts"]],
            "partitions": {"id_map_sha256": {fmt.id_map_path(t): files.get(fmt.id_map_path(t), {}).get("sha256")
                                             for t in fmt.NTYPES}}}


def file_record(ckpt_dir: Path, relpath: str, rows: int | None) -> dict[str, Any]:
    path = Path(ckpt_dir) / relpath
    return {"rows": rows, "bytes": path.stat().st_size, "sha256": fmt.sha256_file(path)}


def embedding_schema(orig_type: pa.DataType, optimizer: str, dim: int) -> pa.Schema:
    fields = [pa.field("orig_id", orig_type)]
    for name in state_names(optimizer):
        fields.append(pa.field(name, pa.int64() if EMBEDDING_COLUMNS[name] == "int64"
                               else pa.list_(pa.float32(), int(dim))))
    return pa.schema(fields).with_metadata({"distgnn": json.dumps({"optimizer": optimizer, "dim": int(dim)})})


def _arrow_column(arr: np.ndarray) -> pa.Array:
    if arr.ndim == 1:
        return pa.array(np.ascontiguousarray(arr, dtype=np.int64))
    flat = np.ascontiguousarray(arr, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])


def write_partition_files(ckpt_dir: str | Path, partitions_root: str | Path, part_id: int,
                          state: Mapping[str, np.ndarray], optimizer: str, dim: int) -> dict[str, dict]:
    """Write partition ``part_id``'s two embedding files into ``ckpt_dir/embeddings`` (each
    atomically and fsynced) and return their ``files`` records.

    ``state[name]`` holds the partition's rows ``[gid_start, gid_end)`` in gid order (users, then
    items). Orig ids come from the partition's own slice of each id map, so the writer (a PS shard)
    never holds more than its own rows; the files are written ``ROW_GROUP_ROWS`` rows at a time."""
    ckpt_dir, root = Path(ckpt_dir), Path(partitions_root)
    book = fmt.PartitionBook.from_manifest(fmt.load_manifest(root))
    names = state_names(optimizer)
    n = int(book.gid_end[part_id] - book.gid_start[part_id])
    if sorted(state) != sorted(names) or any(len(state[k]) != n for k in names):
        raise ValueError(f"partition {part_id} needs {names} of {n} rows, got "
                         f"{ {k: len(v) for k, v in state.items()} }")
    (ckpt_dir / EMBEDDINGS).mkdir(parents=True, exist_ok=True)
    records, offset = {}, 0
    for ntype in fmt.NTYPES:
        start, count = book.id_map_rows(part_id, ntype)
        ids = fmt.read_id_map_slice(root, ntype, start, count)
        first_gid = book.ntype_gid_start(part_id, ntype)
        gids = ids.column("gid").to_numpy()
        if count and (gids[0] != first_gid or gids[-1] != first_gid + count - 1):
            raise UserError(f"{root}/{fmt.id_map_path(ntype)} does not hold partition {part_id}'s "
                            f"{ntype}s at rows {start}..{start + count - 1}; the partition directory "
                            f"is damaged, run 'distgnn partition verify {root}'")
        orig = ids.column("orig_id")
        schema = embedding_schema(orig.type, optimizer, dim)
        rel = shard_relpath(ntype, part_id)
        with atomic.atomic_file(ckpt_dir / rel) as tmp, pq.ParquetWriter(tmp, schema) as writer:
            if count == 0:
                writer.write_table(schema.empty_table())
            for a in range(0, count, ROW_GROUP_ROWS):
                b = min(a + ROW_GROUP_ROWS, count)
                cols = [orig.slice(a, b - a).combine_chunks()]
                cols += [_arrow_column(np.asarray(state[k][offset + a:offset + b])) for k in names]
                writer.write_table(pa.Table.from_arrays(cols, schema=schema), row_group_size=ROW_GROUP_ROWS)
        records[rel] = file_record(ckpt_dir, rel, count)
        offset += count
    return records


def write(run_dir: str | Path, global_step: int, meta: dict[str, Any], dense: dict[str, Any],
          save_embeddings: Callable[[Path], dict[str, dict]], keep: int,
          embeddings: dict[str, Any]) -> Path:
    """Write checkpoint ``step-<global_step>``: the embedding files first (``save_embeddings(tmp)``
    writes them into the temporary checkpoint directory and returns their ``files`` records: one
    call per store, which in the Ray backend asks every PS shard in parallel), then ``dense.pt``,
    ``meta.json`` and ``manifest.json`` (``embeddings``: from ``embeddings_section``), fsync,
    ``COMMITTED``, rename.

    A write that fails (a full disk: ``OSError(ENOSPC)``, any error) removes its temporary
    directory, commits nothing and re-raises: the run's latest checkpoint is still the previous
    one. The Ray chief then fails, and the job restarts from that checkpoint, redoing the steps
    since, and writes this checkpoint again (docs/architecture.md D32)."""
    root = ckpt_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{global_step:09d}"
    final = root / name
    with atomic.AtomicDir(final, overwrite=True) as tmp:  # fsynced, then renamed into place
        files = dict(save_embeddings(tmp))
        _injected_enospc(run_dir, global_step, tmp / DENSE)  # test hook: the disk fills here
        expected = {shard_relpath(t, p) for p in range(embeddings["num_shards"]) for t in fmt.NTYPES}
        if set(files) != expected or not all((tmp / rel).is_file() for rel in files):
            raise RuntimeError(f"the embedding store wrote {sorted(files)}, expected {sorted(expected)}")
        torch.save(dense, tmp / DENSE)
        (tmp / META).write_text(json.dumps({"format": FORMAT, "version": VERSION, **meta}, indent=2))
        files[DENSE] = file_record(tmp, DENSE, None)
        files[META] = file_record(tmp, META, None)
        manifest = {"format": FORMAT, "version": VERSION, "embeddings": embeddings,
                    "files": dict(sorted(files.items()))}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        atomic.fsync_tree(tmp)  # the data is durable before the marker that vouches for it
        (tmp / MARKER).write_text(name + "\n")
    prune(run_dir, keep)
    return final


# Test hook (the chaos benchmark, docs/architecture.md D32): the first attempt to write checkpoint
# ``step-N`` of a run raises OSError(ENOSPC) as if the disk filled up while it was being written,
# after the parameter-server shards have put their files into the temporary directory (so there is
# a half-written checkpoint to clean up). Once per run: a marker file in the run directory stops it
# firing again after the restart that retries the checkpoint.
ENOSPC_ENV = "DISTGNN_TEST_ENOSPC_AT_CHECKPOINT"


def enospc_marker(run_dir: str | Path, global_step: int) -> Path:
    """The file whose presence says the injected ENOSPC of checkpoint ``step-N`` has fired (its
    mtime is when)."""
    return Path(run_dir) / f".fault-injected-enospc-step-{int(global_step):09d}"


def _injected_enospc(run_dir: str | Path, global_step: int, path: Path) -> None:
    import errno
    import os

    want = os.environ.get(ENOSPC_ENV, "").strip()
    if not want or int(want) != int(global_step):
        return
    marker = enospc_marker(run_dir, global_step)
    if marker.exists():
        return
    marker.write_text("")
    print(f"fault injection: checkpoint step-{int(global_step):09d} hits a full disk (ENOSPC)",
          file=sys.stderr, flush=True)
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def mark_best(run_dir: str | Path, ckpt: Path, metric: str, value: float, split: str = "valid") -> None:
    """Record ``ckpt`` as the selected checkpoint: best ``metric`` (= ``value``) on ``split``."""
    atomic.write_json(ckpt_root(run_dir) / "best.json",
                      {"checkpoint": ckpt.name, "metric": metric, "value": value, "split": split}, indent=None)


def prune(run_dir: str | Path, keep: int) -> None:
    keep_best = best(run_dir)
    for p in committed(run_dir)[:-keep]:
        if keep_best is None or p.name != keep_best.name:
            shutil.rmtree(p, ignore_errors=True)


# --- reading --------------------------------------------------------------------------------
def read_meta(ckpt: Path) -> dict[str, Any]:
    """``meta.json`` of a version-1 or -2 checkpoint."""
    try:
        meta = json.loads((Path(ckpt) / META).read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"checkpoint {ckpt} has no readable meta.json ({exc}); it is damaged")
    if meta.get("format") != FORMAT or meta.get("version") not in READABLE_VERSIONS:
        raise UserError(f"checkpoint {ckpt} is {meta.get('format')} v{meta.get('version')}, "
                        f"this distgnn reads {FORMAT} v{' and v'.join(map(str, READABLE_VERSIONS))}")
    return meta


def read_manifest(ckpt: Path) -> dict[str, Any]:
    """``manifest.json`` of a version-2 checkpoint."""
    path = Path(ckpt) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
        if not (isinstance(manifest["embeddings"]["shards"], list) and isinstance(manifest["files"], dict)):
            raise TypeError("shards or files of the wrong type")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"checkpoint {ckpt} has no readable {MANIFEST} ({type(exc).__name__}); it is "
                        f"damaged: use another checkpoint of the run")
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise UserError(f"{path} is {manifest.get('format')} v{manifest.get('version')}, expected "
                        f"{FORMAT} v{VERSION}; the checkpoint is damaged")
    return manifest


def read_dense(ckpt: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    verify_once(Path(ckpt), DENSE)
    try:
        return torch.load(ckpt / DENSE, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means an unusable file
        raise UserError(f"cannot load {ckpt / DENSE} ({type(exc).__name__}); the checkpoint is "
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


def same_partitions(ckpt_manifest: dict[str, Any], partition_manifest: dict[str, Any]) -> bool:
    """True if the checkpoint's shards are exactly the partitions of ``partition_manifest`` (same
    gid ranges, same id maps by sha256): then shard ``p``'s files hold partition ``p``'s rows in
    gid order, and are read positionally."""
    want = embeddings_section(partition_manifest, "", 0)
    have = ckpt_manifest["embeddings"]
    return (have.get("shards") == want["shards"]
            and None not in want["partitions"]["id_map_sha256"].values()
            and have.get("partitions", {}).get("id_map_sha256") == want["partitions"]["id_map_sha256"])


def verify_once(ckpt: Path, relpath: str) -> None:
    """One file of a version-2 checkpoint against its manifest's sha256, the first time this
    process opens it (``format.check_sha256_once``): a shard reads only its own files, so each
    process hashes what it reads. v1 checkpoints carry no checksums."""
    ckpt = Path(ckpt)
    if not (ckpt / MANIFEST).is_file():
        return

    def listed() -> dict:
        rec = read_manifest(ckpt)["files"].get(relpath)
        if rec is None:
            raise UserError(f"{ckpt / relpath} is not listed in {ckpt / MANIFEST}; the checkpoint is "
                            f"damaged: use another checkpoint of the run")
        return rec

    fmt.check_sha256_once(ckpt / relpath, listed, ckpt / MANIFEST, "use another checkpoint of the run")


def _open(path: Path) -> pq.ParquetFile:
    verify_once(path.parent.parent, f"{path.parent.name}/{path.name}")
    try:
        return pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise UserError(f"cannot read checkpoint embeddings {path}: {exc}; the checkpoint is damaged, "
                        f"use another checkpoint of the run")


def _check_file(path: Path, schema: pa.Schema, names: Iterable[str], optimizer: str | None,
                dim: int | None, orig_type: pa.DataType | None) -> None:
    meta = json.loads((schema.metadata or {}).get(b"distgnn", b"{}"))
    if (optimizer is not None and meta.get("optimizer") != optimizer) or (dim is not None and meta.get("dim") != dim):
        raise UserError(f"{path} holds {meta.get('optimizer')} embeddings of dim {meta.get('dim')}, "
                        f"but the config asks for {optimizer or meta.get('optimizer')} with dim "
                        f"{dim or meta.get('dim')}; use a matching config or train a new run")
    missing = [n for n in names if n not in schema.names]
    if missing:
        raise UserError(f"{path} has no column {missing[0]!r} (it holds {meta.get('optimizer')} state: "
                        f"{', '.join(schema.names[1:])}); ask for those, or use a matching checkpoint")
    if orig_type is not None and schema.field("orig_id").type != orig_type:
        raise UserError(f"{path}: orig ids are {schema.field('orig_id').type} but the partitions use "
                        f"{orig_type}; the checkpoint belongs to other data")


def _empty_rows(field_type: pa.DataType, n: int) -> np.ndarray:
    if pa.types.is_fixed_size_list(field_type):
        return np.empty((n, field_type.list_size), dtype=np.float32)
    return np.empty(n, dtype=np.int64)


def _to_numpy(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if pa.types.is_fixed_size_list(arr.type):
        return arr.flatten().to_numpy(zero_copy_only=False).reshape(-1, arr.type.list_size)
    return arr.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)


def load_partition_rows(ckpt_path: str | Path, partitions_root: str | Path, part_id: int,
                        names: Iterable[str] = ("weight",), *, optimizer: str | None = None,
                        dim: int | None = None) -> dict[str, np.ndarray]:
    """Rows of partition ``part_id`` of ``partitions_root``, gids ``[gid_start, gid_end)`` (users
    then items, in gid order), from a version-1 or -2 checkpoint: ``{name: array}`` for each of
    ``names`` (``weight`` etc.: float32 ``[n, dim]``; ``step``: int64 ``[n]``).

    Fast path: a v2 checkpoint whose shards are this partition book and whose id maps are these
    (``same_partitions``) -> read only that shard's two files, positionally. Otherwise (v1, or
    another number of partitions or another assignment) -> re-key by orig id: read the partition's
    own id-map slices, then stream every source file row group by row group, keeping the rows whose
    orig id is the partition's. Memory is the partition's own rows and ids plus one source row
    group, whatever the size of the checkpoint. ``optimizer``/``dim``, if given, must match the
    files. A partition node without a row in the checkpoint is a ``UserError`` naming it."""
    ckpt_path, root = Path(ckpt_path), Path(partitions_root)
    names = list(names)
    meta = read_meta(ckpt_path)
    pman = fmt.load_manifest(root)
    book = fmt.PartitionBook.from_manifest(pman)
    if not 0 <= part_id < book.num_parts:
        raise UserError(f"partition {part_id} does not exist in {root} (it has {book.num_parts})")
    if meta["version"] >= 2:
        cman = read_manifest(ckpt_path)
        emb = cman["embeddings"]
        if (optimizer is not None and emb.get("optimizer") != optimizer) or (dim is not None and emb.get("dim") != dim):
            raise UserError(f"checkpoint {ckpt_path} holds {emb.get('optimizer')} embeddings of dim "
                            f"{emb.get('dim')}, but the config asks for {optimizer or emb.get('optimizer')} "
                            f"with dim {dim or emb.get('dim')}; use a matching config or train a new run")
        positional = same_partitions(cman, pman)
        sources = {t: [shard_relpath(t, int(s["part_id"])) for s in emb["shards"]] for t in fmt.NTYPES}
    else:
        positional = False
        sources = {t: [v1_relpath(t)] for t in fmt.NTYPES}
    n = int(book.gid_end[part_id] - book.gid_start[part_id])
    out: dict[str, np.ndarray] = {}
    offset = 0
    for ntype in fmt.NTYPES:
        start, count = book.id_map_rows(part_id, ntype)
        if positional:
            _read_positional(ckpt_path / shard_relpath(ntype, part_id), count, offset, n, names,
                             optimizer, dim, out)
        else:
            orig = fmt.read_id_map_slice(root, ntype, start, count).column("orig_id").combine_chunks()
            _read_rekeyed(ckpt_path, [ckpt_path / rel for rel in sources[ntype]], orig, offset, n, names,
                          optimizer, dim, out, f"partition {part_id}'s {ntype}s of {root}")
        offset += count
    return out


def _read_positional(path: Path, count: int, offset: int, n: int, names: list[str],
                     optimizer: str | None, dim: int | None, out: dict[str, np.ndarray]) -> None:
    """Rows ``offset..offset+count`` of ``out`` from the file of the partition's own shard."""
    pf = _open(path)
    _check_file(path, pf.schema_arrow, names, optimizer, dim, None)
    if pf.metadata.num_rows != count:
        raise UserError(f"{path} has {pf.metadata.num_rows} rows, its partition {count}; the checkpoint "
                        f"is damaged, use another checkpoint of the run")
    for name in names:
        out.setdefault(name, _empty_rows(pf.schema_arrow.field(name).type, n))
    row = offset
    for g in range(pf.num_row_groups):
        t = pf.read_row_group(g, columns=names)
        for name in names:
            out[name][row:row + t.num_rows] = _to_numpy(t.column(name))
        row += t.num_rows


def _read_rekeyed(ckpt_path: Path, files: list[Path], orig: pa.Array, offset: int, n: int,
                  names: list[str], optimizer: str | None, dim: int | None,
                  out: dict[str, np.ndarray], what: str) -> None:
    """Rows ``offset..offset+len(orig)`` of ``out``: for each orig id of ``orig``, its row in any
    of ``files``, streamed one row group at a time (orig ids first; the state columns only of row
    groups that hold some of ours)."""
    import pandas as pd

    index = pd.Index(orig.to_numpy(zero_copy_only=False))
    found = np.zeros(len(orig), dtype=bool)
    for path in files:
        pf = _open(path)
        _check_file(path, pf.schema_arrow, names, optimizer, dim, orig.type)
        for name in names:
            out.setdefault(name, _empty_rows(pf.schema_arrow.field(name).type, n))
        for g in range(pf.num_row_groups):
            ids = pf.read_row_group(g, columns=["orig_id"]).column(0).combine_chunks()
            pos = index.get_indexer(ids.to_numpy(zero_copy_only=False)) if len(orig) else np.full(len(ids), -1)
            hit = pos >= 0
            if not hit.any():
                continue
            t = pf.read_row_group(g, columns=names)
            for name in names:
                out[name][offset + pos[hit]] = _to_numpy(t.column(name))[hit]
            found[pos[hit]] = True
    if not found.all():
        example = orig[int(np.flatnonzero(~found)[0])].as_py()
        raise UserError(f"checkpoint {ckpt_path} has no embedding row for {int((~found).sum())} of "
                        f"{what} (e.g. orig id {example!r}); it belongs to other data: use the run's "
                        f"own partitions or train a new run")


def verify(ckpt: str | Path) -> int:
    """Recompute every file's size and sha256 against the manifest; return the number of files
    checked, or raise one ``UserError`` naming every file that differs, is missing or is not listed.
    Costs a full read of the checkpoint, so loads do not call it."""
    ckpt = Path(ckpt)
    meta = read_meta(ckpt)
    if meta["version"] < 2:
        raise UserError(f"checkpoint {ckpt} is format v1, which records no checksums, so it cannot be "
                        f"verified; a checkpoint written by this distgnn (v2) can")
    manifest = read_manifest(ckpt)
    problems = []
    for rel, rec in sorted(manifest["files"].items()):
        path = ckpt / rel
        if not path.is_file():
            problems.append(f"{rel} is missing")
        elif path.stat().st_size != rec.get("bytes"):
            problems.append(f"{rel} has {path.stat().st_size} bytes, not {rec.get('bytes')}")
        elif fmt.sha256_file(path) != rec.get("sha256"):
            problems.append(f"{rel} does not match its sha256")
    listed = set(manifest["files"]) | {MANIFEST, MARKER}
    for path in sorted(p for p in ckpt.rglob("*") if p.is_file()):
        if path.relative_to(ckpt).as_posix() not in listed:
            problems.append(f"{path.relative_to(ckpt).as_posix()} is not in the manifest")
    if problems:
        raise UserError(f"checkpoint {ckpt} is damaged ({'; '.join(problems)}); use another "
                        f"checkpoint of the run or train again")
    return len(manifest["files"])
