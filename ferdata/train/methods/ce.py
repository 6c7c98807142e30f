"""Baselines: cross-entropy on the given labels (``ce``), optionally label-smoothed (``ls``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ferdata.train.methods.base import Batch, Method


class CrossEntropy(Method):
    """Cross-entropy with optional label smoothing; the soft label is the model's softmax."""

    def __init__(self, smoothing: float = 0.0):
        super().__init__()
        self.smoothing = smoothing

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, labels, label_smoothing=self.smoothing)

    def batch_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return self.loss(model(batch.x), batch.y)
