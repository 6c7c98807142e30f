"""A valence/arousal regressor for pseudo VA: the backbone with a 2-output tanh head, trained on a
VA-annotated dataset (AffectNet, Aff-Wild2, synth) and applied to another, or out of fold to the same
one so that no face predicts its own VA."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from ferdata.errors import FerdataError
from ferdata.io import locate, read_table
from ferdata.loader import load_images
from ferdata.train.backbones import build_backbone
from ferdata.train.loop import select_device, to_input


@dataclass(frozen=True)
class RegressConfig:
    backbone: str = "small_cnn"
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.02
    image_size: int = 64
    folds: int = 4
    seed: int = 0


def fit(images: np.ndarray, targets: np.ndarray, cfg: RegressConfig, device: torch.device) -> torch.nn.Module:
    """Train the regressor (MSE on tanh outputs) with horizontal flips; flipping keeps VA unchanged."""
    torch.manual_seed(cfg.seed)
    model = build_backbone(cfg.backbone, 2).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    steps = max(1, len(images) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps)
    rng = np.random.default_rng(cfg.seed)
    y_all = torch.as_tensor(targets, dtype=torch.float32)
    model.train()
    for _ in tqdm(range(cfg.epochs), desc="va regressor", leave=False, disable=None):
        order = rng.permutation(len(images))
        for s in range(steps):
            pos = order[s * cfg.batch_size:(s + 1) * cfg.batch_size]
            batch = images[pos]
            flip = rng.random(len(pos)) < 0.5
            batch = np.where(flip[:, None, None, None], batch[:, :, ::-1], batch)
            loss = torch.nn.functional.mse_loss(torch.tanh(model(to_input(batch, device))), y_all[pos].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


@torch.no_grad()
def predict(model: torch.nn.Module, images: np.ndarray, device: torch.device, batch: int = 256) -> np.ndarray:
    out = [torch.tanh(model(to_input(images[i:i + batch], device))).cpu().numpy() for i in range(0, len(images), batch)]
    return np.concatenate(out) if out else np.zeros((0, 2), np.float32)


def annotated(data_dir: Path) -> pd.DataFrame:
    """Training faces of ``data_dir`` with valid provided VA."""
    manifest, _ = read_table(locate(data_dir, "manifest.parquet"), "manifest", hint="run `ferdata download` first")
    index, _ = read_table(locate(data_dir, "shard_index.parquet"), "shard_index", hint="run `ferdata shard` first")
    rows = manifest[manifest["sample_id"].isin(index["sample_id"]) & (manifest["split"] == "train")]
    ok = rows["valence"].between(-1, 1) & rows["arousal"].between(-1, 1)
    rows = rows[ok].sort_values("sample_id", kind="stable")
    if len(rows) < 2:
        raise FerdataError(f"{data_dir} has no training faces with annotated VA to fit a regressor on")
    return rows


def regressor_va(data_dir: str | Path, ids: pd.Series, *, source: str | Path | None = None,
                 cfg: RegressConfig = RegressConfig()) -> pd.DataFrame:
    """Pseudo VA for ``ids`` of ``data_dir`` from a regressor fitted on ``source`` (default: the same
    dataset, then out of fold: each training face is predicted by a model that never saw its subject)."""
    data_dir = Path(data_dir)
    src = Path(source) if source else data_dir
    device = select_device()
    fit_rows = annotated(src)
    fit_images = load_images(locate(src, "shards"), fit_rows["sample_id"].tolist(), size=cfg.image_size)
    fit_va = fit_rows[["valence", "arousal"]].to_numpy(np.float32)
    images = load_images(locate(data_dir, "shards"), ids.tolist(), size=cfg.image_size)
    same = src.resolve() == data_dir.resolve() or locate(src, "manifest.parquet").resolve() == locate(data_dir, "manifest.parquet").resolve()
    out = np.zeros((len(ids), 2), np.float32)
    if not same:
        out = predict(fit(fit_images, fit_va, cfg, device), images, device)
    else:
        groups = fit_rows["subject_id"].fillna(fit_rows["video_id"]).fillna(fit_rows["sample_id"]).astype(str).to_numpy()
        names = np.unique(groups)
        fold_of = dict(zip(names[np.random.default_rng(cfg.seed).permutation(len(names))], np.arange(len(names)) % cfg.folds))
        fold = np.array([fold_of[g] for g in groups])
        where = {sid: i for i, sid in enumerate(ids)}
        fit_pos = np.array([where.get(sid, -1) for sid in fit_rows["sample_id"]])
        others = np.ones(len(ids), bool)
        others[fit_pos[fit_pos >= 0]] = False
        for f in range(cfg.folds):
            model = fit(fit_images[fold != f], fit_va[fold != f], cfg, device)
            held = fit_pos[(fold == f) & (fit_pos >= 0)]
            out[held] = predict(model, images[held], device)
            out[others] += predict(model, images[others], device) / cfg.folds
    return pd.DataFrame({"sample_id": ids.to_numpy(), "valence": out[:, 0], "arousal": out[:, 1], "source": "regressor"})
