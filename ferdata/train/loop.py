"""The training loop: follows the epoch plan, on CUDA when present, under torchrun (DDP) when launched so.

Faces stream from the shards through DataLoader workers (``ferdata.loader.ShardFaces``), one batch of
the plan per request, augmented in the worker; nothing holds the dataset in memory. The ``train`` stage
writes the backbone checkpoint and the learned table: the distribution the method gives every
labelled face (the learned soft label for training faces, the method's prediction for val/test).
The out-of-fold prior (``prior.py``) and the VA regressor (``regress.py``) train through the same
pieces: :func:`sgd`, :func:`run_epoch` and :func:`predict`.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from tqdm import tqdm

from ferdata.core.classes import class_index, normalised_entropy
from ferdata.core.errors import FerdataError
from ferdata.core.io import atomic_file, file_sha256, write_json
from ferdata.core.shards import member_table, shard_paths
from ferdata.core.stage import Run
from ferdata.loader import PlanBatches, ShardFaces, batches, in_order
from ferdata.train.backbones import build_backbone, load_weights
from ferdata.train.calibrate import Calibration, fit_calibration, from_dict
from ferdata.train.engine import Engine, to_input
from ferdata.train.methods import NEEDS_KNN, Batch, Method, MethodContext, build_method, build_predictor
from ferdata.train.methods.base import evaluating
from ferdata.train.settings import TRAIN as STAGE
from ferdata.train.settings import TrainSettings

__all__ = ["Engine", "fit", "load_checkpoint", "load_trained", "predict", "run_epoch", "sgd", "to_input", "train"]


def select_device() -> torch.device:
    """CUDA (this rank's GPU under torchrun) when present, else the CPU."""
    if torch.cuda.is_available():
        # cuBLAS is deterministic only with a fixed workspace; read when its first handle is made
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def init_distributed(device: torch.device) -> tuple[int, int]:
    """Join the process group when launched by torchrun; return (rank, world size)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()


def leave_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


@torch.no_grad()
def predict(
    loader: Iterable[dict[str, torch.Tensor]], forward: Callable[[torch.Tensor], Any], device: torch.device
) -> list[torch.Tensor] | None:
    """``forward``'s outputs (a tensor or a tuple of them) on every batch's faces, concatenated in loader
    order; None when the loader yields nothing."""
    parts = []
    for batch in loader:
        out = forward(to_input(batch["image"], device))
        parts.append(out if isinstance(out, tuple) else (out,))
    return [torch.cat(column) for column in zip(*parts)] if parts else None


def sgd(
    parameters: Iterable[torch.nn.Parameter], *, lr: float, weight_decay: float, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """Nesterov SGD with a one-cycle schedule over ``total_steps``."""
    opt = torch.optim.SGD(list(parameters), lr=lr, momentum=0.9, weight_decay=weight_decay, nesterov=True)
    return opt, torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total_steps, pct_start=0.15)


LOSS_READ_EVERY = 32  # steps between reads of the losses back to the host (each read waits for the device)


def run_epoch(
    loader: Iterable[dict[str, torch.Tensor]],
    step_loss: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    optimizers: list[torch.optim.Optimizer],
    sched: torch.optim.lr_scheduler.LRScheduler,
    *,
    desc: str = "",
    quiet: bool = False,
    scaler: torch.amp.GradScaler | None = None,
) -> float:
    """One pass: for every batch the loss, its gradients and a step of every optimiser (through the fp16
    grad ``scaler`` when given); the mean loss.

    The losses stay on the device and are read back every ``LOSS_READ_EVERY`` steps: a read per step
    would make the host wait for the GPU at every step, so it could never queue the next one while the
    last one runs. A non-finite loss stops training at the next read; nothing has been written by then."""
    losses: list[torch.Tensor] = []
    sizes: list[int] = []
    values: list[float] = []
    for batch in tqdm(loader, desc=desc, leave=False, disable=True if quiet else None):
        loss = step_loss(batch)
        for o in optimizers:
            o.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            for o in optimizers:
                o.step()
        else:
            scaler.scale(loss).backward()
            for o in optimizers:
                scaler.step(o)
            scaler.update()
        sched.step()
        losses.append(loss.detach().float())
        sizes.append(len(batch["position"]))
        if len(losses) - len(values) >= LOSS_READ_EVERY:
            values += read_losses(losses[len(values) :], sizes, len(values), desc)
    values += read_losses(losses[len(values) :], sizes, len(values), desc)
    total = 0.0
    for value, n in zip(values, sizes):
        total += value * n
    return total / max(sum(sizes), 1)


def read_losses(pending: list[torch.Tensor], sizes: list[int], done: int, desc: str) -> list[float]:
    """The ``pending`` step losses as floats (steps ``done`` onwards); an error naming the first that is
    not finite and the samples stepped on before it."""
    if not pending:
        return []
    values = torch.stack(pending).cpu().tolist()
    for i, value in enumerate(values):
        if not np.isfinite(value):
            raise FerdataError(
                f"{desc or 'training'}: the loss became {value} after {sum(sizes[: done + i])} samples; "
                "nothing was written. Lower train.lr (or check the inputs) and run again"
            )
    return values


class Objective(torch.nn.Module):
    """Backbone plus method as one module, so DDP synchronises the gradients of both."""

    def __init__(self, model: torch.nn.Module, method: Method):
        super().__init__()
        self.model, self.method = model, method
        self.fetch = None

    def forward(
        self, index: torch.Tensor, x: torch.Tensor, y: torch.Tensor, x_strong: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.method.batch_loss(self.model, Batch(index=index, x=x, y=y, fetch=self.fetch, x_strong=x_strong))


def infer_all(
    model: torch.nn.Module, method: Method, loader: Iterable[dict[str, torch.Tensor]], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The method's features and predicted distributions for every face ``loader`` yields, in eval mode."""
    with evaluating(model, method):
        out = predict(loader, lambda x: method.infer(model, x), device)
    if out is None:
        return torch.zeros(0, model.embed_dim, device=device), torch.zeros(0, model.head.out_features, device=device)
    return out[0], out[1]


def neighbour_positions(knn: pd.DataFrame, ids: list[str]) -> torch.Tensor:
    """The KNN graph as (N, K) positions in the training table ``ids``; a neighbour outside it (val, test,
    unlabelled) is -1, so every face keeps its own K places and the method masks the empty ones."""
    position = {sid: i for i, sid in enumerate(ids)}
    graph = knn.set_index("sample_id")
    missing = [s for s in ids if s not in graph.index]
    if missing:
        raise FerdataError(
            f"{len(missing)} training faces have no neighbours in knn.parquet, e.g. {missing[0]!r}; re-run `ferdata va`"
        )
    rows = [[position.get(n, -1) for n in graph.at[sid, "neighbours"]] for sid in ids]
    width = max(len(r) for r in rows)
    if not any(p >= 0 for r in rows for p in r):
        raise FerdataError("no training face has a training neighbour in knn.parquet; re-run `ferdata va`")
    return torch.tensor([r + [-1] * (width - len(r)) for r in rows], dtype=torch.long)


@dataclass
class TrainData:
    """What one training run learns from: the labels table, the plan, the shards (and VA, KNN for LDLVA)."""

    labels: pd.DataFrame  # sample_id, split, label (canonical ids); split "train" rows are trained on
    classes: list[str]
    plan: pd.DataFrame  # epoch, position, sample_id of training faces
    shards: list[Path]
    knn: pd.DataFrame | None = None
    va: pd.DataFrame | None = None
    prior: pd.DataFrame | None = None  # out-of-fold posteriors, for the methods that read them


def read_inputs(run: Run, cfg: TrainSettings) -> TrainData:
    """The training inputs of a run of ``train`` or ``prior``."""
    labels, meta = run.read("labels")
    plan, plan_meta = run.read("plan")
    if plan_meta.get("epochs", 0) < cfg.epochs:
        raise FerdataError(
            f"{run.input('plan')} has {plan_meta.get('epochs')} epochs, {cfg.epochs} are asked for; "
            "re-run `ferdata sample` (it plans train.epochs)"
        )
    knn = va = prior = None
    if cfg.method in NEEDS_KNN:
        knn, va = run.read("knn")[0], run.read("va")[0]
    if cfg.reads_prior:
        prior, prior_meta = run.read("prior")
        if prior.empty or prior_meta.get("classes") != meta["classes"]:
            raise FerdataError(
                f"{run.input('prior')} holds no posteriors for these labels; run `ferdata prior` (folds >= 2)"
            )
    return TrainData(labels, meta["classes"], plan, shard_paths(run.input("shards")), knn, va, prior)


def method_context(data: TrainData, cfg: TrainSettings, train_rows: pd.DataFrame, embed_dim: int) -> MethodContext:
    """Labels, VA and neighbours of the training table, as the method needs them."""
    ids = train_rows["sample_id"].tolist()
    labels = torch.from_numpy(class_index(train_rows["label"].to_numpy(), data.classes))
    knn = va = None
    if cfg.method in NEEDS_KNN:
        knn = neighbour_positions(data.knn, ids)
        va = torch.tensor(data.va.set_index("sample_id").loc[ids, ["valence", "arousal"]].to_numpy(np.float32))
    prior = None
    if cfg.reads_prior and data.prior is not None:
        rows = data.prior.set_index("sample_id").reindex(ids)
        if rows["distribution"].isna().any():
            missing = rows.index[rows["distribution"].isna()][0]
            raise FerdataError(f"the prior has no posterior for training face {missing!r}; re-run `ferdata prior`")
        prior = torch.tensor(np.stack(rows["distribution"].to_numpy()), dtype=torch.float32)
    opts = cfg.method_options()
    return MethodContext(len(data.classes), embed_dim, labels, knn, va, opts, cfg.backbone, cfg.weights, prior)


@dataclass
class Fitted:
    """A trained model, its method, the per-epoch log and (on rank 0) the learned table."""

    model: torch.nn.Module
    method: Method
    log: list[dict[str, float]]
    learned: pd.DataFrame | None
    train_seconds: float = 0.0  # wall time of the training passes alone (bench/train_throughput.py)
    train_samples: int = 0  # faces those passes stepped on, all ranks
    epoch_seconds: list[float] = field(default_factory=list)  # the same two, per epoch
    epoch_samples: list[int] = field(default_factory=list)
    engine: dict[str, Any] = field(default_factory=dict)  # how it trained: Engine.describe() and the world size
    calibration: Calibration = field(default_factory=Calibration)  # fitted on the validation faces


def make_engine(cfg: TrainSettings) -> Engine:
    """The run's device, precision, compile and augmentation place from the train settings."""
    return Engine.create(
        select_device(), precision=cfg.precision, compile=cfg.compile, augment_device=cfg.augment_device
    )


def fit(
    data: TrainData,
    cfg: TrainSettings,
    *,
    rank: int = 0,
    world: int = 1,
    quiet: bool = False,
    engine: Engine | None = None,
    tag: str = "",
) -> Fitted:
    """Train ``cfg.method`` on the first ``cfg.epochs`` epochs of the plan (on ``engine``, by default the
    one ``cfg`` asks for); ``tag`` prefixes its progress lines (the prior's fold)."""
    classes, labels = data.classes, data.labels.reset_index(drop=True)
    engine = engine or make_engine(cfg)
    device = engine.device
    torch.manual_seed(cfg.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    model = build_backbone(cfg.backbone, len(classes))
    if cfg.weights:
        report = load_weights(model, cfg.backbone, cfg.weights)
        if rank == 0 and not quiet:
            tqdm.write(report.line())
    train_rows = labels[labels["split"] == "train"].reset_index(drop=True)
    ids = train_rows["sample_id"].tolist()
    ctx = method_context(data, cfg, train_rows, model.embed_dim)
    method = build_method(cfg.method, ctx)
    objective = engine.prepare(Objective(model, method))
    net = (
        torch.nn.parallel.DistributedDataParallel(objective, find_unused_parameters=not method.uses_backbone_head)
        if world > 1
        else objective
    )
    members = member_table(data.shards)
    faces = ShardFaces(data.shards, labels["sample_id"], size=cfg.image_size, members=members)
    train_faces = ShardFaces(data.shards, ids, size=cfg.image_size, members=members)
    val_pos = np.flatnonzero((labels["split"] == "val").to_numpy())
    val_targets = class_index(labels["label"].to_numpy()[val_pos], classes)
    objective.fetch = lambda pos: to_input(train_faces.images(pos.cpu().numpy()), device)
    targets = ctx.labels

    position = pd.Series(np.arange(len(ids)), index=ids)
    plan = data.plan[data.plan["sample_id"].isin(position.index)]
    epochs = [position[plan.loc[plan["epoch"] == e, "sample_id"]].to_numpy(np.int64) for e in range(cfg.epochs)]
    augment = "two_view" if method.needs_strong_view else "weak"
    sampler = PlanBatches(
        epochs,
        batch_size=cfg.batch_size,
        augment="none" if engine.augment_on_device else augment,  # the engine augments on the device
        seed=cfg.seed,
        rank=rank,
        world=world,
    )
    steps = [sampler.steps(e) for e in range(cfg.epochs)]
    if min(steps) < 1:
        raise FerdataError(f"the epoch plan has fewer samples than one batch of {cfg.batch_size} per rank")
    pin = device.type == "cuda"
    train_loader = batches(train_faces, sampler, workers=cfg.workers, pin_memory=pin)
    val_loader = batches(faces, in_order(val_pos, 256), workers=cfg.workers, pin_memory=pin)
    train_eval = (
        batches(train_faces, in_order(np.arange(len(ids)), 256), workers=cfg.workers, pin_memory=pin)
        if method.needs_epoch_outputs
        else None
    )
    opt, sched = sgd(
        [*model.parameters(), *method.shared_parameters()],
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        total_steps=sum(steps),
    )

    targets_here = targets.to(device)

    def step_loss(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Nothing here waits for the device: the positions come pinned (on CUDA) and copy asynchronously."""
        index = batch["position"].to(device, non_blocking=True)
        views = engine.views(batch, augment)
        return net(index, views["image"], targets_here[index], views.get("strong"))

    method.set_total_steps(sum(steps))
    scaler = engine.scaler()
    log, seconds = [], []
    for epoch in range(cfg.epochs):
        method.set_epoch(epoch, cfg.epochs)
        if train_eval is not None:
            method.start_epoch(*infer_all(model, method, train_eval, device))
        net.train()
        sampler.set_epoch(epoch)
        start = time.time()
        loss = run_epoch(
            train_loader,
            step_loss,
            [opt, *method.own_optimizers()],
            sched,
            desc=f"{tag}epoch {epoch + 1}/{cfg.epochs}",
            quiet=quiet or rank != 0,
            scaler=scaler,
        )
        seconds.append(time.time() - start)
        _, val_probs = infer_all(model, method, val_loader, device)
        val_acc = float((val_probs.argmax(1).cpu().numpy() == val_targets).mean()) if len(val_pos) else float("nan")
        log.append({"epoch": epoch + 1, "loss": loss, "val_acc": val_acc})  # no timings: the log is a DVC output
        if rank == 0 and not quiet:
            tqdm.write(
                f"{tag}epoch {epoch + 1}/{cfg.epochs}: loss {loss:.4f} val acc {val_acc:.3f} "
                f"({time.time() - start:.1f} s)"
            )
    del train_loader, val_loader, train_eval  # persistent workers exit here
    calibration = fit_calibration(
        val_probs.double().cpu().numpy(),
        val_targets,
        train_counts=np.bincount(targets.numpy(), minlength=len(classes)),
        plan_counts=np.bincount(targets.numpy()[np.concatenate(epochs)], minlength=len(classes)),
        mode=cfg.calibration,
    )
    learned = None
    if rank == 0:
        every = batches(faces, in_order(np.arange(len(faces)), 256), workers=cfg.workers, pin_memory=pin)
        learned = learned_distributions(model, method, every, labels, targets, device, calibration)
    how = {**engine.describe(), "world_size": world}
    samples = [n * cfg.batch_size * world for n in steps]
    return Fitted(model, method, log, learned, sum(seconds), sum(samples), seconds, samples, how, calibration)


def learned_distributions(
    model: torch.nn.Module,
    method: Method,
    loader: Iterable[dict[str, torch.Tensor]],
    labels: pd.DataFrame,
    targets: torch.Tensor,
    device: torch.device,
    calibration: Calibration | None = None,
) -> pd.DataFrame:
    """Every labelled face's distribution and uncertainty (``loader`` yields them in ``labels`` order):
    soft labels for train, predictions otherwise. Both are calibrated (``calibration``) after the method
    made them; an uncertainty that is the entropy of the distribution is taken again after it."""
    feats, raw = infer_all(model, method, loader, device)
    train = torch.tensor((labels["split"] == "train").to_numpy(), device=device)
    soft, soft_unc = method.soft_labels(feats[train], raw[train], targets.to(device))
    calibration = calibration or Calibration()
    probs = calibration.apply(raw)
    uncertainty = normalised_entropy(probs)
    soft = calibration.apply(soft.to(raw.dtype))
    if method.uncertainty_is_entropy:
        soft_unc = normalised_entropy(soft)
    probs[train], uncertainty[train] = soft.to(probs.dtype), soft_unc.to(uncertainty.dtype)
    dist_ = probs.double().cpu().numpy()
    return pd.DataFrame(
        {
            "sample_id": labels["sample_id"].to_numpy(),
            "split": labels["split"].to_numpy(),
            "distribution": list(dist_ / dist_.sum(1, keepdims=True)),
            "uncertainty": uncertainty.double().cpu().numpy(),
        }
    )


def train(
    data_dir: str | Path, models_dir: str | Path, settings: TrainSettings | None = None, **options: Any
) -> dict[str, Any]:
    """Train on the plan of ``data_dir``; write the learned table, the log and the checkpoint to ``models_dir``."""
    with STAGE.start(settings, options, data=data_dir, models=models_dir) as run:
        cfg: TrainSettings = run.settings
        data = read_inputs(run, cfg)
        rank, world = init_distributed(select_device())
        fitted = fit(data, cfg, rank=rank, world=world)
        if rank == 0:
            calibration = fitted.calibration.describe()
            about = {**asdict(cfg), "classes": data.classes, "engine": fitted.engine, "calibration": calibration}
            save_checkpoint(fitted.model, fitted.method, run.output("model"), about)
            meta = {"classes": data.classes, "method": cfg.method, "engine": fitted.engine, "calibration": calibration}
            meta["model_hash"] = file_sha256(run.output("model"))  # export checks it is this model it stamps
            meta["own_uncertainty"] = not fitted.method.uncertainty_is_entropy  # train rows: 1 - lambda, u, ...
            run.write(fitted.learned, "learned", meta)
            write_json({"epochs": fitted.log}, run.output("train_log"))  # plot data; the settings are params
        leave_distributed()
        return {
            "epochs": fitted.log,
            "train_seconds": fitted.train_seconds,
            "epoch_seconds": fitted.epoch_seconds,
            "epoch_samples": fitted.epoch_samples,
            "train_samples": fitted.train_samples,
            "engine": fitted.engine,
            "calibration": fitted.calibration.describe(),
        }


def save_checkpoint(model: torch.nn.Module, method: Method, path: Path, meta: dict[str, Any]) -> None:
    """Save backbone and method weights plus JSON metadata, atomically, loadable with ``weights_only=True``."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    method_state = {k: v.detach().cpu() for k, v in method.state_dict().items()}
    buf = io.BytesIO()  # saved via a buffer: torch names the archive after the (temporary) file otherwise
    torch.save({"state_dict": state, "method_state": method_state, "meta": json.dumps(meta, sort_keys=True)}, buf)
    with atomic_file(path) as tmp:
        tmp.write_bytes(buf.getvalue())


def load_checkpoint(path: str | Path, device: torch.device | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the backbone saved at ``path`` (loaded with weights_only=True) and its metadata."""
    trained = load_trained(path, device)
    return trained.model, trained.meta


@dataclass
class Trained:
    """A trained model reloaded with its method: predicts as training's val/test predictions did (AKT
    with both branches, ARBEx with its own head, the calibration fitted after training)."""

    model: torch.nn.Module
    method: Method
    meta: dict[str, Any]
    device: torch.device

    @torch.no_grad()
    def predict(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Class distributions (N, C) for uint8 N x H x W x 3 faces of the training size."""
        probs = self.method.infer(self.model, to_input(images, self.device))[1]
        return from_dict(self.meta.get("calibration")).apply(probs)


def load_trained(path: str | Path, device: torch.device | None = None) -> Trained:
    """The model and method saved at ``path``, in eval mode, ready to predict."""
    path = Path(path)
    if not path.is_file():
        raise FerdataError(f"{path} not found: run `ferdata train` first")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    meta = json.loads(ckpt["meta"])
    device = device or select_device()
    model = build_backbone(meta["backbone"], len(meta["classes"]))
    model.load_state_dict(ckpt["state_dict"])
    name = meta["method"]
    method = build_predictor(name, len(meta["classes"]), model.embed_dim, meta["backbone"], meta.get(name) or {})
    if method.state_dict():  # the predictor has weights of its own (ARBEx's heads, AKT's branch B)
        method.load_state_dict(ckpt["method_state"])
    return Trained(model.to(device).eval(), method.to(device).eval(), meta, device)
