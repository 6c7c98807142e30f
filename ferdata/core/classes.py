"""The canonical expression classes (AffectNet order) shared by every dataset, and what is known
about them: circumplex centroids, which classes look alike, how peaked a distribution over them is."""

import math
from typing import Any

import numpy as np

from ferdata.core.errors import FerdataError

CANONICAL: tuple[str, ...] = (
    "neutral",
    "happy",
    "sad",
    "surprise",
    "fear",
    "disgust",
    "anger",
    "contempt",
)
BASIC7: tuple[str, ...] = CANONICAL[:7]

# Rough circumplex centroids (valence, arousal) used by the synth generator and as VA fallbacks.
VA_CENTROIDS: dict[str, tuple[float, float]] = {
    "neutral": (0.0, 0.0),
    "happy": (0.75, 0.35),
    "sad": (-0.65, -0.35),
    "surprise": (0.25, 0.75),
    "fear": (-0.45, 0.70),
    "disgust": (-0.65, 0.30),
    "anger": (-0.55, 0.60),
    "contempt": (-0.45, 0.20),
}

# Classes that look alike and sit close in VA, most confusable first. The synth generator blends a
# face's class with these (neutral excluded); ``noise --mode pairs`` sends a label to the first one
# the dataset has.
CONFUSABLE: dict[str, tuple[str, ...]] = {
    "neutral": ("sad", "contempt"),
    "happy": ("surprise", "neutral", "contempt"),
    "sad": ("neutral", "fear", "disgust"),
    "surprise": ("fear", "happy"),
    "fear": ("surprise", "sad"),
    "disgust": ("anger", "sad", "contempt"),
    "anger": ("disgust", "fear"),
    "contempt": ("disgust", "neutral", "happy"),
}


def manifest_classes(meta: dict[str, Any]) -> list[str]:
    """The dataset's class list from a table's metadata."""
    classes = meta.get("classes")
    if not classes:
        raise FerdataError("table metadata lacks ferdata.classes; re-run `ferdata download`")
    return list(classes)


def class_index(labels: np.ndarray, classes: list[str]) -> np.ndarray:
    """Map canonical label ids to positions in ``classes`` (the model's output order)."""
    lookup = np.full(len(CANONICAL), -1, np.int64)
    for i, name in enumerate(classes):
        lookup[CANONICAL.index(name)] = i
    labels = np.asarray(labels, np.int64)
    known = (labels >= 0) & (labels < len(CANONICAL))
    out = np.where(known, lookup[np.clip(labels, 0, len(CANONICAL) - 1)], -1)
    if (out < 0).any():
        bad = sorted(set(labels[out < 0].tolist()))
        raise FerdataError(
            f"labels {bad} are outside the dataset's classes {classes} (canonical ids); "
            "re-run the stage that wrote them"
        )
    return out


def normalised_entropy(p: Any) -> Any:
    """H(p) / log C per row, in [0, 1], 0 log 0 taken as 0; for numpy arrays and torch tensors alike
    (the trainer's uncertainty and the export's confidence are the same number)."""
    clipped = p.clip(1e-12, None)
    logp = clipped.log() if hasattr(clipped, "log") else np.log(clipped)
    return (-(p * logp).sum(1) / math.log(p.shape[1])).clip(0.0, 1.0)
