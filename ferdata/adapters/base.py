"""What every dataset adapter shares: the row builders, label aliases, split carving, image checks."""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from ferdata.core.classes import CANONICAL
from ferdata.core.errors import FerdataError
from ferdata.core.groups import split_groups
from ferdata.core.io import file_problem

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".gif")
SPLITS = ("train", "val", "test")

# Names datasets use for the canonical classes (lower case).
ALIASES: dict[str, str] = {
    "neutral": "neutral",
    "ne": "neutral",
    "calm": "neutral",
    "happy": "happy",
    "happiness": "happy",
    "joy": "happy",
    "ha": "happy",
    "sad": "sad",
    "sadness": "sad",
    "sa": "sad",
    "surprise": "surprise",
    "surprised": "surprise",
    "su": "surprise",
    "fear": "fear",
    "fearful": "fear",
    "afraid": "fear",
    "fe": "fear",
    "disgust": "disgust",
    "disgusted": "disgust",
    "di": "disgust",
    "anger": "anger",
    "angry": "anger",
    "an": "anger",
    "contempt": "contempt",
    "contemptuous": "contempt",
}
SPLIT_ALIASES: dict[str, str] = {
    "train": "train",
    "training": "train",
    "train_set": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "publictest": "val",
    "validation_set": "val",
    "test": "test",
    "testing": "test",
    "privatetest": "test",
    "test_set": "test",
}


def canonical_label(name: str) -> int | None:
    """Canonical class id of a dataset's class name (any case, common synonyms), or None."""
    key = ALIASES.get(str(name).strip().lower())
    return None if key is None else CANONICAL.index(key)


def classes_of(labels: Iterable[int]) -> list[str]:
    """The canonical classes present, in canonical order."""
    present = set(int(x) for x in labels)
    return [c for i, c in enumerate(CANONICAL) if i in present]


