"""The va stage: valence/arousal for every aligned face and a K-nearest-neighbour graph in VA space.

LDLVA draws each training sample's neighbours from this graph. Sources: the dataset's own VA
(``provided``), or ``circumplex``: class posteriors (a parquet with a ``distribution`` per face, e.g. an
out-of-fold CE run) times per-class VA centroids.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from ferdata.classes import VA_CENTROIDS
from ferdata.errors import FerdataError
from ferdata.io import locate, read_table, write_table

VA = "va.parquet"
KNN = "knn.parquet"
SOURCES = ("provided", "circumplex")


def provided_va(manifest: pd.DataFrame, ids: pd.Series) -> pd.DataFrame:
    """The manifest's own VA for ``ids``; every value must exist and lie in [-1, 1]."""
    rows = manifest.set_index("sample_id").loc[ids, ["valence", "arousal"]]
    bad = rows[rows.isna().any(axis=1) | (rows.abs() > 1).any(axis=1)]
    if len(bad):
        raise FerdataError(
            f"{len(bad)} faces have no valid provided VA (NaN or outside [-1, 1]), e.g. {bad.index[0]!r}; "
            "this dataset needs another va.source")
    out = rows.reset_index()
    out["source"] = "provided"
    return out


def circumplex_va(ids: pd.Series, classes: list[str], posteriors: str | Path) -> pd.DataFrame:
    """VA as the posterior-weighted mean of the classes' circumplex centroids (``VA_CENTROIDS``)."""
    import pyarrow.parquet as pq

    path = Path(posteriors)
    if not path.is_file():
        raise FerdataError(f"{path} not found: va.source circumplex needs class posteriors per face; run "
                           "`ferdata prior` (out-of-fold CE) or point va.posteriors at a parquet with a distribution column")
    table = pq.read_table(path, columns=["sample_id", "distribution"]).to_pandas().set_index("sample_id")
    missing = ids[~ids.isin(table.index)]
    if len(missing):
        raise FerdataError(f"{path} has no distribution for {len(missing)} faces, e.g. {missing.iloc[0]!r}")
    probs = np.stack(table.loc[ids, "distribution"].to_numpy()).astype(np.float64)
    if probs.shape[1] != len(classes):
        raise FerdataError(f"{path} has {probs.shape[1]} classes per distribution, the dataset has {len(classes)}")
    probs = probs / probs.sum(1, keepdims=True)
    centroids = np.array([VA_CENTROIDS[c] for c in classes])
    va = probs @ centroids
    return pd.DataFrame({"sample_id": ids.to_numpy(), "valence": va[:, 0], "arousal": va[:, 1], "source": "circumplex"})


def knn_indices(points: np.ndarray, k: int, *, tie_rank: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact K nearest neighbours of every point among the others: (indices, distances), each (n, k).

    A KD-tree (scipy's cKDTree, all cores) answers the queries; equal distances are ordered by
    ``tie_rank`` (default: index). Rows whose K-th distance is tied beyond the candidates fetched are
    asked again with twice as many, so the result does not depend on the tree's internal order."""
    n = len(points)
    rank = np.arange(n) if tie_rank is None else np.asarray(tie_rank)
    tree = cKDTree(points)
    idx = np.empty((n, k), np.int64)
    dist = np.empty((n, k), np.float64)
    rows, width = np.arange(n), min(n, k + 1 + 8)
    while rows.size:
        d, j = tree.query(points[rows], k=width, workers=-1)
        d, j = d.reshape(len(rows), width), j.reshape(len(rows), width)
        d = np.where(j == rows[:, None], np.inf, np.round(d, 9))  # self goes last
        order = np.lexsort((rank[j], d), axis=-1)
        d, j = np.take_along_axis(d, order, 1), np.take_along_axis(j, order, 1)
        finite_max = np.where(np.isfinite(d), d, -np.inf).max(1)
        done = (width >= n) | (d[:, k - 1] < finite_max)
        idx[rows[done]], dist[rows[done]] = j[done, :k], d[done, :k]
        rows, width = rows[~done], min(n, width * 2)
    return idx, dist


def knn_graph(ids: np.ndarray, points: np.ndarray, k: int) -> pd.DataFrame:
    """The ``knn`` table: K nearest other training faces (Euclidean), ties broken by id order."""
    n = len(ids)
    if n < 2:
        raise FerdataError(f"the KNN graph needs at least 2 training faces, found {n}")
    ids = np.asarray(ids)
    rank = np.empty(n, np.int64)
    rank[np.argsort(ids, kind="stable")] = np.arange(n)
    idx, dist = knn_indices(np.asarray(points, np.float64), min(k, n - 1), tie_rank=rank)
    return pd.DataFrame({"sample_id": ids, "neighbours": ids[idx].tolist(), "distances": list(dist.astype(np.float32))})


def va(data_dir: str | Path, *, source: str = "provided", k: int = 8,
       posteriors: str | Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write ``va.parquet`` (all aligned faces) and ``knn.parquet`` (training faces) under ``data_dir``."""
    if source not in SOURCES:
        raise FerdataError(f"unknown va.source {source!r}: available: {', '.join(SOURCES)}")
    if k < 1:
        raise FerdataError(f"va.k must be >= 1, got {k}")
    data_dir = Path(data_dir)
    manifest, meta = read_table(locate(data_dir, "manifest.parquet"), "manifest", hint="run `ferdata download` first")
    index, _ = read_table(locate(data_dir, "shard_index.parquet"), "shard_index", hint="run `ferdata shard` first")
    ids = index["sample_id"].sort_values(kind="stable")
    if source == "circumplex":
        table = circumplex_va(ids, meta["classes"], posteriors or data_dir / "prior.parquet")
    else:
        table = provided_va(manifest, ids)
    write_table(table, data_dir / VA, "va", {"classes": meta["classes"], "source": source})
    split = manifest.set_index("sample_id").loc[table["sample_id"], "split"].to_numpy()
    train = table[split == "train"]
    graph = knn_graph(train["sample_id"].to_numpy(), train[["valence", "arousal"]].to_numpy(np.float64), k)
    write_table(graph, data_dir / KNN, "knn", {"k": k, "space": "va"})
    return table, graph
