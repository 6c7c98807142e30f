"""ferdata/train/regress.py: pseudo VA from a regressor trained through the trainer's loop."""

import numpy as np
import pytest

from ferdata.core.errors import FerdataError
from ferdata.core.io import read_table
from ferdata.train.regress import regress

TINY = {"epochs": 1, "batch_size": 8, "image_size": 32}


def test_out_of_fold_on_the_same_dataset(data_dir):
    table = regress(data_dir, folds=2, **TINY)
    index, _ = read_table(data_dir / "shard_index.parquet", "shard_index")
    assert sorted(table["sample_id"]) == sorted(index["sample_id"])
    va = table[["valence", "arousal"]].to_numpy()
    assert np.isfinite(va).all() and np.abs(va).max() < 1 and va.std(0).min() > 0
    _, meta = read_table(data_dir / "regressed_va.parquet", "regressed_va")
    assert meta["source"] == "out_of_fold" and meta["settings"]["folds"] == 2


def test_fitted_on_another_dataset(data_dir, shards_dir):
    table = regress(data_dir, source=str(shards_dir), **TINY)
    assert len(table) == 48 and np.isfinite(table[["valence", "arousal"]].to_numpy()).all()


def test_a_dataset_without_va_cannot_fit(data_dir):
    from ferdata.core.io import write_table

    manifest, meta = read_table(data_dir / "manifest.parquet", "manifest")
    manifest["valence"] = np.nan
    write_table(manifest, data_dir / "manifest.parquet", "manifest", meta)
    with pytest.raises(FerdataError, match="no training faces with annotated VA"):
        regress(data_dir, **TINY)
