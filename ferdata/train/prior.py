"""The prior stage: out-of-fold class posteriors, every training face predicted by a model that never
trained on it.

Training faces are split into folds by whole groups (subject, else video, else face); one model per
fold trains on the other folds' share of the epoch plan and predicts its held-out faces; val/test
faces get the mean of the fold models. These posteriors feed the ``circumplex`` pseudo-VA source
and cleanlab-style baselines.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ferdata.core.errors import FerdataError
from ferdata.core.groups import fold_groups, group_of
from ferdata.train.loop import TrainData, fit, init_distributed, leave_distributed, read_inputs, select_device
from ferdata.train.settings import PRIOR as STAGE
from ferdata.train.settings import PriorSettings


def out_of_fold(
    data: TrainData, manifest: pd.DataFrame, settings: PriorSettings, *, rank: int = 0, world: int = 1
) -> pd.DataFrame:
    """A learned-style table (sample_id, split, distribution, uncertainty) of out-of-fold posteriors
    (complete on rank 0)."""
    labels = data.labels.reset_index(drop=True)
    is_train = (labels["split"] == "train").to_numpy()
    rows = manifest.set_index("sample_id").loc[labels["sample_id"]].reset_index()
    fold = np.full(len(labels), -1)
    fold[is_train] = fold_groups(group_of(rows[is_train]), folds=settings.folds, seed=settings.seed)
    if len(np.unique(fold[is_train])) < settings.folds:
        raise FerdataError(
            f"{settings.folds} folds need at least {settings.folds} subject/video groups in the "
            "training split; lower prior.folds"
        )
    probs = np.zeros((len(labels), len(data.classes)))
    uncertainty = np.zeros(len(labels))
    others = ~is_train
    for f in range(settings.folds):
        held = fold == f
        fold_labels = labels.assign(split=np.where(held, "holdout", labels["split"]))
        fitted = fit(
            replace(data, labels=fold_labels),
            settings.fold_model(),
            rank=rank,
            world=world,
            tag=f"fold {f + 1}/{settings.folds}: ",
        )
        if rank == 0:
            learned = fitted.learned
            dist = np.stack(learned["distribution"].to_numpy())
            unc = learned["uncertainty"].to_numpy()
            probs[held], uncertainty[held] = dist[held], unc[held]
            probs[others] += dist[others] / settings.folds
            uncertainty[others] += unc[others] / settings.folds
    return pd.DataFrame(
        {
            "sample_id": labels["sample_id"],
            "split": labels["split"],
            "distribution": list(probs.astype(np.float32)),
            "uncertainty": uncertainty,
        }
    )


def prior(data_dir: str | Path, settings: PriorSettings | None = None, **options: Any) -> pd.DataFrame:
    """Write the prior table of ``data_dir``: out-of-fold posteriors for every labelled face (an empty
    table when ``folds`` is 0)."""
    with STAGE.start(settings, options, data=data_dir) as run:
        s: PriorSettings = run.settings
        if s.folds == 0:  # not needed (e.g. the dataset has its own VA): an empty table keeps the pipeline's shape
            _, meta = run.read("labels")
            table = pd.DataFrame(
                {
                    "sample_id": pd.Series([], dtype=object),
                    "split": pd.Series([], dtype=object),
                    "distribution": pd.Series([], dtype=object),
                    "uncertainty": pd.Series([], dtype="float64"),
                }
            )
            run.write(table, "prior", {"classes": meta["classes"], "method": "none", "folds": 0})
            return table
        data = read_inputs(run, s.fold_model())
        manifest, _ = run.read("manifest")
        rank, world = init_distributed(select_device())
        table = out_of_fold(data, manifest, s, rank=rank, world=world)
        if rank == 0:
            run.write(
                table, "prior", {"classes": data.classes, "method": s.method, "folds": s.folds, "out_of_fold": True}
            )
        leave_distributed()
        return table


def summarize(table: pd.DataFrame) -> str:
    if table.empty:
        return "prior skipped (prior.folds 0)"
    held = int((table["split"] == "train").sum())
    return f"out-of-fold posteriors for {len(table)} faces ({held} training faces held out once)"
