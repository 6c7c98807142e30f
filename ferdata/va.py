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


def knn_graph(ids: np.ndarray, points: np.ndarray, k: int) -> pd.DataFrame:
    """Exact K nearest neighbours (Euclidean, self excluded, ties broken by id order)."""
    n = len(ids)
    if n < 2:
        raise FerdataError(f"the KNN graph needs at least 2 training faces, found {n}")
    k_eff = min(k, n - 1)
    slack = min(n, k_eff + 1 + 8)  # extra candidates so equal distances can be re-ordered by id
    dist, idx = cKDTree(points).query(points, k=slack)
    neighbours, distances = [], []
    for i in range(n):
        keep = idx[i] != i
        d, j = dist[i][keep], idx[i][keep]
        order = np.lexsort((j, np.round(d, 9)))[:k_eff]
        neighbours.append(ids[j[order]].tolist())
        distances.append(d[order].astype(np.float32))
    return pd.DataFrame({"sample_id": ids, "neighbours": neighbours, "distances": distances})


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
