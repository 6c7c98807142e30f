import numpy as np
import pytest
import torch

from ferdata.core.errors import FerdataError, UsageError
from ferdata.core.io import read_table
from ferdata.train.backbones import build_backbone
from ferdata.train.loop import neighbour_positions, train
from ferdata.train.methods import Batch, MethodContext, build_method
from ferdata.train.methods.ldlva import center_loss, centre_push, local_similarity, update_centers
from ferdata.train.settings import LDLVAOptions, TrainSettings

N, K, C = 12, 3, 4


def _method(mode="bank", dim=32, prior=None, **kw):
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(N) % C
    knn = torch.stack([(torch.arange(N) + s) % N for s in (1, 2, 3)], dim=1)
    va = torch.rand(N, 2, generator=gen) * 2 - 1
    opts = LDLVAOptions(neighbour_mode=mode, **kw)
    return build_method("ldlva", MethodContext(C, dim, labels, knn, va, opts, prior=prior)), labels


def test_local_similarity_is_l1_kernel():
    a = local_similarity(torch.tensor([[0.0, 0.0]]), torch.tensor([[[0.0, 0.0], [0.3, -0.2]]]), 0.5)
    assert torch.allclose(a, torch.tensor([[1.0, np.exp(-0.5 / 0.5)]], dtype=torch.float32))


def test_lambda_starts_at_sigmoid_half_and_stays_in_unit_interval():
    method, _ = _method()
    lam = method.lambdas()
    assert torch.allclose(lam, torch.sigmoid(torch.tensor(0.5)))
    method.logit.data[:] = torch.linspace(-50, 50, N)
    lam = method.lambdas()
    assert ((lam >= 0) & (lam <= 1)).all()


def test_targets_mix_one_hot_and_aggregate_and_sum_to_one():
    method, labels = _method()
    index = torch.arange(4)
    feats, nbr_feats = torch.randn(4, 32), torch.randn(4, K, 32)
    nbr_probs = torch.softmax(torch.randn(4, K, C), -1)
    d = method.aggregate(index, feats, nbr_feats, nbr_probs)
    assert d.shape == (4, C) and torch.allclose(d.sum(1), torch.ones(4))
    t = method.targets(index, labels[index], d)
    assert torch.allclose(t.sum(1), torch.ones(4))
    lam = method.lambdas(index)[:, None]
    assert torch.allclose(t, lam * torch.eye(C)[labels[index]] + (1 - lam) * d)


@pytest.mark.parametrize("kind", ["prediction", "target"])
def test_soft_label_is_the_prediction_or_the_target(kind):
    method, labels = _method(soft_label=kind)
    method.logit.data[:] = torch.linspace(-2, 2, N)
    gen = torch.Generator().manual_seed(1)
    feats, probs = torch.randn(N, 32, generator=gen), torch.softmax(torch.randn(N, C, generator=gen), 1)
    soft, unc = method.soft_labels(feats, probs, labels)
    assert torch.allclose(unc, 1 - method.lambdas())  # the trust is the uncertainty either way
    with torch.no_grad():
        d = method.eval().aggregate(torch.arange(N), feats, feats[method.knn], probs[method.knn])
    t = method.targets(torch.arange(N), labels, d)
    assert torch.allclose(soft, probs if kind == "prediction" else t)
    assert not torch.allclose(probs, t)


def test_one_hot_neighbours_give_no_nan():
    method, labels = _method()
    index = torch.arange(4)
    one_hot = torch.eye(C)[torch.zeros(4, K, dtype=torch.long)]
    d = method.aggregate(index, torch.zeros(4, 32), torch.zeros(4, K, 32), one_hot)
    assert torch.isfinite(d).all() and torch.allclose(d, torch.eye(C)[[0] * 4])
    model = build_backbone("small_cnn", C)
    method, labels = _method(dim=model.embed_dim)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([1e4, 0, 0, 0]))  # a saturated, one-hot prediction
    method.start_epoch(torch.zeros(N, model.embed_dim), torch.eye(C)[torch.zeros(N, dtype=torch.long)])
    loss = method.batch_loss(model, Batch(index=index, x=torch.randn(4, 3, 32, 32), y=labels[index]))
    assert torch.isfinite(loss)


