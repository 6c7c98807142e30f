import numpy as np
import pytest
import torch

from ferdata.core.errors import UsageError
from ferdata.train.backbones import build_backbone
from ferdata.train.engine import Engine, resolve_augment_device, resolve_precision, to_input
from ferdata.train.loop import run_epoch, sgd

CPU = torch.device("cpu")


def test_resolution_on_a_cpu():
    assert resolve_precision("auto", CPU) == "fp32" and resolve_precision("bf16", CPU) == "bf16"
    assert resolve_augment_device("auto", CPU) is False and resolve_augment_device("cpu", CPU) is False
    with pytest.raises(UsageError, match="needs a GPU"):
        resolve_augment_device("cuda", CPU)
    with pytest.raises(UsageError, match="train.precision 'fp8'"):
        resolve_precision("fp8", CPU)
    engine = Engine.create(CPU)
    assert (engine.precision, engine.augment_on_device, engine.scaler()) == ("fp32", False, None)
    assert engine.describe() == {
        "device": "cpu",
        "precision": "fp32",
        "channels_last": False,
        "compile": False,
        "augment_device": "cpu",
    }
    assert Engine.create(CPU, precision="bf16", compile=True).describe()["compile"] is True


def test_fp32_path_is_unchanged():
    torch.manual_seed(0)
    plain = build_backbone("small_cnn", 7).eval()
    prepared = Engine.create(CPU).prepare(build_backbone("small_cnn", 7).eval())
    prepared.load_state_dict(plain.state_dict())
    x = to_input(np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3), dtype=np.uint8), CPU)
    assert prepared.amp_dtype is None and torch.equal(prepared(x), plain(x))


