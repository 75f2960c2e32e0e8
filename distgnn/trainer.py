"""Trainer: the minibatch loop over the graph store, sampler, embedding store and model.

One step: sample (minibatch, negatives, L-hop blocks, edge weights) -> pull (layer-0 embeddings
of the input nodes from the embedding store) -> forward (GAT, scores, BPR/BCE + L2 on the batch's
layer-0 embeddings) -> backward -> push (the input embeddings' gradients to the embedding store)
-> dense_step (Adam on the GAT weights). Each stage is timed.

The run directory holds ``run.json`` (the run's marker, ``distgnn.rundir``), ``config.yaml``
(resolved config), ``metrics/rank-NNNNN.jsonl`` (``distgnn.metrics``: one ``train`` record per
``log_every`` steps with loss, edges/s and the stage split; one ``valid`` record per validation;
``warning`` records) and ``checkpoints/`` (see ``distgnn.checkpoint``), written at the end of every epoch
and when training stops. Validation runs every ``eval_every`` epochs on ``eval.split``; training
stops early after ``patience`` validations without a better Recall@K.

The graph store, sampler and embedding store are passed in through interfaces, and the loop meets
its peers only through a ``Runtime`` (batches, barriers, the chief's decisions, checkpoint
reports). The local backend uses the trivial ``Runtime`` below; the Ray backend passes its
``RayGraphStore``, ``RayEmbeddingStore`` and ``distgnn.ray_runtime.worker.RayTrainRuntime``, so both
backends run this one loop: the same learning-rate schedule, validation, early stopping,
``max_steps`` and checkpoints.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import torch

from distgnn import atomic, rundir
from distgnn import checkpoint as ckpt
from distgnn import format as fmt
from distgnn import metrics as run_metrics
from distgnn.config import Config
from distgnn.errors import UserError

if TYPE_CHECKING:
    from distgnn.sampler import ItemRanges, NegativeSampler

STAGES = ("sample", "pull", "forward", "backward", "push", "dense_step")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"train.device {name!r} is not a device; use cpu, cuda, cuda:N or auto")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"train.device is {name!r} but no CUDA device is available; use cpu or auto")
    return dev


def load_id_maps(root: str | Path) -> dict[str, tuple[np.ndarray, pa.Array]]:
    """ntype -> (gids ascending, orig ids) from the partition directory."""
    out = {}
    for ntype in fmt.NTYPES:
        t = fmt.read_table(root, fmt.id_map_path(ntype))
        out[ntype] = (t.column("gid").to_numpy(), t.column("orig_id").combine_chunks())
    return out


@dataclass
class Parts:
    """The pieces of a training job, built from a config.

    ``id_maps`` (gid <-> original id of every user and item) is read from the partition directory
    on first use, not here: only saving or loading embeddings by original id needs it, and a Ray
    training worker that never does must not hold two arrays over all nodes (docs/architecture.md
    D28)."""

    cfg: Config
    device: torch.device
    graph: Any
    emb: Any
    model: Any
    _id_maps: dict | None = field(default=None, repr=False)

    @property
    def id_maps(self) -> dict[str, tuple[np.ndarray, pa.Array]]:
        """ntype -> (gids, orig ids), loaded (once) when first asked for."""
        if self._id_maps is None:
            self._id_maps = load_id_maps(self.graph.root)
        return self._id_maps

    @property
    def id_maps_loaded(self) -> bool:
        return self._id_maps is not None


def build(cfg: Config, graph=None, backend: str = "local", emb=None) -> Parts:
    """Graph store + embedding store + model for ``cfg``.

    The local backend builds in-process stores; the Ray backend (``launch.job``)
    passes its ``RayGraphStore`` and ``RayEmbeddingStore`` in, and nothing else changes."""
    from distgnn.embedding_store import LocalEmbeddingStore
    from distgnn.graph_store import LocalGraphStore
    from distgnn.model import GATRec

    if backend != "local" and (graph is None or emb is None):
        raise UserError(f"backend {backend!r} needs its graph and embedding stores passed in")
    torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    graph = graph or LocalGraphStore(cfg.data.partitions,
                                     deterministic=cfg.train.deterministic_sampling)
    torch.manual_seed(cfg.train.seed)
    emb = emb or LocalEmbeddingStore(graph.num_nodes, cfg.model.dim, cfg.embedding.optimizer, cfg.embedding.lr,
                              cfg.embedding.init_std, cfg.embedding.betas, cfg.embedding.eps,
                              seed=cfg.train.seed, device=device)
    model = GATRec(cfg.model).to(device)
    return Parts(cfg, device, graph, emb, model)


def load_for_inference(run_dir: str | Path, cfg: Config, graph=None) -> tuple[Parts, Path]:
    """Model and embeddings of the run's best (else latest) checkpoint."""
    parts = build(cfg, graph)
    path = ckpt.for_inference(run_dir)
    meta = ckpt.read_meta(path)
    ckpt.check_compatible(path, meta["config"], cfg.model_dump(mode="json"))
    dense = ckpt.read_dense(path, parts.device)
    parts.model.load_state_dict(dense["model"])
    parts.emb.load(path, parts.graph.root)
    return parts, path


