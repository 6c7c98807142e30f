"""Training methods, one file each; every method turns (logits, labels) into a loss."""

from __future__ import annotations

from ferdata.errors import FerdataError
from ferdata.train.methods.ce import CrossEntropy

METHODS = {"ce": CrossEntropy, "ls": CrossEntropy}


def build_method(name: str, *, num_classes: int, label_smoothing: float = 0.1) -> CrossEntropy:
    """The loss object for method ``name``."""
    if name not in METHODS:
        raise FerdataError(f"unknown train.method {name!r}: available: {', '.join(METHODS)}")
    return CrossEntropy(smoothing=label_smoothing if name == "ls" else 0.0)
