"""The training loop: follows the epoch plan, on CUDA when present, under torchrun (DDP) when launched so.

Faces stream from the shards through DataLoader workers (``ferdata.loader.ShardFaces``), one batch of
the plan per request, augmented in the worker; nothing holds the dataset in memory. It writes the
backbone checkpoint and ``learned.parquet``: the distribution the method gives every labelled face
(the learned soft label for training faces, the method's prediction for val/test).
"""

from __future__ import annotations

import io
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from tqdm import tqdm

from ferdata.classes import class_index
from ferdata.errors import FerdataError
from ferdata.io import atomic_file, locate, read_table, write_json, write_table
from ferdata.loader import PlanBatches, ShardFaces, batches, in_order, member_table, shard_paths
from ferdata.train.backbones import build_backbone
from ferdata.train.methods import NEEDS_KNN, Batch, Method, MethodContext, build_method
from ferdata.train.methods.base import normalised_entropy

CHECKPOINT = "model.pt"
TRAIN_LOG = "train_log.json"
LEARNED = "learned.parquet"
MEAN, STD = 0.5, 0.25


@dataclass(frozen=True)
class TrainConfig:
    """The ``train`` section of params.yaml."""

    method: str = "ce"
    backbone: str = "small_cnn"
    epochs: int = 12
    batch_size: int = 64
    lr: float = 0.05
    weight_decay: float = 5e-4
    image_size: int = 64
    weights: str = ""
    seed: int = 0
    workers: int = 2  # DataLoader workers per rank that read, decode and augment faces
    options: dict[str, Any] = field(default_factory=dict)  # per-method options, e.g. {"ldlva": {...}}


def select_device() -> torch.device:
    """CUDA (this rank's GPU under torchrun) when present, else the CPU."""
    if torch.cuda.is_available():
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


