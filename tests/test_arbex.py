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
    method.set_total_steps(10)
    method.steps = 5  # half-way: the correction and the anchor/centre terms count half
    loss = method.batch_loss(
        model, Batch(index=torch.arange(4), x=torch.randn(4, 3, 32, 32), y=torch.tensor([0, 1, 2, 3]))
    )
    loss.backward()
    assert torch.isfinite(loss) and method.steps == 6
    assert method.anchors.grad.abs().sum() > 0 and method.correction_head.weight.grad.abs().sum() > 0
    assert method.classifier[0].weight.grad.abs().sum() > 0  # the MLP head predicts, not the backbone's
    assert model.head.weight.grad is None


def test_anchor_term_separates_anchors_from_the_first_step():
    method = _arbex()
    loss = method.anchor_loss()
    assert loss.item() < 0  # not a dead hinge: every pair of different classes contributes
    loss.backward()
    assert method.anchors.grad.abs().sum() > 0
    with torch.no_grad():
        method.anchors -= 0.1 * method.anchors.grad
    assert method.anchor_loss().item() < loss.item()  # a step down the term moves anchors apart


def test_trust_rises_over_the_whole_run_and_scales_the_terms():
    method, model = _arbex(anchor_weight=0.0, center_weight=0.0), build_backbone("small_cnn", C)
    method.set_total_steps(4)
    batch = Batch(index=torch.arange(2), x=torch.randn(2, 3, 32, 32), y=torch.tensor([0, 1]))
    method.eval()  # same outputs at every step; the steps still count in training mode only
    model.eval()
    first = method.batch_loss(model, batch)
    assert method.steps == 0  # eval mode: no step counted
    with torch.no_grad():
        p = torch.softmax(method.classifier(model.forward_features(batch.x)), 1)
    assert first.item() == pytest.approx(torch.nn.functional.nll_loss(torch.log(p), batch.y).item(), rel=1e-5)
    method.train()
    method.batch_loss(model, batch)
    assert method.steps == 1


def test_centre_term_is_confidence_weighted_min_distance():
    method = _arbex(anchors_per_class=2)
    with torch.no_grad():
        method.anchors.zero_()
        method.anchors[1, 1, 0] = 3.0
    e = torch.zeros(1, 256)
    e[0, 0] = 4.0
    dist = method.anchor_distances(e)
    value = method.center_loss(dist, torch.tensor([1]), torch.tensor([0.5]))
    assert value.item() == pytest.approx(0.5 * 1.0 / 16.0)  # nearest anchor 1 away, sqrt(256) = 16


def test_a_faces_distribution_does_not_depend_on_its_batch():
    method = _arbex().eval()
    e = torch.randn(5, 256)
    alone = method.attentive(e[:1])
    together = method.attentive(e)[:1]
    assert torch.allclose(alone, together, atol=1e-6)


def test_prediction_is_corrected_unless_primary_is_asked():
    model = build_backbone("small_cnn", C).eval()
    x = torch.randn(3, 3, 32, 32)
    primary = _arbex(predict="primary").eval()
    e, p = primary.infer(model, x)
    assert torch.allclose(p, torch.softmax(primary.classifier(e), 1))
    corrected = _arbex().eval()
    corrected.load_state_dict(primary.state_dict())
    _, q = corrected.infer(model, x)
    assert torch.allclose(q, corrected.corrected(e, corrected.classifier(e), 1.0), atol=1e-6)
    assert not torch.allclose(p, q, atol=1e-4)
    soft, unc = primary.soft_labels(e, p, torch.zeros(3, dtype=torch.long))
    assert torch.allclose(soft, q, atol=1e-6) and unc.shape == (3,)


def test_primary_head_sees_the_backbones_dropout_in_training_only():
    class Recorder(torch.nn.Identity):
        calls = 0

        def forward(self, x):
            Recorder.calls += 1
            return x

    method, model = _arbex(), build_backbone("small_cnn", C)
    model.drop = Recorder()
    method.batch_loss(model, Batch(index=torch.arange(2), x=torch.randn(2, 3, 32, 32), y=torch.tensor([0, 1])))
    assert Recorder.calls == 1  # like ce's and ldlva's heads: dropout between the embedding and the head
    method.eval().infer(model.eval(), torch.randn(2, 3, 32, 32))
    assert Recorder.calls == 1  # prediction reads the embedding as it is


def test_confidences_are_weights_without_gradient_unless_asked():
    e, y = torch.randn(1, 256), 2
    logits = torch.tensor([[2.0, 0.5, -1.0, 0.0, 0.3]], requires_grad=True)
    for official in (False, True):
        method = _arbex(confidence_grad=official)
        q = method.corrected(e, logits, 1.0)
        (grad,) = torch.autograd.grad(-torch.log(q[0, y]), logits)
        p = torch.softmax(logits, 1)
        held = confidence(p).detach()  # the same loss with conf(p) held fixed: only p_y moves the primary head
        corr = (q - held * p)[0, y].detach()
        (fixed,) = torch.autograd.grad(-torch.log(held * p[0, y] + corr), logits)
        assert torch.allclose(grad, fixed, atol=1e-6) != official


def test_bad_option():
    with pytest.raises(UsageError, match="train.arbex: the backbone's 256-dim embedding must split into 7 tokens"):
        _arbex(tokens=7)
