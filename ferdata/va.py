"""The va stage: valence/arousal for every aligned face and a K-nearest-neighbour graph in VA space.

LDLVA draws each training sample's neighbours from this graph. Sources, combinable in priority
order: the dataset's own VA (``provided``); ``regressor``: the pseudo VA of ``ferdata regress`` (a VA
regressor fitted on a VA-annotated dataset, out of fold on the same one); ``onnx``: a user-supplied
ONNX VA model; ``circumplex``: the class posteriors of ``ferdata prior`` (out-of-fold CE) times
per-class VA centroids; ``csv``: precomputed VA (and optionally neighbours) such as the official LDLVA
release. The sources that need a trained model read the tables the trainer's stages wrote: this
stage never trains.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ferdata.core.classes import VA_CENTROIDS
from ferdata.core.errors import FerdataError, UsageError
from ferdata.core.settings import Settings, option
from ferdata.core.stage import Run, Stage

SOURCES = ("provided", "regressor", "onnx", "circumplex", "csv")


@dataclass(frozen=True)
class OnnxSettings(Settings):
    """``va.onnx``: how to feed a user's ONNX VA model (e.g. an exported EmoNet or HSEmotion VA head)."""

    section = "va.onnx"
    model: str = option("", "path of the .onnx file")
    input_size: int = option(224, "faces are resized to this many pixels", min=1)
    mean: tuple[float, ...] = option((0.485, 0.456, 0.406), "per-channel mean after scaling to [0, 1]")
    std: tuple[float, ...] = option((0.229, 0.224, 0.225), "per-channel std after scaling to [0, 1]")
    layout: str = option("nchw", "input layout", choices=("nchw", "nhwc"))
    output: int = option(0, "which output holds VA", min=0)
    columns: tuple[int, ...] = option((0, 1), "the output's valence and arousal columns")


@dataclass(frozen=True)
class VASettings(Settings):
    """The ``va`` section of params.yaml."""

    section = "va"
    source: str = option(
        "provided", "provided, regressor, onnx, circumplex, csv, or several in priority order (provided,circumplex)"
    )
    k: int = option(8, "neighbours per training face", min=1)
    csv: str = option("", "csv source: a table of sample_id or image path, valence, arousal (+ knn)")
    csv_knn: bool = option(False, "take the neighbour lists from the csv's knn column")
    onnx: OnnxSettings = option(factory=OnnxSettings)

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = [x for x in self.sources if x not in SOURCES]
        if unknown or not self.sources:
            raise UsageError(f"unknown va.source {','.join(unknown) or self.source!r}: available: {', '.join(SOURCES)}")

    @property
    def sources(self) -> list[str]:
        return [x.strip() for x in self.source.split(",") if x.strip()]


STAGE = Stage(
    "va",
    "Valence/arousal per face and the KNN graph in VA space.",
    __name__,
    VASettings,
    reads=("manifest", "shard_index"),
    may_read=("prior", "regressed_va", "shards"),
    writes=("va", "knn"),
)


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
        raise FerdataError(
            f"{path} needs a sample_id column or an image path column (subDirectory_filePath, path, image)"
        )
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
        table["knn_ids"] = [
            None if not isinstance(v, str) or not v.strip() else [row_ids[int(j)] for j in v.split(";") if j.strip()]
            for v in table["knn"]
        ]
    return table


def csv_va(ids: pd.Series, table: pd.DataFrame) -> pd.DataFrame:
    rows = table.dropna(subset=["sample_id"]).drop_duplicates("sample_id").set_index("sample_id")
    out = rows.reindex(ids)[["valence", "arousal"]].reset_index()
    out["source"] = "csv"
    return out


def onnx_va(shards: Path, ids: pd.Series, options: OnnxSettings) -> pd.DataFrame:
    """VA from a user-supplied ONNX model: faces resized to ``input_size``, scaled to [0, 1], normalised
    by ``mean``/``std``, in ``layout`` nchw or nhwc; valence and arousal are columns ``columns`` of output
    ``output``."""
    from ferdata.core.shards import load_images

    path = Path(options.model).expanduser()
    if not options.model or not path.is_file():
        raise FerdataError(
            f"va.onnx.model {options.model or '(unset)'} not found: export a VA model "
            "to ONNX and give its path, input_size, mean, std and layout under va.onnx"
        )
    import onnxruntime

    mean, std = np.asarray(options.mean, np.float32), np.asarray(options.std, np.float32)
    session = onnxruntime.InferenceSession(str(path), providers=onnxruntime.get_available_providers())
    name = session.get_inputs()[0].name
    images = load_images(shards, ids.tolist(), size=options.input_size)
    out = []
    for i in range(0, len(images), 128):
        x = (images[i : i + 128].astype(np.float32) / 255.0 - mean) / std
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2) if options.layout == "nchw" else x)
        raw = np.asarray(session.run(None, {name: x})[options.output], np.float64)
        out.append(raw.reshape(len(x), -1)[:, list(options.columns)])
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


