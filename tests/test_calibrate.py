import numpy as np
import pytest
import torch

from ferdata.train.calibrate import Calibration, fit_calibration, from_dict


def _balanced_posteriors(n: int = 6000, seed: int = 0):
    """Faces of an imbalanced population (70/20/10) from three Gaussians, scored by a model trained on a
    balanced plan: the exact posteriors under a uniform prior, made too sharp (squared)."""
    rng = np.random.default_rng(seed)
    prior = np.array([0.7, 0.2, 0.1])
    labels = rng.choice(3, size=n, p=prior)
    means = np.array([[0.0, 0.0], [1.5, 0.0], [0.0, 1.5]])
    x = means[labels] + rng.normal(size=(n, 2))
    loglik = -0.5 * ((x[:, None, :] - means[None]) ** 2).sum(-1)
    balanced = np.exp(2 * (loglik - loglik.max(1, keepdims=True)))
    return balanced / balanced.sum(1, keepdims=True), labels, prior


def test_the_plans_balance_is_undone_and_the_sharpness_tempered():
    probs, labels, prior = _balanced_posteriors()
    cal = fit_calibration(probs, labels, train_counts=prior * 1000, plan_counts=np.full(3, 500))
    assert cal.mode == "prior_temperature"
    assert cal.temperature == pytest.approx(2.0, rel=0.1)  # the square undone
    assert cal.prior_weight == pytest.approx(1.0, abs=0.1)  # the population's prior back, whole
    out = cal.apply(torch.from_numpy(probs)).numpy()
    assert np.allclose(out.sum(1), 1)
    nll = lambda p: -np.log(p[np.arange(len(p)), labels]).mean()  # noqa: E731
    assert nll(out) < nll(probs) - 0.05
    assert (out.argmax(1) == labels).mean() > (probs.argmax(1) == labels).mean()  # the prior helps accuracy


def test_temperature_alone_keeps_the_ranking_of_classes():
    probs, labels, prior = _balanced_posteriors()
    cal = fit_calibration(probs, labels, train_counts=prior, plan_counts=np.ones(3), mode="temperature")
    assert cal.shift == () and cal.prior_weight == 0
    out = cal.apply(torch.from_numpy(probs)).numpy()
    assert (out.argmax(1) == probs.argmax(1)).all()


def test_none_and_no_validation_faces():
    probs = torch.tensor([[0.6, 0.4]])
    assert (
        fit_calibration(probs.numpy(), np.array([0]), train_counts=[1, 1], plan_counts=[1, 1], mode="none").apply(probs)
        is probs
    )
    cal = fit_calibration(np.zeros((0, 2)), np.zeros(0), train_counts=[3, 1], plan_counts=[1, 1])
    assert cal.temperature == 1.0 and cal.prior_weight == 1.0  # the prior swap whole
    assert cal.apply(probs)[0, 0].item() == pytest.approx(0.6 * 0.75 / (0.6 * 0.75 + 0.4 * 0.25))


def test_a_class_the_plan_never_draws_is_left_alone():
    cal = fit_calibration(np.zeros((0, 3)), np.zeros(0), train_counts=[5, 5, 0], plan_counts=[1, 1, 0])
    assert cal.shift[2] == 0.0


def test_round_trip_through_checkpoint_metadata():
    cal = Calibration("prior_temperature", 1.3, (0.1, -0.2), 0.4)
    assert from_dict(cal.describe()) == cal
    assert from_dict(None) == Calibration()
    with pytest.raises(ValueError):
        fit_calibration(np.ones((1, 2)), np.zeros(1), train_counts=[1, 1], plan_counts=[1, 1], mode="platt")
