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


def recommend(run_dir, cfg, k: int, out: Path) -> list[Path]:
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
    top, scores = rank_topk(user_emb, item_emb, indptr, items, users, k, cfg.eval.user_batch, parts.device)
    k_eff = top.shape[1]
    params = parts.graph.manifest.get("params", {})
    user_col, item_col = params.get("user_col") or "user_id", params.get("item_col") or "item_id"
    user_orig = _orig(parts.id_maps["user"], ids.user_gids.numpy())
    item_orig_all = _orig(parts.id_maps["item"], ids.item_gids.numpy())
    table = recommendations_table(user_orig, item_orig_all.take(pa.array(top.reshape(-1).numpy())),
                                  scores.numpy(), k_eff, user_col, item_col)
    out, user_path, item_path = output_paths(out)
    write_output(embeddings_table(user_orig, user_emb.numpy(), user_col), user_path, "user_embeddings")
    write_output(embeddings_table(item_orig_all, item_emb.numpy(), item_col), item_path, "item_embeddings")
    write_output(table, out, "recommendations")
    return [out, user_path, item_path]
