"""Export: top-K recommendations and embeddings as Parquet, keyed by orig ids.

Files are written to a temporary sibling and renamed into place, so a reader never sees a
half-written file. Column names follow the input's (``user_col``/``item_col`` from the manifest).

- recommendations: ``<user_col>, rank (1-based int32), <item_col>, score (float32)``, sorted by
  user then rank; items in the user's training set are excluded.
- embeddings: ``<user_col>|<item_col>, embedding (fixed_size_list<float32>[dim])``: the final
  (layer-combined) embeddings the scores are dot products of.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch


def atomic_write_table(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


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
    u, i = Evaluator._all_train_interactions(parts.graph)
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
    stem = out.name[:-len(".parquet")] if out.name.endswith(".parquet") else out.name
    user_path = out.with_name(f"{stem}.user_embeddings.parquet")
    item_path = out.with_name(f"{stem}.item_embeddings.parquet")
    atomic_write_table(embeddings_table(user_orig, user_emb.numpy(), user_col), user_path)
    atomic_write_table(embeddings_table(item_orig_all, item_emb.numpy(), item_col), item_path)
    atomic_write_table(table, out)
    return [out, user_path, item_path]
