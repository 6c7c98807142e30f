"""LDLVA: uncertainty-aware label distribution learning from neighbours in valence-arousal space.

For training sample i with its K neighbours j (the VA KNN graph; a neighbour outside the training set
is masked out, the others keep their places):
    a_ij = exp(-(|v_i - v_j| + |a_i - a_j|) / T)               local similarity, T = 0.5
    c_ij = sigmoid(max(MLP([f_i, f_j]), -1.3))                  calibration on backbone features
    d_i  = sum_j a_ij c_ij p_j / sum_j a_ij c_ij                aggregated neighbour distribution
    lambda_i = sigmoid(l_i)                                     per-sample label trust, l_i starts at 0.5
    t_i  = lambda_i onehot(y_i) + (1 - lambda_i) d_i            the target (see soft_label below)
    loss = softCE(t_i, p_i) + gamma * 0.5 * sum_x sg(lambda_x) |f_x - m_{y_x}|^2 / n   (gamma = 0.01)
The centre term runs over the anchors and their neighbours (x), each weighted by its stop-gradient
trust, and trains only the backbone. As in the official code, the centres m are not parameters of the
optimiser: after each step they move towards the trust-weighted mean of their class's features
(m_c += alpha sum_{x in c} lambda_x (f_x - m_c) / (n_c + 1) / n, alpha = 0.5) and then away from each
other down the gradient of 0.1 sum_{a<b} exp(-|m_a - m_b|^2 / D). They start at zero. l has its own SGD
optimiser with a large learning rate (lambda_lr), since each l_i sees only its own sample's gradient,
scaled down by the batch mean.

``lambda_lr`` defaults to 100 (the official RAF-DB config uses 10, ferdata used 20): on held-out real
FER+ faces at 30% noise (ResNet-18, GPU) 100 gave soft labels much closer to the human votes than 20
(test KL 0.684 vs 0.814, train KL of t_i 0.725 vs 0.771) at equal accuracy, and on synth with rated VA at 30%
noise (small_cnn, 20 epochs, H200) it raised clean-test accuracy from 0.688 to 0.728 (the dataset's VA)
and from 0.628 to 0.689 (pseudo VA) at equal noise AUROC. Those choices were read off the split they
report (test). On validation faces (FER+ at full scale: 23,249 training faces, validation carved from
Train, small_cnn, 10 epochs, circumplex VA from a 3-fold CE prior, calibrated, seed 0;
``bench/methods_table.py``, bench/RESULTS.md) 100 beats 1000: val accuracy 0.676 vs 0.668 and KL to the
votes 0.756 vs 0.766 at noise 0, 0.623 vs 0.596 and 0.789 vs 0.856 at 30% noise.

Where the neighbours' distributions and the first trust come from, measured there too (val accuracy /
KL to the votes, noise 0 and 30%; CE 0.697 / 0.735 and 0.637 / 0.769): the network's own (the default)
0.676 / 0.756 and 0.623 / 0.789; the prior's out-of-fold posteriors as the p_j (``neighbours: prior``,
with the prior's fold models calibrated with the prior swap, an older setting) 0.690 / 0.743 and 0.625 /
0.794; the prior's posteriors and each trust starting at the prior's belief in the given label
(``neighbours: prior``, ``trust_init: prior``) 0.657 / 0.796 and 0.586 / 0.867. The fold models (6 epochs
on two thirds of the faces) are weaker teachers than the network itself, so the defaults stay.

The soft label a training face is exported with (``soft_label``) is by default the trained network's own
distribution for it (eval mode, the un-augmented face, as val/test are predicted), with uncertainty
1 - lambda_i. The target t_i is a training device: where lambda_i is near 1 it is the one-hot given label,
so the faces the method trusts would carry no ambiguity at all, and d_i averages faces that are near in
rated VA, not necessarily in expression. The network trained towards these targets ends much closer to
the truth than the targets themselves. Synth, 30% noise, the dataset's VA, small_cnn, 20 epochs, CPU,
seeds 0/1/2 (``bench/noise_robustness.py``, method ``ldlva:soft_label=target``, whose ``*_pred`` columns
measure the prediction): KL(true || soft label) 1.089/1.153/1.083 for t_i, 0.497/0.546/0.529 for the
prediction, CE's softmax 0.709/0.744/0.681; noise AUROC from 1 - soft label[given] 0.865/0.856/0.862 vs
0.880/0.870/0.885; flipped faces whose top class is the clean one 0.407/0.375/0.391 vs
0.557/0.541/0.555. On real faces (FER+ dev sample: 3,761 training faces with 10 crowd votes each, 30%
noise, pseudo VA from a 2-fold CE prior, small_cnn, 20 epochs, CPU) the KL to the votes is 1.821 for t_i,
1.452 for the prediction and 1.784 for CE's softmax; noise AUROC 0.592 vs 0.585, flips recovered 0.244
vs 0.290. ``soft_label: target`` exports t_i (the soft label DESIGN.md names).

p_j carries no gradient. Neighbour outputs come either from a forward pass of the neighbours' images at
every step in training mode without gradients (``neighbour_mode="forward"``, the official code's
choice), or from a memory bank (``"bank"``, ~3x cheaper on a CPU) that holds one kind of prediction
only: every training sample's eval-mode features and softmax on its un-augmented image, refreshed at
the start of every epoch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ferdata.core.errors import FerdataError
from ferdata.train.methods.base import Batch, Method, evaluating, soft_cross_entropy

CENTER_STEP = 0.5  # alpha, the centres' own step size (official code)
CENTER_PUSH = 0.1  # scale of the push between centres (official code)
TRUST_FLOOR = 0.02  # trust_init prior: lambda_i starts within [0.02, 0.98] (a finite logit)


def local_similarity(va_i: torch.Tensor, va_j: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """exp(-L1(va_i, va_j) / T) for anchors (B, 2) against neighbours (B, K, 2)."""
    return torch.exp(-(va_i[:, None, :] - va_j).abs().sum(-1) / temperature)


def center_loss(
    feats: torch.Tensor,
    labels: torch.Tensor,
    trust: torch.Tensor,
    centers: torch.Tensor,
    present: torch.Tensor | None = None,
) -> torch.Tensor:
    """0.5 * sum_x trust_x |f_x - m_{y_x}|^2 / n: pulls features to their class centre, weighted by the
    (stop-gradient) trust in each label; the centres receive no gradient. Rows whose ``present`` is False
    count for nothing (masking rather than dropping them keeps the shapes fixed: selecting rows by a mask
    makes the host wait for the GPU)."""
    weight, n = trust.detach(), len(feats)
    if present is not None:
        weight, n = weight * present, present.sum()
    return 0.5 * (weight[:, None] * (feats - centers.detach()[labels]).pow(2)).sum() / n


def centre_push(centers: torch.Tensor) -> torch.Tensor:
    """sum_{a<b} exp(-|m_a - m_b|^2 / D): large when class centres sit close together."""
    gaps = torch.cdist(centers, centers).pow(2)
    a, b = torch.triu_indices(len(centers), len(centers), offset=1, device=centers.device)
    return torch.exp(-gaps[a, b] / centers.shape[1]).sum()


def world_size() -> int:
    """Processes of the torchrun job (1 outside one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def summed_over_ranks(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The tensors summed over every rank of a torchrun job (as they are outside one)."""
    if world_size() == 1:
        return tensors
    flat = torch.cat([t.reshape(-1).float() for t in tensors])
    dist.all_reduce(flat)
    out, start = [], 0
    for t in tensors:
        out.append(flat[start : start + t.numel()].reshape(t.shape).to(t.dtype))
        start += t.numel()
    return tuple(out)


@torch.no_grad()
def update_centers(
    centers: torch.Tensor,
    feats: torch.Tensor,
    labels: torch.Tensor,
    trust: torch.Tensor,
    present: torch.Tensor | None = None,
) -> None:
    """The official centre rule, in place: a pull step towards the trust-weighted class features, then a
    push step apart. Rows whose ``present`` is False count for nothing. Under torchrun the sums run over
    every rank's batch, so all ranks make the same step (the step of their batches as one; DDP also
    broadcasts rank 0's buffers, which would otherwise drop the other ranks' steps)."""
    onehot = F.one_hot(labels, len(centers)).to(feats.dtype)  # (n, C)
    n = torch.tensor(float(len(feats)), device=feats.device)
    if present is not None:
        onehot, trust, n = onehot * present[:, None], trust * present, present.sum()
    diff = trust[:, None] * (feats - centers[labels])  # (n, D)
    moved, counts, n = summed_over_ranks(onehot.T @ diff, onehot.sum(0), n)
    pull = moved / (counts[:, None] + 1) / n
    centers.add_(CENTER_STEP * pull)
    with torch.enable_grad():
        m = centers.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(centre_push(m), m)
    centers.sub_(CENTER_STEP * CENTER_PUSH * grad)


def _per_sample_gradient(grad: torch.Tensor) -> torch.Tensor:
    """l_i's gradient times the world size: DDP averages gradients over ranks, right for shared weights
    but not for a per-sample parameter, whose gradient comes from the one rank whose batch held the
    sample; summed, each l_i steps as it would in one process with the same per-rank batch."""
    return grad * world_size() if world_size() > 1 else grad


class LDLVA(Method):
    """Label distribution learning with VA neighbours and a learnable per-sample uncertainty."""

    uncertainty_is_entropy = False

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
        lambda_lr: float = 100.0,
        disc_weight: float = 0.01,
        neighbour_mode: str = "bank",
        soft_label: str = "prediction",
        neighbours: str = "network",
        trust_init: str = "constant",
        prior: torch.Tensor | None = None,
    ):
        super().__init__()
        n = len(labels)
        self.num_classes, self.temperature, self.calib_floor = num_classes, temperature, calib_floor
        self.disc_weight, self.neighbour_mode, self.soft_label = disc_weight, neighbour_mode, soft_label
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
        if trust_init == "prior":
            if prior is None:
                raise FerdataError("ldlva trust_init 'prior' needs the out-of-fold posteriors of the training faces")
            believed = prior.float()[torch.arange(n), labels.long()].clamp(TRUST_FLOOR, 1 - TRUST_FLOOR)
            self.logit = nn.Parameter(torch.logit(believed))
        else:
            self.logit = nn.Parameter(torch.full((n,), float(init_logit)))
        self.register_buffer("centers", torch.zeros(num_classes, embed_dim))
        self.register_buffer("labels", labels.long().clone())
        knn = knn.long()
        self.register_buffer("knn", knn.clamp_min(0))  # masked places point at sample 0 and weigh nothing
        self.register_buffer("knn_mask", knn >= 0)
        self.register_buffer("va", va.float().clone())
        # neighbours: prior -> p_j are the out-of-fold posteriors (fixed, from models that never saw j)
        self.prior = prior.float().clone() if neighbours == "prior" and prior is not None else None
        if neighbours == "prior" and self.prior is None:
            raise FerdataError("ldlva neighbours 'prior' needs the out-of-fold posteriors of the training faces")
        # plain tensors, not buffers: each rank keeps its own bank and DDP must not broadcast it
        self.bank_feats: torch.Tensor | None = None
        self.bank_probs: torch.Tensor | None = None
        self._lambda_opt = torch.optim.SGD([self.logit], lr=lambda_lr)
        self.logit.register_hook(_per_sample_gradient)

    def own_optimizers(self) -> list[torch.optim.Optimizer]:
        return [self._lambda_opt]

    def lambdas(self, index: torch.Tensor | None = None) -> torch.Tensor:
        """lambda_i = sigmoid(l_i): how much sample i's given label is trusted."""
        return torch.sigmoid(self.logit if index is None else self.logit[index])

    def aggregate(
        self, index: torch.Tensor, feats: torch.Tensor, nbr_feats: torch.Tensor, nbr_probs: torch.Tensor
    ) -> torch.Tensor:
        """d_i: the calibrated, VA-weighted mean of the neighbours' distributions (B, C); a face without a
        training neighbour gets its own label's one-hot (the neighbours say nothing)."""
        b, k, dim = nbr_feats.shape
        a = local_similarity(self.va[index], self.va[self.knn[index]], self.temperature)
        pairs = torch.cat([feats[:, None, :].expand(b, k, dim), nbr_feats], dim=-1).reshape(b * k, 2 * dim)
        c = torch.sigmoid(self.calibration(pairs).reshape(b, k).clamp_min(self.calib_floor))
        w = a * c * self.knn_mask[index]
        total = w.sum(1, keepdim=True)
        d = (w[..., None] * nbr_probs.detach()).sum(1) / total.clamp_min(1e-12)
        alone = F.one_hot(self.labels[index], self.num_classes).to(d.dtype)
        return torch.where(total > 0, d, alone)

    def targets(self, index: torch.Tensor, y: torch.Tensor, aggregate: torch.Tensor) -> torch.Tensor:
        """t_i = lambda_i onehot(y_i) + (1 - lambda_i) d_i."""
        lam = self.lambdas(index)[:, None]
        return lam * F.one_hot(y, self.num_classes).to(aggregate.dtype) + (1 - lam) * aggregate

    def _neighbours(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        nbr = self.knn[batch.index]
        if self.neighbour_mode == "bank":
            if self.bank_feats is None or self.bank_probs is None:
                raise FerdataError("ferdata bug: ldlva's memory bank was not filled before the first step")
            return self.bank_feats[nbr], self.bank_probs[nbr]
        if batch.fetch is None:
            raise FerdataError("ldlva neighbour_mode 'forward' needs the loop to fetch neighbour images")
        with torch.no_grad():
            f = model.forward_features(batch.fetch(nbr.reshape(-1)))
            p = torch.softmax(model.head(f), dim=1) if self.prior is None else self._prior(f)[nbr.reshape(-1)]
        return f.reshape(*nbr.shape, -1), p.reshape(*nbr.shape, -1)

    def _prior(self, like: torch.Tensor) -> torch.Tensor:
        """The out-of-fold posteriors, on the device and in the dtype of ``like`` (a plain tensor, not a
        buffer: DDP would broadcast it at every step)."""
        self.prior = self.prior.to(like.device)
        return self.prior.to(like.dtype)

    def batch_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        feats = model.forward_features(batch.x)
        logits = model.head(model.drop(feats))
        nbr_feats, nbr_probs = self._neighbours(model, batch)
        d = self.aggregate(batch.index, feats, nbr_feats.detach(), nbr_probs)
        loss = soft_cross_entropy(self.targets(batch.index, batch.y, d), logits)
        nbr = self.knn[batch.index].reshape(-1)
        valid = self.knn_mask[batch.index].reshape(-1)
        present = torch.cat([torch.ones_like(batch.y, dtype=torch.bool), valid]).float()  # masked neighbours: 0
        all_feats = torch.cat([feats, nbr_feats.reshape(-1, feats.shape[1]).detach()])
        all_labels = torch.cat([batch.y, self.labels[nbr]])
        trust = self.lambdas(torch.cat([batch.index, nbr])).detach()
        loss = loss + self.disc_weight * center_loss(all_feats, all_labels, trust, self.centers, present)
        if self.training:
            update_centers(self.centers, all_feats.detach().float(), all_labels, trust.float(), present)
        return loss

    @torch.no_grad()
    def start_epoch(self, feats: torch.Tensor, probs: torch.Tensor) -> None:
        """Refresh the memory bank with every training sample's eval-mode outputs (the prior's posteriors
        in place of the network's with ``neighbours: prior``)."""
        self.bank_feats = feats.detach().float().clone()
        self.bank_probs = probs.detach().float().clone() if self.prior is None else self._prior(self.bank_feats)

    @torch.no_grad()
    def soft_labels(
        self, feats: torch.Tensor, probs: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every training sample's soft label: the final network's distribution for the face (``prediction``)
        or its target t_i recomputed from the final model's outputs (``target``); uncertainty 1 - lambda_i."""
        index = torch.arange(len(feats), device=feats.device)
        if self.soft_label == "prediction":
            return probs, 1.0 - self.lambdas()
        nbr_probs = probs if self.prior is None else self._prior(feats)
        with evaluating(self):
            d = torch.cat(
                [self.aggregate(i, feats[i], feats[self.knn[i]], nbr_probs[self.knn[i]]) for i in index.split(1024)]
            )
        t = self.targets(index, labels, d)
        return t, 1.0 - self.lambdas()
