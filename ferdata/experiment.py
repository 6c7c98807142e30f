"""The protocol every method comparison follows: choose on validation, report on test, over seeds.

- :func:`carve_validation` forks a built dataset so that its held-out split becomes the test split and a
  validation split is carved from its training faces by whole subjects (FER+'s Valid split is then the
  test, and every choice is made on faces of its Train split);
- :func:`prepare` gives one noise ratio and seed its own labels, epoch plan and, where the VA comes from
  the labels (``circumplex``), its own out-of-fold prior and VA graph, so no method sees the clean labels;
- :func:`run_method` trains one method and scores it with :mod:`ferdata.evaluate` on validation and test.

``bench/methods_table.py`` drives these over methods, ratios and seeds and prints intervals.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ferdata.core.errors import FerdataError
from ferdata.core.groups import group_of, split_groups
from ferdata.core.io import INTEGRITY_KEYS, fork, locate, read_table, stable_hash, write_json, write_table
from ferdata.core.settings import as_dict
from ferdata.train.settings import METHODS, TrainSettings


def carve_validation(src: str | Path, to: str | Path, *, share: float = 0.1, seed: int = 0) -> Path:
    """Fork ``src`` into ``to`` with re-drawn splits: its ``val`` faces (and ``test`` faces) become
    ``test``, and ``share`` of its training subjects (else videos, else faces) become ``val``.

    Images, shards and alignment are the base folder's; only the manifest is new (stamped with where its
    splits came from)."""
    if not 0.0 < share < 1.0:
        raise FerdataError(f"the validation share must be in (0, 1), got {share}")
    src, to = Path(src), Path(to)
    if (to / "manifest.parquet").is_file() and read_table(to / "manifest.parquet", "manifest")[1].get("carved") == {
        "from": str(src),
        "val_share": share,
        "seed": seed,
        "held_out_as": "test",
    }:
        return to
    manifest, meta = read_table(locate(src, "manifest.parquet"), "manifest", hint="run `ferdata download` first")
    split = manifest["split"].to_numpy().astype(object)
    train = split == "train"
    if not train.any() or train.all():
        raise FerdataError(f"{src} needs a training split and a held-out split to carve a validation split from")
    groups = group_of(manifest[train])
    chosen = split_groups(groups, seed=seed, val=share)
    split[~train] = "test"
    split[train] = [chosen[g] for g in groups]
    fork(src, to)
    out = manifest.assign(split=split)
    carved = {"from": str(src), "val_share": share, "seed": seed, "held_out_as": "test"}
    meta = {k: v for k, v in meta.items() if k not in INTEGRITY_KEYS}
    meta = {**meta, "carved": carved, "settings_hash": stable_hash({"base": meta.get("settings_hash"), **carved})}
    base = locate(src, "manifest.parquet").parent
    write_table(out, to / "manifest.parquet", "manifest", meta, where=lambda rel: base / rel)
    return to


@dataclass(frozen=True)
class Condition:
    """One data condition of a comparison: the noise ratio and seed, the plan, the prior and the VA graph."""

    ratio: float = 0.0
    seed: int = 0
    epochs: int = 20
    per_video: int = 6
    per_class: int = 0
    folds: int = 0  # out-of-fold CE models (the prior); needed by cleanlab and the circumplex VA
    prior_epochs: int = 12
    va: str = "dataset"  # dataset: the folder's own va/knn tables; circumplex: pseudo VA from this prior
    k: int = 8


def prepare(base: str | Path, work: str | Path, condition: Condition, train: TrainSettings) -> Path:
    """A fork of ``base`` with this condition's own noisy labels, epoch plan, prior and VA graph.

    The noise, plan and fold assignment use the condition's seed. Where the VA comes from the labels
    (``circumplex``), the prior and the VA are made from this fork's noisy labels, so a method never
    gets neighbours built from the clean ones."""
    from ferdata.noise import noise
    from ferdata.sample import sample
    from ferdata.train.prior import prior
    from ferdata.va import va

    c, work = condition, Path(work)
    marker = work / "condition.json"
    trains = {k: v for k, v in as_dict(train).items() if k not in METHODS}  # the prior is CE: no method options
    wanted = {"condition": asdict(c), "train": trains, "base": str(Path(base).resolve())}
    if marker.is_file() and json.loads(marker.read_text()) == json.loads(json.dumps(wanted)):
        return work  # prepared before (a resumed benchmark)
    fork(base, work)
    noise(work, ratio=c.ratio, seed=c.seed)
    sample(work, epochs=max(c.epochs, c.prior_epochs), per_video=c.per_video, per_class=c.per_class, seed=c.seed)
    if c.va == "circumplex" and c.folds < 2:
        raise FerdataError("circumplex VA needs an out-of-fold prior: folds >= 2")
    if c.folds >= 2:
        prior(work, folds=c.folds, epochs=c.prior_epochs, seed=c.seed, train=replace(train, seed=c.seed))
    if c.va == "circumplex":
        va(work, source="circumplex", k=c.k)
    write_json(wanted, marker)
    return work


def read_scoring(data: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """What :func:`ferdata.evaluate.score` scores against: the labels, the manifest, the classes."""
    labels, meta = read_table(locate(data, "labels.parquet"), "labels")
    manifest, _ = read_table(locate(data, "manifest.parquet"), "manifest")
    return labels, manifest, meta["classes"]


def run_method(data: str | Path, models: str | Path, cfg: TrainSettings) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Train ``cfg`` on ``data`` into ``models``; its learned table and the train stage's result."""
    from ferdata.train.loop import train

    out = train(data, models, cfg)
    learned, _ = read_table(Path(models) / "learned.parquet", "learned")
    return learned, out


