import pytest
import torch

from ferdata.core.errors import UsageError
from ferdata.train.backbones import build_backbone
from ferdata.train.methods import Batch, MethodContext, build_method
from ferdata.train.methods.base import confidence
from ferdata.train.settings import ARBExOptions

C = 5


def _arbex(**kw):
    return build_method("arbex", MethodContext(C, 256, torch.zeros(4, dtype=torch.long), options=ARBExOptions(**kw)))


def test_confidence_is_one_minus_normalised_entropy():
    p = torch.tensor([[1.0, 0, 0, 0], [0.25, 0.25, 0.25, 0.25]])
    assert torch.allclose(confidence(p), torch.tensor([1.0, 0.0]), atol=1e-6)


def test_corrected_distribution_sums_to_one_and_ramps():
    method = _arbex()
    e, logits = torch.randn(6, 256), torch.randn(6, C)
    q = method.corrected(e, logits, 1.0)
    assert q.shape == (6, C) and torch.allclose(q.sum(1), torch.ones(6), atol=1e-5)
    assert torch.allclose(method.corrected(e, logits, 0.0), torch.softmax(logits, 1))
    s = method.anchor_similarity(e)
    assert torch.allclose(s.sum(1), torch.ones(6), atol=1e-5)


def test_one_hot_prediction_gives_no_nan():
    method = _arbex()
    q = method.corrected(torch.randn(3, 256), torch.tensor([[1e4, 0, 0, 0, 0]] * 3), 1.0)
    assert torch.isfinite(q).all() and torch.allclose(q[:, 0], torch.ones(3))  # a certain p needs no correction


def test_forward_backward_and_loss_terms():
    method, model = _arbex(), build_backbone("small_cnn", C)
    loss = method.batch_loss(
        model, Batch(index=torch.arange(4), x=torch.randn(4, 3, 32, 32), y=torch.tensor([0, 1, 2, 3]))
    )
    loss.backward()
    assert torch.isfinite(loss)
    assert method.anchors.grad.abs().sum() > 0 and method.correction_head.weight.grad.abs().sum() > 0
    # anchors of different classes closer than the margin cost something; far apart they cost nothing
    method.anchors.data[:] = 0
    assert method.anchor_loss().item() == pytest.approx(1.0)
    method.anchors.data[:] = torch.arange(C)[:, None, None] * 10.0
    assert method.anchor_loss().item() == 0.0
    e = method.anchors[2, 0].detach()[None]
    assert method.center_loss(e, torch.tensor([2])).item() == 0.0


def test_bad_option():
    with pytest.raises(UsageError, match="train.arbex: the backbone's 256-dim embedding must split into 7 tokens"):
        _arbex(tokens=7)
