"""SFEW 2.0: ``Train/<Emotion>/*.png`` and ``Val/<Emotion>/*.png`` (papers report Val; Test has no
public labels)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ferdata.adapters.base import Ingest, canonical_label, carve_val, images_under, require_root, safe_id
from ferdata.core.settings import Settings, option

MARKERS = ("Train", "train")
WHERE = "SFEW 2.0 is distributed by the EmotiW organisers on request: https://users.cecs.anu.edu.au/~few_group/"
FOLDERS = {"train": "train", "val": "test"}


@dataclass(frozen=True)
class Options(Settings):
    """The ``sfew`` section of its params.yaml."""

    section = "sfew"
    val_fraction: float = option(0.1, "share of training videos carved into val", min=0.0, below=1.0)


def ingest(source: Path, out_dir: Path, *, options: Options, seed: int = 0) -> tuple[Ingest, Path]:
    root, _ = require_root(source, MARKERS, "sfew", WHERE)
    ing = Ingest("sfew")
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        split = FOLDERS.get(folder.name.lower())
        for cls in sorted(p for p in folder.iterdir() if p.is_dir()):
            for img in images_under(cls):
                rel = str(img.relative_to(root))
                sid = "sfew-" + safe_id(folder.name, cls.name, img.stem)
                if split is None:
                    ing.reject(sid, rel, "no_public_label", f"{folder.name} is not a labelled split")
                    continue
                ing.add_checked(
                    root,
                    sid,
                    split,
                    rel,
                    canonical_label(cls.name),
                    raw_label=cls.name,
                    video_id=safe_id(img.stem.rsplit("_", 1)[0]),
                )
    carve_val(ing, seed=seed, val=options.val_fraction, key="video_id")
    return ing, root
