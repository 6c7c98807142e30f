"""Ambiguous knowledge transfer: two sub-networks on a weak and a strong view of each face, with
uncertainty-adaptive targets.

Branch A (the exported backbone) sees the weakly augmented "original" view, branch B (same
architecture, its own weights) the strongly augmented "ambiguous" view of the same geometry. B starts
from the same initial weights file as A when ``train.weights`` names one, and from its own random
initialisation otherwise. Each face's target adapts to what the two branches say about it:

    pbar_i  = (sg(p_A) + sg(p_B)) / 2                          the branches' fused posterior
    agree_i = 1 - JS(p_A, p_B) / log 2                         1 when the branches agree (label space)
    rho_i   = 1 - cos(attention_A, attention_B)                0 when they look at the same places (feature space)
    u_i     = agree_i * (1 - rho_i) * (1 - pbar_i[y_i])        the evidence against the given label
    beta_i  = r * max(u_i, f * agree_i * (1 - rho_i))          how far the target leaves the given label
    t_i     = (1 - beta_i) onehot(y_i) + beta_i pbar_i         the face's target
    loss    = softCE(t, p_A) + softCE(t, p_B) + w_att |attention_A - attention_B|^2 + w_kl symKL(p_A, p_B)

So a face keeps its given label while the branches are unsure or disagree with each other (their
uncertainty says nothing can be learnt from them about this face) and moves towards their fused
belief where both branches, from different views, agree: by the evidence against the label u_i, and by
at least the floor f (``floor``, default 0.5) times their agreement, so that the ambiguity two branches
agree on in a face they also label correctly reaches its target (as in soft bootstrapping, the
target mixes label and belief); r ramps from 0 to 1 over the first ``warmup_epochs`` epochs, since
untrained branches agree on nothing useful. Why this form: the abstract promises learning that adapts
to uncertainty from feature- and label-space bias;
agree_i is the label-space term, rho_i the feature-space term, and the product keeps the target on the
given label unless both say otherwise. The soft label of a training face is its target t at r = 1 on
the clean image; its uncertainty is u_i, the agreed evidence against the given label (the floor moves
the target but is not doubt about the label).

The floor, measured before the calibration and with kl_weight 1 (synth, 30% noise, small_cnn, 20 epochs,
CPU, seeds 0/1/2; seed 0 of floor 0.5 ran in a scratch copy of this formula): floor 0 gives clean-test
accuracy 0.579/0.578/0.574, noise AUROC 0.856/0.847/0.844, KL(true || soft label) 0.762/0.851/0.847;
floor 0.5 gives 0.622/0.578/0.576, 0.870/0.864/0.856, 0.607/0.671/0.701 (CE's softmax:
0.713/0.736/0.713). At seed 0 a floor of 0.3 gave 0.583, 0.861, 0.694.

The floor must stay below 1: without the factor (1 - pbar_i[y_i]), that is a floor of 1 (beta_i =
r agree_i (1 - rho_i), the target following the fused belief wherever the branches agree, which would
keep the ambiguity they see in a correctly
labelled face) the branches train on their own agreed beliefs and stop learning from the labels once
the ramp ends (validation accuracy 0.46 at epoch 5, 0.23 from epoch 16). Synth, 30% noise, small_cnn,
20 epochs, CPU, seed 0: clean-test accuracy 0.195 against 0.579, noise AUROC 0.597 against 0.856,
KL(true || soft label) 1.429 against 0.762.

The symmetric KL weighs 0.1 (``kl_weight``; it was 1). Chosen on validation faces of FER+ at full scale
(23,249 training faces, validation carved from Train, noise 0, small_cnn, 10 epochs, calibrated, seed 0;
``bench/methods_table.py``, bench/RESULTS.md): with weight 1 the branch on weak views is pulled towards
the one on strong views, and both stall (raw validation accuracy 0.34-0.43 through the run; calibrated
0.599, KL to the votes 0.828, against CE's 0.697 and 0.735); weight 0.1 gives 0.653 and 0.730, dropping
both consistency terms 0.660 and 0.722, the floor 0 instead of 0.5 (weight 1) 0.587 and 0.851. Two CE
networks on the same two views (``adaptive: false``, the matched control) give 0.692 and 0.709: AKT's
adaptive targets cost about 4 points of accuracy there, while its training soft labels are the closest
to the votes of every method (KL 0.52 against CE's 0.65).

Older measurements, with weight 1 and before the calibration: on real faces (the FER+ dev sample of
../shared/realdata, 3,761 training faces with crowd votes, 30% noise, small_cnn, 20 epochs, CPU, seed 0,
``--va dataset --folds 0``) AKT's val accuracy equals CE's (0.504 vs 0.503), but its soft labels are far
closer to the votes (KL 0.817 vs 1.784) and its uncertainty finds the flipped labels that CE memorised
(noise AUROC 0.819 vs 0.374)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ferdata.core.errors import FerdataError
from ferdata.train.backbones import build_backbone
from ferdata.train.methods.base import Batch, Method, confidence, soft_cross_entropy


def attention_map(feature_map: torch.Tensor) -> torch.Tensor:
    """Spatial attention: channel mean of squared activations, flattened and L2-normalised (B, H*W)."""
    return F.normalize(feature_map.pow(2).mean(1).flatten(1), dim=1)


def symmetric_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) + KL(q || p), batch mean."""
    lp, lq = torch.log(p.clamp_min(1e-8)), torch.log(q.clamp_min(1e-8))
    return ((p * (lp - lq)).sum(1) + (q * (lq - lp)).sum(1)).mean()


