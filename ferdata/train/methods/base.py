"""What every training method provides to the loop."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ferdata.core.classes import normalised_entropy


@contextlib.contextmanager
def evaluating(*modules: torch.nn.Module) -> Iterator[None]:
    """Eval mode for ``modules`` inside the block, their previous modes after it."""
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


@dataclass
class Batch:
    """One training step's data: positions in the training table, inputs, given labels."""

    index: torch.Tensor  # (B,) positions of the anchors in the training table
    x: torch.Tensor  # (B, 3, H, W) weakly augmented inputs
    y: torch.Tensor  # (B,) given labels as class positions
    fetch: Callable[[torch.Tensor], torch.Tensor] | None = None  # positions -> un-augmented inputs
    x_strong: torch.Tensor | None = None  # (B, 3, H, W) strongly augmented view, for two-view methods


class Method(nn.Module):
    """A training method: a loss per batch, a prediction per image, a soft label per training sample.

    Its parameters (heads, anchors, a second branch, per-sample state) are trained with the backbone's
    optimiser, except those returned by :meth:`own_optimizers`.
    """

    needs_epoch_outputs = False  # True: start_epoch gets every training sample's current outputs
    needs_strong_view = False  # True: batches carry a strongly augmented second view
    uses_backbone_head = True  # False: the method predicts with a head of its own (DDP must allow unused ones)
    uncertainty_is_entropy = True  # the soft labels' uncertainty is their normalised entropy (else: the method's own)

    def batch_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def own_optimizers(self) -> list[torch.optim.Optimizer]:
        return []

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters that join the backbone's optimiser."""
        own = {id(p) for opt in self.own_optimizers() for g in opt.param_groups for p in g["params"]}
        return [p for p in self.parameters() if id(p) not in own]

    def set_epoch(self, epoch: int, epochs: int) -> None:
        """Told at the start of every epoch (0-based) for warm-up schedules."""
        self.epoch, self.epochs = epoch, epochs

    def set_total_steps(self, total: int) -> None:
        """Told once before training: how many optimiser steps the run takes (for per-step schedules)."""

    def start_epoch(self, feats: torch.Tensor, probs: torch.Tensor) -> None:
        """With needs_epoch_outputs: the current features and predictions of every training sample."""

    def infer(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, predicted distribution) for a batch of images; the model's softmax by default."""
        feats = model.forward_features(x)
        return feats, torch.softmax(model.head(feats), dim=1)

    @torch.no_grad()
    def soft_labels(
        self, feats: torch.Tensor, probs: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(distribution, uncertainty) of every training sample from :meth:`infer`'s outputs.

        Default: the predicted distribution and its normalised entropy.
        """
        return probs, normalised_entropy(probs)


def confidence(p: torch.Tensor) -> torch.Tensor:
    """1 - H(p) / log C: how peaked a distribution is, in [0, 1]."""
    return 1.0 - normalised_entropy(p)


def soft_cross_entropy(target: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -sum_c target_c log softmax(logits)_c."""
    return -(target * F.log_softmax(logits, dim=1)).sum(1).mean()
