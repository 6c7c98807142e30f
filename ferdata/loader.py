"""The training input pipeline over the shards (torch): ``ShardFaces`` serves whole batches of faces,
augmented in DataLoader workers, for the batch ``Request``s that ``PlanBatches`` makes from the epoch
plan (split by rank under DDP) or ``in_order`` makes for inference. Reading and decoding is
:class:`ferdata.core.shards.ShardReader`'s; this module adds batching, augmentation and seeding."""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch
import torch.utils.data as tud

from ferdata.core.errors import UsageError
from ferdata.core.shards import ShardReader, load_images, member_table, shard_paths

__all__ = [
    "PlanBatches",
    "Request",
    "ShardFaces",
    "batches",
    "in_order",
    "load_images",
    "member_table",
    "request_seed",
    "shard_paths",
]


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


def check_augment(augment: str) -> None:
    if augment not in VIEWS:
        raise UsageError(f"augment {augment!r}: use one of {', '.join(VIEWS)}")


class ShardFaces(ShardReader, tud.Dataset):
    """A map-style dataset over the faces in the shards (a :class:`ShardReader`) that serves whole batches.

    Give a DataLoader ``batch_sampler=`` of ``Request``s (``PlanBatches``, ``in_order``) and
    ``collate_fn=as_batch`` (or use ``batches``): each worker returns a whole batch as uint8 tensors
    (shared memory, not pickled arrays), ``{"position", "image", "seed"}`` plus ``"strong"`` for two
    views; ``seed`` is the request's, for augmentation made later on the training device.
    Augmentation is reseeded per request, so a batch's pixels do not depend on which worker, or how
    many, made it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._views: dict[str, object] = {}

    def __getstate__(self) -> dict:
        return {**super().__getstate__(), "_views": {}}  # transforms are per process

    def __getitem__(self, i: int) -> np.ndarray:
        return self.image(i)

    def __getitems__(self, request: Request | list[int]) -> dict[str, torch.Tensor]:
        if not isinstance(request, Request):
            request = Request(np.asarray(request, np.int64))
        check_augment(request.augment)
        weak, strong = self._transforms(request.augment, request.seed)
        out: dict[str, torch.Tensor] = {
            "position": torch.as_tensor(np.asarray(request.positions, np.int64)),
            "seed": torch.tensor(request.seed, dtype=torch.int64),
        }
        for j, i in enumerate(request.positions):
            views = make_views(self.image(int(i)), request.augment, weak, strong)
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
        from ferdata.augment import reseed, strong_transform, weak_transform

        if not self._views:
            self._views = {"weak": weak_transform(0), "strong": strong_transform(0)}
        weak, strong = self._views["weak"], self._views["strong"]
        reseed(weak, seed)
        if augment == "weak":
            return weak, None
        reseed(strong, seed + 1)
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

    def __init__(
        self,
        epochs: list[np.ndarray],
        *,
        batch_size: int,
        augment: str = "weak",
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
    ):
        check_augment(augment)
        self.epochs, self.batch_size, self.augment, self.seed = epochs, batch_size, augment, seed
        self.rank, self.world, self.epoch = rank, world, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def steps(self, epoch: int) -> int:
        return len(self.epochs[epoch]) // (self.batch_size * self.world)

    def __len__(self) -> int:
        return self.steps(self.epoch)

    def __iter__(self) -> Iterator[Request]:
        mine = np.asarray(self.epochs[self.epoch], np.int64)[self.rank :: self.world]
        for step in range(self.steps(self.epoch)):
            yield Request(
                mine[step * self.batch_size : (step + 1) * self.batch_size],
                self.augment,
                request_seed(self.seed, self.epoch, self.rank, step),
            )


def in_order(positions: np.ndarray, batch_size: int) -> list[Request]:
    """Unaugmented batch requests over ``positions`` in order (inference)."""
    positions = np.asarray(positions, np.int64)
    return [Request(positions[i : i + batch_size]) for i in range(0, len(positions), batch_size)]


def batches(faces: ShardFaces, requests, *, workers: int = 0, pin_memory: bool = False) -> tud.DataLoader:
    """A DataLoader that fetches ``requests`` (a list, or a ``PlanBatches``) from ``faces``.

    Workers are forked and keep OpenCV's thread settings: calling ``cv2.setNumThreads`` inside a
    forked worker deadlocks once the parent has used OpenCV's pool."""
    return tud.DataLoader(
        faces,
        batch_sampler=requests,
        collate_fn=as_batch,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
    )
