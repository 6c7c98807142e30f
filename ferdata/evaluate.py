"""How good a set of distributions is: the one place every metric ferdata reports is computed.

The report stage, the noise sweep and every benchmark call :func:`score`, so a figure in metrics.json,
in ``sweep.csv`` and in a benchmark table means the same thing. Against a face's true distribution
(synth's, FER+'s crowd votes, JAFFE's ratings) it gives accuracy against its top class and the usual
label-distribution measures (Geng, "Label Distribution Learning", 2016): Chebyshev, Clark, Canberra and
KL (0 is perfect) and cosine and intersection (1 is perfect). Against injected noise it gives how well
``1 - p(given label)`` and the uncertainty rank the flipped labels (AUROC) and how many flips the soft
label undoes. :func:`mean_interval` and :func:`paired_interval` summarise a metric over seeds.

Needs numpy, pandas and scipy only (no torch).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ferdata.core.classes import class_index

EPS = 1e-6  # predictions are floored here before KL (a 0 where the truth has mass would be infinite)

# Label-distribution measures: name -> (what it says, lower is better)
DISTANCES: dict[str, tuple[str, bool]] = {
    "kl": ("KL(true || distribution)", True),
    "chebyshev": ("largest absolute difference of one class's probability", True),
    "clark": ("sqrt of sum (p - q)^2 / (p + q)^2", True),
    "canberra": ("sum |p - q| / (p + q)", True),
    "cosine": ("cosine similarity", False),
    "intersection": ("sum of min(p, q)", False),
}


def auroc(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for the boolean ``positives`` (ties count half); NaN when
    either class is empty."""
    from scipy.stats import rankdata

    positives = np.asarray(positives, bool)
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _floored(q: np.ndarray, eps: float = EPS) -> np.ndarray:
    q = np.clip(np.asarray(q, np.float64), eps, None)
    return q / q.sum(1, keepdims=True)


def kl_divergence(p: np.ndarray, q: np.ndarray, eps: float = EPS) -> np.ndarray:
    """KL(p || q) per row, with q floored at ``eps`` and renormalised."""
    p, q = np.asarray(p, np.float64), _floored(q, eps)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p / q), 0.0)
    return terms.sum(1)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den where den > 0, else 0 (a class both give no mass adds nothing)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)


def distances(true: np.ndarray, pred: np.ndarray) -> dict[str, np.ndarray]:
    """Every measure of :data:`DISTANCES` per row, between true distributions and predicted ones."""
    p, q = np.asarray(true, np.float64), np.asarray(pred, np.float64)
    diff, total = np.abs(p - q), p + q
    norms = np.linalg.norm(p, axis=1) * np.linalg.norm(q, axis=1)
    return {
        "kl": kl_divergence(p, q),
        "chebyshev": diff.max(1),
        "clark": np.sqrt(_ratio(diff**2, total**2).sum(1)),
        "canberra": _ratio(diff, total).sum(1),
        "cosine": (p * q).sum(1) / np.where(norms > 0, norms, 1.0),
        "intersection": np.minimum(p, q).sum(1),
    }


# Every metric score() gives, in the order the report page shows it: name -> (title, what it means).
METRICS: dict[str, tuple[str, str]] = {
    "test_accuracy_true": (
        "Test accuracy vs the true distribution",
        "share of test faces whose predicted class is the top class of their true label distribution",
    ),
    "test_accuracy": ("Test accuracy vs the clean label", "share of test faces whose predicted class is their label"),
    "majority_baseline_accuracy": (
        "Majority-class baseline",
        "test accuracy of always answering the most frequent training label (vs the true distribution's "
        "top class where every test face has one, else the clean label): what the accuracies above must beat",
    ),
    "test_kl": ("Test KL to the truth", "mean KL(true distribution || prediction) on test faces; 0 is perfect"),
    "soft_label_kl": (
        "Soft-label KL to the truth",
        "mean KL(true distribution || soft label) on training faces; 0 is perfect",
    ),
    "noise_auroc": (
        "Noisy-label detection (AUROC)",
        "how well 1 - p(given label) ranks flipped training labels above clean ones; 0.5 is chance",
    ),
    "noise_auroc_uncertainty": (
        "Noisy-label detection by uncertainty (AUROC)",
        "the same ranking by the soft label's uncertainty",
    ),
    "suspected_precision": (
        "Precision of suspected_noisy",
        "share of training labels the export flags suspected_noisy that were really flipped",
    ),
    "flips_recovered": (
        "Flipped labels recovered",
        "share of flipped training labels whose soft label's top class is the clean label",
    ),
    "train_accuracy": (
        "Training soft labels on the clean label",
        "share of training faces whose soft label's top class is their clean label",
    ),
    "val_accuracy_true": ("Validation accuracy vs the true distribution", "as the test figure, on validation faces"),
    "val_accuracy": ("Validation accuracy vs the clean label", "as the test figure, on validation faces"),
    "val_kl": ("Validation KL to the truth", "as the test figure, on validation faces"),
    "flipped_labels": ("Flipped training labels", "how many training labels the noise stage flipped"),
    "not_aligned": (
        "Faces not aligned",
        "faces of the manifest that align could not use (no face found, unreadable): in no later table",
    ),
}
_WHERE = {"test": "test predictions", "val": "validation predictions", "soft_label": "training soft labels"}
for _where, _what in _WHERE.items():
    for _name, (_says, _lower) in DISTANCES.items():
        if _name != "kl":
            METRICS[f"{_where}_{_name}"] = (
                f"{_what.capitalize()}: {_name}",
                f"mean {_says} between the true distribution and the {_what[:-1]}; "
                + ("0 is perfect" if _lower else "1 is perfect"),
            )


