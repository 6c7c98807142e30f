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
  - the same detection and fidelity measures on the trained model's own prediction for the (un-augmented)
    training faces (``*_pred``; for CE that is what it exports);
  - the share of flipped labels whose exported top class is the clean label.

Usage (after `dvc repro` has built data/synth): every method at 0 and 30% noise, LDLVA once with the
dataset's own VA (synth: rated VA, see synth.rated_va) and once with pseudo VA (circumplex from the
out-of-fold CE prior), beside cleanlab on the same out-of-fold predictions:
    python bench/noise_robustness.py --ratios 0,0.3 --methods ce ls ldlva arbex akt --va dataset,circumplex
    python bench/noise_robustness.py --methods ldlva ldlva:neighbour_mode=forward --va dataset  # bank vs forward

On real faces with crowd votes (FER+; no VA, so pseudo VA from out-of-fold CE posteriors per ratio):
    ferdata download ferplus --from ../shared/realdata/ferplus-dev.tar.gz --data /tmp/ferplus
    ferdata align --data /tmp/ferplus --detector none --size 64 && ferdata shard --data /tmp/ferplus
    python bench/noise_robustness.py --data /tmp/ferplus --va circumplex --ratios 0,0.3 \
        --set train.backbone=resnet18 --methods ldlva:lambda_lr=20 ldlva:lambda_lr=100 \
        --out reports/bench/noise_robustness_ferplus.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from ferdata.core.classes import class_index
from ferdata.core.io import fork, locate, read_table
from ferdata.core.settings import load_params, resolve
from ferdata.core.tables import TABLES
from ferdata.evaluate import label_issue_scores
from ferdata.experiment import read_scoring, score_table
from ferdata.loader import ShardFaces, batches, in_order, shard_paths
from ferdata.noise import noise
from ferdata.sample import sample
from ferdata.train import loop
from ferdata.train.loop import load_trained, train
from ferdata.train.prior import prior
from ferdata.train.settings import NEEDS_KNN, TrainSettings
from ferdata.va import va


def augment_on_device() -> None:
    """Every run in this process takes the GPU's augmentation path, on whatever device it trains on."""
    real = loop.make_engine
    loop.make_engine = lambda cfg: replace(real(cfg), augment_on_device=True)


def prepare(src: Path, work: Path, *, ratio: float, seed: int, epochs: int, per_video: int, per_class: int) -> Path:
    """A fork of ``src`` (sharing its images and tables) with its own noisy labels and epoch plan."""
    fork(src, work)
    noise(work, ratio=ratio, seed=seed)
    sample(work, epochs=epochs, per_video=per_video, per_class=per_class, seed=seed)
    return work


def train_method(data: Path, models: Path, cfg: TrainSettings) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train one method; return what it learned for every labelled face and its prediction on the
    training faces."""
    train(data, models, cfg)
    learned = read_table(models / TABLES["learned"].file, "learned")[0]
    return learned, predict_train(models / TABLES["model"].file, data, cfg.image_size)


@torch.no_grad()
def predict_train(model: Path, data: Path, size: int) -> pd.DataFrame:
    """The trained model's prediction (as for val/test) on every un-augmented training face."""
    trained = load_trained(model)
    labels, _ = read_table(locate(data, "labels.parquet"), "labels")
    ids = labels.loc[labels["split"] == "train", "sample_id"].tolist()
    faces = ShardFaces(shard_paths(locate(data, "shards")), ids, size=size)
    probs = [trained.predict(b["image"]).float().cpu() for b in batches(faces, in_order(np.arange(len(ids)), 256))]
    return pd.DataFrame({"sample_id": ids, "predicted": list(torch.cat(probs).double().numpy())})


def evaluate(learned: pd.DataFrame, data: Path, predicted: pd.DataFrame | None = None) -> dict[str, float]:
    """The benchmark's numbers for one trained method: ``ferdata.evaluate.score`` of what it learned (the
    names metrics.json uses), and with ``predicted`` the same measures of the model's own prediction for
    the training faces, prefixed ``pred_`` (``pred_soft_label_kl``, ``pred_noise_auroc``, ...)."""
    out = score_table(data, learned)
    if predicted is not None:
        train = learned[learned["split"] == "train"][["sample_id", "split", "uncertainty"]]
        rows = train.merge(predicted, on="sample_id").rename(columns={"predicted": "distribution"})
        pred = score_table(data, rows)
        out.update({f"pred_{k}": v for k, v in pred.items() if k.startswith(("soft_label", "noise", "flips"))})
    return out


def cleanlab_scores(data: Path, oof: pd.DataFrame) -> dict[str, float]:
    """cleanlab's label-quality AUROC and find_label_issues precision/recall on out-of-fold probs."""
    labels, _, classes = read_scoring(data)
    train = labels[labels["split"] == "train"]
    probs = np.stack(oof.set_index("sample_id").loc[train["sample_id"], "distribution"].to_numpy())
    given = class_index(train["label"].to_numpy(), classes)
    return label_issue_scores(given, probs, train["flipped"].to_numpy(bool))


def method_variant(base: TrainSettings, spec: str) -> TrainSettings:
    """``ldlva`` or ``ldlva:lambda_lr=100:neighbour_mode=forward``: a method with some of its options changed."""
    name, *changes = spec.split(":")
    cfg = replace(base, method=name)
    if changes:
        opts = getattr(cfg, name)
        kinds = {f: type(getattr(opts, f)) for f in vars(opts)}
        values = {k: kinds[k](yaml.safe_load(v)) for k, v in (c.split("=", 1) for c in changes)}
        cfg = replace(cfg, **{name: replace(opts, **values)})
    return cfg


