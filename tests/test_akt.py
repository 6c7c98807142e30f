import pytest
import torch
import torch.nn.functional as F

from ferdata.core.errors import FerdataError
from ferdata.train.backbones import build_backbone
from ferdata.train.methods import Batch, MethodContext, build_method
from ferdata.train.methods.akt import adaptive_targets, attention_map, symmetric_kl

C = 4


def test_symmetric_kl():
    p = torch.tensor([[0.5, 0.5]])
    assert symmetric_kl(p, p).item() == pytest.approx(0.0, abs=1e-7)
    q = torch.tensor([[0.9, 0.1]])
    assert symmetric_kl(p, q).item() == pytest.approx(symmetric_kl(q, p).item()) and symmetric_kl(p, q) > 0
    one_hot = torch.tensor([[1.0, 0.0]])
    assert torch.isfinite(symmetric_kl(one_hot, q))


def test_attention_map_is_unit_norm():
    a = attention_map(torch.randn(3, 8, 4, 4))
    assert a.shape == (3, 16) and torch.allclose(a.norm(dim=1), torch.ones(3))


def test_forward_backward_reaches_both_branches():
    method = build_method("akt", MethodContext(C, 256, torch.zeros(2, dtype=torch.long)))
    model = build_backbone("small_cnn", C)
    x = torch.randn(4, 3, 32, 32)
    loss = method.batch_loss(model, Batch(index=torch.arange(4), x=x, y=torch.tensor([0, 1, 2, 3]), x_strong=x + 0.3))
    loss.backward()
    assert torch.isfinite(loss)
    assert model.body[0][0].weight.grad.abs().sum() > 0 and method.branch.body[0][0].weight.grad.abs().sum() > 0
    method.eval()
    model.eval()
    feats, fused = method.infer(model, x)
    assert (
        feats.shape[0] == 4
        and feats.shape[1] > model.embed_dim
        and torch.allclose(fused.sum(1), torch.ones(4), atol=1e-5)
    )
    with pytest.raises(FerdataError, match="strong view"):
        method.batch_loss(model, Batch(index=torch.arange(4), x=x, y=torch.zeros(4, dtype=torch.long)))


def test_adaptive_target_leaves_the_label_only_where_both_branches_agree_against_it():
    y = torch.tensor([0, 0, 0])
    att = F.normalize(torch.ones(3, 4), dim=1)
    p_a = torch.tensor([[0.05, 0.9, 0.05, 0.0], [0.05, 0.9, 0.05, 0.0], [0.9, 0.05, 0.05, 0.0]])
    p_b = torch.tensor([[0.05, 0.9, 0.05, 0.0], [0.05, 0.05, 0.9, 0.0], [0.9, 0.05, 0.05, 0.0]])
    t, beta = adaptive_targets(p_a, p_b, att, att, y)
    assert beta[0] > 0.8 and t[0].argmax() == 1  # agree against the label: the target moves
    assert beta[1] < beta[0] / 2 and t[1].argmax() == 0  # they disagree with each other: it stays
    assert beta[2] <= 0.1 + 1e-6 and t[2].argmax() == 0  # they agree with the label: nothing to move
    assert torch.allclose(t.sum(1), torch.ones(3))
    far = F.normalize(torch.eye(4)[:3], dim=1)  # the branches look at different places (feature space)
    _, beta_far = adaptive_targets(p_a, p_b, far, far.roll(1, 0), y)
    assert beta_far[0] < 1e-6
    _, cold = adaptive_targets(p_a, p_b, att, att, y, ramp=0.0)
    assert (cold == 0).all()  # before the warm-up, the given labels


def test_floor_keeps_the_ambiguity_the_branches_agree_on_but_not_their_uncertainty():
    y = torch.tensor([0, 0, 0])
    att = F.normalize(torch.ones(3, 4), dim=1)
    p_a = torch.tensor([[0.6, 0.4, 0.0, 0.0], [0.6, 0.4, 0.0, 0.0], [0.05, 0.9, 0.05, 0.0]])
    p_b = torch.tensor([[0.6, 0.4, 0.0, 0.0], [0.0, 0.0, 0.4, 0.6], [0.05, 0.9, 0.05, 0.0]])
    t0, u0 = adaptive_targets(p_a, p_b, att, att, y)
    t, u = adaptive_targets(p_a, p_b, att, att, y, floor=0.5)
    assert torch.allclose(t[0], torch.tensor([0.8, 0.2, 0.0, 0.0]))  # agreed, with the label: half to their belief
    assert torch.allclose(t0[0], torch.tensor([0.84, 0.16, 0.0, 0.0]))  # without the floor: beta = 1 - 0.6
    assert torch.allclose(u, u0)  # the uncertainty is still the evidence against the label
    assert t[1, 0] > 0.9  # the branches disagree: the floor adds (almost) nothing
    assert torch.allclose(t[2], t0[2])  # agreed against the label: that move is already past the floor
    _, cold = adaptive_targets(p_a, p_b, att, att, y, ramp=0.0, floor=0.5)
    assert (cold == 0).all()


def test_both_branches_start_from_the_given_weights(tmp_path):
    src = build_backbone("small_cnn", C)
    path = tmp_path / "w.pt"
    torch.save(src.state_dict(), path)
    method = build_method("akt", MethodContext(C, 256, torch.zeros(2, dtype=torch.long), weights=str(path)))
    first = "body.0.0.weight"
    assert torch.equal(method.branch.state_dict()[first], src.state_dict()[first])


def test_checkpoint_reloads_both_branches_and_predicts_as_training_did(trained_dir, tmp_path):
    import numpy as np
    import pandas as pd

    from ferdata.core.shards import shard_paths
    from ferdata.loader import ShardFaces
    from ferdata.train.loop import load_trained, to_input, train
    from ferdata.train.settings import TrainSettings

    train(trained_dir, tmp_path, TrainSettings(method="akt", epochs=2, batch_size=8, image_size=32, lr=0.01))
    raw = torch.load(tmp_path / "model.pt", weights_only=True)
    assert any(k.startswith("branch.") for k in raw["method_state"])
    trained = load_trained(tmp_path / "model.pt", torch.device("cpu"))
    assert torch.equal(trained.method.branch.head.weight, raw["method_state"]["branch.head.weight"])
    learned = pd.read_parquet(tmp_path / "learned.parquet")
    test = learned[learned["split"] != "train"]
    faces = ShardFaces(shard_paths(trained_dir / "shards"), test["sample_id"], size=32)
    images = faces.images(np.arange(len(test)))
    probs = trained.predict(images).numpy()
    assert np.allclose(probs, np.stack(test["distribution"]), atol=1e-5)  # both branches, fused
    with torch.no_grad():
        branch_a = torch.softmax(trained.model(to_input(images, torch.device("cpu"))), 1).numpy()
    assert not np.allclose(branch_a, probs, atol=1e-3)  # branch A alone is not what training predicted