def score(
    table: pd.DataFrame, labels: pd.DataFrame, manifest: pd.DataFrame, classes: Sequence[str]
) -> dict[str, float]:
    """The metrics of :data:`METRICS` that the data allow (true distributions, injected noise), by key.

    ``table`` has ``sample_id, split, distribution`` (in ``classes`` order) and an uncertainty (the
    learned table's ``uncertainty``, or the soft labels' see :func:`uncertainty_of`); ``suspected_noisy``
    when it has one. ``labels``
    is labels.parquet (canonical ids: label, clean_label, flipped) and ``manifest`` gives ``true_dist``.
    Distributions are renormalised before scoring."""
    df = table.drop(columns=[c for c in ("label", "clean_label", "flipped") if c in table]).merge(
        labels[["sample_id", "label", "clean_label", "flipped"]], on="sample_id"
    )
    df = df.merge(manifest[["sample_id", "true_dist"]], on="sample_id", how="left")
    dist = np.stack(df["distribution"].to_numpy()).astype(np.float64) if len(df) else np.zeros((0, len(classes)))
    dist /= dist.sum(1, keepdims=True)
    pred = dist.argmax(1)
    given = class_index(df["label"].to_numpy(), list(classes))
    clean = class_index(df["clean_label"].to_numpy(), list(classes))
    split = df["split"].to_numpy()
    out: dict[str, float] = {}
    for s in ("train", "val", "test"):
        rows = split == s
        if rows.any():
            out[f"{s}_accuracy"] = float((pred[rows] == clean[rows]).mean())
    has_true = df["true_dist"].notna().to_numpy()
    for s, where in (("train", "soft_label"), ("val", "val"), ("test", "test")):
        rows = (split == s) & has_true
        if not rows.any():
            continue
        true = np.stack(df.loc[rows, "true_dist"].to_numpy()).astype(np.float64)
        if s != "train":
            out[f"{s}_accuracy_true"] = float((pred[rows] == true.argmax(1)).mean())
        for name, values in distances(true, dist[rows]).items():
            out[f"{where}_{name}"] = float(values.mean())
    train = split == "train"
    test = split == "test"
    if test.any() and train.any():
        majority = np.bincount(given[train & (given >= 0)], minlength=len(classes)).argmax()
        reference = clean[test]
        if has_true[test].all():
            reference = np.stack(df.loc[test, "true_dist"].to_numpy()).argmax(1)
        out["majority_baseline_accuracy"] = float((reference == majority).mean())
    flipped = df["flipped"].to_numpy(bool) & train
    out["flipped_labels"] = int(flipped.sum())
    if flipped.any() and (train & ~flipped).any():
        p_given = dist[np.arange(len(df)), given]
        out["noise_auroc"] = auroc(1.0 - p_given[train], flipped[train])
        out["noise_auroc_uncertainty"] = auroc(uncertainty_of(df)[train], flipped[train])
        if "suspected_noisy" in df:
            suspected = df["suspected_noisy"].to_numpy(bool) & train
            out["suspected_precision"] = float(flipped[suspected].mean()) if suspected.any() else 0.0
        out["flips_recovered"] = float((pred[flipped] == clean[flipped]).mean())
    return {k: out[k] for k in METRICS if k in out}


def uncertainty_of(table: pd.DataFrame) -> np.ndarray:
    """Each row's uncertainty: the learned table's, or a soft-label file's ``method_uncertainty`` where the
    method learned one (LDLVA's 1 - lambda, AKT's u) and 1 - confidence (normalised entropy) elsewhere."""
    if "uncertainty" in table:
        return table["uncertainty"].to_numpy(np.float64)
    own = table["method_uncertainty"].to_numpy(np.float64)
    return np.where(np.isnan(own), 1.0 - table["confidence"].to_numpy(np.float64), own)


def label_issue_scores(given: np.ndarray, pred_probs: np.ndarray, flipped: np.ndarray) -> dict[str, float]:
    """cleanlab's view of the same labels from out-of-fold ``pred_probs``: the AUROC of 1 - its label
    quality score against ``flipped``, and the precision and recall of ``find_label_issues`` (needs
    ``pip install cleanlab``, the ``bench`` extra)."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    probs = np.asarray(pred_probs, np.float64)
    probs = probs / probs.sum(1, keepdims=True)
    flipped = np.asarray(flipped, bool)
    issues = find_label_issues(given, probs)
    hit = int((issues & flipped).sum())
    return {
        "cleanlab_auroc": auroc(1.0 - get_label_quality_scores(given, probs), flipped),
        "cleanlab_issues": int(issues.sum()),
        "cleanlab_precision": hit / max(int(issues.sum()), 1),
        "cleanlab_recall": hit / max(int(flipped.sum()), 1),
    }


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the mean of ``values`` (one per seed) with its Student-t interval; the interval
    is NaN with fewer than two values."""
    from scipy.stats import t

    x = np.asarray([v for v in values if v == v], np.float64)  # NaN (a metric a run lacks) left out
    if len(x) == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(x.mean())
    if len(x) < 2:
        return mean, float("nan"), float("nan")
    half = float(t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))
    return mean, mean - half, mean + half


def paired_interval(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """The mean of ``a - b`` over paired seeds with its t interval (``a``, ``b``: one value per seed, the
    same seeds in the same order)."""
    if len(a) != len(b):
        raise ValueError(f"paired values need the same seeds: {len(a)} against {len(b)}")
    return mean_interval([x - y for x, y in zip(a, b)], confidence)
