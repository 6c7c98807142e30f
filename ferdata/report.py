"""The report stage: metrics.json and figures (class balance, confusion matrix) for one dataset."""

from __future__ import annotations

import json

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from ferdata.classes import class_index
from ferdata.errors import FerdataError
from ferdata.io import atomic_file, locate, read_table, write_json

METRICS = "metrics.json"
PREDICTIONS = "predictions.csv"  # DVC confusion plot data


def auroc(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for the boolean ``positives`` (ties count half)."""
    positives = np.asarray(positives, bool)
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def kl_divergence(p: np.ndarray, q: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """KL(p || q) per row, with q floored at ``eps`` and renormalised."""
    q = np.clip(q, eps, None)
    q = q / q.sum(1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p / q), 0.0)
    return terms.sum(1)


def confusion(true: np.ndarray, pred: np.ndarray, n: int) -> np.ndarray:
    """Counts[true, pred]."""
    out = np.zeros((n, n), np.int64)
    np.add.at(out, (true, pred), 1)
    return out


def compute_metrics(soft: pd.DataFrame, labels: pd.DataFrame, manifest: pd.DataFrame, classes: list[str]) -> dict[str, Any]:
    """Accuracy per split, noisy-label detection and recovery, and fidelity to the true distributions."""
    df = soft.merge(labels[["sample_id", "clean_label", "flipped"]], on="sample_id").merge(
        manifest[["sample_id", "true_dist"]], on="sample_id")
    dist = np.stack(df["distribution"].to_numpy()).astype(np.float64)
    pred = dist.argmax(1)
    clean = class_index(df["clean_label"].to_numpy(), classes)
    given = class_index(df["label"].to_numpy(), classes)
    out: dict[str, Any] = {"n": {s: int((df["split"] == s).sum()) for s in ("train", "val", "test")}}
    for split in ("train", "val", "test"):
        m = (df["split"] == split).to_numpy()
        if m.any():
            out[f"{split}_acc_clean_label"] = float((pred[m] == clean[m]).mean())
    has_true = df["true_dist"].notna().to_numpy()
    if has_true.any():
        true = np.stack(df.loc[has_true, "true_dist"].to_numpy()).astype(np.float64)
        split = df.loc[has_true, "split"].to_numpy()
        p = dist[has_true]
        for s in ("train", "val", "test"):
            m = split == s
            if m.any():
                out[f"{s}_acc_true_argmax"] = float((p[m].argmax(1) == true[m].argmax(1)).mean())
                out[f"{s}_kl_true"] = float(kl_divergence(true[m], p[m]).mean())
    train = (df["split"] == "train").to_numpy()
    flipped = df["flipped"].to_numpy(bool) & train
    out["train_flipped"] = int(flipped.sum())
    if flipped.any() and (train & ~flipped).any():
        p_given = dist[np.arange(len(df)), given]
        out["noise_auroc_given_prob"] = auroc(1.0 - p_given[train], flipped[train])
        out["noise_auroc_uncertainty"] = auroc(df["uncertainty"].to_numpy()[train], flipped[train])
        out["noise_suspected_precision"] = float(flipped[df["suspected_noisy"].to_numpy() & train].mean()) if (df["suspected_noisy"] & train).any() else 0.0
        out["flips_recovered"] = float((pred[flipped] == clean[flipped]).mean())
    out["classes"] = classes
    return out


def write_predictions(ids: pd.Series, truth: np.ndarray, pred: np.ndarray, classes: list[str], path: Path) -> None:
    """The evaluated faces as ``sample_id, actual, predicted`` (class names): DVC's confusion plot data."""
    names = np.asarray(classes, dtype=object)
    table = pd.DataFrame({"sample_id": ids.to_numpy(), "actual": names[truth], "predicted": names[pred]})
    with atomic_file(path) as tmp:
        table.to_csv(tmp, index=False, lineterminator="\n")


def report(data_dir: str | Path, reports_dir: str | Path, *, gallery: int = 12) -> dict[str, Any]:
    """Write ``metrics.json``, the figures (class balance, confusion, VA scatter, uncertainty by
    flipped/clean, the most ambiguous faces, the noise sweep's curve when there is one) and one
    self-contained ``index.html`` under ``reports_dir``."""
    from ferdata import figures

    data_dir, reports_dir = Path(data_dir), Path(reports_dir)
    soft, meta = read_table(locate(data_dir, "softlabels.parquet"), "softlabels", hint="run `ferdata export` first")
    labels, _ = read_table(locate(data_dir, "labels.parquet"), "labels", hint="run `ferdata noise` first")
    manifest, man_meta = read_table(locate(data_dir, "manifest.parquet"), "manifest", hint="run `ferdata download` first")
    classes = meta["classes"]
    metrics = compute_metrics(soft, labels, manifest, classes)
    metrics["method"] = meta.get("method")
    metrics["noise"] = meta.get("noise")
    write_json(metrics, reports_dir / METRICS)
    figures.plot_class_balance(labels, classes, reports_dir / "class_balance.png")
    split = next((s for s in ("test", "val", "train") if (soft["split"] == s).any()), "train")
    rows = soft[soft["split"] == split].merge(manifest[["sample_id", "true_dist"]], on="sample_id")
    pred = np.stack(rows["distribution"].to_numpy()).argmax(1) if len(rows) else np.zeros(0, np.int64)
    if len(rows) and rows["true_dist"].notna().all():
        truth, what = np.stack(rows["true_dist"].to_numpy()).argmax(1), "argmax of the true distribution"
    else:
        truth, what = class_index(rows["label"].to_numpy(), classes), f"{split} label"
    figures.plot_confusion(confusion(truth, pred, len(classes)), classes, f"{split.capitalize()} confusion ({what})",
                   reports_dir / "confusion.png")
    write_predictions(rows["sample_id"], truth, pred, classes, reports_dir / PREDICTIONS)
    pictures = [("Class balance per split", reports_dir / "class_balance.png"),
                (f"{split.capitalize()} confusion ({what})", reports_dir / "confusion.png")]
    va_path = locate(data_dir, "va.parquet")
    if va_path.is_file():
        va, _ = read_table(va_path, "va")
        pictures.append(("Valence/arousal by clean label", figures.plot_va(va, labels, classes, reports_dir / "va.png")))
    pictures.append(("Uncertainty of training soft labels, flipped vs clean",
                     figures.plot_uncertainty(soft, labels, reports_dir / "uncertainty.png")))
    ambiguous = figures.most_ambiguous(soft, gallery)
    if len(ambiguous):
        from ferdata.loader import load_images

        images = load_images(locate(data_dir, "shards"), ambiguous["sample_id"].tolist(), size=96)
        pictures.append((f"The {len(ambiguous)} most ambiguous training faces and their soft labels",
                         figures.plot_gallery(ambiguous, images, classes, reports_dir / "ambiguous.png")))
    sweep = reports_dir.parent / "sweep" / f"{reports_dir.name}-summary" / "noise_recovery.png"
    if sweep.is_file():
        pictures.append(("Noise sweep: accuracy and detection against the noise ratio", sweep))
    figures.write_html(reports_dir / "index.html", title=f"ferdata report: {man_meta.get('dataset', data_dir.name)} "
                       f"({metrics['method']})", metrics=metrics, figures=pictures)
    return metrics


def summarize(metrics: dict[str, Any]) -> str:
    """One line of headline numbers."""
    keys = ("test_acc_true_argmax", "test_acc_clean_label", "noise_auroc_given_prob", "flips_recovered")
    return "report: " + ", ".join(f"{k} {metrics[k]:.3f}" for k in keys if k in metrics)


SWEEP_COLUMNS = ("test_acc_true_argmax", "test_acc_clean_label", "noise_auroc_given_prob", "noise_auroc_uncertainty",
                 "flips_recovered", "train_kl_true")


def collect_sweep(reports_dir: str | Path, out_dir: str | Path | None = None) -> pd.DataFrame:
    """One table of every ``metrics.json`` under a noise sweep's report folder (a row per method and
    ratio), written as ``sweep.csv`` beside ``noise_recovery.png`` in ``out_dir``."""
    reports_dir = Path(reports_dir)
    out_dir = Path(out_dir) if out_dir is not None else reports_dir
    rows = []
    for path in sorted(reports_dir.glob("*/*/" + METRICS)):
        metrics = json.loads(path.read_text())
        noise = metrics.get("noise") or {}
        rows.append({"method": metrics.get("method") or path.parent.name, "ratio": float(noise.get("ratio", 0.0)),
                     **{c: metrics.get(c) for c in SWEEP_COLUMNS}})
    if not rows:
        raise FerdataError(f"no */*/{METRICS} under {reports_dir}; run the sweep's report stages first")
    table = pd.DataFrame(rows).sort_values(["method", "ratio"], kind="stable").reset_index(drop=True)
    with atomic_file(out_dir / "sweep.csv") as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    from ferdata.figures import plot_sweep

    plot_sweep(table, out_dir / "noise_recovery.png")
    return table


