"""AffectNet: ``Manually_Annotated_file_lists/{training,validation}.csv`` with boxes, 68 landmarks,
expression and valence/arousal; images under ``Manually_Annotated_Images/``."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from ferdata.adapters.base import Ingest, carve_val, landmarks68_to5, require_root, safe_id
from ferdata.core.classes import CANONICAL
from ferdata.core.settings import Settings, option

MARKERS = ("Manually_Annotated_file_lists/training.csv",)
WHERE = "AffectNet is licensed by its authors on request: http://mohammadmahoor.com/affectnet/"
NOT_EXPRESSIONS = {8: "none", 9: "uncertain", 10: "no_face"}
FILES = {"training.csv": "train", "validation.csv": "test"}  # papers report the validation set


@dataclass(frozen=True)
class Options(Settings):
    """The ``affectnet`` section of its params.yaml."""

    section = "affectnet"
    contempt: bool = option(True, "keep contempt (8 classes) or drop it (7)")
    val_fraction: float = option(0.05, "share of training images carved into val", min=0.0, below=1.0)


def _va(value: str) -> float | None:
    """AffectNet VA, None where not annotated (-2) or outside [-1, 1]."""
    try:
        v = float(value)
    except ValueError:
        return None
    return v if -1.0 <= v <= 1.0 else None


def ingest(source: Path, out_dir: Path, *, options: Options, seed: int = 0) -> tuple[Ingest, Path]:
    root, _ = require_root(source, MARKERS, "affectnet", WHERE)
    classes = 8 if options.contempt else 7
    ing = Ingest("affectnet", classes=list(CANONICAL[:classes]))
    for name, split in FILES.items():
        table = root / "Manually_Annotated_file_lists" / name
        if not table.is_file():
            continue
        with open(table, newline="") as fh:
            for n, row in enumerate(csv.DictReader(fh), 2):
                rel = (row.get("subDirectory_filePath") or "").strip()
                sid = "affectnet-" + safe_id(str(Path(rel).with_suffix("")))
                path = f"Manually_Annotated_Images/{rel}"
                try:
                    expression = int(float(row["expression"]))
                except (KeyError, ValueError):
                    ing.reject(sid, path, "bad_row", f"{table} line {n}")
                    continue
                if expression in NOT_EXPRESSIONS:
                    ing.reject(sid, path, NOT_EXPRESSIONS[expression], f"{table} line {n}")
                    continue
                label = expression if 0 <= expression < classes else None
                try:
                    box = [float(row[k]) for k in ("face_x", "face_y", "face_width", "face_height")]
                    points = [float(v) for v in row["facial_landmarks"].split(";") if v.strip()]
                    lmk = landmarks68_to5(points) if len(points) == 136 else None
                except (KeyError, ValueError):
                    box, lmk = None, None
                ing.add_checked(
                    root,
                    sid,
                    split,
                    path,
                    label,
                    raw_label=expression,
                    bbox=box,
                    landmarks=lmk,
                    valence=_va(row.get("valence", "")),
                    arousal=_va(row.get("arousal", "")),
                )
    carve_val(ing, seed=seed, val=options.val_fraction)
    return ing, root
