"""ferdata/train/oof.py: out-of-fold posteriors and the prior stage."""

import numpy as np
import pandas as pd
import pytest

from ferdata.errors import FerdataError
from ferdata.io import read_table
from ferdata.noise import noise
from ferdata.train.loop import TrainConfig
from ferdata.train.oof import fold_groups, out_of_fold, prior


def test_fold_groups_keep_subjects_whole():
    manifest = pd.DataFrame({"sample_id": [f"s{i}" for i in range(12)], "subject_id": [f"p{i // 3}" for i in range(12)],
                             "video_id": None})
    labels = manifest[["sample_id"]]
    folds = fold_groups(labels, manifest, folds=2, seed=0)
    assert sorted(np.bincount(folds)) == [6, 6]
    assert all(len(set(folds[i:i + 3])) == 1 for i in range(0, 12, 3))


def test_out_of_fold_predicts_every_face(data_dir):
    noise(data_dir, ratio=0.25, seed=1)
    cfg = TrainConfig(epochs=1, batch_size=4, image_size=32, lr=0.01)
    table = out_of_fold(data_dir, cfg, folds=2, per_video=3)
    labels, _ = read_table(data_dir / "labels.parquet", "labels")
    assert list(table["sample_id"]) == list(labels["sample_id"])
    dist = np.stack(table["distribution"].to_numpy())
    assert np.allclose(dist.sum(1), 1, atol=1e-4) and np.isfinite(table["uncertainty"]).all()
    assert not any(p.name.startswith("ferdata-oof") for p in data_dir.iterdir())
    with pytest.raises(FerdataError, match="at least 2 folds"):
        out_of_fold(data_dir, cfg, folds=1)
    with pytest.raises(FerdataError, match="need at least 50 subject/video groups"):
        out_of_fold(data_dir, cfg, folds=50)


def test_prior_with_no_folds_writes_an_empty_table(data_dir):
    noise(data_dir, ratio=0.0)
    assert prior(data_dir, TrainConfig(), folds=0).empty
    table, meta = read_table(data_dir / "prior.parquet", "learned")
    assert table.empty and meta["folds"] == 0
