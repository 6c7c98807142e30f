"""The noise stage: inject synthetic label noise into the training split, keeping the truth.

Exactly ``round(ratio * n_train)`` training labels are flipped, each to a different class:
``symmetric`` picks uniformly among the other classes; ``pairs`` sends each class to its most
confusable neighbour (fear<->surprise, anger<->disgust, sad<->neutral, ...), the usual asymmetric
noise. Val and test labels are never touched.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ferdata.classes import CANONICAL
from ferdata.errors import FerdataError, UsageError
from ferdata.io import locate, read_table, write_table

LABELS = "labels.parquet"
MODES = ("symmetric", "pairs")
# Asymmetric noise: where each class's labels go; the first entry present in the dataset is used.
PAIRS: dict[str, tuple[str, ...]] = {
    "neutral": ("sad", "contempt"),
    "happy": ("surprise", "neutral"),
    "sad": ("neutral", "fear"),
    "surprise": ("fear", "happy"),
    "fear": ("surprise", "sad"),
    "disgust": ("anger", "sad"),
    "anger": ("disgust", "fear"),
    "contempt": ("disgust", "neutral"),
}


def check_options(ratio: float, mode: str) -> None:
    """Reject a ratio outside [0, 1) or an unknown mode (a usage error, exit code 2)."""
    if not 0.0 <= ratio < 1.0:
        raise UsageError(f"noise ratio must be in [0, 1), got {ratio}")
    if mode not in MODES:
        raise UsageError(f"unknown noise mode {mode!r}: use one of {', '.join(MODES)}")


def flip_labels(labels: np.ndarray, classes: list[str], *, ratio: float, mode: str = "symmetric",
                seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Return (noisy labels, flipped mask): exactly round(ratio * n) labels moved to another class."""
    check_options(ratio, mode)
    ids = [CANONICAL.index(c) for c in classes]
    if len(ids) < 2:
        raise FerdataError("label noise needs at least two classes")
    rng = np.random.default_rng([seed, 1])
    n = len(labels)
    n_flip = round(ratio * n)
    chosen = np.sort(rng.choice(n, size=n_flip, replace=False)) if n_flip else np.zeros(0, np.int64)
    noisy = np.asarray(labels, np.int64).copy()
    for i in chosen:
        if mode == "symmetric":
            others = [c for c in ids if c != noisy[i]]
            noisy[i] = others[int(rng.integers(len(others)))]
        else:
            targets = [CANONICAL.index(t) for t in PAIRS[CANONICAL[noisy[i]]] if t in classes]
            noisy[i] = targets[0] if targets else [c for c in ids if c != noisy[i]][0]
    flipped = np.zeros(n, bool)
    flipped[chosen] = True
    return noisy, flipped


def noise(data_dir: str | Path, *, ratio: float, mode: str = "symmetric", seed: int = 0) -> pd.DataFrame:
    """Write ``data_dir/labels.parquet``: given (possibly noisy) label, clean label, flipped flag."""
    check_options(ratio, mode)
    data_dir = Path(data_dir)
    manifest, meta = read_table(locate(data_dir, "manifest.parquet"), "manifest", hint="run `ferdata download` first")
    index, _ = read_table(locate(data_dir, "shard_index.parquet"), "shard_index", hint="run `ferdata shard` first")
    df = manifest[manifest["sample_id"].isin(index["sample_id"]) & manifest["label"].notna()]
    df = df[["sample_id", "split", "label"]].sort_values("sample_id", kind="stable").reset_index(drop=True)
    df["label"] = df["label"].astype(np.int64)
    df["clean_label"] = df["label"]
    df["flipped"] = False
    train = (df["split"] == "train").to_numpy()
    noisy, flipped = flip_labels(df.loc[train, "clean_label"].to_numpy(), meta["classes"], ratio=ratio, mode=mode, seed=seed)
    df.loc[train, "label"] = noisy
    df.loc[train, "flipped"] = flipped
    df["noise_mode"], df["noise_ratio"], df["noise_seed"] = mode, ratio, seed
    write_table(df, data_dir / LABELS, "labels", {"classes": meta["classes"], "ratio": ratio, "mode": mode, "seed": seed})
    return df


def summarize(df: pd.DataFrame) -> str:
    """One line: how many training labels were flipped."""
    train = df[df["split"] == "train"]
    return f"flipped {int(train['flipped'].sum())}/{len(train)} training labels ({df['noise_mode'].iloc[0]}, ratio {df['noise_ratio'].iloc[0]:g})"
