"""Every declared method builds from its own entry, for training and for prediction; a name without one
is an error, never a silent fallback to another method."""

from __future__ import annotations

import pytest
import torch

from ferdata.core.errors import FerdataError, UsageError
from ferdata.train.methods import BUILDERS, METHODS, MethodContext, build_method, build_predictor
from ferdata.train.settings import TrainSettings


def _context(name: str) -> MethodContext:
    n, c = 12, 3
    options = getattr(TrainSettings(), name, None)
    return MethodContext(
        num_classes=c,
        embed_dim=64,
        labels=torch.arange(n) % c,
        knn=torch.stack([(torch.arange(n) + k) % n for k in range(1, 4)], 1),
        va=torch.zeros(n, 2),
        options=options,
    )


@pytest.mark.parametrize("name", METHODS)
def test_every_method_builds_as_itself(name):
    method = build_method(name, _context(name))
    expected = {"ce": "CrossEntropy", "ls": "CrossEntropy", "ldlva": "LDLVA", "arbex": "ARBEx", "akt": "AKT"}
    assert type(method).__name__ == expected[name]
    assert build_predictor(name, 3, 64, "small_cnn", {}) is not None


def test_the_registry_and_the_declared_names_agree():
    assert set(BUILDERS) == set(METHODS)


def test_an_unknown_method_is_an_error_not_another_method():
    with pytest.raises(UsageError, match="unknown train.method 'ldl'"):
        build_method("ldl", _context("ce"))
    with pytest.raises(FerdataError, match="checkpoint's method 'ldl'"):
        build_predictor("ldl", 3, 16, "small_cnn", {})


def test_ldlva_without_its_graph_says_which_stage_makes_it():
    ctx = _context("ldlva")
    ctx.knn = None
    with pytest.raises(FerdataError, match="run `ferdata va` first"):
        build_method("ldlva", ctx)