def ensemble(tables: list[pd.DataFrame], weights: list[float] | None = None) -> pd.DataFrame:
    """The weighted mean distribution of learned-style tables over the same faces (uncertainty: the
    mean's normalised entropy)."""
    from ferdata.core.classes import normalised_entropy

    weights = weights or [1.0] * len(tables)
    ids = tables[0]["sample_id"]
    total = sum(
        w * np.stack(t.set_index("sample_id").loc[ids, "distribution"].to_numpy()).astype(np.float64)
        for t, w in zip(tables, weights)
    )
    total /= total.sum(1, keepdims=True)
    return tables[0][["sample_id", "split"]].assign(distribution=list(total), uncertainty=normalised_entropy(total))


def calibrated(data: str | Path, table: pd.DataFrame, mode: str = "prior_temperature") -> pd.DataFrame:
    """``table`` calibrated as the trainer calibrates a method (ferdata/train/calibrate.py), fitted on its
    validation rows: for controls assembled from several models (an ensemble of differently calibrated
    ones)."""
    import torch

    from ferdata.core.classes import class_index, normalised_entropy
    from ferdata.train.calibrate import fit_calibration

    labels, _, classes = read_scoring(data)
    plan, _ = read_table(locate(data, "plan.parquet"), "plan")
    given = labels.set_index("sample_id")["label"]
    train = labels[labels["split"] == "train"]
    rows = table.set_index("sample_id")
    val = labels.loc[labels["split"] == "val", "sample_id"]
    cal = fit_calibration(
        np.stack(rows.loc[val, "distribution"].to_numpy()),
        class_index(given.loc[val].to_numpy(), classes),
        train_counts=np.bincount(class_index(train["label"].to_numpy(), classes), minlength=len(classes)),
        plan_counts=np.bincount(class_index(given.loc[plan["sample_id"]].to_numpy(), classes), minlength=len(classes)),
        mode=mode,
    )
    probs = cal.apply(torch.tensor(np.stack(table["distribution"].to_numpy()), dtype=torch.float64)).numpy()
    return table.assign(distribution=list(probs), uncertainty=normalised_entropy(probs))


def prior_table(data: str | Path) -> pd.DataFrame:
    """The fork's out-of-fold prior as a learned-style table (held-out posteriors for training faces, the
    fold models' mean for the others)."""
    table, _ = read_table(locate(data, "prior.parquet"), "prior")
    return table


def score_table(data: str | Path, table: pd.DataFrame) -> dict[str, float]:
    """:func:`ferdata.evaluate.score` of ``table`` against this fork's labels and truth."""
    from ferdata.evaluate import score

    labels, manifest, classes = read_scoring(data)
    return score(table, labels, manifest, classes)
