"""Ambiguous knowledge transfer: two sub-networks on a weak and a strong view of each face.

Branch A (the exported backbone) sees the weakly augmented "original" view, branch B (same
architecture, its own weights) the strongly augmented "ambiguous" view of the same geometry. Loss:
cross-entropy of both branches on the given label, an attention-consistency loss between their spatial
attention maps (channel-mean of squared activations, L2-normalised, mean squared difference), and a
symmetric KL between their posteriors. The soft label is the fused posterior (p_A + p_B) / 2 on the
clean image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ferdata.core.errors import FerdataError
from ferdata.train.backbones import build_backbone
from ferdata.train.methods.base import Batch, Method


def attention_map(feature_map: torch.Tensor) -> torch.Tensor:
    """Spatial attention: channel mean of squared activations, flattened and L2-normalised (B, H*W)."""
    return F.normalize(feature_map.pow(2).mean(1).flatten(1), dim=1)


def symmetric_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) + KL(q || p), batch mean."""
    lp, lq = torch.log(p.clamp_min(1e-8)), torch.log(q.clamp_min(1e-8))
    return ((p * (lp - lq)).sum(1) + (q * (lq - lp)).sum(1)).mean()


class AKT(Method):
    """Two-branch training with attention consistency and a symmetric-KL soft-label loss."""

    name = "akt"
    needs_strong_view = True

    def __init__(self, num_classes: int, backbone: str, *, attention_weight: float = 1.0, kl_weight: float = 1.0):
        super().__init__()
        self.branch = build_backbone(backbone, num_classes)
        self.attention_weight, self.kl_weight = attention_weight, kl_weight

    @staticmethod
    def _run(net: nn.Module, x: torch.Tensor, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        fmap = net.feature_map(x)
        feats = fmap.mean(dim=(2, 3))
        return fmap, net.head(net.drop(feats) if train else feats)

    def batch_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        if batch.x_strong is None:
            raise FerdataError("ferdata bug: akt got a batch without its strong view")
        fmap_a, logits_a = self._run(model, batch.x, True)
        fmap_b, logits_b = self._run(self.branch, batch.x_strong, True)
        ce = F.cross_entropy(logits_a, batch.y) + F.cross_entropy(logits_b, batch.y)
        attention = (attention_map(fmap_a) - attention_map(fmap_b)).pow(2).sum(1).mean()
        kl = symmetric_kl(torch.softmax(logits_a, 1), torch.softmax(logits_b, 1))
        return ce + self.attention_weight * attention + self.kl_weight * kl

    def infer(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fmap, logits_a = self._run(model, x, False)
        _, logits_b = self._run(self.branch, x, False)
        fused = (torch.softmax(logits_a, 1) + torch.softmax(logits_b, 1)) / 2
        return fmap.mean(dim=(2, 3)), fused