def local_items(graph, fraction: float) -> tuple[ItemRanges | None, float]:
    """(the items of the graph store's local partitions as ``ItemRanges``, fraction) for
    partition-local negatives; (None, 0) for a store without them (the local backend holds every
    partition)."""
    from distgnn.sampler import ItemRanges

    parts = getattr(graph, "local_parts", None)
    if not parts or fraction <= 0:
        return None, 0.0
    return ItemRanges.from_book(graph.book, parts), fraction


def negative_sampler(cfg: Config, graph) -> NegativeSampler:
    """The training negatives over every item of ``graph``'s partition book.

    Uniform draws map a position through the per-partition item ranges (``ItemRanges``): no item
    array. Only popularity negatives need the items' degrees; then they are asked of the graph
    store (the Ray store: from the owning shards) and kept as one O(items) table."""
    from distgnn.sampler import ItemRanges, NegativeSampler

    items = ItemRanges.from_book(graph.book)
    degrees = None
    if int(round(cfg.train.num_negatives * cfg.train.popularity_negatives)) > 0:
        degrees = torch.cat([graph.degrees(torch.arange(int(s), int(e), dtype=torch.int64))
                             for s, e in zip(graph.book.item_gid_start, graph.book.gid_end)])
    return NegativeSampler(items, degrees, cfg.train.num_negatives, cfg.train.popularity_negatives,
                           cfg.train.popularity_alpha, *local_items(graph, cfg.train.local_negatives))


def check_eval_split(cfg: Config, manifest: dict, root, ray_backend: bool = False) -> None:
    """Validation needs its held-out split; checked before training (and before ``--overwrite``
    removes an old run)."""
    if cfg.train.eval_every and cfg.eval.split not in manifest.get("heldout", {}):
        how = ("--valid-fraction 0.1 (or --valid PATH)" if cfg.eval.split == "valid" else "--test PATH")
        raise UserError(f"{root} has no '{cfg.eval.split}' held-out split for validation; "
                        f"partition with {how}, or set train.eval_every=0 to train without validation")
    if cfg.train.eval_every and cfg.eval.protocol == "sampled" and not ray_backend:
        raise UserError("eval.protocol 'sampled' runs on the sharded evaluator of --backend ray; "
                        "use --backend ray, or eval.protocol full")


class Runtime:
    """Where the training loop meets its peers; the local backend's version: one process, no peers.

    ``distgnn.ray_runtime.worker.RayTrainRuntime`` implements the same hooks for Ray Train workers
    (equal steps per worker, barriers and broadcasts with deadlines, checkpoint paths reported to
    Ray Train as metrics), so the epoch loop in ``Trainer.train`` is written once for both backends."""

    rank = 0
    is_chief = True  # validates, writes checkpoints, decides early stopping
    show_progress = True

    def prepare(self, trainer: "Trainer", resume: bool) -> bool:
        """Check the run directory and restore the last checkpoint when resuming; True if restored."""
        run_dir = trainer.run_dir
        if resume:
            last = ckpt.latest(run_dir)
            if last is None:
                raise UserError(f"--resume: {run_dir} has no committed checkpoint to resume from; "
                                f"drop --resume to start a new run")
            trainer.restore(last)
        elif rundir.holds_run(run_dir):
            raise UserError(f"{run_dir} already holds a run; pass --resume to continue it or "
                            f"choose another --out")
        rundir.write_marker(run_dir, "local")
        atomic.write_text(run_dir / "config.yaml", trainer.cfg.to_yaml())
        return resume

    def batches(self, trainer: "Trainer", epoch: int, start_step: int):
        """(steps in this epoch, iterator of (step, interaction indices))."""
        return trainer.sampler.steps_per_epoch(), trainer.sampler.batches(epoch, start_step)

    def before_step(self, trainer: "Trainer", step: int) -> None:
        """Called before every step (the Ray runtime injects faults here)."""

    def log_fields(self) -> dict:
        """Extra fields of every ``train`` record (rank, traffic counters, extra stage timers)."""
        return {}

    def barrier(self, what: str) -> None:
        """Every worker has reached this point (and its pushes are applied)."""

    def check_health(self, trainer: "Trainer", where: str) -> None:
        """Every remote part of the job is alive and still the incarnation this worker started
        with; raises otherwise (the Ray runtime's parameter-server fencing, D30). Called by every
        worker at the end of an epoch and by the chief just before it writes a checkpoint."""

    def agree(self, value: Any) -> Any:
        """The chief's ``value``, on every worker."""
        return value

    def validate(self, trainer: "Trainer") -> dict | None:
        """Validation metrics on the chief (None elsewhere); every worker calls it. The local
        backend holds the whole graph: in-memory layer-wise inference and ranking."""
        return trainer.validate()

    def report(self, trainer: "Trainer", record: dict, path: Path | None) -> None:
        """After each checkpoint (written by the chief only): tell the launcher about it."""


