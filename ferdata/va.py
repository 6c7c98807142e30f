"""The va stage: valence/arousal for every aligned face and a K-nearest-neighbour graph in VA space.

LDLVA draws each training sample's neighbours from this graph. Sources, combinable in priority
order: the dataset's own VA (``provided``); ``regressor``: a VA regressor fitted on a VA-annotated dataset (out of fold on the same
one); ``onnx``: a user-supplied ONNX VA model; ``circumplex``: class posteriors (a parquet with a
``distribution`` per face, e.g. ``ferdata prior``'s out-of-fold CE run) times per-class VA centroids;
``csv``: precomputed VA (and optionally neighbours) such as the official LDLVA release.
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
SOURCES = ("provided", "regressor", "onnx", "circumplex", "csv")


def provided_va(manifest: pd.DataFrame, ids: pd.Series) -> pd.DataFrame:
    """The manifest's own VA for ``ids`` (NaN where the dataset has none)."""
    rows = manifest.set_index("sample_id").loc[ids, ["valence", "arousal"]].reset_index()
    rows["source"] = "provided"
    return rows


def _csv_ids(table: pd.DataFrame, manifest: pd.DataFrame, path: Path) -> pd.Series:
    """The sample id of every CSV row: its sample_id column, else its image path matched to the manifest."""
    if "sample_id" in table.columns:
        return table["sample_id"].astype(str)
    column = next((c for c in ("subDirectory_filePath", "path", "image") if c in table.columns), None)
    if column is None:
        raise FerdataError(f"{path} needs a sample_id column or an image path column (subDirectory_filePath, path, image)")
    by_path = {Path(p).as_posix(): sid for p, sid in zip(manifest["path"], manifest["sample_id"])}
    by_tail: dict[str, str] = {}
    for p, sid in by_path.items():  # AffectNet's lists omit the Manually_Annotated_Images/ prefix
        parts = Path(p).parts
        for i in range(1, len(parts)):
            by_tail.setdefault(Path(*parts[i:]).as_posix(), sid)
    return table[column].astype(str).map(lambda p: by_path.get(Path(p).as_posix()) or by_tail.get(Path(p).as_posix()))


def read_va_csv(path: str | Path, manifest: pd.DataFrame) -> pd.DataFrame:
    """A table of precomputed VA (``sample_id`` or an image path, ``valence``, ``arousal``, optional ``knn``:
    ``;``-separated row indices, as in the official LDLVA release) keyed by sample id."""
    path = Path(path)
    if not path.is_file():
        raise FerdataError(f"va.csv {path} not found")
    table = pd.read_csv(path, dtype={"knn": str})
    missing = [c for c in ("valence", "arousal") if c not in table.columns]
    if missing:
        raise FerdataError(f"{path} lacks columns {missing}")
    table["sample_id"] = _csv_ids(table, manifest, path)
    if "knn" in table.columns:
        row_ids = table["sample_id"].to_numpy()
        table["knn_ids"] = [None if not isinstance(v, str) or not v.strip() else
                            [row_ids[int(j)] for j in v.split(";") if j.strip()] for v in table["knn"]]
    return table


def csv_va(ids: pd.Series, table: pd.DataFrame) -> pd.DataFrame:
    rows = table.dropna(subset=["sample_id"]).drop_duplicates("sample_id").set_index("sample_id")
    out = rows.reindex(ids)[["valence", "arousal"]].reset_index()
    out["source"] = "csv"
    return out


def onnx_va(data_dir: Path, ids: pd.Series, options: dict) -> pd.DataFrame:
    """VA from a user-supplied ONNX model (e.g. an exported EmoNet or HSEmotion VA head): faces resized to
    ``input_size``, scaled to [0, 1], normalised by ``mean``/``std``, in ``layout`` nchw or nhwc; valence
    and arousal are columns ``columns`` of output ``output``."""
    from ferdata.loader import load_images

    path = Path(str(options.get("model") or "")).expanduser()
    if not path.is_file():
        raise FerdataError(f"va.onnx.model {str(path) if str(path) != '.' else '(unset)'} not found: export a VA model "
                           "to ONNX and give its path, input_size, mean, std and layout under va.onnx")
    import onnxruntime

    size = int(options.get("input_size", 224))
    mean = np.asarray(options.get("mean", [0.485, 0.456, 0.406]), np.float32)
    std = np.asarray(options.get("std", [0.229, 0.224, 0.225]), np.float32)
    layout, output = options.get("layout", "nchw"), int(options.get("output", 0))
    cols = list(options.get("columns", [0, 1]))
    session = onnxruntime.InferenceSession(str(path), providers=onnxruntime.get_available_providers())
    name = session.get_inputs()[0].name
    images = load_images(locate(data_dir, "shards"), ids.tolist(), size=size)
    out = []
    for i in range(0, len(images), 128):
        x = (images[i:i + 128].astype(np.float32) / 255.0 - mean) / std
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2) if layout == "nchw" else x)
        out.append(np.asarray(session.run(None, {name: x})[output], np.float64).reshape(len(x), -1)[:, cols])
    va = np.concatenate(out)
    return pd.DataFrame({"sample_id": ids.to_numpy(), "valence": va[:, 0], "arousal": va[:, 1], "source": "onnx"})


