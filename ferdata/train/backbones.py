"""Backbones: a small CNN that trains on a few CPU cores and a ResNet-18 for GPUs.

Each maps an image batch to an embedding (``forward_features``) and logits (``forward``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ferdata.core.errors import FerdataError, UsageError


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Backbone(nn.Module):
    """A convolutional ``body``, global average pooling to an ``embed_dim`` embedding, dropout, a linear
    ``head``."""

    body: nn.Module
    drop: nn.Module
    head: nn.Linear
    embed_dim: int

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature_map(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.forward_features(x)))


class SmallCNN(Backbone):
    """Four stride-2 stages of two 3x3 convolutions; ~1.2 M parameters."""

    def __init__(self, num_classes: int, width: int = 32, dropout: float = 0.2):
        super().__init__()
        w = width
        self.body = nn.Sequential(
            _conv_bn(3, w, 2),
            _conv_bn(w, w),
            _conv_bn(w, 2 * w, 2),
            _conv_bn(2 * w, 2 * w),
            _conv_bn(2 * w, 4 * w, 2),
            _conv_bn(4 * w, 4 * w),
            _conv_bn(4 * w, 8 * w, 2),
            _conv_bn(8 * w, 8 * w),
        )
        self.embed_dim = 8 * w
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(self.embed_dim, num_classes)


class BasicBlock(nn.Module):
    """ResNet basic block."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = _conv_bn(cin, cout, stride)
        self.conv2 = nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.short = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv2(self.conv1(x)) + self.short(x))


class ResNet18(Backbone):
    """ResNet-18 for 112x112 faces (3x3 stem, no max-pool), for GPU training."""

    def __init__(self, num_classes: int, dropout: float = 0.2):
        super().__init__()
        layers, cin = [_conv_bn(3, 64, 1)], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.body = nn.Sequential(*layers)
        self.embed_dim = 512
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(512, num_classes)


NETWORKS = {"small_cnn": SmallCNN, "resnet18": ResNet18}


def build_backbone(name: str, num_classes: int, *, weights: str | Path | None = None) -> nn.Module:
    """Build backbone ``name``; optional initial weights from a local file (never from the network)."""
    if name not in NETWORKS:
        raise UsageError(f"unknown train.backbone {name!r}: use one of {', '.join(NETWORKS)}")
    model = NETWORKS[name](num_classes)
    if weights:
        path = Path(weights)
        if not path.is_file():
            raise FerdataError(
                f"initial weights {path} not found; give a local .pt state dict or leave train.weights empty"
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
        body = {k: v for k, v in state.items() if not k.startswith("head.")}
        missing, _ = model.load_state_dict(body, strict=False)
        if [k for k in missing if not k.startswith("head.")]:
            raise FerdataError(f"{path} does not fit backbone {name}: missing {missing[:3]}")
    return model
