"""ARBEx reliability balancing: anchors and attention correct the primary prediction by confidence.

    p       = softmax(MLP(e))                                  primary distribution from embedding e
    s       = per-class sum of softmax over all anchors of -|e - anchor| / delta
    a       = softmax(linear(MHSA(tokens of e)))              attentive correction
    conf(q) = 1 - H(q) / log C                                 a weight: no gradient (see below)
    corr    = (conf(s) s + conf(a) a) / (conf(s) + conf(a))
    q       = conf(p) p + (1 - conf(p)) corr                   the corrected distribution
    r       = step / total steps                               the trust in the correction, 0 -> 1
    loss    = NLL((1 - r) p + r q, y) + r (w_a L_anchor + w_c L_center)
    L_anchor = -mean over anchor pairs of different classes of |a_u - a_v|^2 / sqrt(D)
    L_center = mean_i conf(p_i) min_k |e_i - anchor_{y_i,k}| / sqrt(D)
as in the official code: the trust rises linearly over the whole run and scales the anchor and centre
terms too, and the anchor term pushes anchors of different classes apart. The primary head is the
method's own; ``head_layers: 3`` gives the official MLP (Linear-ReLU-BatchNorm-Dropout 0.5 blocks halving
the width). That head was made for a 768-dim ViT embedding; on our CNNs trained from scratch it barely
learns (synth, 30% noise, 20 epochs on a GPU: test accuracy 0.21 with 3 blocks; 4-epoch CPU probe: 0.27
with one block, 0.68 with a linear head), so the default is a linear head (``head_layers: 0``); the
backbone's dropout sits before it, as before every method's head (the official MLP has its own).

The confidences are weights without gradient (``confidence_grad: false``, the default). In the official
code the NLL also reaches p through conf(p): wherever the correction gives the given label more mass
than p does, lowering conf(p) lowers the loss, so the primary head learns to be unsure of exactly the
faces it should learn from, and the correction (a function of the same embedding) fits the noisy label
instead. Measured on synth at 30% noise (small_cnn, 20 epochs, CPU, same data, plan and seed):
clean-test accuracy 0.547 with the gradient, 0.621 without; noise AUROC 0.794 / 0.806; soft-label
KL 0.713 / 0.687. ``confidence_grad: true`` restores the official behaviour. The confidence weighting the
centre term is likewise a weight: with a gradient, the term rewards unconfident predictions. The official
anchors start at zero, where the push has no gradient; here they start at small random positions (sd
``anchor_init``), so the term separates them from the first step. The soft label of a training sample
is q.

Prediction (val/test, and what ``ferdata train`` reports) is the corrected distribution q
(``predict: corrected``, the default); ``predict: primary`` gives the head's p alone, as the official
evaluation does by default. This departs from the official default on measurement: the official head
sits on a pretrained POSTER ViT, where p is good from the start; on our networks trained from scratch
the loss lets p leave the faces it is unsure of to the correction (its gradient there is scaled by
(1 - r) + r conf(p)), so p alone is worse than CE and q, the same model's balanced output, is better.
Same trained model, only the prediction differs (30% noise, small_cnn, 20 epochs, CPU):

    data, seed            CE      primary p   corrected q
    synth, 0              0.603   0.616       0.633
    synth, 1              0.553   0.493       0.603
    synth, 2              0.589   0.577       0.608
    synth, mean           0.582   0.562       0.615
    FER+ dev (val), 0     0.503   0.448       0.559
    FER+ dev (val), 1     0.499   0.421       0.533

(FER+ dev: ../shared/realdata's 3,761 training faces with their crowd votes, ``--va dataset
--folds 0``; synth: data/synth.)

The anchor term is weak at ``anchor_weight: 0.1`` (its push per unit distance is about the weight decay's
pull). A hundred times more, ``anchor_weight: 10`` (about twice the official strength), is no better: the
unbounded push drives the loss to -1451 by epoch 20 as the anchors fly apart under SGD; synth, 30% noise,
small_cnn, 20 epochs, CPU, seeds 0 and 1: clean-test accuracy 0.613 / 0.556 (default 0.621 / 0.509),
noise AUROC 0.783 / 0.810 (0.806 / 0.800), soft-label KL 0.730 / 0.727 (0.687 / 0.711).

With 10 anchors per class the mean over pairs makes the push about 42 times weaker than the official
loss's, whose sum runs over its single anchor per class. Measured on validation faces (FER+ at full
scale, 23,249 training faces, validation carved from Train, noise 0, small_cnn, 10 epochs, calibrated,
seed 0; ``bench/methods_table.py``, bench/RESULTS.md): ``anchor_weight: 4.2`` (the official strength)
gives val accuracy 0.710 and KL to the votes 0.702, the default 0.1 gives 0.709 and 0.698 (CE: 0.697 and
0.735): level, so the default stays.

The official code's default is one anchor per class (``anchors_per_class: 1``). It is no consistent win
over 10 (synth, 30% noise, small_cnn, 20 epochs, CPU, seeds 0/1/2, same data, plan and seed; CE
0.603/0.553/0.589): clean-test accuracy 0.651/0.465/0.620 vs 0.616/0.493/0.577, soft-label KL
0.689/0.735/0.678 vs 0.703/0.719/0.706, so the default stays 10.

Attention: the official code attends across the faces of a batch (the embeddings of a batch are one
sequence). A face's distribution then depends on which faces share its batch, hence on batch size,
shuffling, the number of ranks under DDP and the inference order, none of which the paper motivates
or evaluates. The paper describes self-attention over a face's embedding; we attend within the face
(its embedding cut into ``tokens`` tokens), so soft labels and predictions are functions of the face.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from ferdata.core.errors import UsageError
from ferdata.train.methods.base import Batch, Method, confidence, evaluating


def mlp_head(embed_dim: int, num_classes: int, *, layers: int = 1, dropout: float = 0.5) -> nn.Sequential:
    """``layers`` Linear-ReLU-BatchNorm-Dropout blocks, each halving the width, then a linear layer to the
    classes (the official head's blocks; it uses three on a 768-dim ViT embedding)."""
    blocks: list[nn.Module] = []
    width = embed_dim
    for _ in range(layers):
        blocks += [nn.Linear(width, width // 2), nn.ReLU(), nn.BatchNorm1d(width // 2), nn.Dropout(dropout)]
        width //= 2
    return nn.Sequential(*blocks, nn.Linear(width, num_classes))


class ARBEx(Method):
    """Reliability balancing with learnable anchors and multi-head self-attention."""

    uses_backbone_head = False

    def __init__(
        self,
        num_classes: int,
        embed_dim: int,
        *,
        anchors_per_class: int = 10,
        delta: float = 1.0,
        tokens: int = 8,
        heads: int = 4,
        anchor_weight: float = 0.1,
        center_weight: float = 1.0,
        anchor_init: float = 0.1,
        head_layers: int = 0,
        predict: str = "corrected",
        confidence_grad: bool = False,
    ):
        super().__init__()
        if embed_dim % tokens or (embed_dim // tokens) % heads or embed_dim < 16:
            raise UsageError(
                f"train.arbex: the backbone's {embed_dim}-dim embedding must split into {tokens} tokens "
                f"whose size divides by {heads} heads"
            )
        self.num_classes, self.k, self.delta, self.tokens = num_classes, anchors_per_class, delta, tokens
        self.anchor_weight, self.center_weight, self.predict = anchor_weight, center_weight, predict
        self.confidence_grad = confidence_grad
        self.scale = math.sqrt(embed_dim)
        self.anchors = nn.Parameter(torch.randn(num_classes, anchors_per_class, embed_dim) * anchor_init)
        owner = torch.arange(num_classes).repeat_interleave(anchors_per_class)
        # the pairs of anchors of different classes, as positions: selecting them by a mask at every step
        # would read the mask's size back from the GPU (not saved: it follows from the settings)
        self.register_buffer(
            "rival_pairs", torch.stack(torch.nonzero(owner[:, None] != owner[None, :], as_tuple=True)), persistent=False
        )
        self.classifier = mlp_head(embed_dim, num_classes, layers=head_layers)
        self.attention = nn.MultiheadAttention(embed_dim // tokens, heads, batch_first=True)
        self.correction_head = nn.Linear(embed_dim, num_classes)
        self.trust, self.steps, self.total_steps = 0.0, 0, 1

    def set_total_steps(self, total: int) -> None:
        """Told by the loop before training: the trust in the correction rises over this many steps."""
        self.steps, self.total_steps = 0, max(int(total), 1)

    def anchor_distances(self, e: torch.Tensor) -> torch.Tensor:
        """|e - anchor| for every anchor (B, C, K)."""
        return torch.cdist(e, self.anchors.reshape(-1, e.shape[1])).reshape(len(e), self.num_classes, self.k)

    def anchor_similarity(self, e: torch.Tensor, dist: torch.Tensor | None = None) -> torch.Tensor:
        """s: softmax over every anchor of -distance / delta, summed per class (B, C)."""
        dist = self.anchor_distances(e) if dist is None else dist
        return torch.softmax(-dist.reshape(len(e), -1) / self.delta, dim=1).reshape_as(dist).sum(2)

    def attentive(self, e: torch.Tensor) -> torch.Tensor:
        """a: self-attention over the face's embedding cut into tokens, then a linear head (B, C)."""
        t = e.reshape(len(e), self.tokens, -1)
        # CUDA's fused attention kernels have no deterministic backward; these 8 tokens need none of them
        with sdpa_kernel(SDPBackend.MATH) if t.is_cuda else nullcontext():
            out, _ = self.attention(t, t, t, need_weights=False)
        return torch.softmax(self.correction_head((out + t).reshape(len(e), -1)), dim=1)

    def corrected(
        self, e: torch.Tensor, logits: torch.Tensor, trust: float = 1.0, dist: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(1 - trust) p + trust q: the primary distribution balanced with the anchor and attention corrections."""
        p = torch.softmax(logits, dim=1)
        s, a = self.anchor_similarity(e, dist), self.attentive(e)
        cs, ca, cp = confidence(s)[:, None], confidence(a)[:, None], confidence(p)[:, None]
        if not self.confidence_grad:
            cs, ca, cp = cs.detach(), ca.detach(), cp.detach()
        corr = (cs * s + ca * a) / (cs + ca).clamp_min(1e-8)
        q = cp * p + (1 - cp) * corr
        return (1 - trust) * p + trust * q

    def anchor_loss(self) -> torch.Tensor:
        """-mean |a_u - a_v|^2 / sqrt(D) over pairs of anchors of different classes: lower when they are apart."""
        flat = self.anchors.reshape(-1, self.anchors.shape[-1])
        sq = (flat[:, None, :] - flat[None, :, :]).pow(2).sum(-1)
        return -sq[self.rival_pairs[0], self.rival_pairs[1]].mean() / self.scale

    def center_loss(self, dist: torch.Tensor, y: torch.Tensor, conf: torch.Tensor) -> torch.Tensor:
        """mean_i conf_i * (distance from e_i to the nearest anchor of its class) / sqrt(D); the confidence
        is a weight (no gradient), else the term rewards unconfident predictions."""
        nearest = dist[torch.arange(len(y), device=y.device), y].min(1).values
        return (nearest * conf.detach()).mean() / self.scale

    def batch_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        e = model.forward_features(batch.x)
        logits = self.classifier(model.drop(e))  # the backbone's dropout, as every method's head sees it
        trust = self.steps / self.total_steps
        if self.training:
            self.steps = min(self.steps + 1, self.total_steps)
        dist = self.anchor_distances(e)
        q = self.corrected(e, logits, trust, dist)
        nll = F.nll_loss(torch.log(q.clamp_min(1e-8)), batch.y)
        conf = confidence(torch.softmax(logits, dim=1))
        terms = self.anchor_weight * self.anchor_loss() + self.center_weight * self.center_loss(dist, batch.y, conf)
        return nll + trust * terms

    def infer(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = model.forward_features(x)
        logits = self.classifier(e)
        if self.predict == "corrected":
            q = self.corrected(e, logits, 1.0)
            return e, q / q.sum(1, keepdim=True)
        return e, torch.softmax(logits, dim=1)

    @torch.no_grad()
    def soft_labels(
        self, feats: torch.Tensor, probs: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """q for every training sample (eval mode); uncertainty: its normalised entropy."""
        with evaluating(self):
            q = torch.cat([self.corrected(e, self.classifier(e), 1.0) for e in feats.split(1024)])
        q = q / q.sum(1, keepdim=True)
        return q, 1.0 - confidence(q)
