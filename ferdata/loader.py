"""Read faces back out of the WebDataset shards, keyed by ``sample_id``: all at once into memory
(``load_images``), or streamed per rank and worker for a torch DataLoader (``FaceStream``)."""

from __future__ import annotations

import functools
import tarfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch.utils.data as tud
import webdataset as wds

from ferdata.errors import FerdataError


def iter_shards(paths: Iterable[str | Path]) -> Iterator[tuple[str, bytes]]:
    """Yield (sample_id, jpeg bytes) from shards in order, without shuffling."""
    urls = [str(p) for p in paths]
    for p in urls:
        if not Path(p).is_file():
            raise FerdataError(f"shard {p} not found; re-run `ferdata shard`")
    # every rank reads every shard here (in-memory use); per-rank splitting belongs to a streaming loader
    every = lambda src: src  # noqa: E731
    for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False, nodesplitter=every, workersplitter=every):
        yield sample["__key__"], sample["jpg"]


def iter_members(paths: Iterable[str | Path]) -> Iterator[tuple[str, Callable[[], bytes]]]:
    """(sample_id, read) for every JPEG member of the shards, in order; ``read()`` fetches its bytes
    (call it before advancing: the shard's file is open only while its members are being yielded).

    A plain ustar header walk: a sample that another rank or worker owns costs one 512-byte header
    read and a seek, not its data (tarfile's own parser costs ~20x more per member). Shards with
    GNU/pax extension headers fall back to tarfile."""
    for path in paths:
        try:
            yield from _walk_ustar(Path(path))
        except _NotPlain:
            yield from _walk_tarfile(Path(path))


class _NotPlain(Exception):
    pass


