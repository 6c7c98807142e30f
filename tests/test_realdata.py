"""Real FER samples through their adapters; skipped where ../shared/realdata is absent (a user's clone)."""

import os
from pathlib import Path

import numpy as np
import pytest

from ferdata.core.classes import CANONICAL
from ferdata.core.io import read_table
from ferdata.download import download

REALDATA = Path(os.environ.get("FERDATA_REALDATA", Path(__file__).resolve().parents[2] / "shared" / "realdata"))


def archive(name):
    path = REALDATA / name
    if not path.is_file():
        pytest.skip(f"{path} absent")
    return str(path)


def ingest(tmp_path, dataset, name, **options):
    df = download(dataset, tmp_path / dataset, source=archive(name), dataset=options)
    rejected, _ = read_table(tmp_path / dataset / "rejected.parquet", "rejected")
    return df, rejected


def test_ferplus_sample(tmp_path):
    df, rejected = ingest(tmp_path, "ferplus", "ferplus-dev.tar.gz")
    assert len(df) + len(rejected) == 4600
    assert df["split"].value_counts().to_dict() == {"train": 3761, "val": 565}
    assert rejected["reason"].value_counts().to_dict() == {
        "tied_top_votes": 178,
        "unknown_majority": 58,
        "duplicate_image": 37,
        "not_a_face": 1,
    }
    dist = np.stack(df["true_dist"].to_numpy())
    assert np.allclose(dist.sum(1), 1, atol=1e-6)
    assert (dist.argmax(1) == df["label"].to_numpy()).all()  # the label is the votes' top class
    assert (dist.max(1) < 0.7).mean() > 0.25  # real crowds disagree (28% of this sample)


def test_jaffe_sample(tmp_path):
    df, rejected = ingest(tmp_path, "jaffe", "jaffe.tar.gz")
    assert len(df) == 213 and rejected.empty and df["subject_id"].nunique() == 10
    dist = np.stack(df["true_dist"].to_numpy())
    agree = (dist.argmax(1) == df["label"].to_numpy()).mean()
    assert agree > 0.6  # raters mostly see the posed expression
    assert df.groupby("subject_id")["split"].nunique().max() == 1


def test_ckplus48_sample(tmp_path):
    df, rejected = ingest(tmp_path, "ckplus", "ckplus48.tar.gz")
    assert len(df) == 981 and rejected.empty
    assert df["video_id"].nunique() == 327
    assert df.groupby("subject_id")["split"].nunique().max() == 1
    assert CANONICAL[int(df["label"].value_counts().idxmax())] == "surprise"


def test_muxspace_csv(tmp_path):
    df, rejected = ingest(tmp_path, "csv", "muxspace-sample.tar.gz")
    assert len(df) + len(rejected) == 1500
    counts = df["label"].map(lambda i: CANONICAL[i]).value_counts()
    assert counts["happy"] == 613 and counts["neutral"] == 773  # HAPPINESS and happiness are one class


def test_muxspace_photos_through_mtcnn(tmp_path):
    import importlib.util

    from ferdata.align import align

    if importlib.util.find_spec("facenet_pytorch") is None:
        pytest.skip("pip install --no-deps facenet-pytorch==2.6.0")
    ingest(tmp_path, "csv", "muxspace-sample.tar.gz")
    manifest, meta = read_table(tmp_path / "csv/manifest.parquet", "manifest")
    from ferdata.core.io import write_table

    write_table(manifest.head(40), tmp_path / "csv/manifest.parquet", "manifest", meta)
    table = align(tmp_path / "csv", detector="mtcnn", size=112)
    assert (table["status"] == "ok").mean() > 0.9  # real frontal photos: a face in (nearly) every one
    assert table["score"].dropna().median() > 0.99
