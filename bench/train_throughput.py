"""Training throughput, every piece against the others in one process (issue 16).

On the machine it runs on (CUDA when present, else the CPU), with one backbone, image size and batch:

- ``step_fp32``: the training step alone (forward, CE, backward, SGD) on random tensors already on the
  device, fp32, under deterministic algorithms as the trainer runs; ``step_<p>``: the same at each other
  precision the device runs (bf16, fp16 on CUDA; bf16 on a CPU, for information);
  ``step_<auto>_nondeterministic``: the chosen precision with any algorithm allowed (what determinism costs);
- ``loader_workers_<mode>``: ``ShardFaces`` + ``PlanBatches`` alone through a DataLoader with
  ``--workers`` workers, augment none / weak / strong / two_view (albumentations in the workers);
- ``loader_device_<mode>``: the loader with augment none plus ``BatchAugment`` (kornia) on the device,
  the path ``train.augment_device`` takes on a GPU;
- ``augment_ms_<mode>``: ``BatchAugment`` alone on a batch already on the device, milliseconds per batch;
- ``e2e_<method>_<path>``: ``ferdata.train.loop.train`` on the dataset's plan, faces per second of the
  training passes after the first epoch (the issue's measure: an epoch's rate once running; the first
  pays start-up, cuDNN's first calls and kornia's), ``..._all_epochs`` over every pass; validation, the
  memory bank's refresh and the final table are not counted. Path ``fp32_workers`` is the trainer before
  issue 16 (fp32, augmentation in the workers), ``default`` what ``precision: auto`` and
  ``augment_device: auto`` choose here, and on CUDA ``auto_workers`` the chosen precision with the
  augmentation left in the workers (which place keeps up better at that precision);
- ratios: every end-to-end rate over the step-alone rate at its precision, and each precision and
  augmentation path over the old one.

Usage (after `dvc repro` has built data/synth; on a GPU give the paper settings):
    python bench/train_throughput.py --data data/synth
    python bench/train_throughput.py --data .devdata/ferplus --backbone resnet18 --batch 128 --workers 12 --epochs 3
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from _common import save_and_print

from ferdata.augment import BatchAugment
from ferdata.core.io import locate, read_table
from ferdata.core.shards import shard_paths
from ferdata.loader import PlanBatches, ShardFaces, batches
from ferdata.train.backbones import build_backbone
from ferdata.train.engine import Engine, normalise, unit_images
from ferdata.train.loop import select_device, train
from ferdata.train.settings import TrainSettings


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_rate(backbone: str, size: int, batch: int, steps: int, engine: Engine, *, deterministic: bool = True) -> float:
    """Images/s of the training step alone on random tensors already on the device (with deterministic
    algorithms, as ``fit`` asks for, unless told otherwise)."""
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    try:
        return timed_steps(backbone, size, batch, steps, engine)
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def timed_steps(backbone: str, size: int, batch: int, steps: int, engine: Engine) -> float:
    torch.manual_seed(0)
    model = engine.prepare(build_backbone(backbone, 7)).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scaler = engine.scaler()
    fmt = torch.channels_last if engine.device.type == "cuda" else torch.contiguous_format
    x = torch.randn(batch, 3, size, size, device=engine.device).contiguous(memory_format=fmt)
    y = torch.randint(0, 7, (batch,), device=engine.device)

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

    for _ in range(3):  # warm-up (cudnn autotune, compile)
        step()
    sync(engine.device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(engine.device)
    return steps * batch / (time.perf_counter() - start)


def augment_ms(aug: BatchAugment, batch: int, size: int, device: torch.device, repeats: int) -> dict[str, float]:
    """Milliseconds per batch of the device augmentation alone, per mode, on a batch already there."""
    x = unit_images(torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8), device)
    out = {}
    for mode in ("weak", "strong", "two_view"):
        aug(x, mode, 0)  # warm-up
        sync(device)
        start = time.perf_counter()
        for seed in range(repeats):
            aug(x, mode, seed)
        sync(device)
        out[f"augment_ms_{mode}"] = (time.perf_counter() - start) / repeats * 1e3
    return out


def plan_epochs(data: Path, n: int, size: int) -> tuple[ShardFaces, list[np.ndarray]]:
    """The training faces and enough shuffled passes over them for ``n`` samples, as one loader epoch."""
    labels, _ = read_table(locate(data, "labels.parquet"), "labels")
    ids = labels.loc[labels["split"] == "train", "sample_id"].tolist()
    faces = ShardFaces(shard_paths(locate(data, "shards")), ids, size=size)
    rng = np.random.default_rng(0)
    order = np.concatenate([rng.permutation(len(ids)) for _ in range(n // len(ids) + 1)])[:n]
    return faces, [order]


def loader_rate(
    faces: ShardFaces,
    order: list[np.ndarray],
    *,
    batch: int,
    workers: int,
    augment: str,
    device_aug: BatchAugment | None,
    device: torch.device,
) -> float:
    """Faces/s through the loader (and the device augmentation when given), after the first batch."""
    sampler = PlanBatches(order, batch_size=batch, augment="none" if device_aug else augment, seed=0)
    seen, start = 0, None
    for b in batches(faces, sampler, workers=workers, pin_memory=device.type == "cuda"):
        if device_aug is not None:
            views = device_aug(unit_images(b["image"], device), augment, int(b["seed"]))
            _ = {k: normalise(v) for k, v in views.items()}
        else:
            _ = b["image"].to(device, non_blocking=True)
        if start is None:  # the clock starts after the first batch (worker start-up is paid once per run)
            sync(device)
            start = time.perf_counter()
            continue
        seen += len(b["position"])
    sync(device)
    return seen / (time.perf_counter() - start)


def e2e_rates(data: Path, cfg: TrainSettings) -> tuple[float, float]:
    """Faces/s of the training passes after the first epoch, and over all of them."""
    with tempfile.TemporaryDirectory() as tmp:
        out = train(data, tmp, cfg)
    seconds, samples = out["epoch_seconds"], out["epoch_samples"]
    after = slice(1, None) if len(seconds) > 1 else slice(None)
    return sum(samples[after]) / sum(seconds[after]), sum(samples) / sum(seconds)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("data/synth"), help="a dataset folder after `ferdata sample`")
    ap.add_argument("--backbone", default=None, help="default: resnet18 on CUDA, small_cnn on a CPU")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=None, help="default: 128 on CUDA, 64 on a CPU")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=None, help="timed steps alone (default 200 CUDA, 20 CPU)")
    ap.add_argument("--loader-samples", type=int, default=None, help="default 24000 CUDA, 2048 CPU")
    ap.add_argument("--epochs", type=int, default=3, help="epochs of each end-to-end run (the first is not timed)")
    ap.add_argument("--methods", nargs="+", default=["ce", "ldlva", "akt"])
    ap.add_argument("--out", type=Path, default=Path("bench/results/train_throughput.json"))
    args = ap.parse_args(argv)
    device = select_device()
    cuda = device.type == "cuda"
    backbone = args.backbone or ("resnet18" if cuda else "small_cnn")
    batch = args.batch or (128 if cuda else 64)
    steps = args.steps or (200 if cuda else 20)
    n = args.loader_samples or (24000 if cuda else 2048)
    res: dict = {
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "backbone": backbone,
        "size": args.size,
        "batch": batch,
        "workers": args.workers,
    }
    chosen = Engine.create(device).precision
    res["precision_auto"] = chosen

    precisions = ["fp32", "bf16", "fp16"] if cuda else ["fp32", "bf16"]
    for p in precisions:
        res[f"step_{p}_img_s"] = step_rate(backbone, args.size, batch, steps, Engine(device, p))
        print(f"step alone {p}: {res[f'step_{p}_img_s']:.0f} img/s", file=sys.stderr)
    free = step_rate(backbone, args.size, batch, steps, Engine(device, chosen), deterministic=False)
    res[f"step_{chosen}_nondeterministic_img_s"] = free

    faces, order = plan_epochs(args.data, n, args.size)
    places = {"workers": None, "device": BatchAugment().to(device)}
    res.update(augment_ms(places["device"], batch, args.size, device, repeats=50 if cuda else 5))
    for mode in ("none", "weak", "strong", "two_view"):
        for place, aug in places.items():
            if mode == "none" and aug is not None:
                continue  # nothing to augment on the device
            res[f"loader_{place}_{mode}_img_s"] = loader_rate(
                faces, order, batch=batch, workers=args.workers, augment=mode, device_aug=aug, device=device
            )
        print(f"loader {mode} done", file=sys.stderr)

    base = TrainSettings(
        backbone=backbone, epochs=args.epochs, batch_size=batch, image_size=args.size, workers=args.workers
    )
    paths = {"fp32_workers": dict(precision="fp32", augment_device="cpu"), "default": {}}
    if cuda:
        paths["auto_workers"] = dict(augment_device="cpu")
    for method in args.methods:
        for path, over in paths.items():
            key = f"e2e_{method}_{path}_img_s"
            res[key], res[f"e2e_{method}_{path}_all_epochs_img_s"] = e2e_rates(
                args.data, replace(base, method=method, **over)
            )
            print(f"{key}: {res[key]:.0f}", file=sys.stderr)
        for path in list(paths)[1:]:
            res[f"e2e_{method}_{path}_over_fp32_workers"] = (
                res[f"e2e_{method}_{path}_img_s"] / res[f"e2e_{method}_fp32_workers_img_s"]
            )
    if "ce" in args.methods:
        for path in list(paths)[1:]:
            res[f"e2e_ce_{path}_over_step"] = res[f"e2e_ce_{path}_img_s"] / res[f"step_{chosen}_img_s"]
        res["e2e_ce_fp32_workers_over_step_fp32"] = res["e2e_ce_fp32_workers_img_s"] / res["step_fp32_img_s"]
    for p in precisions[1:]:
        res[f"step_{p}_over_fp32"] = res[f"step_{p}_img_s"] / res["step_fp32_img_s"]
    for mode in ("weak", "strong", "two_view"):
        res[f"loader_{mode}_device_over_workers"] = (
            res[f"loader_device_{mode}_img_s"] / res[f"loader_workers_{mode}_img_s"]
        )
    save_and_print(res, args.out, width=42, digits=3)
    return 0


if __name__ == "__main__":
    sys.exit(main())
