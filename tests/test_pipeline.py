"""The DVC pipeline end to end on a tiny synth set: runs, caches, and re-runs only what a change touches."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import ferdata

ROOT = Path(__file__).resolve().parents[1]
TINY_PARAMS = {
    "synth": {"n_subjects": 6, "videos_per_subject": 2, "frames_per_video": 4, "image_size": 96,
              "val_fraction": 0.2, "test_fraction": 0.2},
    "align": {"workers": 1},
    "train": {"epochs": 2, "batch_size": 8, "image_size": 32},
}


def _dvc(repo: Path, *args: str) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "NO_ALBUMENTATIONS_UPDATE": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def _ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '(\w+)'", output))


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A git + DVC repository holding this checkout's pipeline files, with tiny params."""
    repo = tmp_path_factory.mktemp("pipeline")
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    shutil.copytree(Path(ferdata.__file__).parent, repo / "ferdata", ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in TINY_PARAMS.items():
        params[section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    _dvc(repo, "init", "-q")
    return repo


@pytest.mark.slow
def test_repro_runs_caches_and_reruns_only_downstream_of_noise(repo):
    first = _ran(_dvc(repo, "repro"))
    assert first == {"download", "align", "shard", "va", "noise", "sample", "train", "export", "report"}
    soft = ferdata.load_soft_labels(repo / "data/synth/softlabels.parquet")
    assert len(soft) == 48
    for name in ("metrics.json", "class_balance.png", "confusion.png"):
        assert (repo / "reports/synth" / name).is_file()
    assert (repo / "models/synth/model.pt").is_file()

    assert _ran(_dvc(repo, "repro")) == set()  # nothing changed: no work

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["noise"]["ratio"] = 0.1
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert _ran(_dvc(repo, "repro")) == {"noise", "sample", "train", "export", "report"}
    assert ferdata.load_soft_labels(repo / "data/synth/softlabels.parquet").attrs["noise"]["ratio"] == 0.1