def apply_sets(params: dict, sets: list[str]) -> dict:
    """``train.backbone=resnet18``-style overrides of the params mapping."""
    for item in sets:
        path, value = item.split("=", 1)
        *parents, key = path.split(".")
        node = params
        for part in parents:
            node = node.setdefault(part, {})
        node[key] = yaml.safe_load(value)
    return params


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("data/synth"), help="a built dataset folder (shards, manifest)")
    ap.add_argument("--ratios", default="0,0.3")
    ap.add_argument(
        "--methods",
        nargs="+",
        default=["ce", "ls", "ldlva", "arbex", "akt"],
        help="methods, each optionally with options: ldlva:lambda_lr=100:neighbour_mode=forward",
    )
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument(
        "--folds", type=int, default=4, help="out-of-fold CE folds for cleanlab and circumplex VA (0 skips)"
    )
    ap.add_argument(
        "--va",
        default="dataset,circumplex",
        help="VA sources LDLVA is run with, side by side: dataset (the folder's own va/knn tables, e.g. synth's "
        "rated VA) and/or circumplex (pseudo VA from out-of-fold CE posteriors, per ratio); the other methods "
        "read no VA and run once",
    )
    ap.add_argument("--per-video", type=int, default=6)
    ap.add_argument("--per-class", type=int, default=0, help="samples per class per epoch (0: the largest class)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"), help="train settings (the train section)")
    ap.add_argument("--set", action="append", default=[], help="override a setting: --set train.backbone=resnet18")
    ap.add_argument("--k", type=int, default=8, help="neighbours per face of the circumplex VA graph")
    ap.add_argument(
        "--augment-on-device",
        action="store_true",
        help="make the views with BatchAugment on the training device even on a CPU (what a GPU run does by "
        "default), to measure that path's accuracy without a GPU",
    )
    ap.add_argument("--out", type=Path, default=Path("reports/bench/noise_robustness.json"))
    args = ap.parse_args(argv)
    if args.augment_on_device:
        augment_on_device()
    params = apply_sets(dict(load_params(args.params)), args.set)
    base = resolve(TrainSettings, params, {"epochs": args.epochs, "seed": args.seed})
    sources = args.va.split(",")
    results = []

    def record(row: dict) -> None:
        results.append(row)
        print(json.dumps(row), flush=True)
        save(results, args.out)

    def run(spec: str, data: Path, work: Path, ratio: float, source: str) -> None:
        cfg = method_variant(base, spec)
        start = time.time()
        learned, predicted = train_method(data, work / spec.replace(":", "_").replace("=", "-") / source, cfg)
        row = {"ratio": ratio, "method": spec, "va": source if cfg.method in NEEDS_KNN else "-"}
        record({**row, **evaluate(learned, data, predicted), "seconds": round(time.time() - start, 1)})

    with tempfile.TemporaryDirectory(prefix="ferdata-bench-") as tmp:
        for ratio in [float(r) for r in args.ratios.split(",")]:
            work = Path(tmp) / f"r{ratio}"
            data = prepare(
                args.data,
                work / "data",
                ratio=ratio,
                seed=args.seed,
                epochs=args.epochs,
                per_video=args.per_video,
                per_class=args.per_class,
            )
            if args.folds > 1 and (ratio > 0 or "circumplex" in sources):
                start = time.time()
                oof = prior(data, folds=args.folds, method="ce", epochs=args.epochs, seed=args.seed, train=base)
                if ratio > 0:
                    scores = cleanlab_scores(data, oof)
                    record(
                        {
                            "ratio": ratio,
                            "method": "cleanlab(oof ce)",
                            "va": "-",
                            **scores,
                            "seconds": round(time.time() - start, 1),
                        }
                    )
            elif "circumplex" in sources:
                raise SystemExit("--va circumplex needs --folds >= 2")
            for spec in args.methods:
                if spec.split(":")[0] not in NEEDS_KNN:
                    run(spec, data, work, ratio, "-")
            for source in sources:  # dataset first: circumplex replaces the fork's va/knn tables
                if source == "circumplex":
                    va(data, source="circumplex", k=args.k)  # reads the fork's prior table
                for spec in args.methods:
                    if spec.split(":")[0] in NEEDS_KNN:
                        run(spec, data, work, ratio, source)
    print_table(results)
    return 0


def save(results: list[dict], path: Path) -> None:
    """Write the rows so far, so that a long run cut short keeps what it measured."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")


def print_table(results: list[dict]) -> None:
    """One table: a row per ratio and method."""
    cols = (
        "test_accuracy_true",
        "noise_auroc",
        "pred_noise_auroc",
        "noise_auroc_uncertainty",
        "cleanlab_auroc",
        "cleanlab_precision",
        "cleanlab_recall",
        "soft_label_kl",
        "pred_soft_label_kl",
        "test_kl",
        "flips_recovered",
        "pred_flips_recovered",
        "seconds",
    )
    widths = [max(12, len(c) + 1) for c in cols]
    print(f"{'ratio':>5} {'method':<28} {'va':<10}" + "".join(f"{c:>{w}}" for c, w in zip(cols, widths)))
    for r in results:
        cells = "".join(
            f"{r[c]:>{w}.3f}" if isinstance(r.get(c), float) else f"{'-':>{w}}" for c, w in zip(cols, widths)
        )
        print(f"{r['ratio']:>5.2f} {r['method']:<28} {r.get('va', '-'):<10}" + cells)


if __name__ == "__main__":
    sys.exit(main())
