"""Read faces back out of the WebDataset shards, keyed by ``sample_id``: by random access for
training (``ShardFaces``, fed batch requests by ``PlanBatches`` over the epoch plan), all at once
into memory (``load_images``), or as a sequential stream split by rank and worker (``FaceStream``)."""

from __future__ import annotations

import functools
import os
import tarfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import pandas as pd
import torch
import torch.utils.data as tud
import webdataset as wds

from ferdata.errors import FerdataError


def iter_shards(paths: Iterable[str | Path]) -> Iterator[tuple[str, bytes]]:
    """Yield (sample_id, jpeg bytes) from shards in order, through webdataset's own reader (no
    rank or worker split: every caller sees every face)."""
    urls = [str(p) for p in paths]
    for p in urls:
        if not Path(p).is_file():
            raise FerdataError(f"shard {p} not found; re-run `ferdata shard`")
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
        path = Path(path)
        with open(path, "rb") as fh:
            for key, offset, size in _entries(fh, path):
                yield key, functools.partial(_read_at, fh, path, offset, size)


class _NotPlain(Exception):
    pass


def _entries(fh, path: Path) -> Iterator[tuple[str, int, int]]:
    """(key, data offset, size) of every JPEG member: the fast ustar walk, else tarfile's parser."""
    try:
        yield from _ustar_entries(fh, path)  # raises _NotPlain at the first header, before yielding
    except _NotPlain:
        with tarfile.open(path, "r:") as tar:
            for m in tar:
                key, _, ext = m.name.partition(".")
                if m.isfile() and ext.lower() in ("jpg", "jpeg"):
                    yield key, m.offset_data, m.size


def _ustar_entries(fh, path: Path) -> Iterator[tuple[str, int, int]]:
    """(key, data offset, size) of every JPEG member of a plain ustar file, from its headers alone."""
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
            yield key, data, size
        offset = data + (size + 511) // 512 * 512


def member_table(paths: Iterable[str | Path]) -> pd.DataFrame:
    """Where every face lies: one row per JPEG member with ``sample_id``, ``shard`` (position in
    ``paths``), ``offset`` and ``size`` of its bytes. Costs one header read per member."""
    rows: list[tuple[str, int, int, int]] = []
    for i, path in enumerate(paths):
        path = Path(path)
        if not path.is_file():
            raise FerdataError(f"shard {path} not found; re-run `ferdata shard`")
        with open(path, "rb") as fh:
            rows += [(key, i, offset, size) for key, offset, size in _entries(fh, path)]
    return pd.DataFrame(rows, columns=["sample_id", "shard", "offset", "size"])


def _read_at(fh, path: Path, offset: int, size: int) -> bytes:
    fh.seek(offset)
    data = fh.read(size)
    if len(data) != size:
        raise FerdataError(f"{path} is truncated; re-run `ferdata shard`")
    return data


def decode(jpeg: bytes | memoryview, size: int | None = None) -> np.ndarray:
    """Decode JPEG bytes to RGB uint8, optionally resized to ``size`` x ``size``.

    libjpeg-turbo through simplejpeg, with the fast DCT and DCT-domain downscaling to the smallest
    scale still >= ``size`` before the final area resize: 2.8x PIL's rate on 112 px faces
    (bench/loader_throughput.py)."""
    import simplejpeg

    try:
        img = simplejpeg.decode_jpeg(jpeg, colorspace="RGB", fastdct=True, fastupsample=True,
                                     min_height=size or 0, min_width=size or 0)
    except ValueError as exc:
        raise FerdataError(f"a shard holds an undecodable image ({exc}); re-run `ferdata align` and `ferdata shard`") from exc
    if size is not None and img.shape[:2] != (size, size):
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    return img


def load_images(shard_dir: str | Path, sample_ids: list[str], *, size: int | None = None) -> np.ndarray:
    """Decode the faces of ``sample_ids`` (in that order) into one N x H x W x 3 uint8 array.

    Reads only the members it needs. Meant for sets that fit in memory; training streams (``ShardFaces``).
    """
    if not sample_ids:
        return np.zeros((0, size or 0, size or 0, 3), np.uint8)
    return ShardFaces(shard_paths(shard_dir), sample_ids, size=size).images(np.arange(len(sample_ids)))


def shard_paths(shard_dir: str | Path) -> list[Path]:
    """The shards of a dataset, in order."""
    shards = sorted(Path(shard_dir).glob("shard-*.tar"))
    if not shards:
        raise FerdataError(f"no shard-*.tar in {shard_dir}; run `ferdata shard` first")
    return shards


