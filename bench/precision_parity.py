"""Does training at a lower precision cost accuracy? Paired seeds, per method, with an interval.

Runs bench/noise_robustness.py once per (method, precision, seed), each run its own process (one thread
on a CPU), ``--jobs`` at a time, and keeps every run's JSON in ``--out``: a rerun skips the runs already
there, so a batch cut short by a time limit resumes where it stopped. It then prints, per method, the
clean-test accuracy at each precision for every seed and the paired difference (later precision minus
the first): mean, standard error, a 95% t interval, and a verdict against ``--margin`` (issue 16: one
point): ``within`` when the whole interval lies above -margin, ``worse`` when it lies below, and
``undecided`` otherwise. Noise AUROC and KL(true || soft label) get the same mean difference.

Seeds pair loosely: a bf16 and an fp32 run of one seed start from the same weights and plan, but they part ways
within an epoch, so their differences spread almost as widely as two seeds' results do (sd about 2
points for LDLVA on synth at 30% noise). Telling a 1-point loss apart therefore takes 15-20 seeds;
three seeds only catch a gross one.

    OMP_NUM_THREADS=1 python bench/precision_parity.py --data data/synth --methods ce ldlva \
        --precisions fp32,bf16 --seeds 0-19 --jobs 2 --out reports/bench/precision

A precision may end in ``+device``: those runs make their views with the GPU's augmentation path
(``BatchAugment``) even on a CPU, so ``--precisions fp32,fp32+device`` asks what that path costs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from scipy import stats

HERE = Path(__file__).resolve().parent
METRICS = ("test_accuracy_true", "noise_auroc", "soft_label_kl")  # ferdata.evaluate.score names


def parse_seeds(text: str) -> list[int]:
    """``0-9``, ``0,1,2`` or a mix: ``0-4,7``."""
    seeds: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        seeds.extend(range(int(lo), int(hi or lo) + 1))
    return sorted(set(seeds))


def run_path(out: Path, method: str, precision: str, seed: int) -> Path:
    return out / f"{method.replace(':', '_')}_{precision}_s{seed}.json"


def run_one(args: argparse.Namespace, method: str, precision: str, seed: int) -> str:
    """One training run through noise_robustness.py; its log sits beside its JSON."""
    path = run_path(args.out, method, precision, seed)
    if path.is_file():
        return f"{path.name}: kept"
    cmd = [
        sys.executable,
        str(HERE / "noise_robustness.py"),
        *("--data", str(args.data), "--params", str(args.params), "--ratios", str(args.ratio)),
        *("--methods", method, "--va", "dataset", "--folds", "0", "--epochs", str(args.epochs)),
        *("--seed", str(seed), "--set", f"train.precision={precision.removesuffix('+device')}", "--out", str(path)),
        *(a for s in args.set for a in ("--set", s)),
        *(["--augment-on-device"] if precision.endswith("+device") else []),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    with path.with_suffix(".log").open("w") as log:
        try:
            done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            return f"{path.name}: past --timeout {args.timeout:g} s, not kept"
    return f"{path.name}: {'done' if done.returncode == 0 else f'failed (exit {done.returncode}), see its .log'}"


def read_row(path: Path, method: str) -> dict | None:
    if not path.is_file():
        return None
    rows = [r for r in json.loads(path.read_text()) if r["method"] == method]
    return rows[0] if rows else None


def paired(diffs: list[float], margin: float) -> dict:
    """Mean, standard error and 95% t interval of paired differences, and the verdict against -margin."""
    n = len(diffs)
    mean = sum(diffs) / n
    if n < 2:
        return {"n": n, "mean": mean, "se": math.nan, "low": math.nan, "high": math.nan, "verdict": "undecided"}
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    se = sd / math.sqrt(n)
    half = float(stats.t.ppf(0.975, n - 1)) * se
    low, high = mean - half, mean + half
    verdict = "within" if low > -margin else "worse" if high < -margin else "undecided"
    return {"n": n, "mean": mean, "sd": sd, "se": se, "low": low, "high": high, "verdict": verdict}


def summarise(out: Path, methods: list[str], precisions: list[str], seeds: list[int], margin: float) -> dict:
    """Per method and lower precision: the per-seed accuracies and the paired differences."""
    summary: dict = {}
    ref = precisions[0]
    for method in methods:
        for other in precisions[1:]:
            pairs = []
            for seed in seeds:
                a, b = (read_row(run_path(out, method, p, seed), method) for p in (ref, other))
                if a is not None and b is not None:
                    pairs.append((seed, a, b))
            if not pairs:
                continue
            key = f"{method} {other} - {ref}"
            entry: dict = {"reference": ref, "other": other, "seeds": [s for s, _, _ in pairs]}
            for metric in METRICS:
                entry[metric] = paired([b[metric] - a[metric] for _, a, b in pairs], margin)
                entry[metric][ref] = sum(a[metric] for _, a, _ in pairs) / len(pairs)
                entry[metric][other] = sum(b[metric] for _, _, b in pairs) / len(pairs)
            entry["test_acc_per_seed"] = {s: [round(a[METRICS[0]], 4), round(b[METRICS[0]], 4)] for s, a, b in pairs}
            summary[key] = entry
    return summary


def report(summary: dict, margin: float) -> None:
    for key, entry in summary.items():
        acc = entry[METRICS[0]]
        ref, other = entry["reference"], entry["other"]
        print(f"== {key}: {acc['n']} seeds")
        for seed, (a, b) in entry["test_acc_per_seed"].items():
            print(f"  seed {seed:>3}: {ref} {a:.4f}  {other} {b:.4f}  {100 * (b - a):+.2f}")
        print(
            f"  test acc {acc[ref]:.4f} -> {acc[other]:.4f}: {100 * acc['mean']:+.2f} points, "
            f"se {100 * acc['se']:.2f}, 95% [{100 * acc['low']:+.2f}, {100 * acc['high']:+.2f}] "
            f"-> {acc['verdict']} (margin {100 * margin:.1f})"
        )
        for metric in METRICS[1:]:
            m = entry[metric]
            print(f"  {metric} {m[ref]:.4f} -> {m[other]:.4f} ({m['mean']:+.4f}, se {m['se']:.4f})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("data/synth"))
    ap.add_argument("--methods", nargs="+", default=["ce", "ldlva"])
    ap.add_argument("--precisions", default="fp32,auto", help="the reference first: fp32,bf16 or fp32,auto")
    ap.add_argument("--seeds", default="0-9", help="0-9, 0,1,2 or 0-4,7")
    ap.add_argument("--ratio", type=float, default=0.3, help="symmetric noise ratio of the training labels")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--set", action="append", default=[], help="passed on: --set train.workers=0")
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time")
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each run")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per run (a run past it is lost, not kept)")
    ap.add_argument("--margin", type=float, default=0.01, help="the accuracy loss the verdict tests against")
    ap.add_argument("--out", type=Path, default=Path("reports/bench/precision"))
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    precisions, seeds = args.precisions.split(","), parse_seeds(args.seeds)
    jobs = [(m, p, s) for s in seeds for m in args.methods for p in precisions]  # pairs finish together
    summary: dict = {}
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for done in as_completed([pool.submit(run_one, args, *job) for job in jobs]):
            print(done.result(), flush=True)  # the summary is rewritten after every run: a cut batch keeps it
            summary = summarise(args.out, args.methods, precisions, seeds, args.margin)
            (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    report(summary, args.margin)
    return 0 if summary else 1


if __name__ == "__main__":
    sys.exit(main())