def js_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence per row, in nats (at most log 2)."""
    m = (p + q) / 2
    lm = torch.log(m.clamp_min(1e-12))
    kl_pm = (p * (torch.log(p.clamp_min(1e-12)) - lm)).sum(1)
    kl_qm = (q * (torch.log(q.clamp_min(1e-12)) - lm)).sum(1)
    return (kl_pm + kl_qm) / 2


def adaptive_targets(
    p_a: torch.Tensor,
    p_b: torch.Tensor,
    att_a: torch.Tensor,
    att_b: torch.Tensor,
    y: torch.Tensor,
    ramp: float = 1.0,
    floor: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(t, u): each face's target and its uncertainty, the agreed evidence against its label (no gradients)."""
    p_a, p_b, att_a, att_b = p_a.detach(), p_b.detach(), att_a.detach(), att_b.detach()
    fused = (p_a + p_b) / 2
    agree = (1 - js_divergence(p_a, p_b) / math.log(2)).clamp(0, 1)
    rho = (1 - (att_a * att_b).sum(1)).clamp(0, 1)
    onehot = F.one_hot(y, p_a.shape[1]).to(fused.dtype)
    trust = agree * (1 - rho)
    u = trust * (1 - (fused * onehot).sum(1))
    beta = ramp * torch.maximum(u, floor * trust)
    return (1 - beta[:, None]) * onehot + beta[:, None] * fused, ramp * u


class AKT(Method):
    """Two-branch training with attention consistency, a symmetric-KL term and adaptive targets."""

    uncertainty_is_entropy = False
    needs_strong_view = True

    def __init__(
        self,
        num_classes: int,
        backbone: str,
        *,
        weights: str | None = None,
        attention_weight: float = 1.0,
        kl_weight: float = 0.1,
        warmup_epochs: int = 5,
        floor: float = 0.5,
        adaptive: bool = True,
    ):
        super().__init__()
        self.branch = build_backbone(backbone, num_classes, weights=weights or None)
        self.attention_weight, self.kl_weight, self.warmup_epochs = attention_weight, kl_weight, warmup_epochs
        self.floor, self.adaptive = floor, adaptive
        self.uncertainty_is_entropy = not adaptive  # the control's soft label is its fused prediction
        self.epoch, self.epochs = 0, 1

    def ramp(self) -> float:
        if not self.adaptive:
            return 0.0
        return min(1.0, self.epoch / self.warmup_epochs) if self.warmup_epochs > 0 else 1.0

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
        p_a, p_b = torch.softmax(logits_a, 1), torch.softmax(logits_b, 1)
        att_a, att_b = attention_map(fmap_a), attention_map(fmap_b)
        target, _ = adaptive_targets(p_a, p_b, att_a, att_b, batch.y, self.ramp(), self.floor)
        ce = soft_cross_entropy(target, logits_a) + soft_cross_entropy(target, logits_b)
        attention = (att_a - att_b).pow(2).sum(1).mean()
        return ce + self.attention_weight * attention + self.kl_weight * symmetric_kl(p_a, p_b)

    def _both(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        fmap_a, logits_a = self._run(model, x, False)
        fmap_b, logits_b = self._run(self.branch, x, False)
        return (
            fmap_a,
            attention_map(fmap_a),
            attention_map(fmap_b),
            torch.softmax(logits_a, 1),
            torch.softmax(logits_b, 1),
        )

    def infer(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features: branch A's embedding, then both branches' attention maps (for the soft labels);
        prediction: the fused posterior."""
        fmap_a, att_a, att_b, p_a, p_b = self._both(model, x)
        feats = torch.cat([fmap_a.mean(dim=(2, 3)), att_a, att_b, p_a, p_b], dim=1)
        return feats, (p_a + p_b) / 2

    @torch.no_grad()
    def soft_labels(
        self, feats: torch.Tensor, probs: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The adaptive target at full ramp on the clean image; uncertainty: u, the agreed evidence against
        the given label (not beta, which the floor raises wherever the branches agree)."""
        c = probs.shape[1]
        hw = (feats.shape[1] - 2 * c - self.branch.embed_dim) // 2
        att_a, att_b, p_a, p_b = feats[:, self.branch.embed_dim :].split([hw, hw, c, c], dim=1)
        if not self.adaptive:  # the CE control: its prediction, as CE's soft label is
            return probs, 1.0 - confidence(probs)
        return adaptive_targets(p_a, p_b, att_a, att_b, labels, 1.0, self.floor)
