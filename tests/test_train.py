import json
import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch

from ferdata.core.classes import class_index
from ferdata.core.errors import FerdataError, UsageError
from ferdata.core.settings import resolve
from ferdata.core.tables import TABLES
from ferdata.train import loop
from ferdata.train.backbones import build_backbone
from ferdata.train.loop import load_checkpoint, run_epoch, sgd, to_input, train
from ferdata.train.methods import MethodContext, build_method
from ferdata.train.settings import LSOptions, TrainSettings

CHECKPOINT = TABLES["model"].file


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
    ls = build_method("ls", MethodContext(3, 8, labels=y, options=LSOptions(smoothing=0.3))).loss(logits, y)
    assert ce.item() < 1e-6 < ls.item() and torch.isfinite(ls)
    with pytest.raises(FerdataError, match="unknown train.method"):
        build_method("magic", ctx)
    with pytest.raises(FerdataError, match="needs the VA table"):
        build_method("ldlva", ctx)
    with pytest.raises(UsageError, match="unknown setting 'train.ls.smooth'; did you mean train.ls.smoothing"):
        resolve(TrainSettings, {"train": {"ls": {"smooth": 0.3}}})
    with pytest.raises(UsageError, match=r"train.ls.smoothing must be in \[0.0, 1.0\)"):
        resolve(TrainSettings, {"train": {"ls": {"smoothing": 1.0}}})


def test_trained_checkpoint(trained_dir):
    model, meta = load_checkpoint(trained_dir / "models" / CHECKPOINT, torch.device("cpu"))
    assert meta["method"] == "ce" and len(meta["classes"]) == 7
    raw = torch.load(trained_dir / "models" / CHECKPOINT, weights_only=True)
    assert set(raw) == {"state_dict", "method_state", "meta"}
    with torch.no_grad():
        probs = torch.softmax(model(to_input(np.zeros((3, 32, 32, 3), np.uint8), torch.device("cpu"))), 1).numpy()
    assert probs.shape == (3, 7) and np.allclose(probs.sum(1), 1)
    log = json.loads((trained_dir / "models" / "train_log.json").read_text())
    assert len(log["epochs"]) == 2 and all(np.isfinite(e["loss"]) for e in log["epochs"])


def test_train_is_deterministic(trained_dir, tmp_path):
    train(trained_dir, tmp_path, TrainSettings(epochs=2, batch_size=8, image_size=32, lr=0.01))
    assert (tmp_path / CHECKPOINT).read_bytes() == (trained_dir / "models" / CHECKPOINT).read_bytes()
    assert (tmp_path / "learned.parquet").read_bytes() == (trained_dir / "models" / "learned.parquet").read_bytes()


def test_train_needs_enough_planned_epochs(trained_dir, tmp_path):
    with pytest.raises(FerdataError, match="re-run `ferdata sample`"):
        train(trained_dir, tmp_path, TrainSettings(epochs=5, batch_size=8, image_size=32))


@pytest.mark.parametrize("method", ["ls", "arbex", "akt"])
def test_every_method_trains_and_learns_distributions(trained_dir, tmp_path, method):
    from ferdata.core.io import read_table

    train(trained_dir, tmp_path, TrainSettings(method=method, epochs=2, batch_size=8, image_size=32, lr=0.01))
    learned, meta = read_table(tmp_path / "learned.parquet", "learned")
    labels, _ = read_table(trained_dir / "labels.parquet", "labels")
    assert meta["method"] == method and learned["sample_id"].tolist() == labels["sample_id"].tolist()
    dist = np.stack(learned["distribution"].to_numpy())
    assert np.isfinite(dist).all() and (dist >= 0).all()  # (they sum to 1 by construction: not a check)
    assert np.ptp(dist, axis=0).max() > 1e-6  # faces get different distributions (calibration may flatten them)
    assert learned["uncertainty"].between(0, 1).all()
    if method != "akt":  # ls, arbex: the uncertainty is the distribution's normalised entropy (akt: its own u)
        from ferdata.core.classes import normalised_entropy

        assert np.allclose(learned["uncertainty"], normalised_entropy(dist), atol=1e-5)


