"""The training loop: follows the epoch plan, on CUDA when present, under torchrun (DDP) when launched so."""

from __future__ import annotations

import io
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from tqdm import tqdm

from ferdata.classes import class_index
from ferdata.errors import FerdataError
from ferdata.io import atomic_file, read_table, write_json, write_table
from ferdata.loader import load_images
from ferdata.train.backbones import build_backbone
from ferdata.train.methods import NEEDS_KNN, Batch, Method, MethodContext, build_method

CHECKPOINT = "model.pt"
TRAIN_LOG = "train_log.json"
TRAIN_SOFT = "train_soft.parquet"
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
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            torch.cuda.set_device(device)
    return dist.get_rank(), dist.get_world_size()


def to_input(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 N x H x W x 3 -> normalised float N x 3 x H x W on ``device``."""
    x = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float().div_(255.0)
    return (x - MEAN) / STD


def augment(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Weak augmentation on a batch: random horizontal flip and a random shift of up to ``pad`` pixels."""
    n, _, h, w = x.shape
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip.to(x.device)[:, None, None, None], x.flip(3), x)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="replicate")
    dy, dx = torch.randint(0, 2 * pad + 1, (2,), generator=gen).tolist()
    return padded[:, :, dy:dy + h, dx:dx + w]


@torch.no_grad()
def predict(model: torch.nn.Module, images: np.ndarray, device: torch.device, batch_size: int = 256) -> np.ndarray:
    """Softmax probabilities (float64) for every image, in order."""
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        logits = model(to_input(images[i:i + batch_size], device))
        out.append(torch.softmax(logits.double(), dim=1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0))


