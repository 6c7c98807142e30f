"""The regress stage: pseudo valence/arousal from a VA regressor, for datasets without VA annotations.

The regressor is the backbone with a 2-output tanh head, trained (MSE, weak augmentation, which keeps
VA) through the trainer's own loop on a VA-annotated dataset (AffectNet, Aff-Wild2, synth) and
applied to another one; or out of fold on the same one, so that no face predicts its own VA. Its
table feeds the ``va`` stage's ``regressor`` source.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ferdata.core.errors import FerdataError
from ferdata.core.groups import fold_groups, group_of
from ferdata.core.shards import member_table, shard_paths
from ferdata.core.stage import Run
from ferdata.loader import PlanBatches, ShardFaces, batches, in_order
from ferdata.train.backbones import build_backbone
from ferdata.train.engine import Engine
from ferdata.train.loop import predict, run_epoch, select_device, sgd, to_input
from ferdata.train.settings import REGRESS as STAGE
from ferdata.train.settings import RegressSettings


@dataclass
class Faces:
    """Faces of one dataset's shards: a reader by position and the member index it was built from."""

    shards: list[Path]
    members: pd.DataFrame

    def of(self, ids: list[str], size: int) -> ShardFaces:
        return ShardFaces(self.shards, ids, size=size, members=self.members)


def fit_regressor(faces: ShardFaces, targets: np.ndarray, cfg: RegressSettings, engine: Engine) -> torch.nn.Module:
    """Train a regressor on ``faces`` (MSE on tanh outputs) through the training loop."""
    torch.manual_seed(cfg.seed)
    device = engine.device
    model = engine.prepare(build_backbone(cfg.backbone, 2))
    epochs = [np.random.default_rng([cfg.seed, e]).permutation(len(faces)) for e in range(cfg.epochs)]
    sampler = PlanBatches(epochs, batch_size=cfg.batch_size, augment="weak", seed=cfg.seed)
    if sampler.steps(0) < 1:
        raise FerdataError(
            f"the VA regressor has {len(faces)} faces to fit on, fewer than one batch of {cfg.batch_size}"
        )
    opt, sched = sgd(
        model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, total_steps=cfg.epochs * sampler.steps(0)
    )
    y = torch.tensor(targets, dtype=torch.float32, device=device)
    loader = batches(faces, sampler, workers=cfg.workers, pin_memory=device.type == "cuda")

    def step_loss(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = torch.tanh(model(to_input(batch["image"], device)))
        return torch.nn.functional.mse_loss(out, y[batch["position"].to(device, non_blocking=True)])

    model.train()
    scaler = engine.scaler()
    for epoch in range(cfg.epochs):
        sampler.set_epoch(epoch)
        run_epoch(loader, step_loss, [opt], sched, desc=f"va regressor {epoch + 1}/{cfg.epochs}", scaler=scaler)
    return model.eval()


def apply_regressor(
    model: torch.nn.Module, faces: ShardFaces, positions: np.ndarray, cfg: RegressSettings, device: torch.device
) -> np.ndarray:
    """The regressor's (valence, arousal) for the faces at ``positions``."""
    loader = batches(faces, in_order(positions, 256), workers=cfg.workers)
    out = predict(loader, lambda x: torch.tanh(model(x)), device)
    return np.zeros((0, 2), np.float32) if out is None else out[0].cpu().numpy()


def annotated(run: Run, folder: Path) -> pd.DataFrame:
    """Training faces of ``folder`` with valid provided VA."""
    manifest, _ = run.read("manifest", folder=folder)
    index, _ = run.read("shard_index", folder=folder)
    rows = manifest[manifest["sample_id"].isin(index["sample_id"]) & (manifest["split"] == "train")]
    ok = rows["valence"].between(-1, 1) & rows["arousal"].between(-1, 1)
    rows = rows[ok].sort_values("sample_id", kind="stable").reset_index(drop=True)
    if len(rows) < 2:
        raise FerdataError(f"{folder} has no training faces with annotated VA to fit a regressor on")
    return rows


def regressed_va(run: Run, ids: list[str]) -> np.ndarray:
    """Pseudo VA for ``ids``: from a regressor fitted on ``source``, or out of fold when that is this
    dataset (each training face predicted by a model that never saw its subject)."""
    cfg: RegressSettings = run.settings
    engine = Engine.create(select_device(), precision=cfg.precision)
    device = engine.device
    here = run.folders["data"]
    src = Path(cfg.source) if cfg.source else here
    fit_rows = annotated(run, src)
    src_shards = shard_paths(run.input("shards", folder=src))
    fit_faces = Faces(src_shards, member_table(src_shards))
    targets = fit_rows[["valence", "arousal"]].to_numpy(np.float32)
    shards = shard_paths(run.input("shards"))
    faces = Faces(shards, member_table(shards)).of(ids, cfg.image_size)
    everything = np.arange(len(ids))
    if run.input("manifest", folder=src).resolve() != run.input("manifest").resolve():
        model = fit_regressor(fit_faces.of(fit_rows["sample_id"].tolist(), cfg.image_size), targets, cfg, engine)
        return apply_regressor(model, faces, everything, cfg, device)
    fold = fold_groups(group_of(fit_rows), folds=cfg.folds, seed=cfg.seed)
    where = {sid: i for i, sid in enumerate(ids)}
    fit_pos = np.array([where.get(sid, -1) for sid in fit_rows["sample_id"]])
    others = np.setdiff1d(everything, fit_pos[fit_pos >= 0])
    out = np.zeros((len(ids), 2), np.float32)
    for f in range(cfg.folds):
        train_ids = fit_rows["sample_id"][fold != f].tolist()
        model = fit_regressor(fit_faces.of(train_ids, cfg.image_size), targets[fold != f], cfg, engine)
        held = fit_pos[(fold == f) & (fit_pos >= 0)]
        out[held] = apply_regressor(model, faces, held, cfg, device)
        out[others] += apply_regressor(model, faces, others, cfg, device) / cfg.folds
    return out


def regress(data_dir: str | Path, settings: RegressSettings | None = None, **options: Any) -> pd.DataFrame:
    """Write the regressed VA table of ``data_dir``: pseudo valence/arousal for every sharded face."""
    with STAGE.start(settings, options, data=data_dir) as run:
        index, meta = run.read("shard_index")
        ids = index["sample_id"].sort_values(kind="stable").tolist()
        va = regressed_va(run, ids)
        table = pd.DataFrame({"sample_id": ids, "valence": va[:, 0], "arousal": va[:, 1]})
        run.write(table, "regressed_va", {"classes": meta["classes"], "source": run.settings.source or "out_of_fold"})
        return table


def summarize(table: pd.DataFrame) -> str:
    return (
        f"regressed VA for {len(table)} faces (valence {table['valence'].mean():+.2f} +- {table['valence'].std():.2f}, "
        f"arousal {table['arousal'].mean():+.2f} +- {table['arousal'].std():.2f})"
    )