def combine(ids: pd.Series, frames: list[pd.DataFrame]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each face's VA from the first source with a valid value (finite, in [-1, 1]); and the faces no
    source covers, with the reason."""
    out = pd.DataFrame({"sample_id": ids.to_numpy(), "valence": np.nan, "arousal": np.nan, "source": None})
    open_rows = np.ones(len(out), bool)
    reasons = np.full(len(out), "no VA in any source", dtype=object)
    for frame in frames:
        v, a = frame["valence"].to_numpy(np.float64), frame["arousal"].to_numpy(np.float64)
        finite = np.isfinite(v) & np.isfinite(a)
        valid = finite & (np.abs(v) <= 1) & (np.abs(a) <= 1)
        reasons[open_rows & finite & ~valid] = f"{frame['source'].iloc[0] if len(frame) else '?'} VA outside [-1, 1]"
        take = open_rows & valid
        out.loc[take, ["valence", "arousal"]] = np.stack([v, a], 1)[take]
        out.loc[take, "source"] = frame["source"].to_numpy()[take]
        open_rows &= ~take
    rejected = pd.DataFrame({"sample_id": out["sample_id"][open_rows], "reason": reasons[open_rows]})
    return out[~open_rows].reset_index(drop=True), rejected.reset_index(drop=True)


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


def va(data_dir: str | Path, *, source: str | list[str] = "provided", k: int = 8,
       posteriors: str | Path | None = None, csv: str | Path | None = None,
       csv_knn: bool = False, regressor: dict | None = None,
       onnx: dict | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write ``va.parquet`` (all aligned faces) and ``knn.parquet`` (training faces) under ``data_dir``.

    ``source`` may list several sources in priority order (``provided,circumplex``): each face takes
    the first one with a valid value. A face that none covers is an error naming it and the reason."""
    sources = [x.strip() for x in (source.split(",") if isinstance(source, str) else source)]
    unknown = [x for x in sources if x not in SOURCES]
    if unknown or not sources:
        raise FerdataError(f"unknown va.source {','.join(unknown) or source!r}: available: {', '.join(SOURCES)}")
    if k < 1:
        raise FerdataError(f"va.k must be >= 1, got {k}")
    data_dir = Path(data_dir)
    manifest, meta = read_table(locate(data_dir, "manifest.parquet"), "manifest", hint="run `ferdata download` first")
    index, _ = read_table(locate(data_dir, "shard_index.parquet"), "shard_index", hint="run `ferdata shard` first")
    ids = index["sample_id"].sort_values(kind="stable").reset_index(drop=True)
    imported = None
    frames = []
    for name in sources:
        if name == "provided":
            frames.append(provided_va(manifest, ids))
        elif name == "circumplex":
            frames.append(circumplex_va(ids, meta["classes"], posteriors or data_dir / "prior.parquet"))
        elif name == "onnx":
            frames.append(onnx_va(data_dir, ids, onnx or {}))
        elif name == "regressor":
            from ferdata.train.regress import RegressConfig, regressor_va

            options = dict(regressor or {})
            source_dir = options.pop("source", None)
            try:
                cfg = RegressConfig(**options)
            except TypeError as exc:
                raise FerdataError(f"bad va.regressor option: {exc}") from exc
            frames.append(regressor_va(data_dir, ids, source=source_dir or None, cfg=cfg))
        else:
            if not csv:
                raise FerdataError("va.source csv needs va.csv: the path of a table of precomputed VA")
            imported = read_va_csv(csv, manifest)
            frames.append(csv_va(ids, imported))
    table, rejected = combine(ids, frames)
    if len(rejected):
        first = rejected.iloc[0]
        raise FerdataError(f"{len(rejected)} faces have no valid VA from {','.join(sources)}, e.g. {first['sample_id']!r} "
                           f"({first['reason']}); add a fallback source, e.g. va.source: {','.join(sources)},circumplex")
    write_table(table, data_dir / VA, "va", {"classes": meta["classes"], "source": ",".join(sources)})
    split = manifest.set_index("sample_id").loc[table["sample_id"], "split"].to_numpy()
    train = table[split == "train"]
    if csv_knn:
        graph = imported_graph(train, imported, k)
    else:
        graph = knn_graph(train["sample_id"].to_numpy(), train[["valence", "arousal"]].to_numpy(np.float64), k)
    write_table(graph, data_dir / KNN, "knn", {"k": k, "space": "va", "imported": bool(csv_knn)})
    return table, graph


def imported_graph(train: pd.DataFrame, imported: pd.DataFrame | None, k: int) -> pd.DataFrame:
    """The knn table from a CSV's own neighbour lists (LDLVA release), kept to training faces."""
    if imported is None or "knn_ids" not in imported.columns:
        raise FerdataError("va.csv_knn needs va.source csv and a knn column in va.csv")
    lists = imported.dropna(subset=["sample_id"]).drop_duplicates("sample_id").set_index("sample_id")["knn_ids"]
    va_of = train.set_index("sample_id")[["valence", "arousal"]]
    rows = []
    for sid in train["sample_id"]:
        nbrs = [j for j in (lists.get(sid) or []) if j in va_of.index and j != sid][:k]
        if not nbrs:
            raise FerdataError(f"va.csv lists no training neighbour for {sid!r}; use the computed graph (va.csv_knn: false)")
        d = np.linalg.norm(va_of.loc[nbrs].to_numpy(np.float64) - va_of.loc[sid].to_numpy(np.float64), axis=1)
        order = np.argsort(d, kind="stable")  # nearest first, like the computed graph
        rows.append({"sample_id": sid, "neighbours": [nbrs[i] for i in order], "distances": d[order].astype(np.float32)})
    return pd.DataFrame(rows)
