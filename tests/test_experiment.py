import numpy as np
import pandas as pd
import pytest

from ferdata.core.errors import FerdataError
from ferdata.core.groups import group_of
from ferdata.core.io import locate, read_table
from ferdata.experiment import Condition, calibrated, carve_validation, ensemble, prepare, score_table
from ferdata.train.settings import TrainSettings


def _manifest(folder):
    return read_table(locate(folder, "manifest.parquet"), "manifest")


def test_carving_makes_the_held_out_split_the_test_and_keeps_subjects_whole(shards_dir, tmp_path):
    before, _ = _manifest(shards_dir)
    out = carve_validation(shards_dir, tmp_path / "carved", share=0.3, seed=1)
    after, meta = _manifest(out)
    was = before.set_index("sample_id")["split"]
    now = after.set_index("sample_id")["split"]
    assert (now[was != "train"] == "test").all()  # val and test of the base: all test now
    assert set(now[was == "train"]) == {"train", "val"}  # train split in two, nothing else moves
    subjects = group_of(after).to_numpy()
    assert not set(subjects[now.to_numpy() == "train"]) & set(subjects[now.to_numpy() == "val"])
    assert meta["carved"]["val_share"] == 0.3
    assert carve_validation(shards_dir, tmp_path / "carved", share=0.3, seed=1) == out  # kept as it is
    with pytest.raises(FerdataError, match="share"):
        carve_validation(shards_dir, tmp_path / "other", share=1.0)


def test_each_noise_ratio_gets_its_own_prior_and_va(shards_dir, tmp_path):
    """circumplex VA comes from the out-of-fold prior, which trains on the fork's own noisy labels: the
    VA of a noisy fork is not the clean fork's."""
    train = TrainSettings(epochs=1, batch_size=8, image_size=32, workers=0)
    made = {}
    for ratio in (0.0, 0.5):
        c = Condition(ratio=ratio, seed=0, epochs=1, per_video=3, folds=2, prior_epochs=1, va="circumplex", k=3)
        made[ratio] = prepare(shards_dir, tmp_path / f"r{ratio}", c, train)
    va = {r: read_table(d / "va.parquet", "va") for r, d in made.items()}
    prior = {r: read_table(d / "prior.parquet", "prior")[1] for r, d in made.items()}
    labels = {r: read_table(d / "labels.parquet", "labels")[1] for r, d in made.items()}
    assert prior[0.0]["settings_hash"] != prior[0.5]["settings_hash"]  # trained on other labels
    assert all((d / "knn.parquet").is_file() for d in made.values())
    assert labels[0.5]["ratio"] == 0.5 and labels[0.0]["ratio"] == 0.0
    assert not np.allclose(va[0.0][0]["valence"], va[0.5][0]["valence"])
    assert va[0.5][1]["settings_hash"] != va[0.0][1]["settings_hash"]


def test_a_prepared_condition_is_not_prepared_again(shards_dir, tmp_path):
    c = Condition(ratio=0.2, seed=0, epochs=1, per_video=3)
    data = prepare(shards_dir, tmp_path / "c", c, TrainSettings(epochs=1))
    stamp = (data / "labels.parquet").stat().st_mtime_ns
    prepare(shards_dir, tmp_path / "c", c, TrainSettings(epochs=1))
    assert (data / "labels.parquet").stat().st_mtime_ns == stamp
    prepare(shards_dir, tmp_path / "c", Condition(ratio=0.3, seed=0, epochs=1, per_video=3), TrainSettings(epochs=1))
    assert read_table(data / "labels.parquet", "labels")[1]["ratio"] == 0.3


def test_ensemble_is_the_weighted_mean_and_scores(trained_dir):
    learned, _ = read_table(trained_dir / "models" / "learned.parquet", "learned")
    uniform = learned.assign(distribution=[np.full(len(d), 1 / len(d)) for d in learned["distribution"]])
    mixed = ensemble([learned, uniform], [3.0, 1.0])
    first = np.asarray(learned["distribution"].iloc[0], np.float64)
    assert np.allclose(mixed["distribution"].iloc[0], 0.75 * first / first.sum() + 0.25 / len(first))
    assert isinstance(mixed, pd.DataFrame) and list(mixed["sample_id"]) == list(learned["sample_id"])
    metrics = score_table(trained_dir, mixed)
    assert 0 <= metrics["test_accuracy_true"] <= 1 and "noise_auroc" in metrics


def test_a_control_is_calibrated_as_a_method_is(trained_dir):
    """calibrated() fits on the validation rows only: the NLL of the validation labels does not rise."""
    from ferdata.core.classes import class_index

    learned, _ = read_table(trained_dir / "models" / "learned.parquet", "learned")
    labels, meta = read_table(trained_dir / "labels.parquet", "labels")
    flat = learned.assign(distribution=[np.sqrt(np.asarray(d)) / np.sqrt(d).sum() for d in learned["distribution"]])
    out = calibrated(trained_dir, flat)
    val = (labels.set_index("sample_id").loc[out["sample_id"], "split"] == "val").to_numpy()
    given = class_index(labels.set_index("sample_id").loc[out["sample_id"], "label"].to_numpy()[val], meta["classes"])

    def nll(table):
        p = np.stack(table["distribution"].to_numpy())[val]
        return -np.log(p[np.arange(len(p)), given]).mean()

    assert nll(out) <= nll(flat) + 1e-9
    assert np.allclose(np.stack(out["distribution"].to_numpy()).sum(1), 1)
