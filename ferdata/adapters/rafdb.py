"""RAF-DB basic: ``EmoLabel/list_patition_label.txt`` (sic), aligned 100x100 or original images with
5 manual landmarks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ferdata.adapters.base import Ingest, carve_val, require_root
from ferdata.core.classes import CANONICAL
from ferdata.core.settings import Settings, option

MARKERS = ("EmoLabel/list_patition_label.txt", "EmoLabel/list_partition_label.txt")
WHERE = "RAF-DB is shared on request by its authors: http://www.whdeng.cn/raf/model1.html (basic.zip)"
# RAF-DB ids 1..7: surprise, fear, disgust, happiness, sadness, anger, neutral.
LABELS = {1: "surprise", 2: "fear", 3: "disgust", 4: "happy", 5: "sad", 6: "anger", 7: "neutral"}


@dataclass(frozen=True)
class Options(Settings):
    """The ``rafdb`` section of its params.yaml."""

    section = "rafdb"
    images: str = option(
        "aligned",
        "aligned (the 100x100 crops) or original (with the 5 manual landmarks)",
        choices=("aligned", "original"),
    )
    val_fraction: float = option(0.1, "share of training images carved into val", min=0.0, below=1.0)


def read_manual_landmarks(path: Path) -> list[float] | None:
    """The 5 manual landmarks (first 5 ``x y`` lines) of an ``_manu_attri.txt`` file, or None."""
    try:
        lines = path.read_text().split("\n")[:5]
        points = [float(v) for line in lines for v in line.split()[:2]]
    except (OSError, ValueError):
        return None
    return points if len(points) == 10 else None


def ingest(source: Path, out_dir: Path, *, options: Options, seed: int = 0) -> tuple[Ingest, Path]:
    root, marker = require_root(source, MARKERS, "rafdb", WHERE)
    images = options.images
    ing = Ingest("rafdb", classes=[c for c in CANONICAL if c in LABELS.values()])
    for n, line in enumerate((root / marker).read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        name = parts[0]
        stem = Path(name).stem
        sid = "rafdb-" + stem
        if len(parts) != 2 or not parts[1].isdigit() or int(parts[1]) not in LABELS:
            ing.reject(sid, name, "unknown_label", f"{marker} line {n}: {line!r}")
            continue
        split = "test" if stem.startswith("test") else "train"
        label = CANONICAL.index(LABELS[int(parts[1])])
        if images == "aligned":
            path = f"Image/aligned/{stem}_aligned.jpg"
            ing.add_checked(root, sid, split, path, label)
        else:
            path = f"Image/original/{name}"
            lmk = read_manual_landmarks(root / "Annotation/manual" / f"{stem}_manu_attri.txt")
            ing.add_checked(root, sid, split, path, label, landmarks=lmk)
    carve_val(ing, seed=seed, val=options.val_fraction)
    return ing, root
