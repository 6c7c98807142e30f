"""bench/gpu_figures.sh: the one device call of issue 16 runs end to end (SMOKE=1: toy sizes, any machine),
so a lease is never spent finding a broken script."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import precision_parity  # noqa: E402


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
    summary = json.loads((out / "precision" / "summary.json").read_text())
    assert set(summary) == {"ce auto - fp32", "ldlva auto - fp32"}
    assert summary["ldlva auto - fp32"]["seeds"] == [0]
    assert "skipped" in (out / "cuda_tests.log").read_text() or "passed" in (out / "cuda_tests.log").read_text()


def test_precision_parity_reads_seed_ranges():
    assert precision_parity.parse_seeds("0-3,7,2") == [0, 1, 2, 3, 7]
    assert precision_parity.parse_seeds("5") == [5]


@pytest.mark.parametrize(
    ("diffs", "verdict"),
    [
        ([0.001, -0.002, 0.0, 0.001, -0.001], "within"),  # tight and near zero
        ([-0.030, -0.031, -0.029, -0.030], "worse"),  # tight and 3 points down
        ([-0.05, 0.02, -0.03, 0.01], "undecided"),  # the interval straddles -1 point
    ],
)
def test_precision_parity_verdict_follows_the_interval(diffs, verdict):
    result = precision_parity.paired(diffs, margin=0.01)
    assert result["verdict"] == verdict
    assert result["low"] < result["mean"] < result["high"]


def test_precision_parity_pairs_runs_by_seed(tmp_path):
    """Only seeds run at both precisions are paired; the difference is later minus the reference."""
    for precision, seed, acc in [
        ("fp32", 0, 0.70),
        ("bf16", 0, 0.68),
        ("fp32", 1, 0.72),
        ("bf16", 1, 0.71),
        ("fp32", 2, 0.9),
    ]:
        row = {"method": "ldlva", "test_accuracy_true": acc, "noise_auroc": 0.8, "soft_label_kl": 0.5}
        precision_parity.run_path(tmp_path, "ldlva", precision, seed).write_text(json.dumps([row]))
    summary = precision_parity.summarise(tmp_path, ["ldlva"], ["fp32", "bf16"], [0, 1, 2], 0.01)
    entry = summary["ldlva bf16 - fp32"]
    assert entry["seeds"] == [0, 1]
    assert math.isclose(entry["test_accuracy_true"]["mean"], -0.015)
    assert math.isclose(entry["test_accuracy_true"]["fp32"], 0.71)


def test_methods_table_specs_name_a_method_its_options_and_va():
    import methods_table

    from ferdata.train.settings import TrainSettings

    base = TrainSettings()
    cfg, va = methods_table.method_settings(base, "ldlva@circumplex:lambda_lr=20:epochs=3")
    assert cfg.method == "ldlva" and cfg.ldlva.lambda_lr == 20 and cfg.epochs == 3 and va == "circumplex"
    cfg, va = methods_table.method_settings(base, "ce:calibration=none")
    assert cfg.method == "ce" and cfg.calibration == "none" and va == "-"
    cfg, _ = methods_table.method_settings(base, "ce2view")
    assert cfg.method == "akt" and not cfg.akt.adaptive and cfg.akt.kl_weight == 0 and cfg.akt.attention_weight == 0
    assert methods_table.method_settings(base, "ldlva")[1] == "dataset"


def test_methods_table_summary_pairs_seeds_with_ce():
    import methods_table

    rows = [
        {"data": "d", "ratio": 0.3, "seed": s, "method": m, "test_accuracy_true": acc}
        for s, (ce, ldlva) in enumerate([(0.50, 0.55), (0.60, 0.64), (0.55, 0.61)])
        for m, acc in (("ce", ce), ("ldlva", ldlva))
    ]
    rows.append({"data": "d", "ratio": 0.3, "seed": 9, "method": "ldlva", "test_accuracy_true": 0.9})  # no CE seed 9
    entries = {e["method"]: e for e in methods_table.summary(rows)}
    mean, lo, hi = entries["ldlva"]["test_accuracy_true_vs_ce"]
    assert math.isclose(mean, 0.05) and lo < mean < hi  # paired on seeds 0-2 only
    assert entries["ldlva"]["seeds"] == [0, 1, 2, 9]
    assert "test_accuracy_true_vs_ce" not in entries["ce"]
    text = methods_table.markdown(list(entries.values()), "header")
    assert "| d | 0.3 | ldlva | 0,1,2,9 |" in text and "Δ 0.050 [" in text


def test_methods_table_targets_read_the_test_figures():
    import methods_table

    def e(ratio, method, acc, kl=None, auroc=None, **extra):
        out = {"data": "d", "ratio": ratio, "method": method, "test_accuracy_true": (acc, acc - 0.01, acc + 0.01)}
        out |= {"test_kl": (kl, kl, kl)} if kl else {}
        out |= {"noise_auroc": (auroc, auroc, auroc)} if auroc else {}
        return out | extra

    entries = [
        e(0.0, "ce", 0.70, 0.80),
        e(0.0, "m", 0.70, 0.74, test_kl_vs_ce=(-0.06, -0.08, -0.04)),
        e(0.0, "bad", 0.60, 0.90),
        e(0.3, "ce", 0.60, auroc=0.90),
        e(0.3, "m", 0.62, auroc=0.92, test_accuracy_true_vs_ce=(0.02, 0.0, 0.04)),
        e(0.3, "cleanlab", float("nan"), auroc=0.85),
    ]
    lines = methods_table.targets(entries, "m")
    assert any("test KL -7.5% vs CE" in line and line.endswith("met") for line in lines)
    assert any("bad test acc -10.0 points" in line and "collapses" in line for line in lines)
    assert any("acc +2.0 points vs CE" in line and line.endswith("missed") for line in lines)
    assert any("noise AUROC +0.070 vs cleanlab -> met" in line for line in lines)


def test_train_distribution_compares_the_model_with_out_of_fold(trained_dir, tmp_path):
    import shutil

    import numpy as np
    from train_distribution import compare  # bench/ is on the path (above)

    from ferdata.core.classes import normalised_entropy
    from ferdata.core.io import read_table
    from ferdata.train.prior import prior

    data = tmp_path / "d"
    shutil.copytree(trained_dir, data, ignore=shutil.ignore_patterns("models"))
    prior(data, folds=2, epochs=1, train={"batch_size": 4, "image_size": 32, "lr": 0.01})
    rows = {r["split"]: r for r in compare(data)}
    soft, _ = read_table(data / "softlabels.parquet", "softlabels")
    train = soft[soft["split"] == "train"]
    conf = float((1 - normalised_entropy(np.stack(train["distribution"].to_numpy()).astype(float))).mean())
    assert set(rows) == {"train", "val", "test"} and rows["train"]["faces"] == len(train)
    assert np.isclose(rows["train"]["conf_model"], conf) and "kl_model" in rows["train"]  # synth has true_dist
    assert rows["train"]["conf_oof"] != rows["train"]["conf_model"]
