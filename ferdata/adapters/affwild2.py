"""Aff-Wild2 (ABAW): ``cropped_aligned/<video>/<frame:05d>.jpg`` with per-frame expression labels
(``EXPR_Classification_Challenge``) and valence/arousal (``VA_Estimation_Challenge``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ferdata.adapters.base import Ingest, carve_val, require_root
from ferdata.core.classes import CANONICAL
from ferdata.core.settings import Settings, option

MARKERS = ("cropped_aligned",)
WHERE = (
    "Aff-Wild2 is shared with ABAW challenge participants on request: https://ibug.doc.ic.ac.uk/resources/aff-wild2/"
)
# EXPR header: Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other
EXPR = ("neutral", "anger", "disgust", "fear", "happy", "sad", "surprise")
SETS = {"Train_Set": "train", "Validation_Set": "test"}  # ABAW reports the validation set


@dataclass(frozen=True)
class Options(Settings):
    """The ``affwild2`` section of its params.yaml."""

    section = "affwild2"
    frame_step: int = option(1, "keep every n-th frame", min=1)
    val_fraction: float = option(0.1, "share of training subjects carved into val", min=0.0, below=1.0)


def read_va(root: Path, video: str) -> list[tuple[float | None, float | None]]:
    """Per-frame (valence, arousal) of ``video``; None where not annotated (-5) or out of range."""
    for folder in sorted((root / "VA_Estimation_Challenge").glob(f"*/{video}.txt")):
        out = []
        for line in folder.read_text().splitlines()[1:]:
            try:
                v, a = (float(x) for x in line.split(","))
            except ValueError:
                out.append((None, None))
                continue
            ok = -1.0 <= v <= 1.0 and -1.0 <= a <= 1.0
            out.append((v, a) if ok else (None, None))
        return out
    return []


def ingest(source: Path, out_dir: Path, *, options: Options, seed: int = 0) -> tuple[Ingest, Path]:
    root, _ = require_root(source, MARKERS, "affwild2", WHERE)
    step = options.frame_step
    ing = Ingest("affwild2", classes=list(CANONICAL[:7]))
    for set_name, split in SETS.items():
        for ann in sorted((root / "EXPR_Classification_Challenge" / set_name).glob("*.txt")):
            video = ann.stem
            va = read_va(root, video)
            for frame, line in enumerate(ann.read_text().splitlines()[1:], 1):
                if (frame - 1) % step:
                    continue
                sid = f"affwild2-{video}-{frame:05d}"
                path = f"cropped_aligned/{video}/{frame:05d}.jpg"
                try:
                    code = int(line.strip())
                except ValueError:
                    ing.reject(sid, path, "bad_row", f"{ann.name} line {frame + 1}: {line!r}")
                    continue
                if code == -1:
                    ing.reject(sid, path, "unlabelled_frame", f"{ann.name} line {frame + 1}")
                    continue
                if code == 7:
                    ing.reject(sid, path, "other", f"{ann.name} line {frame + 1}")
                    continue
                label = CANONICAL.index(EXPR[code]) if 0 <= code < len(EXPR) else None
                v, a = va[frame - 1] if frame - 1 < len(va) else (None, None)
                ing.add_checked(
                    root,
                    sid,
                    split,
                    path,
                    label,
                    raw_label=code,
                    video_id=video,
                    subject_id=video.replace("_left", "").replace("_right", ""),
                    frame=frame,
                    valence=v,
                    arousal=a,
                )
    carve_val(ing, seed=seed, val=options.val_fraction, key="subject_id")
    return ing, root
