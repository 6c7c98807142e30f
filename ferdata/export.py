"""The export stage: the soft labels of every face as versioned parquet for other projects.

One row per labelled face: its image, its distribution over the dataset's classes (sums to 1),
predicted class, confidence (1 - normalised entropy), the method's own uncertainty where it learned
one, whether its given label looks wrong, and its VA. Class columns are positions in the file's classes
(``label_index``, ``predicted_index``), never the manifest's canonical ids. File metadata names the
classes in order and records method, settings hash (over every stage that led to it) and model hash.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from ferdata.core.classes import class_index, normalised_entropy
from ferdata.core.errors import FerdataError
from ferdata.core.io import file_sha256
from ferdata.core.settings import Settings, option
from ferdata.core.stage import Stage


@dataclass(frozen=True)
class ExportSettings(Settings):
    """The ``export`` section of params.yaml."""

    section = "export"
    margin: float = option(
        0.2, "suspected noisy: the top class beats the given label by more than this", min=0.0, max=1.0
    )
    train_distribution: str = option(
        "model",
        "a training face's distribution: model (the method's soft label: on a small clean set, a memorised "
        "near one-hot) or out_of_fold (the prior stage's prediction from a model that never saw the face)",
        choices=("model", "out_of_fold"),
    )


STAGE = Stage(
    "export",
    "Write the soft labels as versioned parquet.",
    __name__,
    ExportSettings,
    reads=("manifest", "labels", "va", "learned", "model"),
    writes=("softlabels", "softlabels_card"),
    may_read=("prior",),  # export.train_distribution: out_of_fold
)


def suspect_noisy(dist: np.ndarray, given: np.ndarray, margin: float) -> np.ndarray:
    """True where the top class is not the given label and beats it by more than ``margin``."""
    top = dist.argmax(1)
    gap = dist[np.arange(len(dist)), top] - dist[np.arange(len(dist)), given]
    return (top != given) & (gap > margin)


def soft_label_table(
    ids: np.ndarray,
    splits: np.ndarray,
    given: np.ndarray,
    dist: np.ndarray,
    classes: list[str],
    *,
    images: np.ndarray,
    method_uncertainty: np.ndarray,
    va: pd.DataFrame,
    method: str,
    margin: float,
) -> pd.DataFrame:
    """Assemble the softlabels table from per-sample arrays (given labels as canonical ids); the given and
    predicted classes become positions into ``classes`` (``*_index``), the order of every distribution."""
    dist = dist / dist.sum(1, keepdims=True)
    given_idx = class_index(given, classes)
    top = dist.argmax(1)
    names = np.asarray(classes, dtype=object)
    va = va.set_index("sample_id").reindex(ids)
    return pd.DataFrame(
        {
            "sample_id": ids,
            "split": splits,
            "image": images,
            "label_index": given_idx,
            "label_name": names[given_idx],
            "distribution": list(dist.astype(np.float32)),
            "predicted_index": top,
            "predicted_name": names[top],
            "confidence": (1.0 - normalised_entropy(dist)).astype(np.float32),
            "method_uncertainty": np.asarray(method_uncertainty, np.float32),
            "suspected_noisy": suspect_noisy(dist, given_idx, margin),
            "valence": va["valence"].to_numpy(np.float32),
            "arousal": va["arousal"].to_numpy(np.float32),
            "method": method,
        }
    )


def export(
    data_dir: str | Path, models_dir: str | Path, settings: ExportSettings | None = None, **options: Any
) -> pd.DataFrame:
    """Write the soft labels of ``data_dir`` from what the trained method learned for every labelled face."""
    with STAGE.start(settings, options, data=data_dir, models=models_dir) as run:
        labels, meta = run.read("labels")
        manifest, manifest_meta = run.read("manifest")
        va, va_meta = run.read("va")
        learned, learned_meta = run.read("learned")
        checkpoint = run.input("model")
        if not checkpoint.is_file():
            raise FerdataError(f"{checkpoint} not found: run `ferdata train` first")
        model_hash = file_sha256(checkpoint)
        if learned_meta.get("model_hash") != model_hash:
            raise FerdataError(
                f"{checkpoint} is not the model that wrote {run.input('learned')} (its sha256 differs from the one "
                "train recorded): re-run `ferdata train`"
            )
        rows = labels.merge(learned[["sample_id", "distribution", "uncertainty"]], on="sample_id", how="left")
        if rows["distribution"].isna().any():
            missing = rows.loc[rows["distribution"].isna(), "sample_id"].iloc[0]
            raise FerdataError(
                f"{run.input('learned')} lacks faces of labels.parquet (e.g. {missing!r}); re-run `ferdata train`"
            )
        classes = learned_meta["classes"]
        own = learned_meta.get("own_uncertainty", False) & (rows["split"] == "train").to_numpy()
        if run.settings.train_distribution == "out_of_fold":
            rows, own = held_out_for_training_faces(run, rows, classes), np.zeros(len(rows), bool)
        table = soft_label_table(
            rows["sample_id"].to_numpy(),
            rows["split"].to_numpy(),
            rows["label"].to_numpy(),
            np.stack(rows["distribution"].to_numpy()).astype(np.float64),
            classes,
            images=image_paths(
                manifest,
                manifest_meta,
                rows["sample_id"],
                base=os.path.relpath(run.input("manifest").parent.resolve(), Path(data_dir).resolve()),
            ),
            method_uncertainty=np.where(own, rows["uncertainty"].to_numpy(), np.nan),
            va=va,
            method=learned_meta["method"],
            margin=run.settings.margin,
        )
        run.write(
            table,
            "softlabels",
            {
                "classes": classes,
                "method": learned_meta["method"],
                "model_hash": model_hash,
                "noise": {k: meta.get(k) for k in ("ratio", "mode", "seed")},
                "dataset": manifest_meta.get("dataset"),
                "va_source": va_meta.get("source"),
                "train": learned_meta.get("settings", {}),  # what the model was trained with
                "engine": learned_meta.get("engine", {}),  # where and at what precision (what auto became)
            },
        )
        from ferdata.softlabels import load_soft_labels, soft_label_card

        card = run.output("softlabels_card")
        card.write_text(soft_label_card(load_soft_labels(run.output("softlabels"))) + "\n")
        return table


def held_out_for_training_faces(run: Any, rows: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """``rows`` with each training face's distribution replaced by the prior stage's out-of-fold one (a CE
    model trained on the other folds: it never saw the face); val/test faces keep the model's."""
    path = run.input("prior")
    if not path.is_file():
        raise FerdataError(
            f"export.train_distribution out_of_fold needs {path}: run `ferdata prior` (prior.folds 2 or more) first"
        )
    prior, prior_meta = run.read("prior")
    if list(prior_meta.get("classes", classes)) != list(classes):
        raise FerdataError(
            f"{path} has classes {prior_meta.get('classes')}, the model {classes}: re-run `ferdata prior`"
        )
    oof = prior.set_index("sample_id")["distribution"]
    train = (rows["split"] == "train").to_numpy()
    lacking = ~rows["sample_id"].isin(oof.index).to_numpy() & train
    if lacking.any() or (train.any() and len(prior) == 0):
        first = rows["sample_id"][lacking].iloc[0] if lacking.any() else rows["sample_id"][train].iloc[0]
        raise FerdataError(f"{path} has no out-of-fold prediction for {first!r}: re-run `ferdata prior` (folds >= 2)")
    out = rows.copy()
    out.loc[train, "distribution"] = pd.Series(
        list(oof.reindex(out.loc[train, "sample_id"]).to_numpy()), index=out.index[train]
    )
    return out


def image_paths(manifest: pd.DataFrame, meta: dict[str, Any], ids: pd.Series, *, base: str = ".") -> np.ndarray:
    """Each face's source image as a path relative to the dataset folder (absolute where the images lie
    outside it, as a CSV's may): what a join with the manifest would give, without one. ``base`` is the
    manifest's folder relative to the dataset folder (a fork reads its base's manifest)."""
    root = PurePosixPath(base.replace(os.sep, "/")) / str(meta.get("root", ".")).replace(os.sep, "/")
    paths = manifest.set_index("sample_id")["path"].reindex(ids)
    return np.array([posixpath.normpath(str(root / p)) for p in paths], dtype=object)


def summarize(table: pd.DataFrame) -> str:
    """One line: rows, mean confidence, suspected-noisy count."""
    return (
        f"exported {len(table)} soft labels (mean confidence {table['confidence'].mean():.3f}, "
        f"{int(table['suspected_noisy'].sum())} suspected noisy)"
    )
