import json

import numpy as np
import pytest

from ferdata.core.errors import FerdataError
from ferdata.report import confusion, report


def test_confusion_counts_true_by_predicted():
    assert confusion(np.array([0, 1, 1]), np.array([0, 0, 1]), 2).tolist() == [[1, 0], [1, 1]]


def test_report_stage(trained_dir, tmp_path):
    metrics = report(trained_dir, tmp_path)
    assert (tmp_path / "class_balance.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    from ferdata.evaluate import METRICS

    for key in ("test_accuracy_true", "soft_label_kl", "noise_auroc", "flips_recovered"):
        assert key in saved
    assert set(saved) <= set(METRICS) and all(isinstance(v, (int, float)) for v in saved.values())  # metrics only
    assert saved["flipped_labels"] > 0 and 0 <= saved["noise_auroc"] <= 1
    for name in ("va.png", "uncertainty.png", "ambiguous.png"):
        assert (tmp_path / name).stat().st_size > 5_000, name
    page = (tmp_path / "index.html").read_text()
    assert page.count('<img src="data:image/png;base64,') == 5  # every figure inlined
    assert "http://" not in page and "https://" not in page and "<script" not in page  # nothing fetched
    assert "Noisy-label detection (AUROC)" in page and "predicts the true distribution" in page


def test_report_is_deterministic(trained_dir, tmp_path):
    report(trained_dir, tmp_path / "a")
    report(trained_dir, tmp_path / "b")
    for name in ("metrics.json", "index.html", "ambiguous.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_collect_sweep_makes_one_table_and_a_curve(tmp_path):
    import json

    from ferdata.report import collect_sweep

    for ratio in (0.0, 0.3):
        for method, acc in (("ce", 0.7 - ratio), ("ldlva", 0.8 - ratio / 2)):
            out = tmp_path / "sweep" / f"r{ratio}" / method
            out.mkdir(parents=True)
            (out / "metrics.json").write_text(
                json.dumps({"test_accuracy_true": acc, "noise_auroc": 0.9 if ratio else None})
            )
    table = collect_sweep(tmp_path / "sweep", tmp_path / "summary")
    assert list(table["method"]) == ["ce", "ce", "ldlva", "ldlva"] and list(table["ratio"]) == [0.0, 0.3, 0.0, 0.3]
    assert (tmp_path / "summary/sweep.csv").read_text().startswith("method,ratio,test_accuracy_true")
    assert (tmp_path / "summary/noise_recovery.png").stat().st_size > 10_000
    with pytest.raises(FerdataError, match="no \\*/\\*/metrics.json"):
        collect_sweep(tmp_path / "summary")


def test_faces_align_could_not_use_are_counted_named_and_kept_out(trained_dir, tmp_path):
    """Two faces lose their landmarks: align leaves them out and says where they are listed; the export
    has no row for them and the report counts them (before, they vanished from every output)."""
    import shutil

    from typer.testing import CliRunner

    from ferdata.cli import app
    from ferdata.core.io import INTEGRITY_KEYS, read_table, write_table

    data = tmp_path / "d"
    shutil.copytree(trained_dir, data, ignore=shutil.ignore_patterns("models", "softlabels.parquet"))
    manifest, meta = read_table(data / "manifest.parquet", "manifest")
    lost = manifest["sample_id"].iloc[:2].tolist()
    manifest.loc[manifest["sample_id"].isin(lost), "landmarks"] = None
    meta = {k: v for k, v in meta.items() if k not in INTEGRITY_KEYS}
    write_table(manifest, data / "manifest.parquet", "manifest", meta)
    run = CliRunner()
    out = run.invoke(app, ["align", "--data", str(data), "--detector", "landmarks", "--workers", "1"])
    assert out.exit_code == 0 and "the 2 faces not aligned are left out of every later stage" in out.output
    for argv in (["shard"], ["noise"], ["sample", "--per-video", "3"], ["va", "--k", "3"]):
        assert run.invoke(app, [*argv, "--data", str(data)]).exit_code == 0
    argv = ["--data", str(data), "--models", str(tmp_path / "m")]
    assert run.invoke(app, ["train", *argv, "--epochs", "1", "--batch-size", "8", "--image-size", "32"]).exit_code == 0
    assert run.invoke(app, ["export", *argv]).exit_code == 0
    soft, _ = read_table(data / "softlabels.parquet", "softlabels")
    assert not set(lost) & set(soft["sample_id"])
    metrics = report(data, tmp_path / "r", models_dir=tmp_path / "m")
    assert metrics["not_aligned"] == 2
    page = (tmp_path / "r" / "index.html").read_text()
    assert "2 of 48 (no_landmarks 2): in no soft label; aligned.parquet lists them with their reason" in page


def test_undetected_faces_name_the_centre_crop_option():
    import pandas as pd

    from ferdata.report import describe_not_aligned

    left = pd.DataFrame({"status": ["no_face", "no_face", "unreadable"]})
    line = describe_not_aligned(left, 10)
    assert line.startswith("3 of 10 (no_face 2, unreadable 1)") and "align.no_face: center_crop" in line
    assert describe_not_aligned(left.iloc[:0], 10) == "none (all 10 faces of the manifest were aligned)"


def test_a_report_on_labels_without_injected_noise_reads_as_a_dataset_not_a_simulation(trained_dir, tmp_path):
    import shutil

    from ferdata.export import export
    from ferdata.noise import noise
    from ferdata.sample import sample
    from ferdata.train.loop import train
    from ferdata.train.settings import TrainSettings

    data = tmp_path / "d"
    shutil.copytree(trained_dir, data, ignore=shutil.ignore_patterns("models", "softlabels.parquet"))
    noise(data, ratio=0.0)
    sample(data, epochs=2, per_video=3)
    train(data, tmp_path / "m", TrainSettings(epochs=2, batch_size=8, image_size=32, lr=0.01))
    soft = export(data, tmp_path / "m", margin=0.0)  # margin 0: every disagreement is suspected
    metrics = report(data, tmp_path / "r", models_dir=tmp_path / "m")
    assert 0 <= metrics["majority_baseline_accuracy"] <= 1 and "noise_auroc" not in metrics
    page = (tmp_path / "r" / "index.html").read_text()
    assert "none: the labels as the dataset gives them" in page and "Injected noise</th><td>0%" not in page
    assert "small_cnn, 2 epochs at 32 px" in page and "Rejected at download</th><td>none" in page
    suspected = soft[(soft["split"] == "train") & soft["suspected_noisy"]]
    assert f"Training labels most likely wrong: {len(suspected)} suspected" in page
    first = suspected.assign(p=[d[i] for d, i in zip(suspected["distribution"], suspected["label_index"])])
    first = first.sort_values(["p", "sample_id"]).iloc[0]
    assert f"<td>1</td><td>{first['sample_id']}</td><td>{first['image']}</td>" in page  # ranked, with its image
    assert "<th>flipped</th>" not in page  # no truth to compare with


def test_class_colours_are_fixed_per_canonical_class():
    from ferdata.figures import class_colour

    assert class_colour("happy") == class_colour("happy") != class_colour("sad")
    assert class_colour("neutral") == "#7f7f7f"


def test_memorised_training_soft_labels_are_called_out():
    import pandas as pd

    from ferdata.report import describe_training_distributions

    soft = pd.DataFrame({"split": ["train"] * 3 + ["test"] * 2, "confidence": [0.99, 0.99, 1.0, 0.9, 0.92]})
    line = describe_training_distributions(soft, {"settings": {"train_distribution": "model"}})
    assert "WARNING" in line and "0.993 vs 0.910" in line and "export.train_distribution: out_of_fold" in line
    soft["confidence"] = [0.5, 0.6, 0.55, 0.5, 0.55]
    assert "WARNING" not in describe_training_distributions(soft, {"settings": {}})
    assert describe_training_distributions(soft, {"settings": {"train_distribution": "out_of_fold"}}).startswith(
        "out of fold"
    )