def safe_id(*parts: str) -> str:
    """A dot-free WebDataset key from name parts."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", "-".join(str(p) for p in parts)).strip("_")


def path_id(prefix: str, rel: str) -> str:
    """A dot-free id for the image at ``rel``: readable (its path's letters and digits) and unique per
    distinct path (a short hash of the path itself: ``ö.jpg`` and ``表情.jpg``, ``a.jpg`` and ``a.png``,
    ``a b.jpg`` and ``a_b.jpg`` differ), the same on every run."""
    digest = hashlib.sha256(rel.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{prefix}-{safe_id(str(PurePosixPath(rel).with_suffix('')))}-{digest}"


def normal_path(rel: str, root: Path) -> tuple[str | None, str]:
    """``rel`` (from a file listing or a table) in one normal form, relative to ``root`` when it lies
    inside it, so one file listed two ways is one path; or (None, why it cannot be a path)."""
    if not rel:
        return None, "empty path"
    if "\0" in rel:
        return None, "NUL byte in the path"
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        return None, f"file name is not UTF-8 ({rel.encode('utf-8', 'surrogateescape')!r}); rename the file"
    path = rel.replace("\\", "/")
    if os.path.isabs(path):
        inside = os.path.relpath(os.path.normpath(path), os.path.normpath(root.resolve()))
        path = inside if not inside.startswith("..") else path
    return posixpath.normpath(path), ""


def image_problem(path: Path) -> tuple[str, str] | None:
    """(reason, detail) when ``path`` cannot be an image (missing, a dangling link, not a regular file,
    empty, not an image format), else None; reads 16 bytes of regular files only, so a named pipe never
    blocks."""
    problem = file_problem(path)
    if problem:
        return problem
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except FileNotFoundError:
        return "missing_image", str(path)
    except OSError:
        return "unreadable", str(path)
    magic = (b"\xff\xd8\xff", b"\x89PNG", b"II*\x00", b"MM\x00*", b"BM", b"GIF8")
    if head.startswith(magic) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return None
    return "unreadable", str(path)  # empty, or not an image format


def landmarks68_to5(points: Sequence[float] | np.ndarray) -> np.ndarray:
    """Reduce 68 iBUG landmarks to the 5 of the ArcFace template: eye centres, nose tip, mouth corners."""
    p = np.asarray(points, np.float64).reshape(68, 2)
    return np.stack([p[36:42].mean(0), p[42:48].mean(0), p[30], p[48], p[54]]).reshape(-1)


@dataclass
class Ingest:
    """What an adapter found: manifest rows, rejected rows, the dataset's class list."""

    dataset: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    classes: list[str] | None = None
    notes: list[str] = field(default_factory=list)
    subject_pattern: str | None = None  # the file-name pattern subjects were read with (generic adapters)

    def add(self, sample_id: str, split: str, path: str, label: int, **extra: Any) -> None:
        row = {
            "sample_id": sample_id,
            "dataset": self.dataset,
            "split": split,
            "path": path,
            "label": label,
            "video_id": None,
            "subject_id": None,
            "frame": None,
            "bbox": None,
            "landmarks": None,
            "valence": None,
            "arousal": None,
            "votes": None,
            "true_dist": None,
        }
        unknown = set(extra) - set(row)
        if unknown:
            raise TypeError(f"unknown manifest columns {unknown}")
        row.update(extra)
        self.rows.append(row)

    def reject(self, sample_id: str, path: str | None, reason: str, detail: str = "") -> None:
        self.rejected.append({"sample_id": sample_id, "path": path, "reason": reason, "detail": detail})

    def add_checked(
        self,
        root: Path,
        sample_id: str,
        split: str,
        path: str,
        label: int | None,
        *,
        raw_label: Any = None,
        **extra: Any,
    ) -> None:
        """Add a row unless its label is unknown or its image is missing/unreadable (then reject it)."""
        if label is None:
            self.reject(sample_id, path, "unknown_label", f"label {raw_label!r} maps to no canonical class")
            return
        problem = image_problem(root / path)
        if problem:
            self.reject(sample_id, path, *problem)
            return
        self.add(sample_id, split, path, label, **extra)


def find_root(source: Path, marker: str, *, depth: int = 3) -> Path | None:
    """The folder under ``source`` (itself or up to ``depth`` levels down) that holds ``marker``."""
    if (source / marker).exists():
        return source
    frontier = [source]
    for _ in range(depth):
        nxt = []
        for folder in frontier:
            try:
                children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
            except OSError:
                continue
            for child in children:
                if (child / marker).exists():
                    return child
                nxt.append(child)
        frontier = nxt
    return None


def require_root(source: Path, markers: Sequence[str], dataset: str, where: str) -> tuple[Path, str]:
    """Locate the dataset inside ``source`` by any of ``markers``; a one-line error naming them when absent."""
    if source.is_file():
        source = source.parent
    for marker in markers:
        root = find_root(source, marker)
        if root is not None:
            return root, marker
    raise FerdataError(f"{dataset} not found under {source}: expected {' or '.join(markers)}; {where}")


def images_under(folder: Path) -> list[Path]:
    """Image files below ``folder``, sorted, any case of suffix (a progress bar counts them)."""
    from tqdm import tqdm

    found = (p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    # everything but folders: a dangling link or a named pipe becomes a rejected row, never a silent gap
    return sorted(
        p for p in tqdm(found, desc=f"scan {folder.name}", unit=" files", leave=False, disable=None) if not p.is_dir()
    )


def _group(row: dict[str, Any], key: str) -> str:
    """A row's group: its ``key`` (the subject), else its video, else itself (as ``group_of`` reads a manifest)."""
    return str(row.get(key) or row.get("video_id") or row["sample_id"])


def finish_splits(ing: Ingest, *, seed: int, val: float, test: float = 0.0, key: str = "subject_id") -> None:
    """Give rows with split ``None`` a split by whole groups (``key``, else the sample id)."""
    open_rows = [r for r in ing.rows if r["split"] is None]
    split_of = split_groups((_group(r, key) for r in open_rows), seed=seed, val=val, test=test)
    for row in open_rows:
        row["split"] = split_of[_group(row, key)]


def carve_val(ing: Ingest, *, seed: int, val: float, key: str = "subject_id") -> None:
    """Move a share ``val`` of the training groups into ``val`` when the dataset ships no val split."""
    if val <= 0 or any(r["split"] == "val" for r in ing.rows):
        return
    train = [r for r in ing.rows if r["split"] == "train"]
    split_of = split_groups((_group(r, key) for r in train), seed=seed, val=val)
    for row in train:
        row["split"] = split_of[_group(row, key)]
