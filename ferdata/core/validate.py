"""Expectation suites for ferdata's tables, run with great-expectations (1.x, an ephemeral context).

Every stage runs its table's suite before the atomic rename that publishes it (``io.write_table``), so a
table that fails never lands where DVC would cache it; ``ferdata validate PATH`` runs it on any file.
Checks great-expectations cannot state on list columns (distributions summing to one, neighbours that
exist) become derived columns (``_dist_sum``, ``_self_neighbour``, ...) that the suite then constrains.
great-expectations is imported only when a suite runs, so the CLI stays fast.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ferdata.core.classes import CANONICAL
from ferdata.core.errors import FerdataError

SHOW = 5  # offending ids shown per failed expectation
SPLITS = ("train", "val", "test")
STATUSES = ("ok", "no_face", "no_landmarks", "unreadable", "too_large")
Where = Callable[[str], Path]  # a path relative to the table's folder -> where that file is now


def _gxe():
    import great_expectations.expectations as gxe

    return gxe


def _unique(gxe) -> list:
    return [gxe.ExpectColumnValuesToBeUnique(column="sample_id")]


def _class_ids(meta: dict[str, Any]) -> list[int]:
    return [CANONICAL.index(c) for c in (meta.get("classes") or CANONICAL)]


def _manifest(df: pd.DataFrame, meta: dict[str, Any], where: Where | None) -> tuple[pd.DataFrame, list]:
    gxe = _gxe()
    data = df[["sample_id", "label", "split"]].copy()
    exp = [
        *_unique(gxe),
        gxe.ExpectColumnValuesToNotMatchRegex(column="sample_id", regex=r"\."),
        gxe.ExpectColumnValuesToBeInSet(column="label", value_set=_class_ids(meta)),
        gxe.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)),
    ]
    for col, width in (("bbox", 4), ("landmarks", 10)):  # plain lists (see tables.py): null or this long
        if col in df:
            data[f"_{col}_width"] = [v is None or len(v) == width for v in df[col]]
            exp.append(gxe.ExpectColumnValuesToBeInSet(column=f"_{col}_width", value_set=[True]))
    if where is not None:
        root = Path(meta.get("root", "."))
        data["_path_exists"] = [where(str(root / p)).is_file() for p in df["path"]]
        exp.append(gxe.ExpectColumnValuesToBeInSet(column="_path_exists", value_set=[True]))
    return data, exp


def _rejected(df: pd.DataFrame, meta: dict[str, Any], where: Where | None) -> tuple[pd.DataFrame, list]:
    gxe = _gxe()
    return df, [gxe.ExpectColumnValuesToNotBeNull(column="reason")]


def _aligned(df: pd.DataFrame, meta: dict[str, Any], where: Where | None) -> tuple[pd.DataFrame, list]:
    gxe = _gxe()
    data = df[["sample_id", "status"]].copy()
    ok = (df["status"] == "ok").to_numpy()
    data["_ok_has_image"] = ~ok | df["path"].notna().to_numpy()
    exp = [
        *_unique(gxe),
        gxe.ExpectColumnValuesToBeInSet(column="status", value_set=list(STATUSES)),
        gxe.ExpectColumnValuesToBeInSet(column="_ok_has_image", value_set=[True]),
    ]
    if where is not None:
        data["_image_exists"] = [not k or where(str(p)).is_file() for k, p in zip(ok, df["path"])]
        exp.append(gxe.ExpectColumnValuesToBeInSet(column="_image_exists", value_set=[True]))
    return data, exp


def _shard_index(df: pd.DataFrame, meta: dict[str, Any], where: Where | None) -> tuple[pd.DataFrame, list]:
    gxe = _gxe()
    return df, [*_unique(gxe), gxe.ExpectColumnValuesToBeBetween(column="position", min_value=0)]


def _va(df: pd.DataFrame, meta: dict[str, Any], where: Where | None, columns=("valence", "arousal")) -> tuple:
    gxe = _gxe()
    exp = _unique(gxe)
    for col in columns:
        exp += [
            gxe.ExpectColumnValuesToNotBeNull(column=col),
            gxe.ExpectColumnValuesToBeBetween(column=col, min_value=-1.0, max_value=1.0),
        ]
    return df, exp


def _labels(df: pd.DataFrame, meta: dict[str, Any], where: Where | None) -> tuple[pd.DataFrame, list]:
    gxe = _gxe()
    data = df[["sample_id", "split", "flipped", "label", "clean_label"]].copy()
    data["_consistent"] = df["flipped"].to_numpy() != (df["label"].to_numpy() == df["clean_label"].to_numpy())
    ids = _class_ids(meta)
    exp = [
        *_unique(gxe),
        gxe.ExpectColumnValuesToBeInSet(column="_consistent", value_set=[True]),
        gxe.ExpectColumnValuesToBeInSet(column="label", value_set=ids),
        gxe.ExpectColumnValuesToBeInSet(column="clean_label", value_set=ids),
        gxe.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)),
    ]
    noisy = ~df["split"].isin(["val", "test"]).to_numpy()
    if noisy.any():
        ratio = float(meta.get("ratio", df["noise_ratio"].iloc[0] if len(df) else 0.0))
        n = int(noisy.sum())
        data["_flip_rate"] = float(df.loc[noisy, "flipped"].mean())
        want = round(ratio * n) / n
        exp.append(
            gxe.ExpectColumnValuesToBeBetween(column="_flip_rate", min_value=want - 0.5 / n, max_value=want + 0.5 / n)
        )
    return data, exp


def _knn(df: pd.DataFrame, meta: dict[str, Any], where: Where | None) -> tuple[pd.DataFrame, list]:
    gxe = _gxe()
    ids = set(df["sample_id"])
    data = df[["sample_id"]].copy()
    data["_self_neighbour"] = [sid in list(n) for sid, n in zip(df["sample_id"], df["neighbours"])]
    data["_unknown_neighbours"] = [sum(j not in ids for j in n) for n in df["neighbours"]]
    data["_sorted"] = [bool(np.all(np.diff(np.asarray(d, np.float64)) >= 0)) for d in df["distances"]]
    return data, [
        *_unique(gxe),
        gxe.ExpectColumnValuesToBeInSet(column="_self_neighbour", value_set=[False]),
        gxe.ExpectColumnValuesToBeInSet(column="_unknown_neighbours", value_set=[0]),
        gxe.ExpectColumnValuesToBeInSet(column="_sorted", value_set=[True]),
    ]


def _plan(df: pd.DataFrame, meta: dict[str, Any], where: Where | None) -> tuple[pd.DataFrame, list]:
    gxe = _gxe()
    epochs = int(meta.get("epochs", df["epoch"].max() + 1 if len(df) else 0))
    return df, [
        gxe.ExpectColumnValuesToBeBetween(column="epoch", min_value=0, max_value=max(epochs - 1, 0)),
        gxe.ExpectColumnValuesToBeBetween(column="position", min_value=0),
    ]


def _distributions(df: pd.DataFrame, meta: dict[str, Any], columns: tuple[str, ...]) -> tuple[pd.DataFrame, list]:
    """Every row's distribution: one finite value per class of the metadata, summing to 1; ``columns``
    in [0, 1]."""
    gxe = _gxe()
    classes = meta.get("classes")
    if not classes:
        raise FerdataError("the table lacks class metadata (ferdata.classes)")
    widths = [len(d) for d in df["distribution"]]
    dist = np.stack(df["distribution"].to_numpy()).astype(np.float64) if len(set(widths)) == 1 else None
    data = df[["sample_id", *columns]].copy()
    data["_width"] = widths
    data["_dist_sum"] = dist.sum(1) if dist is not None else 0.0
    data["_dist_finite"] = np.isfinite(dist).all(1) if dist is not None else False
    exp = [
        *_unique(gxe),
        gxe.ExpectColumnValuesToBeInSet(column="_width", value_set=[len(classes)]),
        gxe.ExpectColumnValuesToBeBetween(column="_dist_sum", min_value=1 - 1e-5, max_value=1 + 1e-5),
        gxe.ExpectColumnValuesToBeInSet(column="_dist_finite", value_set=[True]),
    ]
    for col in columns:
        exp += [
            gxe.ExpectColumnValuesToNotBeNull(column=col),
            gxe.ExpectColumnValuesToBeBetween(column=col, min_value=0.0, max_value=1.0),
        ]
    return data, exp


def _learned(df: pd.DataFrame, meta: dict[str, Any], where: Where | None) -> tuple[pd.DataFrame, list]:
    return _distributions(df, meta, ("uncertainty",))


def _softlabels(df: pd.DataFrame, meta: dict[str, Any], where: Where | None) -> tuple[pd.DataFrame, list]:
    gxe = _gxe()
    data, exp = _distributions(df, meta, ("confidence",))
    positions = list(range(len(meta["classes"])))
    data["predicted_index"], data["label_index"] = df["predicted_index"], df["label_index"]
    data["method_uncertainty"] = df["method_uncertainty"]
    exp += [
        gxe.ExpectColumnValuesToBeInSet(column="predicted_index", value_set=positions),
        gxe.ExpectColumnValuesToBeInSet(column="label_index", value_set=positions),
        gxe.ExpectColumnValuesToBeBetween(column="method_uncertainty", min_value=0.0, max_value=1.0),  # nulls pass
    ]
    return data, exp


BUILDERS: dict[str, Callable[..., tuple[pd.DataFrame, list]]] = {
    "manifest": _manifest,
    "rejected": _rejected,
    "aligned": _aligned,
    "shard_index": _shard_index,
    "va": _va,
    "knn": _knn,
    "labels": _labels,
    "plan": _plan,
    "prior": _learned,
    "learned": _learned,
    "softlabels": _softlabels,
    "regressed_va": _va,
}
SUITES = tuple(BUILDERS)


def _run(data: pd.DataFrame, expectations: list, name: str) -> list[dict[str, Any]]:
    """Validate ``data`` with an ephemeral great-expectations context; the failed expectations."""
    import logging

    import great_expectations as gx

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    context = gx.get_context(mode="ephemeral")
    try:
        from great_expectations.data_context.types.base import ProgressBarsConfig

        context.variables.progress_bars = ProgressBarsConfig(globally=False)
    except (ImportError, AttributeError):
        pass
    batch = (
        context.data_sources.add_pandas("ferdata")
        .add_dataframe_asset(name)
        .add_batch_definition_whole_dataframe("all")
        .get_batch(batch_parameters={"dataframe": data})
    )
    suite = gx.ExpectationSuite(name=name)
    for e in expectations:
        suite.add_expectation(e)
    result = batch.validate(
        suite, result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ["sample_id"]}
    )
    failed = []
    for r in result.results:
        if r.success:
            continue
        cfg = r.expectation_config
        column = cfg.kwargs.get("column")
        rows = r.result.get("unexpected_index_list") or []
        ids = [row["sample_id"] if isinstance(row, dict) else row for row in rows][:SHOW]
        failed.append(
            {"expectation": cfg.type, "column": column, "count": r.result.get("unexpected_count"), "ids": ids}
        )
    return failed


def validate_table(
    df: pd.DataFrame, kind: str, meta: dict[str, Any] | None = None, *, base: Path | Where | None = None
) -> list[dict[str, Any]]:
    """The failed expectations of ``df`` as a ``kind`` table (empty when it passes or has no suite).
    ``base``: the table's folder, or a function that says where a path relative to it is now (image
    paths are checked only then)."""
    if kind not in BUILDERS or df.empty:
        return []
    where = base if callable(base) or base is None else (lambda rel, folder=Path(base): folder / rel)
    data, expectations = BUILDERS[kind](df, dict(meta or {}), where)
    return _run(data, expectations, kind)


def describe(failed: list[dict[str, Any]]) -> str:
    """One line per failed expectation, with a few offending ids."""
    return "; ".join(
        f"{f['expectation']}({f['column']}): {f['count']} rows, e.g. {', '.join(map(str, f['ids']))}" for f in failed
    )


def check_table(
    df: pd.DataFrame, kind: str, meta: dict[str, Any] | None, path: Path, where: Where | None = None
) -> None:
    """Raise a one-line error naming the failures when ``df`` fails its suite (nothing is written then)."""
    failed = validate_table(df, kind, meta, base=where or path.parent)
    if failed:
        raise FerdataError(f"{path} not written: {kind} table fails validation: {describe(failed)}")


def validate_file(path: str | Path) -> tuple[str, int, list[dict[str, Any]]]:
    """Validate any ferdata parquet by the kind in its metadata: (kind, rows, failures)."""
    from ferdata.core.io import read_meta, read_table

    path = Path(path)
    if not path.is_file():
        raise FerdataError(f"{path} not found")
    try:
        kind = read_meta(path).get("table")
    except Exception as exc:  # pyarrow raises several kinds for a file that is not parquet
        raise FerdataError(f"{path} is not a parquet file ({str(exc).splitlines()[0]})") from None
    if kind is None:
        raise FerdataError(f"{path} is not a ferdata table (no ferdata.table metadata)")
    df, meta = read_table(path, kind)
    return kind, len(df), validate_table(df, kind, meta, base=path.parent)
