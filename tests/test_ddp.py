"""Training under torchrun: two CPU processes on the gloo backend."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from ferdata.core.io import read_table


@pytest.mark.parametrize("method", ["ldlva"])  # the method with per-sample state; ce is the same loop
def test_torchrun_two_cpu_processes(trained_dir, tmp_path, method):
    data = tmp_path / "synth"
    shutil.copytree(trained_dir, data)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "ferdata.cli",
        "train",
        "--data",
        str(data),
        "--models",
        str(tmp_path / "models"),
        "--method",
        method,
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--image-size",
        "32",
        "--lr",
        "0.01",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.stdout.count("trained ") == 2  # both ranks finished
    assert "cpu, fp32, augmentation on cpu, 2 processes)" in proc.stdout
    learned, meta = read_table(tmp_path / "models" / "learned.parquet", "learned")
    assert meta["method"] == method and meta["engine"]["world_size"] == 2
    assert np.abs(np.stack(learned["distribution"].to_numpy()).sum(1) - 1).max() < 1e-5