@pytest.mark.parametrize("mode", ["bank", "forward"])
def test_forward_backward_reaches_every_part(mode):
    model = build_backbone("small_cnn", C)
    method, labels = _method(mode, dim=model.embed_dim)
    images = torch.randn(N, 3, 32, 32)
    method.start_epoch(torch.randn(N, model.embed_dim), torch.softmax(torch.randn(N, C), 1))
    index = torch.tensor([0, 5, 7, 9])
    batch = Batch(index=index, x=images[index], y=labels[index], fetch=lambda pos: images[pos])
    loss = method.batch_loss(model, batch)
    loss.backward()
    assert torch.isfinite(loss)
    assert method.logit.grad[index].abs().sum() > 0 and method.logit.grad[[1, 2]].abs().sum() == 0
    assert method.calibration[0].weight.grad.abs().sum() > 0
    assert model.body[0][0].weight.grad.abs().sum() > 0
    assert method.centers.abs().sum() > 0  # moved by their own rule from zero; not an optimiser parameter
    assert all(p is not method.centers for p in method.parameters())


def test_lambda_falls_for_a_label_the_model_rejects():
    """A sample whose given label the model and neighbours both reject loses trust (lambda goes down)."""
    method, _labels = _method(lambda_lr=100.0)
    index = torch.tensor([0])
    y = torch.tensor([1])
    logits = torch.tensor([[5.0, -5.0, 0.0, 0.0]])
    d = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    before = method.lambdas(index).item()
    loss = -(method.targets(index, y, d) * torch.log_softmax(logits, 1)).sum()
    loss.backward()
    method.own_optimizers()[0].step()
    assert method.lambdas(index).item() < before


def test_center_term_is_weighted_by_trust_and_trains_only_the_features():
    feats = torch.tensor([[1.0, 0.0], [0.0, 2.0]], requires_grad=True)
    labels, centers = torch.tensor([0, 1]), torch.zeros(2, 2)
    trust = torch.tensor([1.0, 0.25], requires_grad=True)
    loss = center_loss(feats, labels, trust, centers)
    assert loss.item() == pytest.approx(0.5 * (1.0 * 1.0 + 0.25 * 4.0) / 2)
    loss.backward()
    assert trust.grad is None and torch.allclose(feats.grad, torch.tensor([[0.5, 0.0], [0.0, 0.25]]))


def test_centres_move_towards_trusted_features_then_apart():
    centers = torch.zeros(2, 4)
    feats = torch.tensor([[4.0, 0, 0, 0], [4.0, 0, 0, 0], [0, 0, 0, 0]])
    update_centers(centers, feats, torch.tensor([0, 0, 1]), torch.tensor([1.0, 0.0, 1.0]))
    # pull: alpha * (1 * 4) / (2 + 1) / 3 on class 0; then a push that separates the two centres further
    assert centers[0, 0].item() > 0.5 * 4 / 3 / 3 and centers[1, 0].item() < 0
    before = centre_push(torch.zeros(2, 4))
    assert before.item() == pytest.approx(1.0) and centre_push(centers) < before