def test_a_non_finite_loss_stops_training_and_publishes_nothing(trained_dir, tmp_path):
    with pytest.raises(FerdataError, match="the loss became (nan|inf).*nothing was written. Lower train.lr"):
        train(trained_dir, tmp_path, TrainSettings(epochs=2, batch_size=8, image_size=32, lr=1e12))
    assert [p.name for p in tmp_path.iterdir()] == [".ferdata.lock"]  # the lock file only: nothing published
    with pytest.raises(UsageError, match="train.lr must be a finite number"):
        TrainSettings(lr=float("nan"))


def test_bf16_with_augmentation_on_the_device_trains(trained_dir, tmp_path, monkeypatch):
    """The GPU path (autocast body, kornia views of two_view batches) run on the CPU: a CUDA run does the same
    on its device."""
    import pandas as pd

    from ferdata.train import loop

    engine = loop.Engine(torch.device("cpu"), "bf16", augment_on_device=True)
    monkeypatch.setattr(loop, "make_engine", lambda cfg: engine)
    out = train(trained_dir, tmp_path, TrainSettings(method="akt", epochs=1, batch_size=8, image_size=32, lr=0.01))
    assert all(np.isfinite(e["loss"]) for e in out["epochs"]) and engine._augment is not None
    learned = pd.read_parquet(tmp_path / "learned.parquet")
    assert np.allclose(np.stack(learned["distribution"]).sum(1), 1)
    assert np.isfinite(learned["uncertainty"]).all()


@pytest.mark.parametrize("method", ["ce", "ls", "ldlva", "arbex", "akt"])
def test_a_training_step_reads_nothing_back_from_the_device(trained_dir, tmp_path, monkeypatch, method, host_reads):
    """Issue 16: a step that reads a value back makes the host wait for the GPU, so it can never queue the
    next step while this one runs. On the CPU the reads are recorded instead (the CUDA test counts them)."""
    reads: list[str] = []
    real = loop.run_epoch

    def watched(loader, step_loss, *args, **kwargs):
        def step(batch):
            with host_reads() as mode:
                loss = step_loss(batch)
            reads.extend(mode.calls)
            return loss

        return real(loader, step, *args, **kwargs)

    monkeypatch.setattr(loop, "run_epoch", watched)
    train(trained_dir, tmp_path, TrainSettings(method=method, epochs=1, batch_size=8, image_size=32, lr=0.01))
    assert reads == []


def test_run_epoch_reads_the_losses_back_every_few_steps(monkeypatch, host_reads):
    monkeypatch.setattr(loop, "LOSS_READ_EVERY", 4)
    w = torch.nn.Parameter(torch.ones(()))
    values = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]
    batches = [{"position": torch.arange(1 + i % 2), "loss": torch.tensor(v)} for i, v in enumerate(values)]
    opt, sched = sgd([w], lr=0.0, weight_decay=0.0, total_steps=20)
    with host_reads() as mode:
        mean = run_epoch(batches, lambda b: w * b["loss"], [opt], sched, quiet=True)
    sizes = [1 + i % 2 for i in range(10)]
    assert mean == pytest.approx(np.dot(values, sizes) / sum(sizes))
    assert mode.calls.count("tolist") == 3  # after steps 4 and 8, and the last two at the end
    batches[6]["loss"] = torch.tensor(float("nan"))  # step 7, after 1+2+1+2+1+2 = 9 samples
    with pytest.raises(FerdataError, match="the loss became nan after 9 samples; nothing was written"):
        run_epoch(batches, lambda b: w * b["loss"], [opt], sched, quiet=True)


