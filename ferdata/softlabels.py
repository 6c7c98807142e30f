"""The soft-label export as a contract for other projects: load and check it (no torch needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ferdata.core.errors import FerdataError
from ferdata.core.io import read_table
from ferdata.core.tables import SCHEMA_VERSION


def load_soft_labels(path: str | Path) -> pd.DataFrame:
    """Load a soft-label parquet, check its schema version and distributions; metadata in ``df.attrs``.

    ``df.attrs["classes"]`` names the classes in the order of each ``distribution``.
    """
    df, meta = read_table(path, "softlabels", hint="run `ferdata export` to write it")
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise FerdataError(
            f"{path} has soft-label schema {meta.get('schema_version')}, this ferdata reads {SCHEMA_VERSION}; "
            "re-run `ferdata export` with this version"
        )
    classes = meta.get("classes")
    if not classes:
        raise FerdataError(f"{path} lacks the class names in its metadata (ferdata.classes)")
    dists = np.stack(df["distribution"].to_numpy()) if len(df) else np.zeros((0, len(classes)))
    if dists.shape[1] != len(classes):
        raise FerdataError(f"{path}: distributions have {dists.shape[1]} values, metadata names {len(classes)} classes")
    if len(df) and np.abs(dists.sum(1) - 1.0).max() > 1e-5:
        raise FerdataError(f"{path}: some distributions do not sum to 1")
    df.attrs.update(meta)
    return df
