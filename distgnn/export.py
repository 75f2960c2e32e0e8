"""Export: top-K recommendations and embeddings as Parquet, keyed by orig ids.

Files are written to a temporary sibling, fsynced and renamed into place (``distgnn.atomic``), so
a reader never sees a half-written file. Column names follow the input's (``user_col``/``item_col``
from the manifest). Each file carries ``OUTPUT_KEY`` in its Parquet schema metadata
(``{"writer": "distgnn recommend", "kind", "version"}``): the marker by which ``recommend
--overwrite`` recognises files it may replace (``is_ours``).

- recommendations: ``<user_col>, rank (1-based int32), <item_col>, score (float32)``, sorted by
  user then rank; items in the user's training set are excluded.
- embeddings: ``<user_col>|<item_col>, embedding (fixed_size_list<float32>[dim])``: the final
  (layer-combined) embeddings the scores are dot products of.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from distgnn import __version__, atomic

OUTPUT_KEY = b"distgnn.output"
WRITER = "distgnn recommend"


def output_paths(out: Path) -> list[Path]:
    """The recommendations file and the two embedding files beside it."""
    stem = out.name[:-len(".parquet")] if out.name.endswith(".parquet") else out.name
    return [out, out.with_name(f"{stem}.user_embeddings.parquet"),
            out.with_name(f"{stem}.item_embeddings.parquet")]


def is_ours(path: Path) -> bool:
    """True if ``path`` is a Parquet file ``distgnn recommend`` wrote (its schema metadata says so)."""
    try:
        meta = pq.read_schema(path).metadata or {}
        return json.loads(meta.get(OUTPUT_KEY, b"{}")).get("writer") == WRITER
    except (OSError, ValueError, pa.ArrowException):
        return False


def write_output(table: pa.Table, path: Path, kind: str) -> None:
    """Write ``table`` atomically, tagged as ``distgnn recommend``'s output."""
    tag = json.dumps({"writer": WRITER, "kind": kind, "version": __version__}).encode()
    atomic.write_table(path, table.replace_schema_metadata({**(table.schema.metadata or {}), OUTPUT_KEY: tag}))


def _orig(id_map: tuple[np.ndarray, pa.Array], gids: np.ndarray) -> pa.Array:
    map_gids, orig = id_map
    return orig.take(pa.array(np.searchsorted(map_gids, gids)))


def recommendations_table(user_orig: pa.Array, top_item_orig: pa.Array, scores: np.ndarray, k: int,
                          user_col: str, item_col: str) -> pa.Table:
    n = len(user_orig)
    return pa.table({
        user_col: user_orig.take(pa.array(np.repeat(np.arange(n), k))),
        "rank": pa.array(np.tile(np.arange(1, k + 1, dtype=np.int32), n)),
        item_col: top_item_orig,
        "score": pa.array(scores.reshape(-1).astype(np.float32)),
    })


def embeddings_table(orig: pa.Array, emb: np.ndarray, col: str) -> pa.Table:
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    return pa.table({col: orig, "embedding": pa.FixedSizeListArray.from_arrays(
        pa.array(emb.reshape(-1)), emb.shape[1])})


