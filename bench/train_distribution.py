"""Are the training faces' soft labels memorised? The method's own (``export.train_distribution: model``)
against the prior stage's out-of-fold ones (``out_of_fold``), per split: mean confidence, agreement with
the given label, and, where the dataset has true distributions (JAFFE ratings, FER+ votes), KL(true ||
distribution) and accuracy against the true top class. Reads the tables of pipelines already run (the
soft labels exported with the default ``model``, and ``prior.parquet``).

Usage, one folder per seed (a dataset pipeline: download, align, shard, noise, sample, prior, va, train,
export with its params file and `--seed S` on download, prior and train):
    python bench/train_distribution.py --data /tmp/x3/jaffe0 /tmp/x3/jaffe1 /tmp/x3/jaffe2

Measured (ferdata 0.1.0, small_cnn, CPU; README "Use the soft labels in your project"):
    JAFFE (pipelines/jaffe/params.yaml, seeds 0-2): train KL model 0.248, out of fold 0.424
    CK+48 (pipelines/custom/params.yaml, detector none, seed 0): train confidence model 0.993, out of
    fold 0.788; test confidence 0.913
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from ferdata.core.classes import class_index, normalised_entropy
from ferdata.core.io import read_table
from ferdata.evaluate import kl_divergence


def compare(data: Path) -> list[dict]:
    """One row per split of ``data``: the model's distributions against the out-of-fold ones."""
    soft, meta = read_table(data / "softlabels.parquet", "softlabels")
    prior, _ = read_table(data / "prior.parquet", "prior")
    manifest, _ = read_table(data / "manifest.parquet", "manifest")
    labels, _ = read_table(data / "labels.parquet", "labels")
    classes = meta["classes"]
    oof = prior.set_index("sample_id")["distribution"]
    truth = manifest.set_index("sample_id")["true_dist"]
    given_of = labels.set_index("sample_id")["label"]
    rows = []
    for split in ("train", "val", "test"):
        part = soft[soft["split"] == split]
        if part.empty:
            continue
        ids = part["sample_id"]
        given = class_index(given_of.loc[ids].to_numpy(), classes)
        row = {"data": data.name, "split": split, "faces": len(part)}
        for name, dist in (
            ("model", np.stack(part["distribution"].to_numpy()).astype(np.float64)),
            ("oof", np.stack(oof.loc[ids].to_numpy()).astype(np.float64)),
        ):
            dist = dist / dist.sum(1, keepdims=True)
            row[f"conf_{name}"] = float((1 - normalised_entropy(dist)).mean())
            row[f"agree_{name}"] = float((dist.argmax(1) == given).mean())
            true = truth.loc[ids]
            if true.notna().all():
                t = np.stack(true.to_numpy()).astype(np.float64)
                row[f"kl_{name}"] = float(kl_divergence(t, dist).mean())
                row[f"acc_true_{name}"] = float((dist.argmax(1) == t.argmax(1)).mean())
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, nargs="+", required=True, help="dataset folders (one per seed)")
    args = parser.parse_args()
    table = pd.DataFrame([row for data in args.data for row in compare(data)])
    pd.set_option("display.width", 200)
    print(table.round(3).to_string(index=False))
    print("\nmean over folders:")
    print(table.groupby("split").mean(numeric_only=True).round(3).to_string())


if __name__ == "__main__":
    main()
