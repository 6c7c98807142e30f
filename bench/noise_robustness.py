"""Noise robustness of every training method beside cleanlab, on one table.

For each symmetric noise ratio: inject noise into the training labels, train every method on the same
plan, backbone and seed, and measure
  - clean-test accuracy (against the argmax of the true distribution when the dataset has one, else
    against the clean test label);
  - noisy-label detection AUROC against ``flipped``: ours with score = 1 - distribution[given label]
    and with the method's uncertainty; cleanlab's ``get_label_quality_scores`` (1 - quality) and
    ``find_label_issues`` (precision/recall) on out-of-fold CE predictions of the same backbone
    (subject-grouped folds);
  - soft-label fidelity on training faces: mean KL(true distribution || exported distribution), beside
    the one-hot given label;
  - the share of flipped labels whose exported top class is the clean label.

Usage (after `dvc repro` has built data/synth):
    python bench/noise_robustness.py --ratios 0,0.1,0.2,0.3 --methods ce,ls,ldlva,arbex,akt
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ferdata.classes import class_index
from ferdata.io import read_table, write_table
from ferdata.noise import noise
from ferdata.report import auroc, kl_divergence
from ferdata.sample import sample
from ferdata.train.loop import LEARNED, TrainConfig, train

TABLES = ("manifest.parquet", "shard_index.parquet", "va.parquet", "knn.parquet")


def prepare(src: Path, work: Path, *, ratio: float, seed: int, epochs: int, per_video: int) -> Path:
    """A dataset folder sharing ``src``'s shards, with its own noisy labels and epoch plan."""
    work.mkdir(parents=True, exist_ok=True)
    for name in TABLES:
        shutil.copy(src / name, work / name)
    (work / "shards").symlink_to((src / "shards").resolve())
    noise(work, ratio=ratio, seed=seed)
    sample(work, epochs=epochs, per_video=per_video, seed=seed)
    return work


def train_method(data: Path, models: Path, cfg: TrainConfig) -> pd.DataFrame:
    """Train one method and return what it learned for every labelled face."""
    train(data, models, cfg)
    return read_table(models / LEARNED, "learned")[0]


def out_of_fold_probs(data: Path, work: Path, cfg: TrainConfig, *, folds: int, epochs: int, per_video: int, seed: int) -> np.ndarray:
    """CE predictions for every training face from a model that never saw it (subject-grouped folds)."""
    labels, meta = read_table(data / "labels.parquet", "labels")
    manifest, _ = read_table(data / "manifest.parquet", "manifest")
    train_rows = labels[labels["split"] == "train"]
    subjects = manifest.set_index("sample_id").loc[train_rows["sample_id"], "subject_id"].to_numpy()
    groups = np.random.default_rng(seed).permutation(np.unique(subjects))
    fold_of = {s: i % folds for i, s in enumerate(groups)}
    probs = np.zeros((len(train_rows), len(meta["classes"])))
    for f in range(folds):
        fold_dir = work / f"fold{f}"
        shutil.copytree(data, fold_dir, symlinks=True)
        held = np.array([fold_of[s] == f for s in subjects])
        fold_labels = labels.copy()
        fold_labels.loc[train_rows.index[held], "split"] = "holdout"
        write_table(fold_labels, fold_dir / "labels.parquet", "labels", meta)
        sample(fold_dir, epochs=epochs, per_video=per_video, seed=seed)
        learned = train_method(fold_dir, fold_dir / "models", cfg).set_index("sample_id")
        probs[held] = np.stack(learned.loc[train_rows["sample_id"][held], "distribution"].to_numpy())
    return probs


def evaluate(learned: pd.DataFrame, data: Path) -> dict[str, float]:
    """The benchmark's numbers for one trained method."""
    labels, meta = read_table(data / "labels.parquet", "labels")
    manifest, _ = read_table(data / "manifest.parquet", "manifest")
    classes = meta["classes"]
    df = labels.merge(learned[["sample_id", "distribution", "uncertainty"]], on="sample_id").merge(
        manifest[["sample_id", "true_dist"]], on="sample_id")
    dist = np.stack(df["distribution"].to_numpy()).astype(np.float64)
    given, clean = class_index(df["label"].to_numpy(), classes), class_index(df["clean_label"].to_numpy(), classes)
    test, train = (df["split"] == "test").to_numpy(), (df["split"] == "train").to_numpy()
    has_true = df["true_dist"].notna().to_numpy()
    out: dict[str, float] = {}
    if has_true[test].all():
        truth = np.stack(df.loc[test, "true_dist"].to_numpy()).argmax(1)
    else:
        truth = clean[test]
    out["test_acc"] = float((dist[test].argmax(1) == truth).mean())
    flipped = df["flipped"].to_numpy(bool)
    if flipped[train].any():
        p_given = dist[np.arange(len(df)), given]
        out["auroc_given"] = auroc(1 - p_given[train], flipped[train])
        out["auroc_uncertainty"] = auroc(df["uncertainty"].to_numpy()[train], flipped[train])
        out["flips_recovered"] = float((dist[flipped].argmax(1) == clean[flipped]).mean())
    if has_true[train].all():
        true = np.stack(df.loc[train, "true_dist"].to_numpy()).astype(np.float64)
        out["kl_true"] = float(kl_divergence(true, dist[train]).mean())
        out["kl_true_onehot"] = float(kl_divergence(true, np.eye(len(classes))[given[train]]).mean())
    return out


