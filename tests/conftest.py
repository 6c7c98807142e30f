"""Shared fixtures: a tiny synth dataset run through the stages once per test session."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

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


HOST_READS = {"item", "tolist", "__bool__", "__float__", "__int__", "__index__", "nonzero", "numpy", "cpu"}
HOST_READS |= {"masked_select", "unique", "argwhere", "any", "all"}


class HostReads(TorchFunctionMode):
    """Records the torch calls that read tensor values on the host (on a GPU each one waits for the
    device) and indexing by a boolean mask (its size is read back)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        index = args[1] if name in ("__getitem__", "__setitem__") and len(args) > 1 else ()
        index = index if isinstance(index, tuple) else (index,)
        masked = any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in index)
        if name in HOST_READS or masked or (name == "where" and len(args) == 1):
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


@pytest.fixture
def host_reads() -> type[HostReads]:
    """A context manager recording the calls that would make the host wait for a GPU (``.calls``)."""
    return HostReads
