"""The report stage: metrics.json, figures and one self-contained page for one dataset; and the table
and curve of a noise sweep (``ferdata sweep``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ferdata.core.classes import class_index
from ferdata.core.errors import FerdataError
from ferdata.core.io import atomic_file, write_json
from ferdata.core.settings import Settings, option
from ferdata.core.stage import Stage
from ferdata.core.tables import TABLES
from ferdata.evaluate import METRICS, score, uncertainty_of

FIGURES = ("fig_curves", "fig_class_balance", "fig_confusion", "fig_va", "fig_uncertainty", "fig_ambiguous")


@dataclass(frozen=True)
class ReportSettings(Settings):
    """The ``report`` section of params.yaml."""

    section = "report"
    gallery: int = option(12, "how many of the most ambiguous training faces the gallery shows", min=0)


STAGE = Stage(
    "report",
    "Write metrics.json, figures and the report page.",
    __name__,
    ReportSettings,
    reads=("softlabels", "labels", "manifest", "va", "shards", "aligned", "rejected"),
    may_read=("train_log",),  # the training curves, when the models folder is given
    writes=("metrics", "predictions", "report_page", *FIGURES),
)


@dataclass(frozen=True)
class SweepSettings(Settings):
    """The ``sweep`` section of a noise sweep's params: the grid DVC expands (pipelines/noise-sweep)."""

    section = "sweep"
    ratios: tuple[float, ...] = option((0.0, 0.1, 0.2, 0.3), "noise ratios, one fork of the dataset each")
    methods: tuple[str, ...] = option(("ce", "ldlva"), "methods trained at every ratio")


SWEEP = Stage(
    "sweep",
    "Collect a noise sweep's metrics into sweep.csv and the noise-recovery curve.",
    __name__,
    SweepSettings,
    writes=("sweep_table", "sweep_curve"),
)


def confusion(true: np.ndarray, pred: np.ndarray, n: int) -> np.ndarray:
    """Counts[true, pred]."""
    out = np.zeros((n, n), np.int64)
    np.add.at(out, (true, pred), 1)
    return out


def write_predictions(ids: pd.Series, truth: np.ndarray, pred: np.ndarray, classes: list[str], path: Path) -> None:
    """The evaluated faces as ``sample_id, actual, predicted``: DVC's confusion plot data. Classes are
    written ``0 neutral``, ``1 happy``, ... so that DVC's alphabetical axes keep the canonical order."""
    names = np.asarray([f"{i} {c}" for i, c in enumerate(classes)], dtype=object)
    table = pd.DataFrame({"sample_id": ids.to_numpy(), "actual": names[truth], "predicted": names[pred]})
    with atomic_file(path) as tmp:
        table.to_csv(tmp, index=False, lineterminator="\n")


