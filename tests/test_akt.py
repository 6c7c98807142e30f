import pytest
import torch

from ferdata.core.errors import FerdataError
from ferdata.train.backbones import build_backbone
from ferdata.train.methods import Batch, MethodContext, build_method
from ferdata.train.methods.akt import attention_map, symmetric_kl

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
    assert feats.shape == (4, model.embed_dim) and torch.allclose(fused.sum(1), torch.ones(4), atol=1e-5)
    with pytest.raises(FerdataError, match="strong view"):
        method.batch_loss(model, Batch(index=torch.arange(4), x=x, y=torch.zeros(4, dtype=torch.long)))
