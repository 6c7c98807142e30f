import json

import numpy as np
import pytest
import torch

from ferdata.errors import FerdataError
from ferdata.train.backbones import build_backbone
from ferdata.train.loop import CHECKPOINT, TrainConfig, augment, load_checkpoint, predict, train
from ferdata.train.methods import MethodContext, build_method


@pytest.mark.parametrize("name", ["small_cnn", "resnet18"])
def test_backbones_forward_backward(name):
    model = build_backbone(name, 7)
    x = torch.randn(2, 3, 32, 32)
    logits = model(x)
    assert logits.shape == (2, 7) and model.forward_features(x).shape == (2, model.embed_dim)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_initial_weights_from_local_file_only(tmp_path):
    src = build_backbone("small_cnn", 5)
    torch.save(src.state_dict(), tmp_path / "w.pt")
    model = build_backbone("small_cnn", 7, weights=tmp_path / "w.pt")
    assert torch.equal(model.body[0][0].weight, src.body[0][0].weight)
    with pytest.raises(FerdataError, match="not found"):
        build_backbone("small_cnn", 7, weights=tmp_path / "none.pt")
    with pytest.raises(FerdataError, match="unknown train.backbone"):
        build_backbone("vgg", 7)


def test_methods():
    logits = torch.tensor([[10.0, -10.0, -10.0]], requires_grad=True)
    y = torch.tensor([0])
    ctx = MethodContext(3, 8, labels=y)
    ce = build_method("ce", ctx).loss(logits, y)
    ls = build_method("ls", MethodContext(3, 8, labels=y, options={"smoothing": 0.3})).loss(logits, y)
    assert ce.item() < 1e-6 < ls.item() and torch.isfinite(ls)
    with pytest.raises(FerdataError, match="unknown train.method"):
        build_method("magic", ctx)
    with pytest.raises(FerdataError, match="needs the VA table"):
        build_method("ldlva", ctx)
    with pytest.raises(FerdataError, match="bad train.ls option"):
        build_method("ls", MethodContext(3, 8, labels=y, options={"smooth": 0.3}))


def test_augment_keeps_shape_and_is_seeded():
    x = torch.randn(4, 3, 16, 16)
    a = augment(x, torch.Generator().manual_seed(0))
    b = augment(x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b)


def test_trained_checkpoint(trained_dir):
    model, meta = load_checkpoint(trained_dir / "models" / CHECKPOINT, torch.device("cpu"))
    assert meta["method"] == "ce" and len(meta["classes"]) == 7
    raw = torch.load(trained_dir / "models" / CHECKPOINT, weights_only=True)
    assert set(raw) == {"state_dict", "meta"}
    probs = predict(model, np.zeros((3, 32, 32, 3), np.uint8), torch.device("cpu"))
    assert probs.shape == (3, 7) and np.allclose(probs.sum(1), 1)
    log = json.loads((trained_dir / "models" / "train_log.json").read_text())
    assert len(log["epochs"]) == 2 and all(np.isfinite(e["loss"]) for e in log["epochs"])


def test_train_is_deterministic(trained_dir, tmp_path):
    train(trained_dir, tmp_path, TrainConfig(epochs=2, batch_size=8, image_size=32, lr=0.01))
    assert (tmp_path / CHECKPOINT).read_bytes() == (trained_dir / "models" / CHECKPOINT).read_bytes()
    assert (tmp_path / "train_soft.parquet").read_bytes() == (trained_dir / "models" / "train_soft.parquet").read_bytes()


def test_train_needs_enough_planned_epochs(trained_dir, tmp_path):
    with pytest.raises(FerdataError, match="re-run `ferdata sample`"):
        train(trained_dir, tmp_path, TrainConfig(epochs=5, batch_size=8, image_size=32))
