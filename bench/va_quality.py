"""Pseudo valence/arousal on synth: how close each pseudo-VA source comes to the true VA, and what
using it instead of the true VA does to LDLVA's noisy-label detection.

At one noise ratio (default 0.3), in one run:
  - `regressor`: out-of-fold VA regressor on the backbone (trained on the synth VA of the other
    subjects); `circumplex`: out-of-fold CE posteriors on the noisy labels times the class centroids;
    each scored against the true VA by MAE and concordance correlation (CCC), training faces;
  - LDLVA trained three times on the same plan and seed, with neighbours from the true VA, the
    regressor's VA and the circumplex VA: clean-test accuracy, noise AUROC, KL to the true distribution.

Usage (after `dvc repro` has built data/synth):
    python bench/va_quality.py --ratio 0.3
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

sys.path.insert(0, str(Path(__file__).parent))
from noise_robustness import evaluate, prepare, train_method

from ferdata.core.io import fork, locate, read_table
from ferdata.core.settings import load_params, resolve
from ferdata.train.prior import prior
from ferdata.train.regress import regress
from ferdata.train.settings import TrainSettings
from ferdata.va import va


def ccc(x: np.ndarray, y: np.ndarray) -> float:
    """Lin's concordance correlation coefficient."""
    mx, my = x.mean(), y.mean()
    return float(2 * np.mean((x - mx) * (y - my)) / (x.var() + y.var() + (mx - my) ** 2))


def agreement(table: pd.DataFrame, manifest: pd.DataFrame) -> dict[str, float]:
    train = manifest[manifest["split"] == "train"].set_index("sample_id")
    got = table.set_index("sample_id").loc[train.index]
    out = {}
    for axis in ("valence", "arousal"):
        true, pred = train[axis].to_numpy(np.float64), got[axis].to_numpy(np.float64)
        out[f"{axis}_mae"] = float(np.abs(true - pred).mean())
        out[f"{axis}_ccc"] = ccc(true, pred)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("data/synth"))
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("reports/bench/va_quality.json"))
    args = ap.parse_args(argv)
    base = resolve(TrainSettings, load_params(None), {"epochs": args.epochs, "seed": args.seed})
    results = []
    with tempfile.TemporaryDirectory(prefix="ferdata-va-bench-") as tmp:
        data = prepare(
            args.data,
            Path(tmp) / "noisy",
            ratio=args.ratio,
            seed=args.seed,
            epochs=args.epochs,
            per_video=6,
            per_class=0,
        )
        manifest, _ = read_table(locate(data, "manifest.parquet"), "manifest")
        start = time.time()
        prior(data, folds=args.folds, method="ce", epochs=args.epochs, seed=args.seed, train=base)
        model_seconds = {"circumplex": time.time() - start}
        start = time.time()
        regress(data, folds=args.folds, seed=args.seed)
        model_seconds["regressor"] = time.time() - start
        for source in ("provided", "regressor", "circumplex"):
            work = Path(tmp) / source
            fork(data, work)  # reads the prior and regressed VA tables of ``data``
            start = time.time()
            table, _ = va(work, source=source)
            row = {
                "va": source,
                "va_seconds": round(time.time() - start + model_seconds.get(source, 0.0), 1),
                **agreement(table, manifest),
            }
            cfg = replace(base, method="ldlva")
            learned, predicted = train_method(work, work / "ldlva", cfg)
            row.update({f"ldlva_{k}": v for k, v in evaluate(learned, work, predicted).items()})
            results.append(row)
            print(json.dumps(row), flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=2) + "\n")
    cols = (
        "valence_mae",
        "valence_ccc",
        "arousal_mae",
        "arousal_ccc",
        "ldlva_test_accuracy_true",
        "ldlva_noise_auroc",
        "ldlva_noise_auroc_uncertainty",
        "ldlva_soft_label_kl",
        "va_seconds",
    )
    print(f"{'va':<12}" + "".join(f"{c:>24}" for c in cols))
    for r in results:
        print(
            f"{r['va']:<12}" + "".join(f"{r[c]:>24.3f}" if isinstance(r.get(c), float) else f"{'-':>24}" for c in cols)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
