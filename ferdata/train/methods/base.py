"""What every training method provides to the loop."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Batch:
    """One training step's data: positions in the training table, inputs, given labels."""

    index: torch.Tensor  # (B,) positions of the anchors in the training table
    x: torch.Tensor  # (B, 3, H, W) augmented inputs
    y: torch.Tensor  # (B,) given labels as class positions
    fetch: Callable[[torch.Tensor], torch.Tensor] | None = None  # positions -> un-augmented inputs


class Method(nn.Module):
    """A training method: a loss per batch, and the soft label of each training sample afterwards.

    Its own parameters (heads, anchors, per-sample state) are trained with the backbone's optimiser,
    except those returned by :meth:`own_optimizers`.
    """

    name = "base"

    def batch_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def own_optimizers(self) -> list[torch.optim.Optimizer]:
        return []

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters that join the backbone's optimiser."""
        own = {id(p) for opt in self.own_optimizers() for g in opt.param_groups for p in g["params"]}
        return [p for p in self.parameters() if id(p) not in own]

    needs_epoch_outputs = False  # True: the loop passes every training sample's outputs to start_epoch

    def start_epoch(self, feats: torch.Tensor, probs: torch.Tensor) -> None:
        """Hook run before every epoch with the model's current features and softmax of all training samples."""

    @torch.no_grad()
    def soft_labels(self, feats: torch.Tensor, probs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(distribution, uncertainty) of every training sample from the final model's outputs.

        Default: the model's softmax and its normalised entropy.
        """
        return probs, normalised_entropy(probs)


def normalised_entropy(p: torch.Tensor) -> torch.Tensor:
    """H(p) / log C per row, in [0, 1]; 0 log 0 is taken as 0."""
    h = -(p * torch.log(p.clamp_min(1e-12))).sum(1)
    return (h / torch.log(torch.tensor(float(p.shape[1])))).clamp(0.0, 1.0)


def soft_cross_entropy(target: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -sum_c target_c log softmax(logits)_c."""
    return -(target * F.log_softmax(logits, dim=1)).sum(1).mean()