class Trainer:
    def __init__(self, cfg: Config, run_dir: str | Path, graph=None, backend: str = "local", emb=None):
        from distgnn.sampler import EdgeMinibatchSampler

        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.p = build(cfg, graph, backend, emb)
        g = self.p.graph
        self.negatives = negative_sampler(cfg, g)
        self.sampler = EdgeMinibatchSampler(g, cfg.train.fanouts, cfg.train.batch_size, self.negatives,
                                            cfg.train.seed, cfg.train.shared_negatives)
        params = [q for q in self.p.model.parameters() if q.requires_grad]
        self.dense_opt = torch.optim.Adam(params, lr=cfg.train.dense_lr) if params else None
        # The module that run_step calls: the Ray backend wraps it in DDP; checkpoints, validation
        # and export always use the plain self.p.model.
        self.forward_model = self.p.model
        from distgnn.device import HostToDevice
        self._h2d = HostToDevice(self.p.device)  # per-step host -> device copies (pinned, non-blocking)
        from distgnn.model import make_loss
        self.loss_fn = make_loss(cfg.train)
        # edge weights from the degrees of each minibatch's nodes (prefetch.sym_edge_weights)
        self.use_norm = cfg.model.edge_norm == "sym" and cfg.model.layers > 0
        # counters (restored on resume)
        self.epoch = 0
        self.step_in_epoch = 0
        self.global_step = 0
        self.train_seconds = 0.0
        # CPU time of this thread in forward + backward + dense step, summed over steps: the compute
        # that a faster device would speed up, measured so that a core shared with other processes
        # does not inflate it as it inflates wall time (exact with train.threads 1: with more,
        # OpenMP's other threads are not counted). Not checkpointed: a per-process counter.
        self.compute_cpu_seconds = 0.0
        self.best_value: float | None = None
        self.bad_evals = 0
        self.stopped_early = False
        self.lr_scale = 1.0  # lr_schedule 'plateau': product of the reductions so far
        self._evaluator = None
        self.rank = 0  # the metrics file written (the runtime's rank, set in train())
        self.warnings: list[str] = []  # written as ``warning`` records once the run has started

    # --- one step -------------------------------------------------------------------------
    def run_step(self, idx: torch.Tensor, timers: dict[str, float], prepared=None) -> float:
        """One step on the interactions ``idx``; ``prepared``: its minibatch, already sampled by
        ``distgnn.prefetch`` (else it is sampled here, the same way)."""
        from distgnn.model import link_scores
        from distgnn.prefetch import sample_step

        cfg, dev, model, h2d = self.cfg, self.p.device, self.forward_model, self._h2d
        t0 = time.perf_counter()
        if prepared is None:
            prepared = sample_step(self, self.epoch, self.step_in_epoch, idx)
        torch.manual_seed(prepared.seed)  # dropout draws: the same with or without prefetch
        mb = prepared.mb
        ew = [h2d.tensor(w) for w in prepared.edge_weights] if prepared.edge_weights else None
        blocks = h2d.blocks(mb.blocks)
        user_pos, pos_pos, neg_pos = h2d.tensor(mb.user_pos), h2d.tensor(mb.pos_pos), h2d.tensor(mb.neg_pos)
        t1 = time.perf_counter()
        x = h2d.rows(self.p.emb.pull(mb.input_gids)).requires_grad_(True)
        t2 = time.perf_counter()
        c2 = time.thread_time()
        model.train()
        h = model(blocks, x, ew)
        pos, neg = link_scores(h[user_pos], h[pos_pos],
                               h[neg_pos[0]] if self.sampler.shared_negatives else h[neg_pos],
                               cfg.model.score == "cosine")
        loss = self.loss_fn(pos, neg)
        t3 = time.perf_counter()
        if self.dense_opt is not None:
            self.dense_opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.train.l2 > 0:
            # L2 on the batch's layer-0 embeddings, l2 * (|u|^2 + |p|^2 + mean_k |n|^2) / (2B), added
            # analytically to the input gradient. Every scored node is a seed, and the seeds are
            # the first rows of x: summing each seed's coefficients first (a 1-D index_add) turns
            # the row scatter (index_add_ over [3B, dim] rows, serial on CPU: ~100 ms a step at
            # B=2048) into one addcmul over the seeds' rows.
            with torch.no_grad():
                b = len(user_pos)
                bn, k = neg_pos.shape
                n_seeds = len(mb.seed_gids)
                coef = torch.zeros(n_seeds, device=x.device)
                coef.index_add_(0, torch.cat([user_pos, pos_pos]),
                                torch.full((2 * b,), cfg.train.l2 / b, device=x.device))
                coef.index_add_(0, neg_pos.reshape(-1),
                                torch.full((bn * k,), cfg.train.l2 / (bn * k), device=x.device))
                rows = x.detach()[:n_seeds]
                x.grad[:n_seeds].addcmul_(rows, coef.unsqueeze(1))
                loss = loss + 0.5 * (rows.pow(2).sum(1) * coef).sum()
        t4 = time.perf_counter()
        c4 = time.thread_time()
        self.p.emb.push(mb.input_gids, x.grad, unique=True)
        t5 = time.perf_counter()
        c5 = time.thread_time()
        if self.dense_opt is not None:
            self.dense_opt.step()
        t6 = time.perf_counter()
        self.compute_cpu_seconds += (c4 - c2) + (time.thread_time() - c5)
        for name, dt in zip(STAGES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5)):
            timers[name] = timers.get(name, 0.0) + dt
        return float(loss.detach())

    def _set_lr(self, epoch: int) -> None:
        """Learning rates are a function of the epoch and the plateau reductions so far, both in
        the checkpoint (so a resumed run uses the same ones)."""
        factor = self.cfg.train.lr_decay ** epoch * self.lr_scale
        self.p.emb.lr = self.cfg.embedding.lr * factor
        if self.dense_opt is not None:
            for group in self.dense_opt.param_groups:
                group["lr"] = self.cfg.train.dense_lr * factor

    # --- validation -----------------------------------------------------------------------
    def validate(self, graph=None) -> dict:
        from distgnn.evaluation import Evaluator, infer_all

        graph = graph or self.p.graph
        if self._evaluator is None:
            self._evaluator = Evaluator(graph, self.cfg.eval.split, self.cfg.eval.max_users, self.cfg.train.seed)
        emb = infer_all(self.p.model, graph, self.p.emb, self.cfg.eval.node_batch, self.p.device)
        return self._evaluator.evaluate(emb, self.cfg.eval.k, self.cfg.eval.user_batch, self.p.device)

    # --- checkpoints ----------------------------------------------------------------------
    def _meta(self) -> dict:
        return {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
                "train_seconds": self.train_seconds, "best_value": self.best_value,
                "bad_evals": self.bad_evals, "stopped_early": self.stopped_early, "lr_scale": self.lr_scale,
                "config": self.cfg.model_dump(mode="json")}

    def save(self) -> Path:
        dense = {"model": self.p.model.state_dict(),
                 "optimizer": self.dense_opt.state_dict() if self.dense_opt else {},
                 "rng": {"torch": torch.get_rng_state()}}
        graph, emb = self.p.graph, self.p.emb
        return ckpt.write(self.run_dir, self.global_step, self._meta(), dense,
                          lambda d: emb.save(d, graph.root), self.cfg.train.keep_checkpoints,
                          ckpt.embeddings_section(graph.manifest, emb.optimizer, emb.dim))

    def restore(self, path: Path, embeddings: bool = True) -> None:
        """Load a checkpoint (format v1 or v2); ``embeddings=False`` skips the embedding store (in
        the Ray backend rank 0 has every PS shard reload its own rows, for all workers)."""
        meta = ckpt.read_meta(path)
        ckpt.check_compatible(path, meta["config"], self.cfg.model_dump(mode="json"))
        dense = ckpt.read_dense(path, self.p.device)
        try:
            self.p.model.load_state_dict(dense["model"])
            if self.dense_opt is not None:
                self.dense_opt.load_state_dict(dense["optimizer"])
        except (RuntimeError, KeyError, ValueError) as exc:
            raise UserError(f"checkpoint {path} does not fit this model ({str(exc).splitlines()[0]}); "
                            f"use the run's own config")
        torch.set_rng_state(dense["rng"]["torch"])
        if embeddings:
            self.p.emb.load(path, self.p.graph.root)
        self.epoch, self.step_in_epoch = meta["epoch"], meta["step_in_epoch"]
        self.global_step, self.train_seconds = meta["global_step"], meta["train_seconds"]
        self.best_value, self.bad_evals = meta["best_value"], meta["bad_evals"]
        self.stopped_early = meta.get("stopped_early", False)
        self.lr_scale = meta.get("lr_scale", 1.0)

    # --- the loop -------------------------------------------------------------------------
    def _log(self, record: dict) -> None:
        run_metrics.append(self.run_dir, self.rank, record)

    def train(self, resume: bool = False, runtime: Runtime | None = None) -> dict:
        """Run epochs until ``train.epochs``, ``train.max_steps`` or early stopping.

        Per epoch: set the learning rates -> steps (a ``train`` record every ``log_every``) ->
        barrier (every push applied) -> validation on the chief every ``eval_every`` epochs, its
        stop decision shared -> checkpoint by the chief, reported to the runtime."""
        from tqdm import tqdm

        from distgnn.prefetch import prefetched

        cfg, rt = self.cfg, runtime or Runtime()
        self.rank = rt.rank
        restored = rt.prepare(self, resume)
        for message in self.warnings:
            self._log({"type": "warning", "message": message})
        check_eval_split(cfg, self.p.graph.manifest, self.p.graph.root, ray_backend=type(rt) is not Runtime)
        max_steps = cfg.train.max_steps
        wall0 = time.perf_counter()
        last_ckpt_step = self.global_step if restored else -1
        hide = None if cfg.train.progress and rt.show_progress else True
        while self.epoch < cfg.train.epochs and not self.stopped_early:
            if max_steps is not None and self.global_step >= max_steps:
                break
            self._set_lr(self.epoch)
            timers: dict[str, float] = {}
            interval = {"loss": 0.0, "steps": 0, "edges": 0, "t": time.perf_counter()}
            epoch_loss, epoch_steps = 0.0, 0
            spe, batches = rt.batches(self, self.epoch, self.step_in_epoch)
            batches = prefetched(self, self.epoch, batches, cfg.train.prefetch)  # sampling ahead
            bar = tqdm(total=spe, initial=self.step_in_epoch, desc=f"epoch {self.epoch + 1}/{cfg.train.epochs}",
                       unit="step", disable=hide, file=sys.stderr, leave=False)
            for step, idx, prepared in batches:
                self.step_in_epoch = step
                rt.before_step(self, step)
                t = time.perf_counter()
                loss = self.run_step(idx, timers, prepared)
                self.train_seconds += time.perf_counter() - t
                self.step_in_epoch = step + 1
                self.global_step += 1
                epoch_loss += loss
                epoch_steps += 1
                interval["loss"] += loss
                interval["steps"] += 1
                interval["edges"] += len(idx)
                bar.update(1)
                last = self.step_in_epoch == spe or (max_steps is not None and self.global_step >= max_steps)
                if interval["steps"] == cfg.train.log_every or last:
                    now = time.perf_counter()
                    extra = rt.log_fields()
                    rec = {"type": "train", "epoch": self.epoch, "step": self.global_step,
                           "loss": interval["loss"] / interval["steps"], "edges": interval["edges"],
                           "edges_per_s": interval["edges"] / max(now - interval["t"], 1e-9),
                           "train_seconds": self.train_seconds,
                           "stage_seconds": {k: round(v, 4) for k, v in
                                             {**timers, **extra.pop("stage_seconds", {})}.items()},
                           **extra}
                    self._log(rec)
                    bar.set_postfix(loss=f"{rec['loss']:.4f}", eps=f"{rec['edges_per_s']:.0f}")
                    timers = {}
                    interval = {"loss": 0.0, "steps": 0, "edges": 0, "t": time.perf_counter()}
                if max_steps is not None and self.global_step >= max_steps:
                    break
                every = cfg.train.checkpoint_every_steps
                if every and self.global_step % every == 0 and self.step_in_epoch < spe:
                    self._mid_epoch_checkpoint(rt)
                    last_ckpt_step = self.global_step
            bar.close()
            batches.close()  # stops the prefetch thread (max_steps may end the epoch early)
            if self.step_in_epoch < spe:
                break  # max_steps reached mid-epoch
            self.epoch += 1
            self.step_in_epoch = 0
            self.p.emb.flush()
            rt.check_health(self, "at the end of the epoch")  # before anyone checkpoints these rows
            rt.barrier(f"end of epoch {self.epoch}")  # every worker's pushes are in the store
            improved = False
            if cfg.train.eval_every and self.epoch % cfg.train.eval_every == 0:
                metrics = rt.validate(self)  # every worker takes part; the chief gets the metrics
                if rt.is_chief:
                    improved = self._track(metrics, wall0)
                self.stopped_early, self.lr_scale = rt.agree((self.stopped_early, self.lr_scale))
            epoch_record = {"epoch": self.epoch, "step": self.global_step,
                            "loss": epoch_loss / max(epoch_steps, 1)}
            self._commit(rt, epoch_record, improved)
            last_ckpt_step = self.global_step
        if last_ckpt_step != self.global_step:
            self.p.emb.flush()
            rt.check_health(self, "at the end of training")
            rt.barrier("final checkpoint")
            self._commit(rt, {"epoch": self.epoch, "step": self.global_step}, False)
        summary = {"run_dir": str(self.run_dir), "epoch": self.epoch, "global_step": self.global_step,
                   "train_seconds": round(self.train_seconds, 2), "best_recall": self.best_value,
                   "stopped_early": self.stopped_early}
        return summary

    def _mid_epoch_checkpoint(self, rt: Runtime) -> None:
        """A checkpoint inside an epoch (``train.checkpoint_every_steps``): every worker reaches the
        same global step (equal steps per epoch), flushes its pushes and meets the others, then
        the chief writes it; its meta holds ``step_in_epoch``, so ``--resume`` (and a Ray
        restart) continues with the next minibatch. No validation here: that stays per epoch."""
        self.p.emb.flush()
        rt.check_health(self, f"before the checkpoint at step {self.global_step}")
        rt.barrier(f"checkpoint at step {self.global_step}")
        self._commit(rt, {"epoch": self.epoch, "step": self.global_step}, False)

    def _track(self, metrics: dict, wall0: float) -> bool:
        """(Chief only) log the validation metrics, update the best value and the early-stopping
        state; True if improved."""
        cfg = self.cfg
        key = f"recall@{cfg.eval.k}"
        value = metrics[key]
        improved = self.best_value is None or value > self.best_value
        if improved:
            self.best_value, self.bad_evals = value, 0
        else:
            self.bad_evals += 1
            if cfg.train.patience and self.bad_evals >= cfg.train.patience:
                self.stopped_early = True
            if cfg.train.lr_schedule == "plateau" and self.bad_evals % cfg.train.lr_plateau_patience == 0:
                self.lr_scale *= cfg.train.lr_plateau_factor  # applied from the next epoch on
        self._log({"type": "valid", "split": cfg.eval.split, "epoch": self.epoch,
                   "step": self.global_step, "train_seconds": self.train_seconds,
                   "wall_seconds": time.perf_counter() - wall0, "lr_scale": self.lr_scale, **metrics})
        print(f"epoch {self.epoch}: {cfg.eval.split} {key}={value:.4f} "
              f"ndcg@{cfg.eval.k}={metrics[f'ndcg@{cfg.eval.k}']:.4f}"
              + (" (best)" if improved else ""), file=sys.stderr)
        return improved

    def _commit(self, rt: Runtime, record: dict, improved: bool) -> None:
        """The chief writes a checkpoint (commit marker last); every worker reports."""
        path = None
        if rt.is_chief:
            rt.check_health(self, "before checkpoint")  # an idle crash must not be saved
            path = self.save()
            if improved:
                ckpt.mark_best(self.run_dir, path, f"recall@{self.cfg.eval.k}", self.best_value,
                               self.cfg.eval.split)
            self._log({"type": "checkpoint", **record})
        rt.report(self, record, path)


def _seed(seed: int, epoch: int, step: int) -> int:
    """Per-step seed for negatives, DGL sampling and dropout: resume at any step is exact."""
    import dgl

    from distgnn.sampler import step_seed

    s = step_seed(seed, epoch, step)
    dgl.seed(s)
    torch.manual_seed(s)
    return s
