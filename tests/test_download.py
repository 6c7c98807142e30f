import numpy as np
import pytest
from conftest import SEED, TINY

from ferdata.core.errors import FerdataError, UsageError
from ferdata.core.io import read_table
from ferdata.download import download


def test_manifest_of_synth(shards_dir):
    df, meta = read_table(shards_dir / "manifest.parquet", "manifest")
    assert len(df) == 6 * 2 * 4
    assert meta["dataset"] == "synth" and meta["classes"][0] == "neutral" and len(meta["classes"]) == 7
    assert df["sample_id"].is_unique and not df["sample_id"].str.contains(".", regex=False).any()
    assert df["sample_id"].is_monotonic_increasing
    assert all((shards_dir / p).is_file() for p in df["path"])
    assert all(len(lmk) == 10 for lmk in df["landmarks"])
    assert np.allclose([d.sum() for d in df["true_dist"]], 1, atol=1e-5)
    assert df["video_id"].nunique() == 12 and df["subject_id"].nunique() == 6


def test_download_is_deterministic(tmp_path):
    a = download("synth", tmp_path / "a", dataset=TINY, seed=SEED)
    download("synth", tmp_path / "b", dataset=TINY, seed=SEED)
    assert (tmp_path / "a/manifest.parquet").read_bytes() == (tmp_path / "b/manifest.parquet").read_bytes()
    first = a["path"].iloc[0]
    assert (tmp_path / "a" / first).read_bytes() == (tmp_path / "b" / first).read_bytes()


def test_unknown_dataset(tmp_path):
    known = "affectnet, affwild2, ckplus, csv, fer2013, ferg, ferplus, folder, jaffe, rafdb, sfew, synth"
    with pytest.raises(FerdataError, match=f"unknown dataset .nope.: known datasets are {known}"):
        download("nope", tmp_path)


def test_bad_synth_option(tmp_path):
    with pytest.raises(UsageError, match="unknown setting 'synth.n_faces'"):
        download("synth", tmp_path, dataset={"n_faces": 3})
    with pytest.raises(UsageError, match=r"synth.n_subjects must be in \[1, inf\], got 0"):
        download("synth", tmp_path, dataset={"n_subjects": 0})
    with pytest.raises(UsageError, match="unknown setting 'download.sed'; did you mean download.seed"):
        download("synth", tmp_path, sed=3)
