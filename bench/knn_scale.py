"""KNN graph in VA space at dataset scale: build+query time, peak memory, recall against brute force.

Each size runs in a fresh subprocess so its peak RSS is its own. Points are VA-like: clusters around
the circumplex centroids plus uniform background, rounded to 3 decimals (as annotated VA is), so
exact ties occur and the tie-breaking path is exercised. Recall: on a sample of rows, the share of the
true K nearest distances (brute force over all points) that the graph's K distances match.

Usage:
    python bench/knn_scale.py --sizes 10000,100000,1000000 --k 8
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def va_points(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    from ferdata.core.classes import VA_CENTROIDS

    rng = np.random.default_rng(seed)
    centres = np.array(list(VA_CENTROIDS.values()))
    pts = centres[rng.integers(0, len(centres), n)] + rng.normal(0, 0.15, (n, 2))
    background = rng.random(n) < 0.2
    pts[background] = rng.uniform(-1, 1, (background.sum(), 2))
    pts = np.round(np.clip(pts, -1, 1), 3)
    ids = np.array([f"s{i:08d}" for i in range(n)])
    return ids, pts


def one_size(n: int, k: int, sample: int) -> dict:
    """Build the graph for n points and measure it (runs inside a fresh subprocess)."""
    from ferdata.va import knn_graph

    ids, pts = va_points(n)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    graph = knn_graph(ids, pts, k)
    seconds = time.perf_counter() - start
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rng = np.random.default_rng(1)
    rows = rng.choice(n, min(sample, n), replace=False)
    hits = 0
    for i in rows:
        d = np.linalg.norm(pts - pts[i], axis=1)
        d[i] = np.inf
        truth = np.sort(np.round(d, 9))[:k]
        got = np.asarray(graph["distances"].iloc[i], np.float64)
        hits += int(np.isclose(np.sort(got), truth, atol=1e-6).sum())
    return {
        "n": n,
        "k": k,
        "seconds": round(seconds, 2),
        "peak_rss_mb_added": round((rss1 - rss0) / 1024, 1),
        "peak_rss_mb": round(rss1 / 1024, 1),
        "recall_vs_brute_force": hits / (len(rows) * k),
        "checked_rows": len(rows),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--sample", type=int, default=500, help="rows checked against brute force")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=Path("reports/bench/knn_scale.json"))
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(one_size(args.one, args.k, args.sample)))
        return 0
    results = []
    for n in (int(s) for s in args.sizes.split(",")):
        proc = subprocess.run(
            [sys.executable, __file__, "--one", str(n), "--k", str(args.k), "--sample", str(args.sample)],
            capture_output=True,
            text=True,
            check=True,
        )
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
