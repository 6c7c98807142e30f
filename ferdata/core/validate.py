"""Expectation suites for ferdata's tables, run with great-expectations (1.x, an ephemeral context).

Every stage runs its table's suite before the atomic rename that publishes it (``io.write_table``), so a
table that fails never lands where DVC would cache it; ``ferdata validate PATH`` runs it on any file.
Checks great-expectations cannot state on list columns (distributions summing to one, neighbours that
exist) become derived columns (``_dist_sum``, ``_self_neighbour``, ...) that the suite then constrains.
great-expectations is imported only when a suite runs, so the CLI stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ferdata.core.classes import CANONICAL
from ferdata.core.errors import FerdataError

SUITES = ("manifest", "va", "labels", "knn", "softlabels")
SHOW = 5  # offending ids shown per failed expectation


def _manifest(df: pd.DataFrame, meta: dict[str, Any], base: Path | None) -> tuple[pd.DataFrame, list]:
    import great_expectations.expectations as gxe

    classes = meta.get("classes") or list(CANONICAL)
    data = df[["sample_id", "label", "split"]].copy()
    exp = [
        gxe.ExpectColumnValuesToBeUnique(column="sample_id"),
        gxe.ExpectColumnValuesToNotMatchRegex(column="sample_id", regex=r"\."),
        gxe.ExpectColumnValuesToBeInSet(column="label", value_set=[CANONICAL.index(c) for c in classes]),
        gxe.ExpectColumnValuesToBeInSet(column="split", value_set=["train", "val", "test"]),
    ]
    if base is not None:
        root = base / meta.get("root", ".")
        data["_path_exists"] = [(root / p).is_file() for p in df["path"]]
        exp.append(gxe.ExpectColumnValuesToBeInSet(column="_path_exists", value_set=[True]))
    return data, exp


def _va(df: pd.DataFrame, meta: dict[str, Any], base: Path | None) -> tuple[pd.DataFrame, list]:
    import great_expectations.expectations as gxe

    exp = [gxe.ExpectColumnValuesToBeUnique(column="sample_id")]
    for col in ("valence", "arousal"):
        exp += [
            gxe.ExpectColumnValuesToNotBeNull(column=col),
            gxe.ExpectColumnValuesToBeBetween(column=col, min_value=-1.0, max_value=1.0),
        ]
    return df, exp


def _labels(df: pd.DataFrame, meta: dict[str, Any], base: Path | None) -> tuple[pd.DataFrame, list]:
    import great_expectations.expectations as gxe

    data = df[["sample_id", "split", "flipped"]].copy()
    data["_consistent"] = df["flipped"].to_numpy() != (df["label"].to_numpy() == df["clean_label"].to_numpy())
    exp = [
        gxe.ExpectColumnValuesToBeUnique(column="sample_id"),
        gxe.ExpectColumnValuesToBeInSet(column="_consistent", value_set=[True]),
    ]
    noisy = ~df["split"].isin(["val", "test"]).to_numpy()
    data["_noisy_pool"] = noisy
    if noisy.any():
        ratio = float(meta.get("ratio", df["noise_ratio"].iloc[0] if len(df) else 0.0))
        n = int(noisy.sum())
        data["_flip_rate"] = float(df.loc[noisy, "flipped"].mean())
        want = round(ratio * n) / n
        exp.append(
            gxe.ExpectColumnValuesToBeBetween(column="_flip_rate", min_value=want - 0.5 / n, max_value=want + 0.5 / n)
        )
    return data, exp


def _knn(df: pd.DataFrame, meta: dict[str, Any], base: Path | None) -> tuple[pd.DataFrame, list]:
    import great_expectations.expectations as gxe

    ids = set(df["sample_id"])
    data = df[["sample_id"]].copy()
    data["_self_neighbour"] = [sid in list(n) for sid, n in zip(df["sample_id"], df["neighbours"])]
    data["_unknown_neighbours"] = [sum(j not in ids for j in n) for n in df["neighbours"]]
    data["_sorted"] = [bool(np.all(np.diff(np.asarray(d, np.float64)) >= 0)) for d in df["distances"]]
    return data, [
        gxe.ExpectColumnValuesToBeUnique(column="sample_id"),
        gxe.ExpectColumnValuesToBeInSet(column="_self_neighbour", value_set=[False]),
        gxe.ExpectColumnValuesToBeInSet(column="_unknown_neighbours", value_set=[0]),
        gxe.ExpectColumnValuesToBeInSet(column="_sorted", value_set=[True]),
    ]


def _softlabels(df: pd.DataFrame, meta: dict[str, Any], base: Path | None) -> tuple[pd.DataFrame, list]:
    import great_expectations.expectations as gxe

    classes = meta.get("classes")
    if not classes:
        raise FerdataError("softlabels table lacks class metadata (ferdata.classes)")
    dist = np.stack(df["distribution"].to_numpy()).astype(np.float64) if len(df) else np.zeros((0, len(classes)))
    data = df[["sample_id", "confidence", "uncertainty"]].copy()
    data["_width"] = dist.shape[1]
    data["_dist_sum"] = dist.sum(1) if len(df) else []
    data["_dist_finite"] = np.isfinite(dist).all(1) if len(df) else []
    exp = [
        gxe.ExpectColumnValuesToBeUnique(column="sample_id"),
        gxe.ExpectColumnValuesToBeInSet(column="_width", value_set=[len(classes)]),
        gxe.ExpectColumnValuesToBeBetween(column="_dist_sum", min_value=1 - 1e-5, max_value=1 + 1e-5),
        gxe.ExpectColumnValuesToBeInSet(column="_dist_finite", value_set=[True]),
    ]
    for col in ("confidence", "uncertainty"):
        exp += [
            gxe.ExpectColumnValuesToNotBeNull(column=col),
            gxe.ExpectColumnValuesToBeBetween(column=col, min_value=0.0, max_value=1.0),
        ]
    return data, exp


BUILDERS = {"manifest": _manifest, "va": _va, "labels": _labels, "knn": _knn, "softlabels": _softlabels}


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
    df: pd.DataFrame, kind: str, meta: dict[str, Any] | None = None, *, base: Path | None = None
) -> list[dict[str, Any]]:
    """The failed expectations of ``df`` as a ``kind`` table (empty when it passes or has no suite)."""
    if kind not in BUILDERS or df.empty:
        return []
    data, expectations = BUILDERS[kind](df, dict(meta or {}), base)
    return _run(data, expectations, kind)


def describe(failed: list[dict[str, Any]]) -> str:
    """One line per failed expectation, with a few offending ids."""
    return "; ".join(
        f"{f['expectation']}({f['column']}): {f['count']} rows, e.g. {', '.join(map(str, f['ids']))}" for f in failed
    )


def check_table(df: pd.DataFrame, kind: str, meta: dict[str, Any] | None, path: Path) -> None:
    """Raise a one-line error naming the failures when ``df`` fails its suite (nothing is written then)."""
    failed = validate_table(df, kind, meta, base=path.parent)
    if failed:
        raise FerdataError(f"{path} not written: {kind} table fails validation: {describe(failed)}")


def validate_file(path: str | Path) -> tuple[str, int, list[dict[str, Any]]]:
    """Validate any ferdata parquet by the kind in its metadata: (kind, rows, failures)."""
    from ferdata.core.io import read_meta, read_table

    path = Path(path)
    if not path.is_file():
        raise FerdataError(f"{path} not found")
    kind = read_meta(path).get("table")
    if kind is None:
        raise FerdataError(f"{path} is not a ferdata table (no ferdata.table metadata)")
    df, meta = read_table(path, kind)
    return kind, len(df), validate_table(df, kind, meta, base=path.parent)