def make_views(img: np.ndarray, augment: str, weak, strong) -> dict[str, np.ndarray]:
    """The views of one decoded face: ``image`` (as is, weak, or weak then strong) and, in ``two_view``
    mode, ``strong`` (the strong pipeline on the weak view: same geometry, other colours)."""
    if weak is not None:
        img = weak(image=img)["image"]
    if augment == "two_view":
        return {"image": img, "strong": strong(image=img)["image"]}
    if strong is not None:
        img = strong(image=img)["image"]
    return {"image": img}


class Request(NamedTuple):
    """One batch for ``ShardFaces``: positions into its sample ids, the views wanted, their seed."""

    positions: np.ndarray
    augment: str = "none"  # none, weak, strong (weak then strong) or two_view (weak and strong)
    seed: int = 0


VIEWS = ("none", "weak", "strong", "two_view")


class ShardFaces(tud.Dataset):
    """Random access to the faces in the shards, by position in ``sample_ids``: one ``pread`` at the
    member's offset and one decode per face, no per-face files and no tar parsing after the header walk.

    Give a DataLoader ``batch_sampler=`` of ``Request``s (``PlanBatches``, ``in_order``) and
    ``collate_fn=as_batch`` (or use ``batches``): each worker returns a whole batch as uint8 tensors
    (shared memory, not pickled arrays), ``{"position", "image"}`` plus ``"strong"`` for two views.
    Augmentation is reseeded per request, so a batch's pixels do not depend on which worker, or how
    many, made it."""

    def __init__(self, shards: Iterable[str | Path], sample_ids: Iterable[str], *, size: int | None = None,
                 members: pd.DataFrame | None = None):
        self.shards = [str(p) for p in shards]
        self.ids = [str(s) for s in sample_ids]
        table = member_table(self.shards) if members is None else members
        twice = table["sample_id"].duplicated()
        if twice.any():
            raise FerdataError(f"sample {table['sample_id'][twice].iloc[0]!r} is in the shards twice; re-run `ferdata shard`")
        where = table.set_index("sample_id").reindex(self.ids)
        missing = where["shard"].isna().to_numpy()
        if missing.any():
            some = [self.ids[i] for i in np.flatnonzero(missing)[:3]]
            raise FerdataError(f"{missing.sum()} samples are in no shard, e.g. {some}; re-run `ferdata shard`")
        self.shard = where["shard"].to_numpy(np.int64)
        self.offset = where["offset"].to_numpy(np.int64)
        self.nbytes = where["size"].to_numpy(np.int64)
        self.size = size
        self._fds: dict[int, int] = {}
        self._views: dict[str, object] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fds": {}, "_views": {}}  # descriptors and transforms are per process

    def __del__(self) -> None:
        for fd in getattr(self, "_fds", {}).values():
            os.close(fd)

    def read(self, i: int) -> bytes:
        """The JPEG bytes of face ``i`` (``pread``: no shared file position, safe after fork)."""
        s = int(self.shard[i])
        fd = self._fds.get(s)
        if fd is None:
            fd = self._fds[s] = os.open(self.shards[s], os.O_RDONLY | getattr(os, "O_BINARY", 0))
        data = os.pread(fd, int(self.nbytes[i]), int(self.offset[i]))
        if len(data) != self.nbytes[i]:
            raise FerdataError(f"{self.shards[s]} is truncated at face {self.ids[i]!r}; re-run `ferdata shard`")
        return data

    def __getitem__(self, i: int) -> np.ndarray:
        return decode(self.read(i), self.size)

    def images(self, positions: np.ndarray) -> np.ndarray:
        """The faces at ``positions``, unaugmented, as one N x H x W x 3 uint8 array."""
        return self.__getitems__(Request(np.asarray(positions)))["image"].numpy()

    def __getitems__(self, request: Request | list[int]) -> dict[str, torch.Tensor]:
        if not isinstance(request, Request):
            request = Request(np.asarray(request, np.int64))
        if request.augment not in VIEWS:
            raise FerdataError(f"augment {request.augment!r}: use one of {', '.join(VIEWS)}")
        weak, strong = self._transforms(request.augment, request.seed)
        out: dict[str, torch.Tensor] = {"position": torch.as_tensor(np.asarray(request.positions, np.int64))}
        for j, i in enumerate(request.positions):
            views = make_views(decode(self.read(int(i)), self.size), request.augment, weak, strong)
            for name, view in views.items():
                if name not in out:
                    out[name] = _batch_tensor((len(request.positions), *view.shape))
                out[name][j] = torch.from_numpy(view)
        if "image" not in out:
            side = self.size or 0
            out["image"] = torch.zeros((0, side, side, 3), dtype=torch.uint8)
        return out

    def _transforms(self, augment: str, seed: int):
        """(weak, strong) albumentations pipelines for ``augment``, reseeded for this request."""
        if augment == "none":
            return None, None  # albumentations is not even imported
        if not self._views:
            from ferdata.augment import strong_transform, weak_transform

            self._views = {"weak": weak_transform(0), "strong": strong_transform(0)}
        weak, strong = self._views["weak"], self._views["strong"]
        weak.set_random_seed(seed)
        if augment == "weak":
            return weak, None
        strong.set_random_seed(seed + 1)
        return weak, strong


