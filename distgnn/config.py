"""The training configuration: a pydantic v2 schema for the YAML files in ``configs/``.

Every section forbids unknown keys, so a typo is an error rather than a silently ignored option.
Errors name the file and the dotted field (``configs/x.yaml: train.lr: Input should be greater
than 0``). ``--set a.b=v`` overrides are parsed as YAML scalars, merged into the file's mapping and
validated together with it, so an override gets exactly the same checks as the file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from distgnn.errors import UserError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    partitions: str = Field(description="partition directory written by 'distgnn partition create'")


class ModelConfig(_Strict):
    dim: int = Field(64, gt=0, description="ID embedding size (layer 0)")
    layers: int = Field(2, ge=0, description="number of GATConv layers (0 = matrix factorisation)")
    heads: int = Field(2, gt=0)
    hidden: int = Field(64, gt=0, description="output size of each attention head")
    head_merge: Literal["mean", "concat"] = "mean"
    activation: Literal["none", "elu", "relu"] = "none"
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="feature dropout inside GATConv")
    attn_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    residual: bool = False
    transform: Literal["learned", "identity_init", "identity"] = Field(
        "identity_init", description="GATConv's linear map: xavier-initialised, identity-initialised, "
                                     "or frozen identity (no feature transform, LightGCN-style)")
    attn_init: Literal["xavier", "zero"] = Field(
        "zero", description="zero = uniform attention at the start (then learned)")
    edge_norm: Literal["none", "sym"] = Field(
        "sym", description="sym: multiply attention by sqrt(deg_dst/deg_src), which with uniform "
                           "attention equals LightGCN's 1/sqrt(deg_src*deg_dst)")
    layer_combine: Literal["last", "mean"] = Field(
        "mean", description="mean: average the embeddings of layers 0..L (LightGCN)")
    bias: bool = False
    attention: Literal["learned", "uniform"] = Field(
        "learned", description="uniform: attention logits frozen at zero, so every neighbour gets the "
                               "same weight (the ablation that shows what learned attention buys)")
    score: Literal["dot", "cosine"] = Field(
        "dot", description="link score: dot product, or cosine (embeddings L2-normalised before "
                           "scoring, ranking and export)")

    @property
    def out_dim(self) -> int:
        return self.hidden * (self.heads if self.head_merge == "concat" else 1)

    @model_validator(mode="after")
    def _check_dims(self) -> "ModelConfig":
        if self.layers > 0 and self.layer_combine == "mean" and self.out_dim != self.dim:
            raise ValueError(
                f"layer_combine 'mean' needs every layer's output size ({self.out_dim}) to equal dim "
                f"({self.dim}); set hidden to {self.dim if self.head_merge == 'mean' else 'dim/heads'}")
        if self.transform == "identity" and self.hidden != self.dim:
            raise ValueError(f"transform 'identity' needs hidden == dim (got {self.hidden} and {self.dim})")
        if self.layers > 1 and self.transform == "identity" and self.out_dim != self.dim:
            raise ValueError("transform 'identity' needs head_merge 'mean' when layers > 1")
        return self


class EmbeddingConfig(_Strict):
    optimizer: Literal["adagrad", "adam"] = "adam"
    lr: float = Field(0.01, gt=0)
    init_std: float = Field(0.1, gt=0)
    eps: float = Field(1e-8, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    shared_memory: bool = Field(True, description="Ray backend: a trainer reads and updates its own "
                                                  "partition's rows in the co-located PS shard's "
                                                  "shared memory instead of calling it")
    async_pushes: int = Field(0, ge=0, description="Ray backend: gradient pushes a worker may have in "
                                                   "flight (0 = synchronous; k bounds staleness to k "
                                                   "steps, see docs/architecture.md)")
    ordered_pushes: bool = Field(False, description="Ray backend: the workers push in rank order every "
                                                    "step, each push applied before the next worker's "
                                                    "and all before any next pull, so a run is "
                                                    "reproducible (same seed, same model; costs one "
                                                    "barrier per worker per step)")

    @model_validator(mode="after")
    def _check_push_modes(self) -> "EmbeddingConfig":
        if self.ordered_pushes and self.async_pushes:
            raise ValueError("ordered_pushes waits for every push, async_pushes leaves some in flight: "
                             "set one of them")
        return self


class FaultConfig(_Strict):
    """Fault injection for tests of the Ray backend: a worker, or a parameter-server shard, dies."""

    worker: Optional[int] = Field(None, ge=0, description="rank of the Ray Train worker that exits")
    epoch: int = Field(0, ge=0, description="epoch (0-based) in which the worker exits")
    step: int = Field(0, ge=0, description="step within that epoch at which the worker exits")
    ps_shard: Optional[int] = Field(None, ge=0, description="parameter-server shard that exits ...")
    ps_after_pushes: int = Field(1, gt=0, description="... after this many pushes")
    ps_idle_epoch: Optional[int] = Field(None, ge=0, description="... or, instead, is killed while idle "
                                         "at the end of this epoch (0-based), before its checkpoint")


class TrainConfig(_Strict):
    epochs: int = Field(10, gt=0)
    max_steps: Optional[int] = Field(None, gt=0, description="stop after this many steps in total")
    batch_size: int = Field(2048, gt=0, description="positive interactions per minibatch")
    fanouts: list[int] = Field(default_factory=lambda: [10, 10],
                               description="neighbours sampled per layer, input layer first; -1 = all")
    num_negatives: int = Field(1, gt=0, description="negatives per positive")
    popularity_negatives: float = Field(0.0, ge=0.0, le=1.0,
                                        description="fraction of negatives drawn by item popularity")
    popularity_alpha: float = Field(0.75, ge=0.0, description="negatives drawn with p ~ degree^alpha")
    local_negatives: float = Field(0.0, ge=0.0, le=1.0,
                                   description="Ray backend: share of the uniform negatives drawn from the "
                                               "items of the worker's own partition (fewer remote rows "
                                               "and samples; 0 = uniform over the whole catalogue)")
    shared_negatives: bool = Field(False, description="draw num_negatives items once per minibatch "
                                                      "and score every positive against all of them")
    loss: Literal["bpr", "bce", "softmax", "ccl"] = Field(
        "bpr", description="softmax: sampled-softmax (InfoNCE) over the positive and its negatives; "
                           "ccl: SimpleX's cosine contrastive loss (needs model.score: cosine, "
                           "ccl_margin and ccl_negative_weight)")
    temperature: float = Field(0.1, gt=0, description="softmax loss temperature")
    ccl_margin: Optional[float] = Field(
        None, ge=-1.0, lt=1.0, description="ccl: negatives with cosine below this cost nothing "
                                          "(SimpleX uses about 0.9 on Gowalla)")
    ccl_negative_weight: Optional[float] = Field(
        None, gt=0, description="ccl: weight of the mean negative term against the positive one "
                                "(SimpleX uses about 150 with 1,000 negatives)")
    l2: float = Field(1e-4, ge=0.0, description="L2 on the layer-0 embeddings of the batch")
    dense_lr: float = Field(1e-3, gt=0, description="Adam learning rate of the GAT weights")
    lr_decay: float = Field(1.0, gt=0, le=1.0, description="both learning rates are multiplied by "
                                                         "this after every epoch")
    lr_schedule: Literal["fixed", "plateau"] = Field(
        "fixed", description="plateau: also multiply both learning rates by lr_plateau_factor after "
                             "lr_plateau_patience validations without a better Recall@K")
    lr_plateau_factor: float = Field(0.1, gt=0, lt=1.0)
    lr_plateau_patience: int = Field(1, gt=0, description="validations without improvement before "
                                                          "the learning rates are reduced")
    seed: int = 0
    threads: int = Field(2, gt=0)
    device: str = Field("cpu", description="'cpu', 'cuda', 'cuda:N' or 'auto'")
    log_every: int = Field(50, gt=0, description="steps between train records in the metrics files")
    eval_every: int = Field(1, ge=0, description="epochs between validation runs (0 = never)")
    patience: int = Field(3, ge=0, description="validations without Recall@K improvement before "
                                               "stopping (0 = no early stopping)")
    deterministic_sampling: bool = Field(
        True, description="sample neighbours in one thread so a seed fixes the samples (exact "
                          "--resume); false lets DGL sample with all threads, not reproducibly")
    prefetch: int = Field(1, ge=0, description="minibatches sampled ahead on a background thread while "
                                               "the current step computes (0 = sample in the step); "
                                               "the sampled sequence is the same either way")
    keep_checkpoints: int = Field(2, gt=0, description="latest checkpoints kept (plus the best)")
    checkpoint_every_steps: Optional[int] = Field(
        None, gt=0, description="also checkpoint every this many steps inside an epoch (a long "
                                "epoch on a big graph then loses at most this many steps to a "
                                "crash; --resume continues mid-epoch exactly); none = epoch ends only")
    progress: bool = True
    fault: FaultConfig = FaultConfig()

    @model_validator(mode="after")
    def _check_fanouts(self) -> "TrainConfig":
        for f in self.fanouts:
            if f == 0 or f < -1:
                raise ValueError(f"fanouts must be positive or -1 (all neighbours), got {f}")
        return self

    @model_validator(mode="after")
    def _check_loss_options(self) -> "TrainConfig":
        if self.loss == "ccl":
            hints = {"ccl_margin": "0.9", "ccl_negative_weight": "150"}  # SimpleX on Gowalla
            missing = [k for k in hints if getattr(self, k) is None]
            if missing:
                raise ValueError(f"loss 'ccl' needs {' and '.join(missing)}; set e.g. "
                                 + ", ".join(f"train.{k}: {hints[k]}" for k in missing))
        if self.lr_schedule == "plateau" and self.eval_every == 0:
            raise ValueError("lr_schedule 'plateau' reacts to validation, but eval_every is 0; "
                             "set train.eval_every to 1 or more, or lr_schedule: fixed")
        return self


class EvalConfig(_Strict):
    k: int = Field(20, gt=0)
    split: Literal["valid", "test"] = Field(
        "valid", description="held-out split used for validation/early stopping during training")
    user_batch: int = Field(1024, gt=0, description="users scored at once (bounds ranking memory)")
    node_batch: int = Field(16384, gt=0, description="nodes per block in layer-wise inference")
    protocol: Literal["full", "sampled"] = Field(
        "full", description="full: rank every item (the LightGCN protocol); sampled: rank each user's "
                            "held-out items among num_negatives sampled items (for catalogues too big "
                            "for full ranking; --backend ray only)")
    num_negatives: int = Field(100, gt=0, description="sampled protocol: negatives per user")
    max_users: Optional[int] = Field(
        None, gt=0, description="evaluate a seeded sample of about this many users (each kept with "
                                "probability max_users / num_users); None: every user")
    item_budget_bytes: Optional[int] = Field(
        None, gt=0, description="sharded ranking: all item rows are gathered into memory when they "
                                "fit in this many bytes (default 1 GiB), else streamed block by block")


class RuntimeConfig(_Strict):
    """Deadlines of the Ray runtime. Every remote call and barrier has one: a failure surfaces as
    an error, never a hang. ``None`` means "scaled with the data" (``launch.job.deadlines``)."""

    call_timeout_s: float = Field(300.0, gt=0, description="each remote call: pull, push, sample, shard start")
    barrier_timeout_s: Optional[float] = Field(
        None, gt=0, description="barriers and broadcasts between workers; they also wait out a "
                                "validation (default: max(1800, 3 x the estimated validation time))")
    stall_timeout_s: Optional[float] = Field(
        None, gt=0, description="the driver stops a job with no new metrics record for this long "
                                "(default: max(600, the barrier deadline))")
    placement_strategy: Literal["SPREAD", "PACK"] = Field(
        "SPREAD", description="how Ray Train places the training workers over the nodes. SPREAD "
                              "(default) puts them on as many nodes as it can, like the shards, so "
                              "each worker trains the partitions held on its own node; PACK fills "
                              "one node first (fewer nodes, but a packed worker trains a partition "
                              "whose rows live on another node). Both are soft: after a node is "
                              "lost, the workers restart on the survivors")


class Config(_Strict):
    data: DataConfig
    model: ModelConfig = ModelConfig()
    embedding: EmbeddingConfig = EmbeddingConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    runtime: RuntimeConfig = RuntimeConfig()

    @model_validator(mode="after")
    def _check_layers(self) -> "Config":
        if len(self.train.fanouts) != self.model.layers:
            raise ValueError(f"train.fanouts has {len(self.train.fanouts)} entries but model.layers "
                             f"is {self.model.layers}; give one fanout per layer")
        if self.train.loss == "ccl" and self.model.score != "cosine":
            raise ValueError("train.loss 'ccl' is defined on cosine scores; set model.score: cosine "
                             "(so ranking uses the same scores)")
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _format_error(source: str, exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if err["type"] == "extra_forbidden":
        msg = "unknown key (check the spelling; see configs/demo.yaml for the schema)"
    extra = f" (and {len(exc.errors()) - 1} more error(s))" if len(exc.errors()) > 1 else ""
    return f"{source}: {loc + ': ' if loc else ''}{msg}{extra}"


def _apply_override(data: dict, override: str) -> None:
    if "=" not in override:
        raise UserError(f"--set {override!r}: expected the form a.b=value, e.g. train.lr=0.01")
    path, raw = override.split("=", 1)
    keys = path.strip().split(".")
    if not all(keys):
        raise UserError(f"--set {override!r}: empty key in dotted path {path!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else raw
    except yaml.YAMLError:
        value = raw
    node = data
    for k in keys[:-1]:
        nxt = node.get(k)
        if nxt is None:
            nxt = node[k] = {}
        if not isinstance(nxt, dict):
            raise UserError(f"--set {override!r}: {k} is not a section")
        node = nxt
    node[keys[-1]] = value


def load_config(path: str | Path, overrides: list[str] | None = None,
                partitions: str | None = None) -> Config:
    """Read, override and validate a config; every problem is one UserError line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} does not exist; see configs/demo.yaml for an example")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}: not valid YAML{where}; fix the syntax")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: the top level must be a mapping of sections (data, model, ...)")
    for ov in overrides or []:
        _apply_override(data, ov)
    if partitions is not None:
        data.setdefault("data", {})
        if not isinstance(data["data"], dict):
            raise UserError(f"{path}: data must be a mapping")
        data["data"]["partitions"] = partitions
    source = str(path) + (" (with --set overrides)" if overrides else "")
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise UserError(_format_error(source, exc)) from None


def config_from_dict(data: dict[str, Any], source: str) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise UserError(_format_error(source, exc)) from None


def load_run_config(run_dir: str | Path) -> Config:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise UserError(f"{run_dir} has no config.yaml: it is not a run directory written by "
                        f"'distgnn train --out {run_dir}'")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        raise UserError(f"{path}: not valid YAML; the run directory is damaged, re-run training")
    return config_from_dict(data or {}, str(path))
