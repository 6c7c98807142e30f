"""Read faces back out of the WebDataset shards, keyed by ``sample_id``."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import cv2
import numpy as np
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


def decode(jpeg: bytes, size: int | None = None) -> np.ndarray:
    """Decode JPEG bytes to RGB uint8, optionally resized to ``size`` x ``size``."""
    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise FerdataError("a shard holds an undecodable image; re-run `ferdata align` and `ferdata shard`")
    img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
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
