"""The noise stage: inject synthetic label noise into the training split, keeping the truth.

Exactly ``round(ratio * n_train)`` training labels are flipped, each to a different class:
``symmetric`` picks uniformly among the other classes; ``pairs`` sends each class to its most
confusable neighbour (``CONFUSABLE``: fear<->surprise, anger<->disgust, sad<->neutral, ...), the usual
asymmetric noise. Val and test labels are never touched.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ferdata.core.classes import CANONICAL, CONFUSABLE
from ferdata.core.errors import FerdataError
from ferdata.core.settings import Settings, configure, option
from ferdata.core.stage import Stage

MODES = ("symmetric", "pairs")


@dataclass(frozen=True)
class NoiseSettings(Settings):
    """The ``noise`` section of params.yaml."""

    section = "noise"
    ratio: float = option(0.0, "share of training labels to flip, in [0, 1)", min=0.0, below=1.0)
    mode: str = option("symmetric", "symmetric (any other class) or pairs (the most confusable class)", choices=MODES)
    seed: int = option(0, "seed of the flips", min=0)


STAGE = Stage(
    "noise",
    "Inject synthetic label noise into the training split.",
    __name__,
    NoiseSettings,
    reads=("manifest", "shard_index"),
    writes=("labels",),
)


def flip_labels(
    labels: np.ndarray, classes: list[str], settings: NoiseSettings | None = None, **options: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Return (noisy labels, flipped mask): exactly round(ratio * n) labels moved to another class."""
    settings = configure(NoiseSettings, settings, options)
    ids = [CANONICAL.index(c) for c in classes]
    if len(ids) < 2:
        raise FerdataError("label noise needs at least two classes")
    rng = np.random.default_rng([settings.seed, 1])
    n = len(labels)
    n_flip = round(settings.ratio * n)
    chosen = np.sort(rng.choice(n, size=n_flip, replace=False)) if n_flip else np.zeros(0, np.int64)
    noisy = np.asarray(labels, np.int64).copy()
    for i in chosen:
        if settings.mode == "symmetric":
            others = [c for c in ids if c != noisy[i]]
            noisy[i] = others[int(rng.integers(len(others)))]
        else:
            targets = [CANONICAL.index(t) for t in CONFUSABLE[CANONICAL[noisy[i]]] if t in classes]
            noisy[i] = targets[0] if targets else next(c for c in ids if c != noisy[i])
    flipped = np.zeros(n, bool)
    flipped[chosen] = True
    return noisy, flipped


def noise(data_dir: str | Path, settings: NoiseSettings | None = None, **options: Any) -> pd.DataFrame:
    """Write the labels table of ``data_dir``: given (possibly noisy) label, clean label, flipped flag."""
    with STAGE.start(settings, options, data=data_dir) as run:
        s: NoiseSettings = run.settings
        manifest, meta = run.read("manifest")
        index, _ = run.read("shard_index")
        df = manifest[manifest["sample_id"].isin(index["sample_id"]) & manifest["label"].notna()]
        df = df[["sample_id", "split", "label"]].sort_values("sample_id", kind="stable").reset_index(drop=True)
        df["label"] = df["label"].astype(np.int64)
        df["clean_label"] = df["label"]
        df["flipped"] = False
        train = (df["split"] == "train").to_numpy()
        noisy, flipped = flip_labels(df.loc[train, "clean_label"].to_numpy(), meta["classes"], s)
        df.loc[train, "label"] = noisy
        df.loc[train, "flipped"] = flipped
        df["noise_mode"], df["noise_ratio"], df["noise_seed"] = s.mode, s.ratio, s.seed
        run.write(df, "labels", {"classes": meta["classes"], "ratio": s.ratio, "mode": s.mode, "seed": s.seed})
        return df


def summarize(df: pd.DataFrame) -> str:
    """One line: how many training labels were flipped."""
    train = df[df["split"] == "train"]
    return (
        f"flipped {int(train['flipped'].sum())}/{len(train)} training labels ({df['noise_mode'].iloc[0]}, "
        f"ratio {df['noise_ratio'].iloc[0]:g})"
    )
