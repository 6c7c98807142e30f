import numpy as np
import pytest

from ferdata.core.errors import FerdataError
from ferdata.core.io import read_table
from ferdata.noise import noise
from ferdata.sample import epoch_plan, sample


def _toy():
    videos = np.repeat(np.arange(30), 10)  # 30 videos of 10 frames
    labels = np.repeat(np.arange(30) % 3, 10)  # class 0, 1, 2 round-robin over videos
    labels[:10] = 1  # video 0 belongs to class 1: 11 videos of class 1, 9 of class 0
    return videos, labels


def test_per_video_cap_and_per_class_balance_hold_exactly():
    videos, labels = _toy()
    order = epoch_plan(videos, labels, epoch=0, seed=1, per_video=4, per_class=30)
    assert len(order) == 90
    assert np.array_equal(np.bincount(labels[order]), [30, 30, 30])
    # with enough candidates per class (>= 36 after the cap) no sample repeats and the cap holds
    assert len(set(order)) == 90
    assert np.bincount(videos[order]).max() <= 4


def test_small_classes_resample_with_replacement_only_when_needed():
    videos, labels = _toy()
    order = epoch_plan(videos, labels, epoch=0, seed=1, per_video=2, per_class=0)
    counts = np.bincount(labels[order])
    assert (counts == 22).all()  # largest class after the cap: 11 videos x 2 frames
    cls0 = order[labels[order] == 0]
    assert len(set(cls0)) == 18  # all 9 x 2 capped frames, plus 4 drawn again


def test_same_seed_same_plan_new_epoch_new_plan():
    videos, labels = _toy()
    a = epoch_plan(videos, labels, epoch=3, seed=5, per_video=4, per_class=20)
    b = epoch_plan(videos, labels, epoch=3, seed=5, per_video=4, per_class=20)
    c = epoch_plan(videos, labels, epoch=4, seed=5, per_video=4, per_class=20)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_sample_stage(data_dir):
    noise(data_dir, ratio=0.2)
    plan = sample(data_dir, epochs=3, per_video=2)
    assert sorted(plan["epoch"].unique()) == [0, 1, 2]
    labels, _ = read_table(data_dir / "labels.parquet", "labels")
    train = set(labels.loc[labels["split"] == "train", "sample_id"])
    assert set(plan["sample_id"]) <= train
    a = (data_dir / "plan.parquet").read_bytes()
    sample(data_dir, epochs=3, per_video=2)
    assert (data_dir / "plan.parquet").read_bytes() == a


def test_sample_needs_labels(data_dir):
    with pytest.raises(FerdataError, match="labels.parquet not found: run `ferdata noise` first"):
        sample(data_dir, epochs=1)
