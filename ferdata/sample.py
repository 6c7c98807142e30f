"""The sample stage: the epoch plan, per-video cap then per-class balance (ARBEx data refinement).

Each epoch keeps at most ``per_video`` frames of every video (drawn afresh each epoch), then draws
``per_class`` samples of every class by its given label: without replacement where the class has
enough, all of it plus a draw with replacement where it is smaller. ``per_class: 0`` means the size
of the largest class after the cap. The same seed gives the same plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ferdata.core.classes import class_index
from ferdata.core.errors import FerdataError, UsageError
from ferdata.core.settings import Settings, option
from ferdata.core.stage import Stage


@dataclass(frozen=True)
class SampleSettings(Settings):
    """The ``sample`` section of params.yaml, and the number of epochs the trainer will run."""

    section = "sample"
    epochs: int = option(20, "epochs to plan (read from train.epochs)", min=1, param="train.epochs")
    per_video: int = option(6, "frames per video per epoch", min=1)
    per_class: int = option(0, "samples per class per epoch; 0 = the largest class after the per-video cap", min=0)
    seed: int = option(0, "seed of the plan", min=0)


STAGE = Stage(
    "sample", "Write the balanced epoch plan.", __name__, SampleSettings, reads=("labels", "manifest"), writes=("plan",)
)


def cap_per_video(videos: np.ndarray, per_video: int, rng: np.random.Generator) -> np.ndarray:
    """Indices kept after keeping at most ``per_video`` random frames of each video.

    Videos are grouped with one stable sort (not a scan per video), so a dataset of single-frame
    "videos" (AffectNet) costs O(n log n); the random draws are made video by video in sorted order."""
    if not len(videos):
        return np.zeros(0, np.int64)
    order = np.argsort(videos, kind="stable")
    sorted_videos = videos[order]
    bounds = np.flatnonzero(sorted_videos[1:] != sorted_videos[:-1]) + 1
    keep = []
    for members in np.split(order, bounds):
        if len(members) > per_video:
            members = np.sort(rng.choice(members, size=per_video, replace=False))
        keep.append(members)
    return np.sort(np.concatenate(keep))


def balance_classes(labels: np.ndarray, candidates: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """``per_class`` indices of each class among ``candidates`` (replacement only for small classes)."""
    picked = []
    for cls in np.unique(labels[candidates]):
        members = candidates[labels[candidates] == cls]
        if len(members) >= per_class:
            picked.append(rng.choice(members, size=per_class, replace=False))
        else:
            picked.append(np.concatenate([members, rng.choice(members, size=per_class - len(members), replace=True)]))
    return np.concatenate(picked)


def epoch_plan(
    videos: np.ndarray, labels: np.ndarray, *, epoch: int, seed: int, per_video: int, per_class: int
) -> np.ndarray:
    """Shuffled sample indices for one epoch."""
    rng = np.random.default_rng([seed, 2, epoch])
    kept = cap_per_video(videos, per_video, rng)
    if per_class == 0:
        per_class = int(np.bincount(labels[kept]).max())
    order = balance_classes(labels, kept, per_class, rng)
    return rng.permutation(order)


MAX_ROWS = 50_000_000  # about 1.2 GB in memory: far more than any real dataset's 20 epochs need


def check_size(settings: SampleSettings, labels: np.ndarray) -> None:
    """Refuse a plan too large to hold (``per_class`` or ``epochs`` set far beyond the data) before
    drawing it."""
    classes = len(np.unique(labels))
    per_class = settings.per_class or int(np.bincount(labels).max())
    rows = settings.epochs * per_class * classes
    if rows > MAX_ROWS:
        raise UsageError(
            f"the plan would hold {rows:,} rows ({settings.epochs} epochs x {per_class} per class x "
            f"{classes} classes), more than {MAX_ROWS:,}; lower sample.per_class or train.epochs"
        )


def sample(data_dir: str | Path, settings: SampleSettings | None = None, **options: Any) -> pd.DataFrame:
    """Write the plan table of ``data_dir``: (epoch, position, sample_id) for every training epoch."""
    with STAGE.start(settings, options, data=data_dir) as run:
        s: SampleSettings = run.settings
        labels, meta = run.read("labels")
        manifest, _ = run.read("manifest")
        train = labels[labels["split"] == "train"].reset_index(drop=True)
        if train.empty:
            raise FerdataError(f"{run.input('labels')} has no training sample to plan")
        video = manifest.set_index("sample_id").loc[train["sample_id"], "video_id"]
        videos = video.fillna(
            pd.Series(train["sample_id"].to_numpy(), index=video.index)
        ).to_numpy()  # no video: its own
        ids = train["sample_id"].to_numpy()
        class_index(train["label"].to_numpy(), meta["classes"])  # a label outside the classes is an error here
        check_size(s, train["label"].to_numpy())
        frames = []
        for e in range(s.epochs):
            order = epoch_plan(
                videos, train["label"].to_numpy(), epoch=e, seed=s.seed, per_video=s.per_video, per_class=s.per_class
            )
            frames.append(pd.DataFrame({"epoch": e, "position": np.arange(len(order)), "sample_id": ids[order]}))
        plan = pd.concat(frames, ignore_index=True)
        run.write(
            plan,
            "plan",
            {
                "classes": meta["classes"],
                "epochs": s.epochs,
                "per_video": s.per_video,
                "per_class": s.per_class,
                "seed": s.seed,
            },
        )
        return plan


def summarize(plan: pd.DataFrame) -> str:
    """One line: epochs and samples per epoch."""
    epochs = plan["epoch"].nunique()
    return f"planned {epochs} epochs of {len(plan) // epochs} samples"