@pytest.mark.cuda
@pytest.mark.parametrize("method", ["ce", "ldlva", "akt"])
def test_cuda_training_passes_never_wait_for_the_device(trained_dir, tmp_path, monkeypatch, method):
    """The real check behind the CPU one: CUDA's sync debug mode warns at every call that waits for the
    GPU. A training pass on the default path (kornia views included) waits once, at its end, to read
    its losses back."""
    monkeypatch.setattr(loop, "LOSS_READ_EVERY", 10**9)
    real, waits = loop.run_epoch, []

    def watched(*args, **kwargs):
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                out = real(*args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        waits.append([f"{w.filename}:{w.lineno}" for w in caught if "synchroniz" in str(w.message)])
        return out

    monkeypatch.setattr(loop, "run_epoch", watched)
    train(trained_dir, tmp_path, TrainSettings(method=method, epochs=2, batch_size=8, image_size=32, lr=0.01))
    assert [len(w) for w in waits] == [1, 1], waits  # the sites that waited, when it fails


@pytest.mark.cuda
@pytest.mark.parametrize("method", ["ldlva", "arbex"])
def test_cuda_training_is_repeatable(trained_dir, tmp_path, method):
    """Same params and seed, byte-identical tables, on the GPU too (deterministic algorithms, a fixed
    cuBLAS workspace, kornia views seeded per batch, ARBEx's attention off the fused kernels)."""
    import pandas as pd

    cfg = TrainSettings(method=method, epochs=2, batch_size=8, image_size=32, lr=0.01)
    tables = []
    for run in ("a", "b"):
        train(trained_dir, tmp_path / run, cfg)
        tables.append(pd.read_parquet(tmp_path / run / "learned.parquet"))
    a, b = tables
    assert np.array_equal(np.stack(a["distribution"]), np.stack(b["distribution"]))
    assert np.array_equal(a["uncertainty"], b["uncertainty"])


def test_calibration_changes_the_distributions_not_the_model(trained_dir, tmp_path):
    """The calibration is fitted after training on the validation faces: the weights are those of an
    uncalibrated run, the validation NLL is no worse, and a reloaded model predicts the calibrated
    distributions."""
    from ferdata.core.io import read_table
    from ferdata.core.shards import shard_paths
    from ferdata.loader import ShardFaces
    from ferdata.train.loop import load_trained

    cfg = TrainSettings(epochs=2, batch_size=8, image_size=32, lr=0.01)
    train(trained_dir, tmp_path / "raw", replace(cfg, calibration="none"))
    train(trained_dir, tmp_path / "cal", cfg)
    raw_ckpt = torch.load(tmp_path / "raw" / CHECKPOINT, weights_only=True)
    cal_ckpt = torch.load(tmp_path / "cal" / CHECKPOINT, weights_only=True)
    assert all(torch.equal(raw_ckpt["state_dict"][k], v) for k, v in cal_ckpt["state_dict"].items())
    labels, meta = read_table(trained_dir / "labels.parquet", "labels")
    out = {}
    for name in ("raw", "cal"):
        learned, lmeta = read_table(tmp_path / name / "learned.parquet", "learned")
        out[name] = (learned, lmeta["calibration"])
    assert out["raw"][1]["mode"] == "none" and out["cal"][1]["mode"] == "prior_temperature"
    val = (labels["split"] == "val").to_numpy()
    given = class_index(labels["label"].to_numpy()[val], meta["classes"])

    def nll(learned):
        p = np.stack(learned["distribution"].to_numpy())[val]
        return -np.log(p[np.arange(len(p)), given]).mean()

    assert nll(out["cal"][0]) <= nll(out["raw"][0]) + 1e-6
    assert not np.allclose(np.stack(out["cal"][0]["distribution"]), np.stack(out["raw"][0]["distribution"]))
    test = out["cal"][0][out["cal"][0]["split"] == "test"]
    faces = ShardFaces(shard_paths(trained_dir / "shards"), test["sample_id"], size=32)
    probs = load_trained(tmp_path / "cal" / CHECKPOINT, torch.device("cpu")).predict(faces.images(np.arange(len(test))))
    assert np.allclose(probs.numpy(), np.stack(test["distribution"]), atol=1e-5)
