"""Whole groups of faces (subjects, else videos, else single faces) to splits or to folds.

One seeded order serves both: groups sorted by a hash of (seed, group), so the assignment is
deterministic and does not depend on the order rows were read in, and a face never shares a split
or a fold with another face of its subject.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np
import pandas as pd


def group_of(rows: pd.DataFrame) -> pd.Series:
    """Each face's group: its subject, else its video, else the face itself."""
    own = pd.Series(rows["sample_id"].to_numpy(), index=rows.index)
    return rows["subject_id"].fillna(rows["video_id"]).fillna(own).astype(str)


def rank_groups(groups: Iterable[str], seed: int) -> list[str]:
    """The distinct groups in a seeded hash order."""
    return sorted(set(groups), key=lambda g: hashlib.sha256(f"{seed}:{g}".encode()).hexdigest())


def split_groups(groups: Iterable[str], *, seed: int, val: float, test: float = 0.0) -> dict[str, str]:
    """Whole groups to train/val/test in the requested shares. A share above 0 gets at least one group
    and train always keeps one."""
    ranked = rank_groups(groups, seed)
    n = len(ranked)

    def count(share: float, room: int) -> int:
        return min(max(round(share * n), 1 if share > 0 else 0), max(room, 0))

    n_test = count(test, n - 1)
    n_val = count(val, n - 1 - n_test)
    return {g: "test" if i < n_test else "val" if i < n_test + n_val else "train" for i, g in enumerate(ranked)}


def fold_groups(groups: Iterable[str], *, folds: int, seed: int) -> np.ndarray:
    """The fold (0 .. folds-1) of every element of ``groups``, whole groups dealt round-robin."""
    groups = [str(g) for g in groups]
    fold_of = {g: i % folds for i, g in enumerate(rank_groups(groups, seed))}
    return np.array([fold_of[g] for g in groups], np.int64)


def describe_splits(manifest: pd.DataFrame) -> dict:
    """How a manifest's splits keep people apart: grouped by subject, video or image, how many groups,
    and how many subjects (or videos) sit in more than one split (0 for honest splits)."""
    by = (
        "subject"
        if manifest["subject_id"].notna().any()
        else "video"
        if manifest["video_id"].notna().any()
        else "image"
    )
    key = {"subject": "subject_id", "video": "video_id"}.get(by)
    if key is None:
        return {"by": "image", "groups": len(manifest), "shared_groups": 0, "ungrouped": len(manifest)}
    known = manifest[manifest[key].notna()]
    spread = known.groupby(key)["split"].nunique()
    return {
        "by": by,
        "groups": len(spread),
        "shared_groups": int((spread > 1).sum()),
        "ungrouped": int(manifest[key].isna().sum()),
    }
