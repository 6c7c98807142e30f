"""FERG-DB stylised characters: ``<character>/<character>_<emotion>/<character>_<emotion>_<n>.png``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ferdata.adapters.base import Ingest, canonical_label, finish_splits, images_under, require_root, safe_id
from ferdata.core.settings import Settings, option

CHARACTERS = ("aia", "bonnie", "jules", "malcolm", "mery", "ray")
MARKERS = tuple(f"{c}/{c}_joy" for c in CHARACTERS)
WHERE = "FERG-DB is distributed on request: https://grail.cs.washington.edu/projects/deepexpr/ferg-2d-db.html"


@dataclass(frozen=True)
class Options(Settings):
    """The ``ferg`` section of its params.yaml."""

    section = "ferg"
    val_fraction: float = option(0.1, "share of images in val", min=0.0, below=1.0)
    test_fraction: float = option(0.2, "share of images in test", min=0.0, below=1.0)


def ingest(source: Path, out_dir: Path, *, options: Options, seed: int = 0) -> tuple[Ingest, Path]:
    root, _ = require_root(source, MARKERS, "ferg", WHERE)
    ing = Ingest("ferg")
    for character in sorted(p for p in root.iterdir() if p.is_dir() and p.name.lower() in CHARACTERS):
        for folder in sorted(p for p in character.iterdir() if p.is_dir()):
            emotion = folder.name.split("_", 1)[-1]
            for img in images_under(folder):
                rel = str(img.relative_to(root))
                ing.add_checked(
                    root,
                    "ferg-" + safe_id(img.stem),
                    None,
                    rel,
                    canonical_label(emotion),
                    raw_label=emotion,
                    subject_id=character.name,
                )
    # six characters only: split by image so every character appears in every split
    finish_splits(ing, seed=seed, val=options.val_fraction, test=options.test_fraction, key="sample_id")
    return ing, root