def cleanlab_scores(data: Path, probs: np.ndarray) -> dict[str, float]:
    """cleanlab's label-quality AUROC and find_label_issues precision/recall on out-of-fold probs."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    labels, meta = read_table(data / "labels.parquet", "labels")
    train = labels[labels["split"] == "train"]
    given = class_index(train["label"].to_numpy(), meta["classes"])
    flipped = train["flipped"].to_numpy(bool)
    quality = get_label_quality_scores(given, probs)
    issues = find_label_issues(given, probs)
    hit = (issues & flipped).sum()
    return {"auroc_quality": auroc(1 - quality, flipped), "issues": int(issues.sum()),
            "issues_precision": float(hit / max(issues.sum(), 1)), "issues_recall": float(hit / max(flipped.sum(), 1)),
            "oof_acc_given": float((probs.argmax(1) == given).mean())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("data/synth"))
    ap.add_argument("--ratios", default="0,0.1,0.2,0.3")
    ap.add_argument("--methods", default="ce,ls,ldlva,arbex,akt")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--folds", type=int, default=4, help="cleanlab's out-of-fold CE folds (0 skips cleanlab)")
    ap.add_argument("--per-video", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("reports/bench/noise_robustness.json"))
    args = ap.parse_args(argv)
    params = {}
    if Path("params.yaml").is_file():
        import yaml
        params = (yaml.safe_load(Path("params.yaml").read_text()) or {}).get("train", {})
    from ferdata.train.methods import METHODS

    options = {m: params.get(m) or {} for m in METHODS}
    base = {k: params[k] for k in ("backbone", "batch_size", "lr", "weight_decay", "image_size") if k in params}
    results = []
    with tempfile.TemporaryDirectory(prefix="ferdata-bench-") as tmp:
        for ratio in [float(r) for r in args.ratios.split(",")]:
            work = Path(tmp) / f"r{ratio}"
            data = prepare(args.data, work / "data", ratio=ratio, seed=args.seed, epochs=args.epochs, per_video=args.per_video)
            for method in args.methods.split(","):
                cfg = TrainConfig(method=method, epochs=args.epochs, seed=args.seed, options=options, **base)
                start = time.time()
                row = {"ratio": ratio, "method": method, **evaluate(train_method(data, work / method, cfg), data),
                       "seconds": round(time.time() - start, 1)}
                results.append(row)
                print(json.dumps(row), flush=True)
                save(results, args.out)
            if ratio > 0 and args.folds > 1:
                cfg = TrainConfig(method="ce", epochs=args.epochs, seed=args.seed, options=options, **base)
                start = time.time()
                probs = out_of_fold_probs(data, work / "oof", cfg, folds=args.folds, epochs=args.epochs,
                                          per_video=args.per_video, seed=args.seed)
                row = {"ratio": ratio, "method": "cleanlab(oof ce)", **cleanlab_scores(data, probs),
                       "seconds": round(time.time() - start, 1)}
                results.append(row)
                print(json.dumps(row), flush=True)
                save(results, args.out)
    print_table(results)
    return 0


def save(results: list[dict], path: Path) -> None:
    """Write the rows so far, so that a long run cut short keeps what it measured."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")


def print_table(results: list[dict]) -> None:
    """One table: a row per ratio and method."""
    cols = ("test_acc", "auroc_given", "auroc_uncertainty", "auroc_quality", "issues_precision", "issues_recall",
            "kl_true", "kl_true_onehot", "flips_recovered", "seconds")
    print(f"{'ratio':>5} {'method':<16}" + "".join(f"{c:>18}" for c in cols))
    for r in results:
        cells = "".join(f"{r[c]:>18.3f}" if isinstance(r.get(c), float) else f"{'-':>18}" for c in cols)
        print(f"{r['ratio']:>5.2f} {r['method']:<16}" + cells)


if __name__ == "__main__":
    sys.exit(main())
