"""JAFFE: ``KA.AN1.39.tiff`` images of 10 subjects, and the mean ratings of 60 raters on 6 emotions
(``DATASET_README.txt`` or any text file holding the rating table) that become a true distribution."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ferdata.adapters.base import Ingest, canonical_label, finish_splits, images_under, require_root
from ferdata.core.classes import BASIC7
from ferdata.core.settings import Settings, option

MARKERS = ("jaffedbase", "KA.AN1.39.tiff")
WHERE = "JAFFE is at https://zenodo.org/record/3451524 (non-commercial research use)"
NAME = re.compile(r"^([A-Z]{2})\.([A-Z]{2})(\d)\.(\d+)$")
RATED = ("happy", "sad", "surprise", "anger", "disgust", "fear")  # the table's HAP SAD SUR ANG DIS FEA order
ROW = re.compile(r"^\s*\d+\s+((?:\d+(?:\.\d+)?\s+){6})([A-Z]{2})-([A-Z]{2}\d)\s*$")
KEY_FIXES = {"YN": "YM"}  # the rating file spells YM-HA2 as YN-HA2


@dataclass(frozen=True)
class Options(Settings):
    """The ``jaffe`` section of its params.yaml."""

    section = "jaffe"
    val_fraction: float = option(0.2, "share of subjects in val", min=0.0, below=1.0)
    test_fraction: float = option(0.2, "share of subjects in test", min=0.0, below=1.0)


def read_ratings(text: str) -> dict[str, np.ndarray]:
    """The first (60-rater, six-emotion) rating table, keyed ``SUBJECT-CODE``; later tables are ignored."""
    ratings: dict[str, np.ndarray] = {}
    for line in text.splitlines():
        if "Fear Excluded" in line:
            break
        m = ROW.match(line)
        if m:
            subject = KEY_FIXES.get(m.group(2), m.group(2))
            ratings.setdefault(f"{subject}-{m.group(3)}", np.array(m.group(1).split(), np.float64))
    return ratings


def rating_distribution(scores: np.ndarray) -> np.ndarray:
    """A distribution over the 7 basic classes from 1-5 mean ratings: emotion k gets its intensity
    (score-1)/4, neutral gets 1 minus the strongest intensity, then all are normalised."""
    intensity = np.clip((scores - 1.0) / 4.0, 0.0, 1.0)
    dist = np.zeros(len(BASIC7))
    for name, value in zip(RATED, intensity):
        dist[BASIC7.index(name)] = value
    dist[BASIC7.index("neutral")] = 1.0 - intensity.max()
    return dist / dist.sum()


def ingest(source: Path, out_dir: Path, *, options: Options, seed: int = 0) -> tuple[Ingest, Path]:
    root, marker = require_root(source, MARKERS, "jaffe", WHERE)
    folder = root / "jaffedbase" if marker == "jaffedbase" else root
    ratings: dict[str, np.ndarray] = {}
    for txt in sorted(root.glob("*.txt")) + sorted(folder.glob("*.txt")):
        ratings.update(read_ratings(txt.read_text(errors="replace")))
    ing = Ingest("jaffe", classes=list(BASIC7))
    used = set()
    for img in images_under(folder):
        rel = str(img.relative_to(root))
        m = NAME.match(img.stem)
        sid = "jaffe-" + img.stem.replace(".", "_")
        if m is None:
            ing.reject(sid, rel, "bad_name", "expected SUBJECT.CODEn.number, e.g. KA.AN1.39")
            continue
        subject, code, n = m.group(1), m.group(2), m.group(3)
        key = f"{subject}-{code}{n}"
        scores = ratings.get(key)
        used.add(key)
        ing.add_checked(
            root,
            sid,
            None,
            rel,
            canonical_label(code),
            raw_label=code,
            subject_id=subject,
            true_dist=None if scores is None else rating_distribution(scores),
        )
    missing = sum(1 for r in ing.rows if r["true_dist"] is None)
    if ratings:
        ing.notes.append(
            f"ratings for {len(ing.rows) - missing}/{len(ing.rows)} images"
            + (f"; {len(set(ratings) - used)} rating rows match no image" if set(ratings) - used else "")
        )
    if missing and ratings:
        # a partial distribution column would break the true_dist contract: keep it all or nothing
        for r in ing.rows:
            r["true_dist"] = None
        ing.notes.append(f"{missing} images lack ratings: true distributions dropped")
    finish_splits(ing, seed=seed, val=options.val_fraction, test=options.test_fraction)
    return ing, root
