"""Loader throughput: our shard loaders against a plain folder of JPEGs opened one by one with PIL.

Builds N aligned 112x112 faces (the synth set's aligned JPEGs, repeated under new ids) both as a
folder of JPEG files and as WebDataset shards, then, in the same process, times one shuffled pass of
each through a torch DataLoader with 2 workers and batches of 64:

- the baseline: a map-style Dataset that opens ``<id>.jpg`` with PIL, default collate (uint8 tensors);
- ``ShardFaces`` (what training uses): one pread + simplejpeg decode per face, whole batches made in
  the worker, with no augmentation, weak, strong, and two views;
- the same at the training size (64 px).

Rates are steady state: the clock starts after the first batch, so worker start-up (paid once per
run with persistent workers) is reported separately as ``*_first_batch_s``. Also the single-thread
decode rates of PIL, OpenCV and simplejpeg on the same bytes (why the loaders decode with simplejpeg).

Usage (after `dvc repro` has built data/synth):
    python bench/loader_throughput.py --n 20000
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
import webdataset as wds
from _common import save_and_print

from ferdata.core.shards import decode
from ferdata.loader import PlanBatches, ShardFaces, batches


class FolderFaces(torch.utils.data.Dataset):
    """The baseline: one JPEG file per sample, opened with PIL, returned as a uint8 tensor."""

    def __init__(self, folder: Path, labels: pd.DataFrame, size: int | None = None):
        self.paths = [folder / f"{sid}.jpg" for sid in labels["sample_id"]]
        self.labels = labels["label"].to_numpy()
        self.size = size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from PIL import Image

        with Image.open(self.paths[i]) as img:
            img = img.convert("RGB")
            if self.size:
                img = img.resize((self.size, self.size), Image.BILINEAR)
            return torch.from_numpy(np.array(img)), int(self.labels[i])


def build(src: Path, work: Path, n: int) -> tuple[Path, list[Path], pd.DataFrame]:
    """n faces as a JPEG folder and as shards of 1,000, from the synth set's aligned faces."""
    faces = sorted((src / "aligned").glob("*.jpg"))
    if not faces:
        raise SystemExit(f"no aligned faces under {src}/aligned: run `dvc repro` first")
    blobs = [p.read_bytes() for p in faces]
    folder = work / "folder"
    folder.mkdir()
    ids = [f"face{i:07d}" for i in range(n)]
    shards = []
    for start in range(0, n, 1000):
        path = work / f"shard-{start // 1000:06d}.tar"
        with wds.TarWriter(str(path)) as sink:
            for i in range(start, min(n, start + 1000)):
                blob = blobs[i % len(blobs)]
                (folder / f"{ids[i]}.jpg").write_bytes(blob)
                sink.write({"__key__": ids[i], "jpg": blob})
        shards.append(path)
    labels = pd.DataFrame({"sample_id": ids, "label": np.arange(n) % 7})
    return folder, shards, labels


def timed_pass(loader) -> tuple[float, float]:
    """(samples per second after the first batch, seconds to the first batch) of one pass."""
    start = time.perf_counter()
    it = iter(loader)
    next(it)
    warm = time.perf_counter()
    seen = 0
    for batch in it:
        seen += len(batch["image"] if isinstance(batch, dict) else batch[0])
    return seen / (time.perf_counter() - warm), warm - start


def folder_loader(folder: Path, labels: pd.DataFrame, *, size: int | None, workers: int, batch: int):
    return torch.utils.data.DataLoader(
        FolderFaces(folder, labels, size),
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        generator=torch.Generator().manual_seed(0),
    )


def decode_rates(folder: Path, count: int = 2000) -> dict[str, float]:
    """Single-thread decodes per second of PIL, OpenCV and ours (simplejpeg) on the same bytes."""
    from PIL import Image

    blobs = [p.read_bytes() for p in sorted(folder.glob("*.jpg"))[:count]]

    def pil(b: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(b)) as img:
            return np.asarray(img.convert("RGB"))

    def opencv(b: bytes) -> np.ndarray:
        return cv2.cvtColor(cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)

    out = {}
    for name, fn in (("pil", pil), ("opencv", opencv), ("simplejpeg", decode)):
        start = time.perf_counter()
        for b in blobs:
            fn(b)
        out[f"decode_{name}_per_s"] = len(blobs) / (time.perf_counter() - start)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("data/synth"))
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--train-size", type=int, default=56, help="also time decoding straight to this size (DCT scaling)")
    ap.add_argument("--out", type=Path, default=Path("reports/bench/loader_throughput.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    results: dict[str, float | int] = {"n": args.n, "workers": args.workers, "batch": args.batch}
    w, b = args.workers, args.batch
    with tempfile.TemporaryDirectory(prefix="ferdata-loader-bench-") as tmp:
        folder, shards, labels = build(args.data, Path(tmp), args.n)
        results.update(decode_rates(folder))
        order = np.random.default_rng(0).permutation(args.n)
        start = time.perf_counter()
        faces = ShardFaces(shards, labels["sample_id"])
        results["shard_index_s"] = time.perf_counter() - start
        runs = {"folder_pil": lambda: folder_loader(folder, labels, size=None, workers=w, batch=b)}
        for mode in ("none", "weak", "strong", "two_view"):
            runs[f"shards_{mode}"] = lambda mode=mode: batches(
                faces, PlanBatches([order], batch_size=b, augment=mode), workers=w
            )
        sized = ShardFaces(shards, labels["sample_id"], size=args.train_size)
        runs[f"folder_pil_at_{args.train_size}px"] = lambda: folder_loader(
            folder, labels, size=args.train_size, workers=w, batch=b
        )
        runs[f"shards_none_at_{args.train_size}px"] = lambda: batches(
            sized, PlanBatches([order], batch_size=b, augment="none"), workers=w
        )
        for name, make in runs.items():
            rate, first = timed_pass(make())
            results[f"{name}_per_s"], results[f"{name}_first_batch_s"] = rate, first
            print(f"{name:28s} {rate:9.0f} faces/s (first batch after {first:.2f} s)", flush=True)
        base = results["folder_pil_per_s"]
        for name in ("shards_none", "shards_weak", "shards_strong", "shards_two_view"):
            results[f"speedup_{name.removeprefix('shards_')}_vs_folder"] = results[f"{name}_per_s"] / base
        results[f"speedup_none_at_{args.train_size}px_vs_folder"] = (
            results[f"shards_none_at_{args.train_size}px_per_s"] / results[f"folder_pil_at_{args.train_size}px_per_s"]
        )
    save_and_print(results, args.out, width=26, digits=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