def _walk_ustar(path: Path) -> Iterator[tuple[str, Callable[[], bytes]]]:
    with open(path, "rb") as fh:
        offset = 0
        while True:
            fh.seek(offset)
            header = fh.read(512)
            if len(header) < 512 or header == b"\0" * 512:
                return
            kind = header[156:157]
            if kind not in (b"0", b"\0", b"5"):
                if offset == 0:
                    raise _NotPlain
                raise FerdataError(f"{path} holds a tar entry of type {kind!r} after plain ones; re-run `ferdata shard`")
            name = header[:100].split(b"\0", 1)[0].decode()
            prefix = header[345:500].split(b"\0", 1)[0].decode()
            size = int(header[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
            data = offset + 512
            key, _, ext = (f"{prefix}/{name}" if prefix else name).partition(".")
            if kind != b"5" and ext.lower() in ("jpg", "jpeg"):
                yield key, functools.partial(_read_at, fh, path, data, size)
            offset = data + (size + 511) // 512 * 512


def _read_at(fh, path: Path, offset: int, size: int) -> bytes:
    fh.seek(offset)
    data = fh.read(size)
    if len(data) != size:
        raise FerdataError(f"{path} is truncated; re-run `ferdata shard`")
    return data


def _walk_tarfile(path: Path) -> Iterator[tuple[str, Callable[[], bytes]]]:
    with tarfile.open(path, "r:") as tar, open(path, "rb") as fh:
        for member in tar:
            key, _, ext = member.name.partition(".")
            if member.isfile() and ext.lower() in ("jpg", "jpeg"):
                yield key, functools.partial(_read_at, fh, path, member.offset_data, member.size)


def decode(jpeg: bytes, size: int | None = None) -> np.ndarray:
    """Decode JPEG bytes to RGB uint8, optionally resized to ``size`` x ``size``."""
    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise FerdataError("a shard holds an undecodable image; re-run `ferdata align` and `ferdata shard`")
    img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if size is not None and img.shape[0] != size:
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    return img


def decode_fast(jpeg: bytes, size: int | None = None) -> np.ndarray:
    """Decode for streaming: libjpeg-turbo through simplejpeg (fast DCT, RGB out, and DCT-domain
    downscaling to the smallest scale still >= ``size``), then resize; OpenCV when simplejpeg is absent.
    Measured by bench/loader_throughput.py."""
    try:
        import simplejpeg
    except ImportError:
        return decode(jpeg, size)
    try:
        img = simplejpeg.decode_jpeg(jpeg, colorspace="RGB", fastdct=True, fastupsample=True,
                                     min_height=size or 0, min_width=size or 0)
    except ValueError as exc:
        raise FerdataError(f"a shard holds an undecodable image ({exc}); re-run `ferdata align` and `ferdata shard`") from exc
    if size is not None and img.shape[0] != size:
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    return img


def load_images(shard_dir: str | Path, sample_ids: list[str], *, size: int | None = None) -> np.ndarray:
    """Decode the faces of ``sample_ids`` (in that order) into one N x H x W x 3 uint8 array.

    Reads only the shards that hold them. Meant for datasets that fit in memory.
    """
    if not sample_ids:
        return np.zeros((0, size or 0, size or 0, 3), np.uint8)
    shard_dir = Path(shard_dir)
    want = {sid: i for i, sid in enumerate(sample_ids)}
    shards = sorted(shard_dir.glob("shard-*.tar"))
    if not shards:
        raise FerdataError(f"no shard-*.tar in {shard_dir}; run `ferdata shard` first")
    out: np.ndarray | None = None
    seen = np.zeros(len(sample_ids), bool)
    for key, jpeg in iter_shards(shards):
        i = want.get(key)
        if i is None:
            continue
        img = decode(jpeg, size)
        if out is None:
            out = np.empty((len(sample_ids), *img.shape), np.uint8)
        out[i] = img
        seen[i] = True
    if not seen.all():
        missing = [sample_ids[i] for i in np.flatnonzero(~seen)[:3]]
        raise FerdataError(f"{(~seen).sum()} samples are in no shard of {shard_dir}, e.g. {missing}; re-run `ferdata shard`")
    assert out is not None
    return out


def dist_slot() -> tuple[int, int]:
    """(rank, world size) of this process: torch.distributed when initialised, else torchrun's env."""
    import os

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class FaceStream(tud.IterableDataset):
    """Faces streamed from WebDataset shards for a torch DataLoader, joined by key with a table.

    Every rank and DataLoader worker reads the shards in order and keeps the samples whose position in
    the (table-filtered) stream falls to it (rank = position mod ranks, then round-robin over workers),
    so an epoch is an exact partition however unevenly the shards divide. With ``even`` (the default under DDP) each rank
    yields the same count, ceil(n / ranks), by repeating its first samples (at most ranks - 1 repeats
    per epoch, as torch's DistributedSampler pads), so no rank waits for another at the last step.
    Yields ``(image, row)``: uint8 H x W x 3 (or a ``(weak, strong)`` pair in ``two_view`` mode) and the
    joined table row as a dict (``sample_id`` included). ``shuffle`` buffers that many samples and
    draws from the buffer with a per-(epoch, rank, worker) seed."""

    def __init__(self, shards: Iterable[str | Path], table: pd.DataFrame, *, size: int | None = None,
                 augment: str = "none", seed: int = 0, shuffle: int = 0, even: bool = True):
        if augment not in ("none", "weak", "strong", "two_view"):
            raise FerdataError(f"augment {augment!r}: use none, weak, strong or two_view")
        self.shards = [str(p) for p in shards]
        for p in self.shards:
            if not Path(p).is_file():
                raise FerdataError(f"shard {p} not found; re-run `ferdata shard`")
        self.rows = table.set_index("sample_id", drop=False).to_dict("index")
        self.size, self.augment, self.seed, self.shuffle, self.even = size, augment, seed, shuffle, even
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        """Samples this rank yields per epoch."""
        rank, world = dist_slot()
        n = len(self.rows)
        return -(-n // world) if self.even else len(range(rank, n, world))

    def _mine(self) -> Iterator[tuple[str, bytes]]:
        """This rank's and worker's share of the stream: position p goes to rank p % ranks, then to
        worker (p // ranks) % workers; the padding sample is the rank's first."""
        rank, world = dist_slot()
        info = tud.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        position, pad = 0, None
        for key, read in iter_members(self.shards):
            if key not in self.rows:
                continue
            if position == rank:
                pad = (key, read())
            if position % world == rank and (position // world) % workers == worker:
                yield key, pad[1] if position == rank else read()
            position += 1
        mine = len(range(rank, position, world))
        if self.even and pad is not None and mine < -(-position // world) and mine % workers == worker:
            yield pad

    def _augmenter(self):
        if self.augment == "none":
            return None, None  # albumentations is not even imported
        from ferdata.augment import strong_transform, weak_transform

        info = tud.get_worker_info()
        rank, _ = dist_slot()
        seed = self.seed + 1_000_003 * self.epoch + 1009 * rank + (info.id if info else 0)
        strong = strong_transform(seed + 1) if self.augment in ("strong", "two_view") else None
        return weak_transform(seed), strong

    def __iter__(self) -> Iterator[tuple[object, dict]]:
        weak, strong = self._augmenter()
        rng = np.random.default_rng([self.seed, self.epoch, *dist_slot()])
        buffer: list[tuple[str, bytes]] = []

        def emit(key: str, jpeg: bytes) -> tuple[object, dict]:
            img = decode_fast(jpeg, self.size)
            if weak is not None:
                img = weak(image=img)["image"]
            if self.augment == "two_view":
                return (img, strong(image=img)["image"]), self.rows[key]
            if strong is not None:
                img = strong(image=img)["image"]
            return img, self.rows[key]

        for item in self._mine():
            if self.shuffle <= 1:
                yield emit(*item)
                continue
            buffer.append(item)
            if len(buffer) >= self.shuffle:
                yield emit(*buffer.pop(int(rng.integers(len(buffer)))))
        while buffer:
            yield emit(*buffer.pop(int(rng.integers(len(buffer)))))
