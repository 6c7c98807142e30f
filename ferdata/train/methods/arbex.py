"""ARBEx reliability balancing: anchors and attention correct the primary prediction by confidence.

    p      = softmax(head(e))                                  primary distribution from embedding e
    s      = per-class sum of softmax over all anchors of -||e - anchor|| / delta
    a      = softmax(linear(MHSA(tokens of e)))               attentive correction
    conf(q) = 1 - H(q) / log C
    corr   = (conf(s) s + conf(a) a) / (conf(s) + conf(a))
    q      = conf(p) p + (1 - conf(p)) corr                    the corrected distribution
Loss: NLL of q at the given label + anchor loss (anchors of different classes pushed apart) + center
loss (e pulled to its class's nearest anchor). The correction is ramped in linearly over the first
``warmup_epochs`` epochs (q = (1 - w) p + w q), as the reference code does, because anchors and
attention start untrained. The soft label of a sample is q.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ferdata.core.errors import UsageError
from ferdata.train.methods.base import Batch, Method, confidence


class ARBEx(Method):
    """Reliability balancing with learnable anchors and multi-head self-attention."""

    name = "arbex"

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
        center_weight: float = 0.01,
        anchor_margin: float = 1.0,
        warmup_epochs: int = 3,
    ):
        super().__init__()
        if embed_dim % tokens or (embed_dim // tokens) % heads:
            raise UsageError(
                f"train.arbex: the backbone's {embed_dim}-dim embedding must split into {tokens} tokens "
                f"whose size divides by {heads} heads"
            )
        self.num_classes, self.k, self.delta, self.tokens = num_classes, anchors_per_class, delta, tokens
        self.anchor_weight, self.center_weight, self.anchor_margin = anchor_weight, center_weight, anchor_margin
        self.warmup_epochs = warmup_epochs
        self.anchors = nn.Parameter(torch.randn(num_classes, anchors_per_class, embed_dim) * 0.5)
        self.attention = nn.MultiheadAttention(embed_dim // tokens, heads, batch_first=True)
        self.correction_head = nn.Linear(embed_dim, num_classes)
        self.epoch, self.epochs = 0, 1

    def anchor_similarity(self, e: torch.Tensor) -> torch.Tensor:
        """s: softmax over every anchor of -distance / delta, summed per class (B, C)."""
        dist = torch.cdist(e, self.anchors.reshape(-1, e.shape[1]))
        return torch.softmax(-dist / self.delta, dim=1).reshape(len(e), self.num_classes, self.k).sum(2)

    def attentive(self, e: torch.Tensor) -> torch.Tensor:
        """a: self-attention over the embedding cut into tokens, then a linear head (B, C)."""
        t = e.reshape(len(e), self.tokens, -1)
        out, _ = self.attention(t, t, t, need_weights=False)
        return torch.softmax(self.correction_head((out + t).reshape(len(e), -1)), dim=1)

    def ramp(self) -> float:
        return min(1.0, (self.epoch + 1) / self.warmup_epochs) if self.warmup_epochs > 0 else 1.0

    def corrected(self, e: torch.Tensor, logits: torch.Tensor, ramp: float = 1.0) -> torch.Tensor:
        """q: the primary distribution balanced with the anchor and attention corrections."""
        p = torch.softmax(logits, dim=1)
        s, a = self.anchor_similarity(e), self.attentive(e)
        cs, ca, cp = confidence(s)[:, None], confidence(a)[:, None], confidence(p)[:, None]
        corr = (cs * s + ca * a) / (cs + ca).clamp_min(1e-8)
        q = cp * p + (1 - cp) * corr
        return (1 - ramp) * p + ramp * q

    def anchor_loss(self) -> torch.Tensor:
        """Hinge on the distance between anchors of different classes (closer than the margin costs)."""
        flat = self.anchors.reshape(-1, self.anchors.shape[-1])
        owner = torch.arange(self.num_classes, device=flat.device).repeat_interleave(self.k)
        dist = torch.cdist(flat, flat)
        other = owner[:, None] != owner[None, :]
        return F.relu(self.anchor_margin - dist[other]).pow(2).mean()

    def center_loss(self, e: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Squared distance from each embedding to the nearest anchor of its class."""
        dist = (e[:, None, :] - self.anchors[y]).pow(2).sum(-1)
        return dist.min(1).values.mean()

    def batch_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        e = model.forward_features(batch.x)
        q = self.corrected(e, model.head(model.drop(e)), self.ramp())
        nll = F.nll_loss(torch.log(q.clamp_min(1e-8)), batch.y)
        return nll + self.anchor_weight * self.anchor_loss() + self.center_weight * self.center_loss(e, batch.y)

    def infer(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = model.forward_features(x)
        q = self.corrected(e, model.head(e), 1.0)
        return e, q / q.sum(1, keepdim=True)
