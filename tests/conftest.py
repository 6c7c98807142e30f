"""Shared fixtures: a tiny synth dataset run through the stages once per test session."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

TINY = {
    "n_subjects": 6,
    "videos_per_subject": 2,
    "frames_per_video": 4,
    "image_size": 96,
    "val_fraction": 0.2,
    "test_fraction": 0.2,
}
SEED = 3


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked ``cuda`` skip on a machine without a GPU (bench/gpu_figures.sh runs them with -m cuda)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shards_dir(tmp_path_factory) -> Path:
    """A tiny synth dataset downloaded, aligned and sharded (48 faces)."""
    from ferdata.align import align
    from ferdata.download import download
    from ferdata.shard import shard

    root = tmp_path_factory.mktemp("tiny") / "synth"
    download("synth", root, dataset=TINY, seed=SEED)
    align(root, size=112)
    shard(root, max_count=20)
    return root


@pytest.fixture
def data_dir(shards_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the sharded tiny dataset that a test may change."""
    dst = tmp_path / "synth"
    shutil.copytree(shards_dir, dst)
    return dst


@pytest.fixture(scope="session")
def trained_dir(shards_dir: Path, tmp_path_factory) -> Path:
    """The tiny dataset with va, 25% noise, a plan, a 2-epoch CE model and its export."""
    from ferdata.export import export
    from ferdata.noise import noise
    from ferdata.sample import sample
    from ferdata.train.loop import train
    from ferdata.train.settings import TrainSettings
    from ferdata.va import va

    root = tmp_path_factory.mktemp("trained") / "synth"
    shutil.copytree(shards_dir, root)
    va(root, k=3)
    noise(root, ratio=0.25, seed=1)
    sample(root, epochs=2, per_video=3)
    train(root, root / "models", TrainSettings(epochs=2, batch_size=8, image_size=32, lr=0.01))
    export(root, root / "models")
    return root
