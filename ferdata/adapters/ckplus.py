"""CK+: sequences from neutral to peak (``cohn-kanade-images/S005/001/*.png`` + ``Emotion/`` labels +
``Landmarks/``), or the common CK+48 crop set (``CK+48/<class>/S005_001_00000011.png``)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ferdata.adapters.base import Ingest, canonical_label, finish_splits, images_under, landmarks68_to5, require_root
from ferdata.core.classes import CANONICAL
from ferdata.core.settings import Settings, option

MARKERS = ("cohn-kanade-images", "Emotion", "anger/")
WHERE = "CK+ is distributed by its authors on request: https://www.jeffcohn.net/Resources/"
# CK+ emotion codes 0..7: neutral, anger, contempt, disgust, fear, happy, sadness, surprise.
CODES = ("neutral", "anger", "contempt", "disgust", "fear", "happy", "sad", "surprise")
NAME = re.compile(r"^(S\d+)_(\d+)_(\d+)$")


@dataclass(frozen=True)
class Options(Settings):
    """The ``ckplus`` section of its params.yaml."""

    section = "ckplus"
    peak_frames: int = option(3, "last frames of each sequence labelled with its emotion", min=1)
    neutral_frames: int = option(1, "first frames of each sequence labelled neutral", min=0)
    val_fraction: float = option(0.15, "share of subjects in val", min=0.0, below=1.0)
    test_fraction: float = option(0.2, "share of subjects in test", min=0.0, below=1.0)


def read_landmarks(path: Path) -> np.ndarray | None:
    try:
        points = [float(v) for v in path.read_text().split()]
    except (OSError, ValueError):
        return None
    return landmarks68_to5(points) if len(points) == 136 else None


def ingest_sequences(root: Path, options: Options) -> Ingest:
    peak, neutral = options.peak_frames, options.neutral_frames
    ing = Ingest("ckplus", classes=list(CANONICAL))
    for seq in sorted(p for p in (root / "cohn-kanade-images").glob("*/*") if p.is_dir()):
        subject, number = seq.parent.name, seq.name
        video = f"{subject}_{number}"
        frames = [p for p in images_under(seq) if NAME.match(p.stem)]
        labels = sorted((root / "Emotion" / subject / number).glob("*_emotion.txt"))
        if not labels:
            ing.reject(
                f"ckplus-{video}",
                f"cohn-kanade-images/{subject}/{number}",
                "unlabelled_sequence",
                f"{len(frames)} frames, no Emotion/{subject}/{number}/*_emotion.txt",
            )
            continue
        try:
            code = int(float(labels[0].read_text().split()[0]))
            name = CODES[code]
        except (ValueError, IndexError, OSError):
            ing.reject(f"ckplus-{video}", str(labels[0].relative_to(root)), "unknown_label", "unparsable emotion file")
            continue
        chosen = [(f, name) for f in frames[-peak:]] + [
            (f, "neutral") for f in frames[:neutral] if f not in frames[-peak:]
        ]
        for frame, cls in chosen:
            rel = str(frame.relative_to(root))
            lmk = read_landmarks(root / "Landmarks" / subject / number / f"{frame.stem}_landmarks.txt")
            ing.add_checked(
                root,
                f"ckplus-{frame.stem}",
                None,
                rel,
                canonical_label(cls),
                video_id=video,
                subject_id=subject,
                frame=int(NAME.match(frame.stem).group(3)),
                landmarks=lmk,
            )
    return ing


def ingest_crops(root: Path) -> Ingest:
    ing = Ingest("ckplus")
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        label = canonical_label(folder.name)
        for img in images_under(folder):
            rel = str(img.relative_to(root))
            m = NAME.match(img.stem)
            sid = "ckplus-" + img.stem
            if m is None:
                ing.reject(sid, rel, "bad_name", "expected S<subject>_<sequence>_<frame>")
                continue
            ing.add_checked(
                root,
                sid,
                None,
                rel,
                label,
                raw_label=folder.name,
                video_id=f"{m.group(1)}_{m.group(2)}",
                subject_id=m.group(1),
                frame=int(m.group(3)),
            )
    return ing


def ingest(source: Path, out_dir: Path, *, options: Options, seed: int = 0) -> tuple[Ingest, Path]:
    root, marker = require_root(source, MARKERS, "ckplus", WHERE)
    ing = ingest_crops(root) if marker == "anger/" else ingest_sequences(root, options)
    finish_splits(ing, seed=seed, val=options.val_fraction, test=options.test_fraction)
    return ing, root
