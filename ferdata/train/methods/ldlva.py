"""LDLVA: uncertainty-aware label distribution learning from neighbours in valence-arousal space.

For training sample i with K neighbours j (the VA KNN graph):
    a_ij = exp(-(|v_i - v_j| + |a_i - a_j|) / T)               local similarity, T = 0.5
    c_ij = sigmoid(max(MLP([f_i, f_j]), -1.3))                  calibration on backbone features
    d_i  = sum_j a_ij c_ij p_j / sum_j a_ij c_ij                aggregated neighbour distribution
    lambda_i = sigmoid(l_i)                                     per-sample label trust, l_i starts at 0.5
    t_i  = lambda_i onehot(y_i) + (1 - lambda_i) d_i            the learned soft label
    loss = softCE(t_i, p_i) + 0.01 * (center loss + centre repulsion)
p_j carries no gradient. l has its own SGD optimiser with a large learning rate, since each l_i sees
only its own sample's gradient, scaled down by the batch mean.

Neighbour outputs come either from a forward pass of the neighbours' images at every step
(``neighbour_mode="forward"``, as the paper does) or from a memory bank of every training sample's
latest features and softmax, refreshed each epoch and on every visit (``"bank"``, ~3x cheaper on a CPU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ferdata.core.errors import FerdataError
from ferdata.train.methods.base import Batch, Method, soft_cross_entropy


def local_similarity(va_i: torch.Tensor, va_j: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """exp(-L1(va_i, va_j) / T) for anchors (B, 2) against neighbours (B, K, 2)."""
    return torch.exp(-(va_i[:, None, :] - va_j).abs().sum(-1) / temperature)


def discriminative_loss(feats: torch.Tensor, labels: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Center loss pulling features to their class centre plus sum_{a<b} exp(-||c_a - c_b||^2 / D)."""
    pull = 0.5 * (feats - centers[labels]).pow(2).sum(1).mean()
    gaps = torch.cdist(centers, centers).pow(2)
    upper = torch.triu(torch.ones_like(gaps, dtype=torch.bool), diagonal=1)
    push = torch.exp(-gaps[upper] / centers.shape[1]).sum()
    return pull + push