def _batch_tensor(shape: tuple[int, ...]) -> torch.Tensor:
    """A uint8 tensor for a batch; in a DataLoader worker, allocated in shared memory right away so
    handing it to the main process copies nothing (as torch's default collate does)."""
    out = torch.empty(shape, dtype=torch.uint8)
    return out.share_memory_() if tud.get_worker_info() is not None else out


def as_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The DataLoader collate for ``ShardFaces``: the dataset already made the batch."""
    return batch


def request_seed(*parts: int) -> int:
    """A 32-bit seed from (seed, epoch, rank, step): independent streams, no arithmetic collisions."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


class PlanBatches(tud.Sampler):
    """An epoch plan as this rank's batch ``Request``s: rank r takes every ``world``-th entry of the
    epoch's order, and every rank makes the same number of full batches, len // (batch_size * world),
    so no rank waits at the last step under DDP (the few leftover entries are dropped that epoch).
    ``set_epoch`` picks the epoch; seeds come from (seed, epoch, rank, step)."""

    def __init__(self, epochs: list[np.ndarray], *, batch_size: int, augment: str = "weak", seed: int = 0,
                 rank: int = 0, world: int = 1):
        if augment not in VIEWS:
            raise FerdataError(f"augment {augment!r}: use one of {', '.join(VIEWS)}")
        self.epochs, self.batch_size, self.augment, self.seed = epochs, batch_size, augment, seed
        self.rank, self.world, self.epoch = rank, world, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def steps(self, epoch: int) -> int:
        return len(self.epochs[epoch]) // (self.batch_size * self.world)

    def __len__(self) -> int:
        return self.steps(self.epoch)

    def __iter__(self) -> Iterator[Request]:
        mine = np.asarray(self.epochs[self.epoch], np.int64)[self.rank::self.world]
        for step in range(self.steps(self.epoch)):
            yield Request(mine[step * self.batch_size:(step + 1) * self.batch_size], self.augment,
                          request_seed(self.seed, self.epoch, self.rank, step))


def in_order(positions: np.ndarray, batch_size: int) -> list[Request]:
    """Unaugmented batch requests over ``positions`` in order (inference)."""
    positions = np.asarray(positions, np.int64)
    return [Request(positions[i:i + batch_size]) for i in range(0, len(positions), batch_size)]


def batches(faces: ShardFaces, requests, *, workers: int = 0, pin_memory: bool = False) -> tud.DataLoader:
    """A DataLoader that fetches ``requests`` (a list, or a ``PlanBatches``) from ``faces``.

    Workers are forked and keep OpenCV's thread settings: calling ``cv2.setNumThreads`` inside a
    forked worker deadlocks once the parent has used OpenCV's pool."""
    return tud.DataLoader(faces, batch_sampler=requests, collate_fn=as_batch, num_workers=workers,
                          pin_memory=pin_memory, persistent_workers=workers > 0)


def dist_slot() -> tuple[int, int]:
    """(rank, world size) of this process: torch.distributed when initialised, else torchrun's env."""
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
            views = make_views(decode(jpeg, self.size), self.augment, weak, strong)
            return (tuple(views.values()) if self.augment == "two_view" else views["image"]), self.rows[key]

        for item in self._mine():
            if self.shuffle <= 1:
                yield emit(*item)
                continue
            buffer.append(item)
            if len(buffer) >= self.shuffle:
                yield emit(*buffer.pop(int(rng.integers(len(buffer)))))
        while buffer:
            yield emit(*buffer.pop(int(rng.integers(len(buffer)))))