def recommend(run_dir, cfg, k: int, out: Path, max_users: int | None = None) -> list[Path]:
    from distgnn.evaluation import Evaluator, csr_by_user, infer_all, rank_topk
    from distgnn.trainer import load_for_inference

    parts, _ = load_for_inference(run_dir, cfg)
    emb = infer_all(parts.model, parts.graph, parts.emb, cfg.eval.node_batch, parts.device)
    from distgnn.evaluation import IdSpace
    ids = IdSpace.from_book(parts.graph.book)
    # known interactions are never recommended: training, and a validation split carved from or
    # given beside it (the test split is what a user holds back to judge the recommendations)
    u, i = Evaluator._all_train_interactions(parts.graph)
    if "valid" in parts.graph.manifest.get("heldout", {}):
        vu, vi = Evaluator._targets(parts.graph, "valid")
        u, i = torch.cat([u, vu]), torch.cat([i, vi])
    indptr, items = csr_by_user(ids.user_index(u), ids.item_index(i), len(ids.user_gids))
    user_emb, item_emb = emb[ids.user_gids], emb[ids.item_gids]
    users = torch.arange(len(ids.user_gids))
    if max_users is not None:  # the same seeded sample as the sharded export's
        from distgnn.inference import sample_users
        users = users[torch.from_numpy(sample_users(ids.user_gids.numpy(), max_users, len(users),
                                                    cfg.train.seed))]
    top, scores = rank_topk(user_emb, item_emb, indptr, items, users, k, cfg.eval.user_batch, parts.device)
    k_eff = top.shape[1]
    params = parts.graph.manifest.get("params", {})
    user_col, item_col = params.get("user_col") or "user_id", params.get("item_col") or "item_id"
    user_orig = _orig(parts.id_maps["user"], ids.user_gids.numpy())
    item_orig_all = _orig(parts.id_maps["item"], ids.item_gids.numpy())
    table = recommendations_table(user_orig.take(pa.array(users.numpy())),
                                  item_orig_all.take(pa.array(top.reshape(-1).numpy())),
                                  scores.numpy(), k_eff, user_col, item_col)
    out, user_path, item_path = output_paths(out)
    write_output(embeddings_table(user_orig, user_emb.numpy(), user_col), user_path, "user_embeddings")
    write_output(embeddings_table(item_orig_all, item_emb.numpy(), item_col), item_path, "item_embeddings")
    write_output(table, out, "recommendations")
    return [out, user_path, item_path]


# --- the directory form (``recommend --backend ray --out DIR``) ---------------------------------
DIR_MANIFEST = "manifest.json"
is_our_dir = atomic.json_marker(DIR_MANIFEST, writer=WRITER)


def _write_parts(path: Path, batches, schema: pa.Schema, kind: str) -> dict:
    """Stream record batches into one Parquet part file (atomically); its manifest record."""
    import pyarrow.parquet as pq

    tag = json.dumps({"writer": WRITER, "kind": kind, "version": __version__}).encode()
    schema = schema.with_metadata({OUTPUT_KEY: tag})
    rows = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_file(path) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for t in batches:
            writer.write_table(t.replace_schema_metadata(schema.metadata).cast(schema))
            rows += t.num_rows
    return {"rows": rows, "bytes": path.stat().st_size}