def load_checkpoint(path: str | Path, device: torch.device | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the model saved at ``path`` (loaded with weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise FerdataError(f"{path} not found: run `ferdata train` first")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    meta = json.loads(ckpt["meta"])
    model = build_backbone(meta["backbone"], len(meta["classes"]))
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device or select_device()).eval(), meta


class Objective(torch.nn.Module):
    """Backbone plus method as one module, so DDP synchronises the gradients of both."""

    def __init__(self, model: torch.nn.Module, method: Method):
        super().__init__()
        self.model, self.method = model, method
        self.fetch = None

    def forward(self, index: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.method.batch_loss(self.model, Batch(index=index, x=x, y=y, fetch=self.fetch))


@torch.no_grad()
def embed(model: torch.nn.Module, images: np.ndarray, device: torch.device, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and softmax of every image (eval mode), on ``device``."""
    was_training = model.training
    model.eval()
    feats, probs = [], []
    for i in range(0, len(images), batch_size):
        f = model.forward_features(to_input(images[i:i + batch_size], device))
        feats.append(f)
        probs.append(torch.softmax(model.head(f), dim=1))
    model.train(was_training)
    return torch.cat(feats), torch.cat(probs)


def neighbour_positions(knn: pd.DataFrame, ids: list[str], k: int | None = None) -> torch.Tensor:
    """The KNN graph as (N, K) positions in the training table ``ids``."""
    position = {sid: i for i, sid in enumerate(ids)}
    graph = knn.set_index("sample_id")
    missing = [s for s in ids if s not in graph.index]
    if missing:
        raise FerdataError(f"{len(missing)} training faces have no neighbours in knn.parquet, e.g. {missing[0]!r}; re-run `ferdata va`")
    rows = []
    for sid in ids:
        nbrs = [position[n] for n in graph.at[sid, "neighbours"] if n in position]
        if not nbrs:
            raise FerdataError(f"training face {sid!r} has no labelled neighbour in knn.parquet")
        rows.append((nbrs * k)[:k] if k else nbrs)
    width = min(len(r) for r in rows)
    return torch.tensor([r[:width] for r in rows], dtype=torch.long)


def method_context(data_dir: Path, cfg: TrainConfig, train_rows: pd.DataFrame, classes: list[str], embed_dim: int) -> MethodContext:
    """Labels, VA and neighbours of the training table, as the method needs them."""
    ids = train_rows["sample_id"].tolist()
    labels = torch.from_numpy(class_index(train_rows["label"].to_numpy(), classes))
    knn = va = None
    if cfg.method in NEEDS_KNN:
        graph, _ = read_table(data_dir / "knn.parquet", "knn", hint="run `ferdata va` first")
        table, _ = read_table(data_dir / "va.parquet", "va", hint="run `ferdata va` first")
        knn = neighbour_positions(graph, ids)
        va = torch.tensor(table.set_index("sample_id").loc[ids, ["valence", "arousal"]].to_numpy(np.float32))
    options = dict(cfg.options.get(cfg.method) or {})
    return MethodContext(len(classes), embed_dim, labels, knn, va, options)


def train(data_dir: str | Path, models_dir: str | Path, cfg: TrainConfig) -> dict[str, Any]:
    """Train ``cfg.method`` on the epoch plan; write the checkpoint, training soft labels and a log."""
    data_dir, models_dir = Path(data_dir), Path(models_dir)
    labels, meta = read_table(data_dir / "labels.parquet", "labels", hint="run `ferdata noise` first")
    plan, plan_meta = read_table(data_dir / "plan.parquet", "plan", hint="run `ferdata sample` first")
    if plan_meta.get("epochs", 0) < cfg.epochs:
        raise FerdataError(f"plan.parquet has {plan_meta.get('epochs')} epochs, train.epochs is {cfg.epochs}; re-run `ferdata sample`")
    classes = meta["classes"]
    torch.manual_seed(cfg.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    device = select_device()
    rank, world = init_distributed(device)
    model = build_backbone(cfg.backbone, len(classes), weights=cfg.weights or None)

    train_rows = labels[labels["split"] == "train"].reset_index(drop=True)
    val_rows = labels[labels["split"] == "val"].reset_index(drop=True)
    ids = train_rows["sample_id"].tolist()
    position = {sid: i for i, sid in enumerate(ids)}
    ctx = method_context(data_dir, cfg, train_rows, classes, model.embed_dim)
    method = build_method(cfg.method, ctx)
    objective = Objective(model, method).to(device)
    net = torch.nn.parallel.DistributedDataParallel(objective, broadcast_buffers=True) if world > 1 else objective
    shard_dir = data_dir / "shards"
    images = load_images(shard_dir, ids, size=cfg.image_size)
    val_images = load_images(shard_dir, val_rows["sample_id"].tolist(), size=cfg.image_size)
    objective.fetch = lambda pos: to_input(images[pos.cpu().numpy()], device)
    targets = ctx.labels
    val_targets = class_index(val_rows["label"].to_numpy(), classes)

    steps_per_epoch = [len(plan[plan["epoch"] == e]) // (cfg.batch_size * world) for e in range(cfg.epochs)]
    if min(steps_per_epoch) < 1:
        raise FerdataError(f"the epoch plan has fewer samples than one batch of {cfg.batch_size} per rank")
    params = list(model.parameters()) + method.shared_parameters()
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay, nesterov=True)
    optimizers = [opt, *method.own_optimizers()]
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=sum(steps_per_epoch), pct_start=0.15)
    gen = torch.Generator().manual_seed(cfg.seed + 1000 * rank)
    log = []
    for epoch in range(cfg.epochs):
        if method.needs_epoch_outputs:
            method.start_epoch(*embed(model, images, device))
        net.train()
        order = np.array([position[s] for s in plan.loc[plan["epoch"] == epoch, "sample_id"]])
        order = order[rank::world]  # this rank's share of the plan
        start, total, seen = time.time(), 0.0, 0
        bar = tqdm(range(steps_per_epoch[epoch]), desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, disable=None if rank == 0 else True)
        for step in bar:
            batch = torch.from_numpy(order[step * cfg.batch_size:(step + 1) * cfg.batch_size])
            x = augment(to_input(images[batch.numpy()], device), gen)
            loss = net(batch.to(device), x, targets[batch].to(device))
            for o in optimizers:
                o.zero_grad(set_to_none=True)
            loss.backward()
            for o in optimizers:
                o.step()
            sched.step()
            total += loss.item() * len(batch)
            seen += len(batch)
        val_acc = float((predict(model, val_images, device).argmax(1) == val_targets).mean()) if len(val_rows) else float("nan")
        log.append({"epoch": epoch + 1, "loss": total / seen, "val_acc": val_acc, "seconds": round(time.time() - start, 2)})
        if rank == 0:
            tqdm.write(f"epoch {epoch + 1}/{cfg.epochs}: loss {total / seen:.4f} val acc {val_acc:.3f}")
    if rank == 0:
        feats, probs = embed(model, images, device)
        dist_, uncertainty = method.soft_labels(feats, probs, targets.to(device))
        soft = pd.DataFrame({"sample_id": ids, "distribution": list(dist_.double().cpu().numpy()),
                             "uncertainty": uncertainty.double().cpu().numpy()})
        save_checkpoint(model, models_dir / CHECKPOINT, {**asdict(cfg), "classes": classes})
        write_table(soft, models_dir / TRAIN_SOFT, "train_soft", {"classes": classes, "method": cfg.method})
        write_json({"config": asdict(cfg), "epochs": log}, models_dir / TRAIN_LOG)
    if world > 1:
        dist.barrier()
    return {"epochs": log}


def save_checkpoint(model: torch.nn.Module, path: Path, meta: dict[str, Any]) -> None:
    """Save weights plus JSON metadata, atomically, loadable with ``weights_only=True``."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    buf = io.BytesIO()  # saved via a buffer: torch names the archive after the (temporary) file otherwise
    torch.save({"state_dict": state, "meta": json.dumps(meta, sort_keys=True)}, buf)
    with atomic_file(path) as tmp:
        tmp.write_bytes(buf.getvalue())
