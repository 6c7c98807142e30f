"""ferdata/train/prior.py: out-of-fold posteriors and the prior stage."""

import numpy as np
import pandas as pd
import pytest

from ferdata.core.errors import FerdataError, UsageError
from ferdata.core.groups import fold_groups, group_of
from ferdata.core.io import read_table
from ferdata.noise import noise
from ferdata.sample import sample
from ferdata.train.prior import prior


def test_fold_groups_keep_subjects_whole():
    manifest = pd.DataFrame(
        {"sample_id": [f"s{i}" for i in range(12)], "subject_id": [f"p{i // 3}" for i in range(12)], "video_id": None}
    )
    folds = fold_groups(group_of(manifest), folds=2, seed=0)
    assert sorted(np.bincount(folds)) == [6, 6]
    assert all(len(set(folds[i : i + 3])) == 1 for i in range(0, 12, 3))


def test_out_of_fold_predicts_every_face(data_dir):
    noise(data_dir, ratio=0.25, seed=1)
    sample(data_dir, epochs=1, per_video=3)
    table = prior(data_dir, folds=2, epochs=1, train={"batch_size": 4, "image_size": 32, "lr": 0.01})
    labels, _ = read_table(data_dir / "labels.parquet", "labels")
    assert list(table["sample_id"]) == list(labels["sample_id"])
    dist = np.stack(table["distribution"].to_numpy())
    assert np.allclose(dist.sum(1), 1, atol=1e-4) and np.isfinite(table["uncertainty"]).all()
    stored, meta = read_table(data_dir / "prior.parquet", "prior")
    assert meta["out_of_fold"] and meta["settings"]["train"]["batch_size"] == 4 and len(stored) == len(labels)
    with pytest.raises(UsageError, match="prior.folds must be 0 .* or at least 2"):
        prior(data_dir, folds=1)
    with pytest.raises(FerdataError, match="50 folds need at least 50 subject/video groups"):
        prior(data_dir, folds=50, epochs=1)
    with pytest.raises(FerdataError, match="plan.parquet has 1 epochs, 12 are asked for"):
        prior(data_dir, folds=2)


def test_prior_with_no_folds_writes_an_empty_table(data_dir):
    noise(data_dir, ratio=0.0)
    assert prior(data_dir, folds=0).empty
    table, meta = read_table(data_dir / "prior.parquet", "prior")
    assert table.empty and meta["folds"] == 0


def test_fold_models_keep_the_plans_class_balance():
    """The prior's posteriors are training targets and neighbours for models on the balanced plan: the
    fold models fit a temperature, not the prior swap (unless calibration is off altogether)."""
    from dataclasses import replace

    from ferdata.train.settings import PriorSettings, TrainSettings

    assert PriorSettings().fold_model().calibration == "temperature"
    off = PriorSettings(train=replace(TrainSettings(), calibration="none"))
    assert off.fold_model().calibration == "none"


def test_no_fold_model_trains_on_a_face_it_predicts(data_dir, monkeypatch):
    """The out-of-fold guarantee, checked where training happens: each fold model's training rows (what
    fit hands the method) never include the faces that fold predicts, and every training face is
    predicted by exactly one fold model."""
    import ferdata.train.loop as loop
    import ferdata.train.prior as mod

    noise(data_dir, ratio=0.25, seed=1)
    sample(data_dir, epochs=1, per_video=3)
    calls: list[dict] = []
    real_fit, real_context = mod.fit, loop.method_context

    def fit(data, cfg, **kwargs):
        calls.append({"held": set(data.labels.loc[data.labels["split"] == "holdout", "sample_id"])})
        return real_fit(data, cfg, **kwargs)

    def method_context(data, cfg, train_rows, embed_dim):
        calls[-1]["trained"] = set(train_rows["sample_id"])
        return real_context(data, cfg, train_rows, embed_dim)

    monkeypatch.setattr(mod, "fit", fit)
    monkeypatch.setattr(loop, "method_context", method_context)
    prior(data_dir, folds=3, epochs=1, train={"batch_size": 4, "image_size": 32, "lr": 0.01})
    labels, _ = read_table(data_dir / "labels.parquet", "labels")
    train_ids = set(labels.loc[labels["split"] == "train", "sample_id"])
    assert len(calls) == 3 and all(c["held"] and not c["held"] & c["trained"] for c in calls)
    held = [sid for c in calls for sid in c["held"]]
    assert sorted(held) == sorted(train_ids)  # each training face held out once
