"""Training methods, one file each; :func:`build_method` picks one by name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from ferdata.core.errors import FerdataError, UsageError
from ferdata.core.settings import Settings
from ferdata.train.methods.akt import AKT
from ferdata.train.methods.arbex import ARBEx
from ferdata.train.methods.base import Batch, Method
from ferdata.train.methods.ce import CrossEntropy
from ferdata.train.methods.ldlva import LDLVA
from ferdata.train.settings import METHODS, NEEDS_KNN

__all__ = ["METHODS", "NEEDS_KNN", "Batch", "Method", "MethodContext", "build_method", "build_predictor"]


@dataclass
class MethodContext:
    """What a method may need to know about the training set (in training-table order)."""

    num_classes: int
    embed_dim: int
    labels: torch.Tensor  # (N,) given labels as class positions
    knn: torch.Tensor | None = None  # (N, K) neighbour positions
    va: torch.Tensor | None = None  # (N, 2) valence, arousal
    options: Settings | None = None  # the method's section of the train settings (train.ldlva, ...)
    backbone: str = "small_cnn"
    weights: str = ""  # the backbone's initial weights (a second branch starts from them too)
    prior: torch.Tensor | None = None  # (N, C) out-of-fold posteriors of the training faces


def _ldlva(ctx: MethodContext, opts: dict) -> Method:
    if ctx.knn is None or ctx.va is None:
        raise FerdataError("method ldlva needs the VA table and KNN graph: run `ferdata va` first")
    if "prior" in (opts.get("neighbours"), opts.get("trust_init")) and ctx.prior is None:
        raise FerdataError("ldlva.neighbours/trust_init prior needs the out-of-fold prior: run `ferdata prior` first")
    return LDLVA(ctx.num_classes, ctx.embed_dim, labels=ctx.labels, knn=ctx.knn, va=ctx.va, prior=ctx.prior, **opts)


# name -> (build for training from the context and the method's options, build for prediction from
# (num_classes, embed_dim, backbone, options)); every name of METHODS has exactly one entry
BUILDERS: dict[str, tuple[Callable[[MethodContext, dict], Method], Callable[[int, int, str, dict], Method]]] = {
    "ce": (lambda ctx, opts: CrossEntropy(), lambda c, e, b, o: CrossEntropy()),
    "ls": (lambda ctx, opts: CrossEntropy(**opts), lambda c, e, b, o: CrossEntropy()),
    "ldlva": (_ldlva, lambda c, e, b, o: CrossEntropy()),  # predicts with the backbone's head
    "arbex": (
        lambda ctx, opts: ARBEx(ctx.num_classes, ctx.embed_dim, **opts),
        lambda c, e, b, o: ARBEx(c, e, **o),
    ),
    "akt": (
        lambda ctx, opts: AKT(ctx.num_classes, ctx.backbone, weights=ctx.weights, **opts),
        lambda c, e, b, o: AKT(c, b, **o),
    ),
}
if set(BUILDERS) != set(METHODS):  # a method declared in settings.py without its builder, or the reverse
    raise RuntimeError(f"ferdata bug: METHODS {sorted(METHODS)} and BUILDERS {sorted(BUILDERS)} differ")


def build_method(name: str, ctx: MethodContext) -> Method:
    """The method object for ``name`` with its options (the ``train.<name>`` section of params)."""
    if name not in BUILDERS:
        raise UsageError(f"unknown train.method {name!r}: available: {', '.join(METHODS)}")
    return BUILDERS[name][0](ctx, asdict(ctx.options) if ctx.options is not None else {})


def build_predictor(name: str, num_classes: int, embed_dim: int, backbone: str, options: dict) -> Method:
    """The method as far as prediction needs it, to load a checkpoint's ``method_state`` into: ARBEx's
    heads and anchors, AKT's second branch. The others (ce, ls, ldlva) predict with the backbone's head;
    LDLVA's per-sample training state (trust, bank, centres) is not needed to predict."""
    if name not in BUILDERS:
        raise FerdataError(
            f"the checkpoint's method {name!r} is not one of {', '.join(METHODS)}: re-run `ferdata train`"
        )
    return BUILDERS[name][1](num_classes, embed_dim, backbone, options)
