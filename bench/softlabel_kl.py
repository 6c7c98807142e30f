"""Where a method's training soft labels lose to the truth: KL(true || soft label) by group.

Splits the training faces of a trained pipeline by whether their label was flipped and by how much the
method trusts it (1 - uncertainty above or below one half; for LDLVA that is lambda), and prints each
group's size and mean KL, beside the KL of the one-hot given label and the share of the total KL from
cells where the soft label puts under 1% on a class the truth gives mass to. For LDLVA trained with
``train.ldlva.soft_label: target`` (soft label t = lambda onehot(y) + (1 - lambda) d, uncertainty
1 - lambda) it also recovers the neighbour aggregate d and prints its KL and the KL of the best single
lambda for every face: a bound on what any trust could reach with these neighbours. (The default soft
label is the network's prediction, from which d cannot be recovered.)

Usage (after `dvc repro`, which trains LDLVA on synth with 30% noise):
    python bench/softlabel_kl.py --data data/synth --learned models/synth/learned.parquet
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ferdata.core.classes import class_index, manifest_classes
from ferdata.core.io import read_table
from ferdata.core.settings import load_params, resolve
from ferdata.evaluate import kl_divergence
from ferdata.train.settings import LDLVAOptions


def groups(data: Path, learned: Path, *, targets: bool = False) -> list[tuple[str, int, float]]:
    """(group, faces, mean KL) for the training faces of ``data`` with the soft labels in ``learned``;
    ``targets``: LDLVA's soft labels are its targets t_i, so the neighbour bound applies."""
    table, meta = read_table(learned, "learned")
    labels, _ = read_table(data / "labels.parquet", "labels")
    manifest, _ = read_table(data / "manifest.parquet", "manifest")
    df = labels.merge(table[["sample_id", "distribution", "uncertainty"]], on="sample_id")
    df = df.merge(manifest[["sample_id", "true_dist"]], on="sample_id")
    df = df[df["split"] == "train"]
    soft, true = np.stack(df["distribution"].to_numpy()), np.stack(df["true_dist"].to_numpy())
    kl = kl_divergence(true, soft)
    flipped, trusted = df["flipped"].to_numpy(bool), (1 - df["uncertainty"].to_numpy()) > 0.5
    rows = [("all", len(kl), float(kl.mean()))]
    for f_name, f in (("clean", ~flipped), ("flipped", flipped)):
        for t_name, t in (("trusted", trusted), ("doubted", ~trusted)):
            rows.append((f"{f_name}, {t_name}", int((f & t).sum()), float(kl[f & t].mean()) if (f & t).any() else 0.0))
    q = np.clip(soft, 1e-6, None)
    q /= q.sum(1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(true > 0, true * np.log(true / q), 0.0)
    rows.append(("share of KL from cells under 1%", len(kl), float((terms * (soft < 0.01)).sum() / terms.sum())))
    rows.append(("soft label's top mass (mean)", len(kl), float(soft.max(1).mean())))
    rows.append(("truth's top mass (mean)", len(kl), float(true.max(1).mean())))
    if meta.get("method") == "ldlva" and targets:
        onehot = np.eye(soft.shape[1])[class_index(df["label"].to_numpy(), manifest_classes(meta))]
        rows += ldlva_bound(true, soft, onehot, 1 - df["uncertainty"].to_numpy())
    return rows


def ldlva_bound(
    true: np.ndarray, soft: np.ndarray, onehot: np.ndarray, lam: np.ndarray
) -> list[tuple[str, int, float]]:
    """KL of LDLVA's neighbour aggregate d (recovered from t and lambda) and of the best single lambda."""
    ok = lam < 0.999  # d cannot be recovered where t is all given label
    d = (soft[ok] - lam[ok, None] * onehot[ok]) / (1 - lam[ok, None])
    rows = [("neighbour aggregate d alone", int(ok.sum()), float(kl_divergence(true[ok], d).mean()))]
    grid = np.linspace(0, 1, 21)
    kls = [float(kl_divergence(true[ok], g * onehot[ok] + (1 - g) * d).mean()) for g in grid]
    best = int(np.argmin(kls))
    rows.append((f"best single lambda ({grid[best]:.2f}) for all", int(ok.sum()), kls[best]))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("data/synth"))
    ap.add_argument("--learned", type=Path, default=Path("models/synth/learned.parquet"))
    ap.add_argument("--params", type=Path, default=Path("params.yaml"), help="the run's params (train.ldlva)")
    args = ap.parse_args(argv)
    options = resolve(LDLVAOptions, load_params(args.params))
    print(f"{'group':<34}{'faces':>7}{'KL / value':>12}")
    for name, n, value in groups(args.data, args.learned, targets=options.soft_label == "target"):
        print(f"{name:<34}{n:>7}{value:>12.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