def circumplex_va(ids: pd.Series, classes: list[str], posteriors: pd.DataFrame, where: Path) -> pd.DataFrame:
    """VA as the posterior-weighted mean of the classes' circumplex centroids (``VA_CENTROIDS``)."""
    table = posteriors.set_index("sample_id")
    missing = ids[~ids.isin(table.index)]
    if len(missing):
        raise FerdataError(
            f"{where} has no distribution for {len(missing)} faces, e.g. {missing.iloc[0]!r}; re-run `ferdata prior`"
        )
    probs = np.stack(table.loc[ids, "distribution"].to_numpy()).astype(np.float64)
    if probs.shape[1] != len(classes):
        raise FerdataError(f"{where} has {probs.shape[1]} classes per distribution, the dataset has {len(classes)}")
    probs = probs / probs.sum(1, keepdims=True)
    centroids = np.array([VA_CENTROIDS[c] for c in classes])
    va = probs @ centroids
    return pd.DataFrame({"sample_id": ids.to_numpy(), "valence": va[:, 0], "arousal": va[:, 1], "source": "circumplex"})


def regressed_va(ids: pd.Series, table: pd.DataFrame) -> pd.DataFrame:
    """The pseudo VA ``ferdata regress`` wrote (NaN for a face it does not cover)."""
    out = table.set_index("sample_id").reindex(ids)[["valence", "arousal"]].reset_index()
    out["source"] = "regressor"
    return out


def knn_indices(points: np.ndarray, k: int, *, tie_rank: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact K nearest neighbours of every point among the others: (indices, distances), each (n, k).

    A KD-tree (scipy's cKDTree, all cores) answers the queries; equal distances are ordered by
    ``tie_rank`` (default: index). Rows whose K-th distance is tied beyond the candidates fetched are
    asked again with twice as many, so the result does not depend on the tree's internal order."""
    from scipy.spatial import cKDTree

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


def source_frames(
    run: Run, ids: pd.Series, manifest: pd.DataFrame, classes: list[str]
) -> tuple[list, pd.DataFrame | None]:
    """Each source's VA for ``ids`` in priority order, and the csv source's table (for its neighbours)."""
    s: VASettings = run.settings
    frames, imported = [], None
    for name in s.sources:
        if name == "provided":
            frames.append(provided_va(manifest, ids))
        elif name == "circumplex":
            frames.append(circumplex_va(ids, classes, run.read("prior")[0], run.input("prior")))
        elif name == "regressor":
            frames.append(regressed_va(ids, run.read("regressed_va")[0]))
        elif name == "onnx":
            frames.append(onnx_va(run.input("shards"), ids, s.onnx))
        else:
            if not s.csv:
                raise UsageError("va.source csv needs va.csv: the path of a table of precomputed VA")
            imported = read_va_csv(s.csv, manifest)
            frames.append(csv_va(ids, imported))
    return frames, imported


def va(data_dir: str | Path, settings: VASettings | None = None, **options: Any) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write the va table (every aligned face) and the knn table (training faces) of ``data_dir``.

    Each face takes the first source with a valid value; a face that none covers is an error naming it
    and the reason."""
    with STAGE.start(settings, options, data=data_dir) as run:
        s: VASettings = run.settings
        manifest, meta = run.read("manifest")
        index, _ = run.read("shard_index")
        ids = index["sample_id"].sort_values(kind="stable").reset_index(drop=True)
        frames, imported = source_frames(run, ids, manifest, meta["classes"])
        table, rejected = combine(ids, frames)
        if len(rejected):
            first = rejected.iloc[0]
            raise FerdataError(
                f"{len(rejected)} faces have no valid VA from {s.source}, e.g. {first['sample_id']!r} "
                f"({first['reason']}); add a fallback source, e.g. va.source: {s.source},circumplex"
            )
        split = manifest.set_index("sample_id").loc[table["sample_id"], "split"].to_numpy()
        train = table[split == "train"]
        if s.csv_knn:
            graph = imported_graph(train, imported, s.k)
        else:
            graph = knn_graph(train["sample_id"].to_numpy(), train[["valence", "arousal"]].to_numpy(np.float64), s.k)
        run.write(table, "va", {"classes": meta["classes"], "source": ",".join(s.sources)})
        run.write(graph, "knn", {"k": s.k, "space": "va", "imported": s.csv_knn})
        return table, graph


def summarize(table: pd.DataFrame, graph: pd.DataFrame) -> str:
    return f"va for {len(table)} faces; knn graph over {len(graph)} training faces"


def imported_graph(train: pd.DataFrame, imported: pd.DataFrame | None, k: int) -> pd.DataFrame:
    """The knn table from a CSV's own neighbour lists (LDLVA release), kept to training faces."""
    if imported is None or "knn_ids" not in imported.columns:
        raise UsageError("va.csv_knn needs va.source csv and a knn column in va.csv")
    lists = imported.dropna(subset=["sample_id"]).drop_duplicates("sample_id").set_index("sample_id")["knn_ids"]
    va_of = train.set_index("sample_id")[["valence", "arousal"]]
    rows = []
    for sid in train["sample_id"]:
        nbrs = [j for j in (lists.get(sid) or []) if j in va_of.index and j != sid][:k]
        if not nbrs:
            raise FerdataError(
                f"va.csv lists no training neighbour for {sid!r}; use the computed graph (va.csv_knn: false)"
            )
        d = np.linalg.norm(va_of.loc[nbrs].to_numpy(np.float64) - va_of.loc[sid].to_numpy(np.float64), axis=1)
        order = np.argsort(d, kind="stable")  # nearest first, like the computed graph
        rows.append(
            {"sample_id": sid, "neighbours": [nbrs[i] for i in order], "distances": d[order].astype(np.float32)}
        )
    return pd.DataFrame(rows)
