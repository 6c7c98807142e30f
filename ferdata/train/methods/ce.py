"""Baselines: cross-entropy on the given labels, optionally label-smoothed."""

from __future__ import annotations

import torch
import torch.nn.functional as F


class CrossEntropy:
    """Cross-entropy with optional label smoothing; the soft label is the model's softmax."""

    def __init__(self, smoothing: float = 0.0):
        self.smoothing = smoothing

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, labels, label_smoothing=self.smoothing)