def export_worker(inf, root, manifest: dict, out: Path, rank: int, k: int, user_batch: int,
                  max_users: int | None, seed: int, item_budget: int) -> dict:
    """One inference worker's share of the directory output, under original ids:
    ``recs/part-RRRRR.parquet`` (its own users' top-k), ``user_embeddings/part-RRRRR.parquet`` and
    ``item_embeddings/part-RRRRR.parquet`` (its own partitions' final rows). Known items (training
    and validation interactions) are never recommended. Memory: its own partitions' rows, one
    user batch of scores, and its users' top-k; item orig ids are looked up one partition's
    id-map slice at a time."""
    from distgnn import format as fmt
    from distgnn.inference import (ItemRows, StageFiles, block_rows_for, known_and_truth, sample_users,
                                   topk_blocked)

    book = inf.book
    params = manifest.get("params", {})
    user_col, item_col = params.get("user_col") or "user_id", params.get("item_col") or "item_id"
    masked = [s for s in ("valid",) if s in manifest.get("heldout", {})]
    users, known, _ = known_and_truth(root, manifest, book, inf.csc, None, masked)
    final = StageFiles(inf.work, "final", book)
    num_users = int((book.item_gid_start - book.gid_start).sum())
    keep = np.nonzero(sample_users(users, max_users, num_users, seed))[0]
    items = ItemRows(final, book, item_budget, block_rows_for(user_batch))
    tops, scores = [], []
    for a in range(0, len(keep), user_batch):
        sel = keep[a:a + user_batch]
        kr, ki = known.rows_of(sel)
        t, s = topk_blocked(final.gather(users[sel]), items, kr, ki, k, inf.device)
        tops.append(t)
        scores.append(s)
    k_eff = tops[0].shape[1] if tops else min(k, int((book.gid_end - book.item_gid_start).sum()))
    top = np.concatenate(tops) if tops else np.zeros((0, k_eff), np.int64)
    score = np.concatenate(scores) if scores else np.zeros((0, k_eff), np.float32)
    # orig ids: own users from own slices; recommended items one partition's slice at a time
    own_user_orig = {}
    for p in sorted(inf.csc):
        own_user_orig[p] = _orig_slice(root, book, "user", p)
    user_orig = pa.concat_arrays([own_user_orig[p] for p in sorted(inf.csc)]) if own_user_orig else None
    flat = top.reshape(-1)
    item_type = pq_schema_type(root, "item")
    item_orig = None
    if len(flat):
        parts_of = book.part_of(flat)
        idx = np.zeros(len(flat), np.int64)
        chunks = []
        order = np.argsort(parts_of, kind="stable")
        for q in np.unique(parts_of):
            sel = order[np.searchsorted(parts_of[order], q):np.searchsorted(parts_of[order], q, side="right")]
            orig_q = _orig_slice(root, book, "item", int(q))
            chunks.append(orig_q.take(pa.array(flat[sel] - book.item_gid_start[q])))
            idx[sel] = np.arange(len(sel)) + sum(len(c) for c in chunks[:-1])
        item_orig = pa.concat_arrays(chunks).take(pa.array(idx))
    files = {}
    name = f"part-{rank:05d}.parquet"
    rec_schema = pa.schema([(user_col, user_orig.type if user_orig is not None else pa.int64()),
                            ("rank", pa.int32()), (item_col, item_type), ("score", pa.float32())])

    def rec_batches():
        for a in range(0, len(keep), user_batch):
            b = slice(a, min(a + user_batch, len(keep)))
            n = b.stop - b.start
            uo = user_orig.take(pa.array(keep[b]))
            yield recommendations_table(uo, item_orig.slice(b.start * k_eff, n * k_eff),
                                        score[b], k_eff, user_col, item_col)

    files[f"recs/{name}"] = _write_parts(out / "recs" / name, rec_batches(), rec_schema, "recommendations")
    for ntype, col in (("user", user_col), ("item", item_col)):
        def emb_batches(ntype=ntype, col=col):
            for p in sorted(inf.csc):
                rows = final.rows(p)
                off = 0 if ntype == "user" else int(book.item_gid_start[p] - book.gid_start[p])
                n = int(book.item_gid_start[p] - book.gid_start[p]) if ntype == "user" \
                    else int(book.gid_end[p] - book.item_gid_start[p])
                orig = own_user_orig[p] if ntype == "user" else _orig_slice(root, book, "item", p)
                for a in range(0, n, 1 << 18):
                    e = min(n, a + (1 << 18))
                    yield embeddings_table(orig.slice(a, e - a), np.asarray(rows[off + a:off + e]), col)
        dim = final.rows(sorted(inf.csc)[0]).shape[1] if inf.csc else 0
        schema = pa.schema([(col, pq_schema_type(root, ntype)),
                            ("embedding", pa.list_(pa.float32(), dim))])
        files[f"{ntype}_embeddings/{name}"] = _write_parts(out / f"{ntype}_embeddings" / name, emb_batches(),
                                                           schema, f"{ntype}_embeddings")
    final.close()
    return files


def _orig_slice(root, book, ntype: str, part: int) -> pa.Array:
    """The orig ids of partition ``part``'s nodes of ``ntype``, in gid order (its id-map slice)."""
    from distgnn import format as fmt

    return fmt.read_id_map_slice(root, ntype, *book.id_map_rows(part, ntype)).column("orig_id").combine_chunks()


def pq_schema_type(root, ntype: str) -> pa.DataType:
    """The orig id type of ``ntype`` (from the id map's schema, no data read)."""
    import pyarrow.parquet as pq

    from distgnn import format as fmt
    return pq.read_schema(Path(root) / fmt.id_map_path(ntype)).field("orig_id").type


def write_dir_manifest(tmp: Path, worker_files: list[dict], k: int, checkpoint: str) -> dict:
    """The directory output's ``manifest.json``, written last (after every worker's part files):
    the marker by which ``recommend --overwrite`` recognises a directory it may replace."""
    files = {}
    for f in worker_files:
        files.update(f)
    manifest = {"writer": WRITER, "kind": "recommendations", "version": __version__, "k": k,
                "checkpoint": checkpoint, "files": dict(sorted(files.items()))}
    atomic.write_json(tmp / DIR_MANIFEST, manifest)
    return manifest