def report(
    data_dir: str | Path,
    reports_dir: str | Path,
    settings: ReportSettings | None = None,
    *,
    models_dir: str | Path | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Write ``metrics.json``, the figures (class balance, confusion, VA scatter, uncertainty by
    flipped/clean, the most ambiguous faces) and one self-contained ``index.html`` under ``reports_dir``."""
    from ferdata import figures

    with STAGE.start(settings, options, data=data_dir, reports=reports_dir, models=models_dir) as run:
        soft, meta = run.read("softlabels")
        labels, _ = run.read("labels")
        manifest, man_meta = run.read("manifest")
        classes = meta["classes"]
        metrics = score(soft, labels, manifest, classes)
        aligned, _ = run.read("aligned")
        left = aligned[aligned["status"] != "ok"]
        metrics["not_aligned"] = len(left)
        write_json(metrics, run.output("metrics"))
        figures.plot_class_balance(labels, classes, run.output("fig_class_balance"))
        split = next((s for s in ("test", "val", "train") if (soft["split"] == s).any()), "train")
        rows = soft[soft["split"] == split].merge(manifest[["sample_id", "true_dist"]], on="sample_id")
        pred = np.stack(rows["distribution"].to_numpy()).argmax(1) if len(rows) else np.zeros(0, np.int64)
        if len(rows) and rows["true_dist"].notna().all():
            truth, what = np.stack(rows["true_dist"].to_numpy()).argmax(1), "argmax of the true distribution"
        else:
            truth, what = rows["label_index"].to_numpy(np.int64), f"{split} label"
        title = f"{split.capitalize()} confusion ({what})"
        figures.plot_confusion(confusion(truth, pred, len(classes)), classes, title, run.output("fig_confusion"))
        write_predictions(rows["sample_id"], truth, pred, classes, run.output("predictions"))
        pictures = [("Class balance per split", run.output("fig_class_balance")), (title, run.output("fig_confusion"))]
        if "models" in run.folders and run.input("train_log").is_file():
            log = json.loads(run.input("train_log").read_text())
            pictures.insert(0, ("Training curves", figures.plot_curves(log["epochs"], run.output("fig_curves"))))
        va, _ = run.read("va")
        pictures.append(("Valence/arousal by clean label", figures.plot_va(va, labels, classes, run.output("fig_va"))))
        pictures.append(
            (
                "Uncertainty of training soft labels, flipped vs clean",
                figures.plot_uncertainty(
                    soft.assign(uncertainty=uncertainty_of(soft)), labels, run.output("fig_uncertainty")
                ),
            )
        )
        noisy = bool(labels["flipped"].any())
        ambiguous = figures.most_ambiguous(soft, run.settings.gallery)
        clean = labels.set_index("sample_id")["clean_label"].reindex(ambiguous["sample_id"])
        ambiguous = ambiguous.assign(clean=class_index(clean.to_numpy(), classes))
        if len(ambiguous):
            from ferdata.core.shards import load_images

            images = load_images(run.input("shards"), ambiguous["sample_id"].tolist(), size=96)
            pictures.append(
                (
                    f"The {len(ambiguous)} most ambiguous training faces and their soft labels",
                    figures.plot_gallery(ambiguous, images, classes, run.output("fig_ambiguous"), noisy=noisy),
                )
            )
        dataset = man_meta.get("dataset", Path(data_dir).name)
        noise = meta.get("noise") or {}
        trained = meta.get("train") or {}
        rejected, _ = run.read("rejected")
        reasons = ", ".join(f"{k} {v}" for k, v in rejected["reason"].value_counts().sort_index().items())
        context = [
            ("Dataset", f"{dataset}: {len(soft)} labelled faces, {len(classes)} classes ({', '.join(classes)})"),
            (
                "Model",
                f"{meta.get('method')}, backbone {trained.get('backbone')}, {trained.get('epochs')} epochs at "
                f"{trained.get('image_size')} px; ferdata {meta.get('version')}",
            ),
            (
                "Injected noise",
                f"{float(noise.get('ratio') or 0):.0%} of training labels, {noise.get('mode')}"
                if noisy or float(noise.get("ratio") or 0) > 0
                else "none: the labels as the dataset gives them",
            ),
            ("Rejected at download", f"{len(rejected)} ({reasons})" if len(rejected) else "none"),
            ("Splits", describe_split_groups(man_meta.get("splits_by"), dataset)),
            ("Faces not aligned", describe_not_aligned(left, len(aligned))),
            ("Training soft labels", describe_training_distributions(soft, meta)),
            ("Settings hash", str(meta.get("settings_hash"))),
        ]
        figures.write_html(
            run.output("report_page"),
            title=f"ferdata report: {dataset} ({meta.get('method')})",
            headline=headline(metrics, meta.get("method"), dataset),
            context=context,
            metrics=metrics,
            names=METRICS,
            figures=pictures,
            tables=[suspected_table(soft, labels, classes, noisy=noisy)],
        )
        return metrics


SUSPECTED_ROWS = 30


def suspected_table(
    soft: pd.DataFrame, labels: pd.DataFrame, classes: list[str], *, noisy: bool
) -> tuple[str, pd.DataFrame]:
    """The training labels most likely wrong, as cleanlab users expect them: ``suspected_noisy`` faces
    ranked by the probability of their given label, lowest first, with their image paths."""
    train = soft[(soft["split"] == "train") & soft["suspected_noisy"]].copy()
    dist = np.stack(train["distribution"].to_numpy()) if len(train) else np.zeros((0, len(classes)))
    train["p_given"] = dist[np.arange(len(train)), train["label_index"].to_numpy()] if len(train) else []
    train = train.sort_values(["p_given", "sample_id"], kind="stable")
    top = train.head(SUSPECTED_ROWS)
    table = pd.DataFrame(
        {
            "rank": np.arange(1, len(top) + 1),
            "sample_id": top["sample_id"].to_numpy(),
            "image": top["image"].to_numpy(),
            "given": top["label_name"].to_numpy(),
            "suggested": top["predicted_name"].to_numpy(),
            "p(given)": top["p_given"].to_numpy(np.float64),
            "confidence": top["confidence"].to_numpy(np.float64),
        }
    )
    if noisy:  # the truth is known: say which suspicions are right
        table["flipped"] = labels.set_index("sample_id")["flipped"].reindex(top["sample_id"]).to_numpy()
    caption = (
        f"Training labels most likely wrong: {len(train)} suspected (suspected_noisy), the first "
        f"{len(top)} by the probability of their given label"
    )
    return caption, table


MEMORISED = 0.05  # training faces this much more confident than test faces: a warning on the page


def describe_training_distributions(soft: pd.DataFrame, meta: dict[str, Any]) -> str:
    """What a training face's distribution is, with a warning when they look memorised (far more confident
    than predictions for faces the model never saw)."""
    source = (meta.get("settings") or {}).get("train_distribution", "model")
    conf = soft.groupby("split")["confidence"].mean()
    if source == "out_of_fold":
        return "out of fold: each from a prior-stage model that never saw the face"
    line = "the method's soft labels (the model trained on these faces)"
    if "train" in conf and "test" in conf and conf["train"] - conf["test"] > MEMORISED:
        line += (
            f"; WARNING they are more confident than test predictions (mean confidence {conf['train']:.3f} vs "
            f"{conf['test']:.3f}), so they may be memorised rather than ambiguity-aware: export.train_distribution: "
            "out_of_fold exports held-out predictions instead"
        )
    return line


def describe_not_aligned(left: pd.DataFrame, total: int) -> str:
    """The faces align could not use, counted by reason, with where they are listed and the fix."""
    if left.empty:
        return f"none (all {total} faces of the manifest were aligned)"
    reasons = ", ".join(f"{k} {v}" for k, v in left["status"].value_counts().sort_index().items())
    line = f"{len(left)} of {total} ({reasons}): in no soft label; aligned.parquet lists them with their reason"
    return line + ("; align.no_face: center_crop keeps undetected faces" if (left["status"] == "no_face").any() else "")


def describe_split_groups(info: dict[str, Any] | None, dataset: str) -> str:
    """The manifest's record of how its splits keep people apart, in words (a warning when they do not)."""
    if not info:
        return "not recorded (a manifest from before ferdata recorded it)"
    if info["by"] == "image":
        return (
            f"WARNING: per image ({info['groups']} images, no subject information): one person's faces can sit "
            f"in train and test, so the test score flatters; set {dataset}.subject_pattern and download again"
        )
    how = f" (read with the {info['pattern']} pattern)" if info.get("pattern") else ""
    shared = info["shared_groups"]
    line = f"by {info['by']}{how}: {info['groups']} {info['by']}s, " + (
        f"WARNING {shared} of them in more than one split" if shared else "none in more than one split"
    )
    return line + (f"; {info['ungrouped']} faces without a {info['by']}" if info.get("ungrouped") else "")