def test_a_face_with_fewer_training_neighbours_keeps_k_for_the_others():
    import pandas as pd

    knn = pd.DataFrame(
        {
            "sample_id": ["a", "b", "c", "d"],
            "neighbours": [["b", "c", "d"], ["a", "x", "y"], ["a", "b", "d"], ["c", "b", "a"]],
        }
    )
    pos = neighbour_positions(knn, ["a", "b", "c", "d"])
    assert pos.tolist() == [[1, 2, 3], [0, -1, -1], [0, 1, 3], [2, 1, 0]]
    method = build_method(
        "ldlva", MethodContext(C, 8, torch.tensor([0, 1, 2, 3]), pos, torch.zeros(4, 2), LDLVAOptions())
    )
    probs = torch.eye(C)
    method.eval()
    d = method.aggregate(torch.arange(4), torch.zeros(4, 8), torch.zeros(4, 3, 8), probs[method.knn])
    assert torch.allclose(d[1], probs[0])  # only its one training neighbour counts
    assert torch.allclose(d[0], probs[[1, 2, 3]].mean(0), atol=1e-6)  # the others average all three


def test_bad_neighbour_mode():
    with pytest.raises(UsageError, match="train.ldlva.neighbour_mode 'psychic': use one of bank, forward"):
        LDLVAOptions(neighbour_mode="psychic")


@pytest.mark.cuda
@pytest.mark.parametrize("mode", ["bank", "forward"])
def test_every_neighbour_mode_runs_on_cuda(mode):
    device = torch.device("cuda")
    model = build_backbone("small_cnn", C).to(device)
    method, labels = _method(mode, dim=model.embed_dim)
    method.to(device)
    images = torch.randn(N, 3, 32, 32, device=device)
    method.start_epoch(
        torch.randn(N, model.embed_dim, device=device), torch.softmax(torch.randn(N, C, device=device), 1)
    )
    index = torch.tensor([0, 5, 7, 9], device=device)
    batch = Batch(index=index, x=images[index], y=labels.to(device)[index], fetch=lambda pos: images[pos])
    method.batch_loss(model, batch).backward()


@pytest.mark.parametrize("mode", ["bank", "forward"])
def test_neighbours_from_the_prior_bring_its_posteriors(mode):
    """neighbours: prior -> the aggregate is built from the out-of-fold posteriors, not the network's."""
    model = build_backbone("small_cnn", C)
    prior = torch.softmax(torch.randn(N, C, generator=torch.Generator().manual_seed(5)) * 3, 1)
    method, labels = _method(mode, dim=model.embed_dim, prior=prior, neighbours="prior")
    method.start_epoch(torch.randn(N, model.embed_dim), torch.full((N, C), 1 / C))
    images = torch.randn(N, 3, 32, 32)
    index = torch.tensor([0, 5])
    batch = Batch(index=index, x=images[index], y=labels[index], fetch=lambda pos: images[pos])
    _, probs = method._neighbours(model, batch)
    assert torch.allclose(probs, prior[method.knn[index]])
    with pytest.raises(FerdataError, match="run `ferdata prior`"):
        _method(mode, neighbours="prior")


def test_trust_can_start_at_the_priors_belief_in_the_label():
    prior = torch.softmax(torch.randn(N, C, generator=torch.Generator().manual_seed(6)) * 3, 1)
    method, labels = _method(prior=prior, trust_init="prior")
    believed = prior[torch.arange(N), labels].clamp(0.02, 0.98)
    assert torch.allclose(method.lambdas(), believed, atol=1e-6)
    constant, _ = _method(prior=prior)  # the default ignores the prior
    assert torch.allclose(constant.lambdas(), torch.sigmoid(torch.tensor(0.5)))


def test_ldlva_trains_end_to_end(trained_dir, tmp_path):
    cfg = TrainSettings(
        method="ldlva", epochs=2, batch_size=8, image_size=32, lr=0.01, ldlva=LDLVAOptions(lambda_lr=50.0)
    )
    train(trained_dir, tmp_path, cfg)
    soft, meta = read_table(tmp_path / "learned.parquet", "learned")
    soft = soft[soft["split"] == "train"]
    dist = np.stack(soft["distribution"].to_numpy())
    assert meta["method"] == "ldlva" and np.allclose(dist.sum(1), 1, atol=1e-5)
    assert soft["uncertainty"].between(0, 1).all() and soft["uncertainty"].std() > 0