class LDLVA(Method):
    """Label distribution learning with VA neighbours and a learnable per-sample uncertainty."""

    name = "ldlva"

    def __init__(
        self,
        num_classes: int,
        embed_dim: int,
        *,
        labels: torch.Tensor,
        knn: torch.Tensor,
        va: torch.Tensor,
        temperature: float = 0.5,
        calib_floor: float = -1.3,
        init_logit: float = 0.5,
        lambda_lr: float = 20.0,
        disc_weight: float = 0.01,
        neighbour_mode: str = "bank",
    ):
        super().__init__()
        n = len(labels)
        self.num_classes, self.temperature, self.calib_floor = num_classes, temperature, calib_floor
        self.disc_weight, self.neighbour_mode = disc_weight, neighbour_mode
        self.needs_epoch_outputs = neighbour_mode == "bank"
        self.calibration = nn.Sequential(
            nn.Linear(2 * embed_dim, 512),
            nn.BatchNorm1d(512),
            nn.ReLU(inplace=True),
            nn.Linear(512, 256),
            nn.BatchNorm1d(256),
            nn.ReLU(inplace=True),
            nn.Linear(256, 1),
        )
        self.logit = nn.Parameter(torch.full((n,), float(init_logit)))
        self.centers = nn.Parameter(torch.randn(num_classes, embed_dim) * 0.1)
        self.register_buffer("labels", labels.long().clone())
        self.register_buffer("knn", knn.long().clone())
        self.register_buffer("va", va.float().clone())
        # plain tensors, not buffers: each rank keeps its own bank and DDP must not broadcast it
        self.bank_feats = torch.zeros(n, embed_dim)
        self.bank_probs = torch.full((n, num_classes), 1.0 / num_classes)
        self._lambda_opt = torch.optim.SGD([self.logit], lr=lambda_lr)

    def own_optimizers(self) -> list[torch.optim.Optimizer]:
        return [self._lambda_opt]

    def lambdas(self, index: torch.Tensor | None = None) -> torch.Tensor:
        """lambda_i = sigmoid(l_i): how much sample i's given label is trusted."""
        return torch.sigmoid(self.logit if index is None else self.logit[index])

    def aggregate(
        self, index: torch.Tensor, feats: torch.Tensor, nbr_feats: torch.Tensor, nbr_probs: torch.Tensor
    ) -> torch.Tensor:
        """d_i: the calibrated, VA-weighted mean of the neighbours' distributions (B, C)."""
        b, k, dim = nbr_feats.shape
        a = local_similarity(self.va[index], self.va[self.knn[index]], self.temperature)
        pairs = torch.cat([feats[:, None, :].expand(b, k, dim), nbr_feats], dim=-1).reshape(b * k, 2 * dim)
        c = torch.sigmoid(self.calibration(pairs).reshape(b, k).clamp_min(self.calib_floor))
        w = a * c
        return (w[..., None] * nbr_probs.detach()).sum(1) / w.sum(1, keepdim=True).clamp_min(1e-12)

    def targets(self, index: torch.Tensor, y: torch.Tensor, aggregate: torch.Tensor) -> torch.Tensor:
        """t_i = lambda_i onehot(y_i) + (1 - lambda_i) d_i."""
        lam = self.lambdas(index)[:, None]
        return lam * F.one_hot(y, self.num_classes).float() + (1 - lam) * aggregate

    def _neighbours(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        nbr = self.knn[batch.index]
        if self.neighbour_mode == "bank":
            return self.bank_feats[nbr], self.bank_probs[nbr]
        if batch.fetch is None:
            raise FerdataError("ldlva neighbour_mode 'forward' needs the loop to fetch neighbour images")
        with torch.no_grad():
            f = model.forward_features(batch.fetch(nbr.reshape(-1)))
            p = torch.softmax(model.head(f), dim=1)
        return f.reshape(*nbr.shape, -1), p.reshape(*nbr.shape, -1)

    def batch_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        feats = model.forward_features(batch.x)
        logits = model.head(model.drop(feats))
        nbr_feats, nbr_probs = self._neighbours(model, batch)
        d = self.aggregate(batch.index, feats, nbr_feats.detach(), nbr_probs)
        loss = soft_cross_entropy(self.targets(batch.index, batch.y, d), logits)
        all_feats = torch.cat([feats, nbr_feats.reshape(-1, feats.shape[1]).detach()])
        all_labels = torch.cat([batch.y, self.labels[self.knn[batch.index]].reshape(-1)])
        loss = loss + self.disc_weight * discriminative_loss(all_feats, all_labels, self.centers)
        with torch.no_grad():
            self.bank_feats[batch.index] = feats.detach()
            self.bank_probs[batch.index] = torch.softmax(logits.detach(), dim=1)
        return loss

    @torch.no_grad()
    def start_epoch(self, feats: torch.Tensor, probs: torch.Tensor) -> None:
        """Refresh the memory bank with every training sample's current outputs."""
        self.bank_feats, self.bank_probs = feats.detach().clone(), probs.detach().clone()

    @torch.no_grad()
    def soft_labels(
        self, feats: torch.Tensor, probs: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """t_i for every training sample from the final model's outputs; uncertainty 1 - lambda_i."""
        was_training = self.training
        self.eval()
        index = torch.arange(len(feats), device=feats.device)
        d = torch.cat([self.aggregate(i, feats[i], feats[self.knn[i]], probs[self.knn[i]]) for i in index.split(1024)])
        t = self.targets(index, labels, d)
        self.train(was_training)
        return t, 1.0 - self.lambdas()
