"""SFEW 2.0: ``Train/<Emotion>/*.png`` and ``Val/<Emotion>/*.png`` (papers report Val; Test has no
public labels)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ferdata.adapters.base import Ingest, canonical_label, carve_val, images_under, require_root, safe_id

MARKERS = ("Train", "train")
WHERE = "SFEW 2.0 is distributed by the EmotiW organisers on request: https://users.cecs.anu.edu.au/~few_group/"
FOLDERS = {"train": "train", "val": "test"}


def ingest(source: Path, out_dir: Path, *, options: dict[str, Any]) -> tuple[Ingest, Path]:
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
                ing.add_checked(root, sid, split, rel, canonical_label(cls.name), raw_label=cls.name,
                                video_id=safe_id(img.stem.rsplit("_", 1)[0]))
    carve_val(ing, seed=int(options.get("seed", 0)), val=float(options.get("val_fraction", 0.1)), key="video_id")
    return ing, root