def to_input(images: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 N x H x W x 3 -> normalised float N x 3 x H x W on ``device``."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    x = images.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
    return (x - MEAN) / STD


class Objective(torch.nn.Module):
    """Backbone plus method as one module, so DDP synchronises the gradients of both."""

    def __init__(self, model: torch.nn.Module, method: Method):
        super().__init__()
        self.model, self.method = model, method
        self.fetch = None

    def forward(self, index: torch.Tensor, x: torch.Tensor, y: torch.Tensor, x_strong: torch.Tensor | None = None) -> torch.Tensor:
        return self.method.batch_loss(self.model, Batch(index=index, x=x, y=y, fetch=self.fetch, x_strong=x_strong))


@torch.no_grad()
def infer_all(model: torch.nn.Module, method: Method, loader: Iterable[dict[str, torch.Tensor]],
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The method's features and predicted distributions for every face ``loader`` yields, in eval mode."""
    modes = model.training, method.training
    model.eval()
    method.eval()
    feats, probs = [], []
    for batch in loader:
        f, p = method.infer(model, to_input(batch["image"], device))
        feats.append(f)
        probs.append(p)
    model.train(modes[0])
    method.train(modes[1])
    if not feats:
        return torch.zeros(0, model.embed_dim, device=device), torch.zeros(0, model.head.out_features, device=device)
    return torch.cat(feats), torch.cat(probs)


def neighbour_positions(knn: pd.DataFrame, ids: list[str]) -> torch.Tensor:
    """The KNN graph as (N, K) positions in the training table ``ids`` (unlabelled neighbours dropped)."""
    position = {sid: i for i, sid in enumerate(ids)}
    graph = knn.set_index("sample_id")
    missing = [s for s in ids if s not in graph.index]
    if missing:
        raise FerdataError(f"{len(missing)} training faces have no neighbours in knn.parquet, e.g. {missing[0]!r}; re-run `ferdata va`")
    rows = [[position[n] for n in graph.at[sid, "neighbours"] if n in position] for sid in ids]
    width = min(len(r) for r in rows)
    if width == 0:
        raise FerdataError("a training face has no labelled neighbour in knn.parquet; re-run `ferdata va`")
    return torch.tensor([r[:width] for r in rows], dtype=torch.long)


def method_context(data_dir: Path, cfg: TrainConfig, train_rows: pd.DataFrame, classes: list[str], embed_dim: int) -> MethodContext:
    """Labels, VA and neighbours of the training table, as the method needs them."""
    ids = train_rows["sample_id"].tolist()
    labels = torch.from_numpy(class_index(train_rows["label"].to_numpy(), classes))
    knn = va = None
    if cfg.method in NEEDS_KNN:
        graph, _ = read_table(locate(data_dir, "knn.parquet"), "knn", hint="run `ferdata va` first")
        table, _ = read_table(locate(data_dir, "va.parquet"), "va", hint="run `ferdata va` first")
        knn = neighbour_positions(graph, ids)
        va = torch.tensor(table.set_index("sample_id").loc[ids, ["valence", "arousal"]].to_numpy(np.float32))
    options = dict(cfg.options.get(cfg.method) or {})
    return MethodContext(len(classes), embed_dim, labels, knn, va, options, cfg.backbone)


def train(data_dir: str | Path, models_dir: str | Path, cfg: TrainConfig) -> dict[str, Any]:
    """Train ``cfg.method`` on the epoch plan; write the checkpoint, the learned distributions and a log."""
    data_dir, models_dir = Path(data_dir), Path(models_dir)
    labels, meta = read_table(locate(data_dir, "labels.parquet"), "labels", hint="run `ferdata noise` first")
    plan, plan_meta = read_table(locate(data_dir, "plan.parquet"), "plan", hint="run `ferdata sample` first")
    if plan_meta.get("epochs", 0) < cfg.epochs:
        raise FerdataError(f"plan.parquet has {plan_meta.get('epochs')} epochs, train.epochs is {cfg.epochs}; re-run `ferdata sample`")
    classes = meta["classes"]
    torch.manual_seed(cfg.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    device = select_device()
    rank, world = init_distributed(device)
    model = build_backbone(cfg.backbone, len(classes), weights=cfg.weights or None)

    train_rows = labels[labels["split"] == "train"].reset_index(drop=True)
    ids = train_rows["sample_id"].tolist()
    position = {sid: i for i, sid in enumerate(ids)}
    ctx = method_context(data_dir, cfg, train_rows, classes, model.embed_dim)
    method = build_method(cfg.method, ctx)
    objective = Objective(model, method).to(device)
    net = torch.nn.parallel.DistributedDataParallel(objective) if world > 1 else objective
    shards = shard_paths(locate(data_dir, "shards"))
    members = member_table(shards)
    faces = ShardFaces(shards, labels["sample_id"], size=cfg.image_size, members=members)
    train_faces = ShardFaces(shards, ids, size=cfg.image_size, members=members)
    val_pos = np.flatnonzero((labels["split"] == "val").to_numpy())
    val_targets = class_index(labels["label"].to_numpy()[val_pos], classes)
    objective.fetch = lambda pos: to_input(train_faces.images(pos.cpu().numpy()), device)
    targets = ctx.labels

    planned = plan["sample_id"].map(position).to_numpy(np.int64)  # positions in the training table
    epochs = [planned[(plan["epoch"] == e).to_numpy()] for e in range(cfg.epochs)]
    sampler = PlanBatches(epochs, batch_size=cfg.batch_size, augment="two_view" if method.needs_strong_view else "weak",
                          seed=cfg.seed, rank=rank, world=world)
    steps_per_epoch = [sampler.steps(e) for e in range(cfg.epochs)]
    if min(steps_per_epoch) < 1:
        raise FerdataError(f"the epoch plan has fewer samples than one batch of {cfg.batch_size} per rank")
    pin = device.type == "cuda"
    train_loader = batches(train_faces, sampler, workers=cfg.workers, pin_memory=pin)
    val_loader = batches(faces, in_order(val_pos, 256), workers=cfg.workers, pin_memory=pin)
    train_eval = batches(train_faces, in_order(np.arange(len(ids)), 256), workers=cfg.workers, pin_memory=pin) \
        if method.needs_epoch_outputs else None
    opt = torch.optim.SGD(list(model.parameters()) + method.shared_parameters(), lr=cfg.lr, momentum=0.9,
                          weight_decay=cfg.weight_decay, nesterov=True)
    optimizers = [opt, *method.own_optimizers()]
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=sum(steps_per_epoch), pct_start=0.15)
    log = []
    for epoch in range(cfg.epochs):
        method.set_epoch(epoch, cfg.epochs)
        if train_eval is not None:
            method.start_epoch(*infer_all(model, method, train_eval, device))
        net.train()
        sampler.set_epoch(epoch)
        start, total, seen = time.time(), 0.0, 0
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, disable=None if rank == 0 else True)
        for batch in bar:
            index = batch["position"]
            strong = batch.get("strong")
            loss = net(index.to(device), to_input(batch["image"], device), targets[index].to(device),
                       None if strong is None else to_input(strong, device))
            for o in optimizers:
                o.zero_grad(set_to_none=True)
            loss.backward()
            for o in optimizers:
                o.step()
            sched.step()
            total += loss.item() * len(index)
            seen += len(index)
        _, val_probs = infer_all(model, method, val_loader, device)
        val_acc = float((val_probs.argmax(1).cpu().numpy() == val_targets).mean()) if len(val_pos) else float("nan")
        log.append({"epoch": epoch + 1, "loss": total / seen, "val_acc": val_acc})  # no timings: the log is a DVC output
        if rank == 0:
            tqdm.write(f"epoch {epoch + 1}/{cfg.epochs}: loss {total / seen:.4f} val acc {val_acc:.3f} ({time.time() - start:.1f} s)")
    del train_loader, val_loader, train_eval  # persistent workers exit here
    if rank == 0:
        every = batches(faces, in_order(np.arange(len(faces)), 256), workers=cfg.workers, pin_memory=pin)
        learned = learned_distributions(model, method, every, labels, targets, device)
        save_checkpoint(model, method, models_dir / CHECKPOINT, {**asdict(cfg), "classes": classes})
        write_table(learned, models_dir / LEARNED, "learned", {"classes": classes, "method": cfg.method})
        write_json({"config": asdict(cfg), "epochs": log}, models_dir / TRAIN_LOG)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return {"epochs": log}


def learned_distributions(model: torch.nn.Module, method: Method, loader: Iterable[dict[str, torch.Tensor]],
                          labels: pd.DataFrame, targets: torch.Tensor, device: torch.device) -> pd.DataFrame:
    """Every labelled face's distribution and uncertainty (``loader`` yields them in ``labels`` order):
    soft labels for train, predictions otherwise."""
    feats, probs = infer_all(model, method, loader, device)
    uncertainty = normalised_entropy(probs)
    train = torch.tensor((labels["split"] == "train").to_numpy(), device=device)
    soft, soft_unc = method.soft_labels(feats[train], probs[train], targets.to(device))
    probs[train], uncertainty[train] = soft.to(probs.dtype), soft_unc.to(uncertainty.dtype)
    dist_ = probs.double().cpu().numpy()
    return pd.DataFrame({"sample_id": labels["sample_id"].to_numpy(), "split": labels["split"].to_numpy(),
                         "distribution": list(dist_ / dist_.sum(1, keepdims=True)),
                         "uncertainty": uncertainty.double().cpu().numpy()})


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
    path = Path(path)
    if not path.is_file():
        raise FerdataError(f"{path} not found: run `ferdata train` first")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    meta = json.loads(ckpt["meta"])
    model = build_backbone(meta["backbone"], len(meta["classes"]))
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device or select_device()).eval(), meta


@torch.no_grad()
def predict(model: torch.nn.Module, images: np.ndarray, device: torch.device, batch_size: int = 256) -> np.ndarray:
    """The backbone's softmax (float64) for every image, in order."""
    model.eval()
    out = [torch.softmax(model(to_input(images[i:i + batch_size], device)).double(), 1).cpu().numpy()
           for i in range(0, len(images), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, model.head.out_features))
