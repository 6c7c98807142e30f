"""Training methods, one file each; :func:`build_method` picks one by name."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ferdata.errors import FerdataError
from ferdata.train.methods.akt import AKT
from ferdata.train.methods.arbex import ARBEx
from ferdata.train.methods.base import Batch, Method
from ferdata.train.methods.ce import CrossEntropy
from ferdata.train.methods.ldlva import LDLVA

METHODS = ("ce", "ls", "ldlva", "arbex", "akt")
NEEDS_KNN = ("ldlva",)

__all__ = ["Batch", "Method", "MethodContext", "build_method", "METHODS", "NEEDS_KNN"]


@dataclass
class MethodContext:
    """What a method may need to know about the training set (in training-table order)."""

    num_classes: int
    embed_dim: int
    labels: torch.Tensor  # (N,) given labels as class positions
    knn: torch.Tensor | None = None  # (N, K) neighbour positions
    va: torch.Tensor | None = None  # (N, 2) valence, arousal
    options: dict[str, Any] = field(default_factory=dict)
    backbone: str = "small_cnn"


def build_method(name: str, ctx: MethodContext) -> Method:
    """The method object for ``name`` with its options (the ``train.<name>`` section of params)."""
    if name not in METHODS:
        raise FerdataError(f"unknown train.method {name!r}: available: {', '.join(METHODS)}")
    opts = dict(ctx.options)
    try:
        if name == "ce":
            return CrossEntropy(**opts)
        if name == "ls":
            return CrossEntropy(**{"smoothing": 0.1, **opts})
        if name == "arbex":
            return ARBEx(ctx.num_classes, ctx.embed_dim, **opts)
        if name == "akt":
            return AKT(ctx.num_classes, ctx.backbone, **opts)
        if ctx.knn is None or ctx.va is None:
            raise FerdataError(f"method {name} needs the VA table and KNN graph: run `ferdata va` first")
        return LDLVA(ctx.num_classes, ctx.embed_dim, labels=ctx.labels, knn=ctx.knn, va=ctx.va, **opts)
    except (TypeError, ValueError) as exc:
        raise FerdataError(f"bad train.{name} option: {exc}") from exc
