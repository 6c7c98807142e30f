"""Loader throughput: our shard stream against a plain folder of JPEGs opened one by one with PIL.

Builds N aligned 112x112 faces (the synth set's aligned JPEGs, repeated under new ids) both as a
folder of JPEG files and as WebDataset shards, then times one pass of each through a torch DataLoader
with 2 workers and batches of 64, in the same process: the folder loader (PIL), and our FaceStream
with no augmentation, weak, and strong. Also the single-thread decode rate of OpenCV and PIL on the
same bytes (why the stream decodes with simplejpeg), and the stream decoding straight to a training
size by DCT scaling.

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

import numpy as np
import pandas as pd
import torch
from _common import save_and_print
import webdataset as wds

from ferdata.loader import FaceStream, decode, decode_fast


class FolderFaces(torch.utils.data.Dataset):
    """The baseline: one JPEG file per sample, opened with PIL."""

    def __init__(self, folder: Path, labels: pd.DataFrame):
        self.paths = [folder / f"{sid}.jpg" for sid in labels["sample_id"]]
        self.labels = labels["label"].to_numpy()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from PIL import Image

        with Image.open(self.paths[i]) as img:
            return np.asarray(img.convert("RGB")), int(self.labels[i])


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


def timed_pass(dataset, *, workers: int, batch: int) -> float:
    """Samples per second of one full pass through a DataLoader."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, num_workers=workers,
                                         collate_fn=lambda items: (np.stack([x for x, _ in items]), [y for _, y in items]))
    start, seen = time.perf_counter(), 0
    for images, _ in loader:
        seen += len(images)
    return seen / (time.perf_counter() - start)


def decode_rates(folder: Path, count: int = 2000) -> dict[str, float]:
    from PIL import Image

    blobs = [p.read_bytes() for p in sorted(folder.glob("*.jpg"))[:count]]
    start = time.perf_counter()
    for b in blobs:
        decode(b)
    cv = len(blobs) / (time.perf_counter() - start)
    start = time.perf_counter()
    for b in blobs:
        decode_fast(b)
    fast = len(blobs) / (time.perf_counter() - start)
    start = time.perf_counter()
    for b in blobs:
        with Image.open(io.BytesIO(b)) as img:
            np.asarray(img.convert("RGB"))
    return {"decode_opencv_per_s": cv, "decode_simplejpeg_per_s": fast,
            "decode_pil_per_s": len(blobs) / (time.perf_counter() - start)}


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
    results: dict[str, float | int] = {"n": args.n, "workers": args.workers}
    with tempfile.TemporaryDirectory(prefix="ferdata-loader-bench-") as tmp:
        folder, shards, labels = build(args.data, Path(tmp), args.n)
        results.update(decode_rates(folder))
        results["folder_pil_per_s"] = timed_pass(FolderFaces(folder, labels), workers=args.workers, batch=args.batch)
        for mode in ("none", "weak", "strong"):
            stream = FaceStream(shards, labels, augment=mode)
            results[f"stream_{mode}_per_s"] = timed_pass(stream, workers=args.workers, batch=args.batch)
        stream = FaceStream(shards, labels, size=args.train_size)
        results[f"stream_none_at_{args.train_size}px_per_s"] = timed_pass(stream, workers=args.workers, batch=args.batch)
        results["speedup_none_vs_folder"] = results["stream_none_per_s"] / results["folder_pil_per_s"]
    save_and_print(results, args.out, width=26, digits=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
