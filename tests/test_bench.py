"""bench/gpu_figures.sh: the one device call of issue 16 runs end to end (SMOKE=1: toy sizes, any machine),
so a lease is never spent finding a broken script."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_figures_script_runs_at_toy_sizes(trained_dir, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "SMOKE": "1", "PYTHON": sys.executable, "WHEELS": ""}  # this venv has them
    run = subprocess.run(
        ["bash", "bench/gpu_figures.sh", *(os.path.relpath(p, ROOT) for p in (trained_dir, trained_dir, out))],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    throughput = json.loads((out / "train_throughput.json").read_text())
    assert throughput["e2e_ce_default_img_s"] > 0 and "loader_device_two_view_img_s" in throughput
    for precision in ("fp32", "auto"):
        assert json.loads((out / f"precision_{precision}_s0.json").read_text())
    assert "skipped" in (out / "cuda_tests.log").read_text() or "passed" in (out / "cuda_tests.log").read_text()