@pytest.mark.parametrize("precision,dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_autocast_runs_the_body_at_low_precision_and_returns_float32(precision, dtype):
    torch.manual_seed(0)
    reference = build_backbone("small_cnn", 7).eval()
    model = Engine(CPU, precision).prepare(build_backbone("small_cnn", 7).eval())
    model.load_state_dict(reference.state_dict())
    seen = []
    model.body[0][0].register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    x = torch.randn(4, 3, 32, 32)
    feats, logits = model.forward_features(x), model(x)
    assert seen[0] == dtype and feats.dtype == logits.dtype == torch.float32
    assert torch.allclose(logits, reference(x), atol=0.1)  # the same network, rounded


def test_fp16_steps_through_the_grad_scaler():
    torch.manual_seed(0)
    engine = Engine(CPU, "fp16")
    model = engine.prepare(build_backbone("small_cnn", 3))
    opt, sched = sgd(model.parameters(), lr=0.01, weight_decay=0.0, total_steps=4)
    before = model.head.weight.detach().clone()
    batches = [{"position": torch.arange(8), "x": torch.randn(8, 3, 32, 32), "y": torch.arange(8) % 3}] * 4
    scaler = engine.scaler()
    loss = run_epoch(
        batches, lambda b: torch.nn.functional.cross_entropy(model(b["x"]), b["y"]), [opt], sched, scaler=scaler
    )
    assert isinstance(scaler, torch.amp.GradScaler) and np.isfinite(loss)
    assert not torch.equal(before, model.head.weight)


def test_compile_keeps_the_state_dict_names():
    torch.manual_seed(0)
    plain = build_backbone("small_cnn", 7).eval()
    model = build_backbone("small_cnn", 7).eval()
    model.load_state_dict(plain.state_dict())
    model.compile_body(backend="eager")  # the wiring; inductor itself takes a minute to build on a CPU
    x = torch.randn(2, 3, 32, 32)
    assert list(model.state_dict()) == list(plain.state_dict()) and torch.allclose(model(x), plain(x))


def test_device_augmentation_views(shards_dir):
    from ferdata.core.shards import member_table, shard_paths
    from ferdata.loader import PlanBatches, ShardFaces, batches

    shards = shard_paths(shards_dir / "shards")
    faces = ShardFaces(shards, member_table(shards)["sample_id"], size=32)
    sampler = PlanBatches([np.arange(16)], batch_size=8, augment="none", seed=3)
    batch = next(iter(batches(faces, sampler)))
    engine = Engine(CPU, augment_on_device=True)
    one, two = engine.views(batch, "two_view"), engine.views(batch, "two_view")
    assert set(one) == {"image", "strong"} and one["image"].shape == (8, 3, 32, 32)
    assert torch.equal(one["strong"], two["strong"])  # seeded by the request
    plain = Engine(CPU).views(batch, "weak")  # the workers' path: the loader already augmented
    assert torch.equal(plain["image"], to_input(batch["image"], CPU))


@pytest.mark.cuda
@pytest.mark.parametrize("method", ["ce", "ls", "ldlva", "arbex", "akt"])
def test_cuda_default_path_trains_every_method(trained_dir, tmp_path, method):
    """On a GPU the defaults are autocast (bf16 or fp16), channels_last and kornia views on the device."""
    import pandas as pd

    from ferdata.train.loop import make_engine, train
    from ferdata.train.settings import TrainSettings

    cfg = TrainSettings(method=method, epochs=2, batch_size=8, image_size=32, lr=0.01)
    engine = make_engine(cfg)
    assert engine.precision in ("bf16", "fp16") and engine.augment_on_device
    out = train(trained_dir, tmp_path, cfg)
    assert all(np.isfinite(e["loss"]) for e in out["epochs"])
    learned = pd.read_parquet(tmp_path / "learned.parquet")
    assert np.allclose(np.stack(learned["distribution"]).sum(1), 1)
    from ferdata.core.io import read_table

    _, meta = read_table(tmp_path / "learned.parquet", "learned")
    assert meta["engine"] == {**engine.describe(), "world_size": 1} and meta["engine"]["channels_last"]


@pytest.mark.cuda
def test_cuda_batch_augment_is_seeded_on_the_device():
    from ferdata.augment import BatchAugment

    aug = BatchAugment().cuda()
    x = torch.rand(16, 3, 32, 32, device="cuda").contiguous(memory_format=torch.channels_last)
    a, b = aug(x, "two_view", 9), aug(x, "two_view", 9)
    assert a["image"].is_cuda and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.cuda
def test_cuda_fp16_trains_through_the_grad_scaler(trained_dir, tmp_path):
    from ferdata.train.loop import train
    from ferdata.train.settings import TrainSettings

    out = train(trained_dir, tmp_path, TrainSettings(epochs=2, batch_size=8, image_size=32, lr=0.01, precision="fp16"))
    assert all(np.isfinite(e["loss"]) for e in out["epochs"])


@pytest.mark.cuda
def test_cuda_prior_and_regressor_take_the_default_gpu_path(data_dir):
    from ferdata.noise import noise
    from ferdata.sample import sample
    from ferdata.train.prior import prior
    from ferdata.train.regress import regress

    noise(data_dir, ratio=0.25, seed=1)
    sample(data_dir, epochs=1, per_video=3)
    table = prior(data_dir, folds=2, epochs=1, train={"batch_size": 8, "image_size": 32, "lr": 0.01})
    assert np.allclose(np.stack(table["distribution"].to_numpy()).sum(1), 1, atol=1e-4)
    va = regress(data_dir, folds=2, epochs=1, batch_size=8, image_size=32)[["valence", "arousal"]].to_numpy()
    assert np.isfinite(va).all()


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["resnet18_tv", "resnet50_tv"])
def test_cuda_torchvision_layout_steps_in_bf16_channels_last(name):
    engine = Engine.create(torch.device("cuda"))
    model = engine.prepare(build_backbone(name, 7)).train()
    x = torch.randn(8, 3, 64, 64, device="cuda").contiguous(memory_format=torch.channels_last)
    logits = model(x)
    logits.logsumexp(1).mean().backward()
    assert logits.dtype == torch.float32 and torch.isfinite(model.head.weight.grad).all()


@pytest.mark.cuda
def test_cuda_compile_trains_with_inductor(trained_dir, tmp_path):
    """The CPU test compiles with the eager backend; here inductor builds real GPU kernels."""
    from ferdata.train.loop import train
    from ferdata.train.settings import TrainSettings

    out = train(trained_dir, tmp_path, TrainSettings(epochs=1, batch_size=8, image_size=32, lr=0.01, compile=True))
    assert np.isfinite(out["epochs"][0]["loss"])
