"""Out-of-fold posteriors: every training face is predicted by a model that never trained on it.

Training faces are split into folds by whole groups (subject, else video, else face), one model is
trained per fold on the rest, and it predicts its held-out faces; val/test faces get the mean of the
fold models. These posteriors feed the ``circumplex`` pseudo-VA source and cleanlab-style baselines.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from ferdata.errors import FerdataError
from ferdata.io import fork, locate, read_table, write_table
from ferdata.sample import sample
from ferdata.train.loop import LEARNED, TrainConfig, train

PRIOR = "prior.parquet"


def fold_groups(labels: pd.DataFrame, manifest: pd.DataFrame, *, folds: int, seed: int) -> np.ndarray:
    """The fold of every training face, by whole subject (else video, else face), seeded."""
    info = manifest.set_index("sample_id").loc[labels["sample_id"]]
    group = info["subject_id"].fillna(info["video_id"]).fillna(pd.Series(info.index, index=info.index))
    names = np.unique(group.astype(str).to_numpy())
    order = np.random.default_rng(seed).permutation(len(names))
    fold_of = {names[j]: i % folds for i, j in enumerate(order)}
    return np.array([fold_of[g] for g in group.astype(str)])


def out_of_fold(data_dir: str | Path, cfg: TrainConfig, *, folds: int = 4, per_video: int = 6, per_class: int = 0,
                seed: int = 0) -> pd.DataFrame:
    """A learned-style table (sample_id, split, distribution, uncertainty) of out-of-fold posteriors."""
    if folds < 2:
        raise FerdataError(f"out-of-fold posteriors need at least 2 folds, got {folds}")
    data_dir = Path(data_dir)
    labels, meta = read_table(locate(data_dir, "labels.parquet"), "labels", hint="run `ferdata noise` first")
    manifest, _ = read_table(locate(data_dir, "manifest.parquet"), "manifest", hint="run `ferdata download` first")
    is_train = (labels["split"] == "train").to_numpy()
    fold = np.full(len(labels), -1)
    fold[is_train] = fold_groups(labels[is_train], manifest, folds=folds, seed=seed)
    if len(np.unique(fold[is_train])) < folds:
        raise FerdataError(f"{folds} folds need at least {folds} subject/video groups in the training split")
    probs = np.zeros((len(labels), len(meta["classes"])))
    uncertainty = np.zeros(len(labels))
    others = ~is_train
    with tempfile.TemporaryDirectory(prefix="ferdata-oof-") as tmp:
        for f in range(folds):
            work = Path(tmp) / f"fold{f}"
            fork(data_dir, work)
            fold_labels = labels.copy()
            held = fold == f
            fold_labels.loc[held, "split"] = "holdout"
            write_table(fold_labels, work / "labels.parquet", "labels", meta)
            sample(work, epochs=cfg.epochs, per_video=per_video, per_class=per_class, seed=seed)
            train(work, work / "models", cfg)
            learned, _ = read_table(work / "models" / LEARNED, "learned")
            dist = np.stack(learned.set_index("sample_id").loc[labels["sample_id"], "distribution"].to_numpy())
            unc = learned.set_index("sample_id").loc[labels["sample_id"], "uncertainty"].to_numpy()
            probs[held], uncertainty[held] = dist[held], unc[held]
            probs[others] += dist[others] / folds
            uncertainty[others] += unc[others] / folds
    return pd.DataFrame({"sample_id": labels["sample_id"], "split": labels["split"],
                         "distribution": list(probs.astype(np.float32)), "uncertainty": uncertainty})


def prior(data_dir: str | Path, cfg: TrainConfig, *, folds: int = 4, per_video: int = 6, per_class: int = 0,
          seed: int = 0) -> pd.DataFrame:
    """Write ``data_dir/prior.parquet``: out-of-fold posteriors of ``cfg.method`` for every labelled face
    (an empty table when ``folds`` is 0)."""
    data_dir = Path(data_dir)
    _, meta = read_table(locate(data_dir, "labels.parquet"), "labels", hint="run `ferdata noise` first")
    if folds == 0:  # not needed (e.g. the dataset has its own VA): an empty table keeps the pipeline's shape
        table = pd.DataFrame({"sample_id": pd.Series([], dtype=object), "split": pd.Series([], dtype=object),
                              "distribution": pd.Series([], dtype=object), "uncertainty": pd.Series([], dtype="float64")})
        write_table(table, data_dir / PRIOR, "learned", {"classes": meta["classes"], "method": "none", "folds": 0})
        return table
    table = out_of_fold(data_dir, cfg, folds=folds, per_video=per_video, per_class=per_class, seed=seed)
    write_table(table, data_dir / PRIOR, "learned", {"classes": meta["classes"], "method": cfg.method, "folds": folds,
                                                      "out_of_fold": True})
    return table