def headline(metrics: dict[str, float], method: str | None, dataset: str) -> str:
    """One sentence from the run's own numbers, for the top of the page."""
    acc = metrics.get("test_accuracy_true", metrics.get("test_accuracy"))
    what = "the true distribution's top class" if "test_accuracy_true" in metrics else "the clean label"
    parts = [
        f"{method} on {dataset} predicts {what} for {acc:.0%} of test faces"
        if acc is not None
        else f"{method} on {dataset}"
    ]
    if "noise_auroc" in metrics:
        parts.append(
            f"its soft labels rank the {metrics['flipped_labels']} flipped training labels above clean ones "
            f"with AUROC {metrics['noise_auroc']:.2f} and restore the clean label for "
            f"{metrics['flips_recovered']:.0%} of them"
        )
    if "soft_label_kl" in metrics:
        parts.append(f"their mean KL to the true distribution is {metrics['soft_label_kl']:.2f}")
    return "; ".join(parts) + "."


def summarize(metrics: dict[str, Any]) -> str:
    """One line of headline numbers."""
    keys = ("test_accuracy_true", "test_accuracy", "noise_auroc", "flips_recovered")
    return "report: " + ", ".join(f"{k} {metrics[k]:.3f}" for k in keys if k in metrics)


SWEEP_COLUMNS = (
    "test_accuracy_true",
    "test_accuracy",
    "noise_auroc",
    "noise_auroc_uncertainty",
    "flips_recovered",
    "soft_label_kl",
)


def collect_sweep(
    reports_dir: str | Path, out_dir: str | Path | None = None, settings: SweepSettings | None = None
) -> pd.DataFrame:
    """One table of every ``metrics.json`` under a noise sweep's report folder (a row per method and
    ratio), written as ``sweep.csv`` beside ``noise_recovery.png`` in ``out_dir``."""
    reports_dir = Path(reports_dir)
    with SWEEP.start(settings, reports=out_dir if out_dir is not None else reports_dir) as run:
        metrics_file = TABLES["metrics"].file
        rows = []
        for path in sorted(reports_dir.glob("*/*/" + metrics_file)):
            metrics = json.loads(path.read_text())
            method, ratio = path.parent.name, path.parent.parent.name  # the sweep's layout: r<ratio>/<method>
            try:
                ratio = float(ratio.removeprefix("r"))
            except ValueError:
                raise FerdataError(f"{path}: expected <report folder>/r<ratio>/<method>/{metrics_file}") from None
            rows.append({"method": method, "ratio": ratio, **{c: metrics.get(c) for c in SWEEP_COLUMNS}})
        if not rows:
            raise FerdataError(f"no */*/{metrics_file} under {reports_dir}; run the sweep's report stages first")
        table = pd.DataFrame(rows).sort_values(["method", "ratio"], kind="stable").reset_index(drop=True)
        with atomic_file(run.output("sweep_table")) as tmp:
            table.to_csv(tmp, index=False, float_format="%.4f")
        from ferdata.figures import plot_sweep

        plot_sweep(table, run.output("sweep_curve"))
        return table
