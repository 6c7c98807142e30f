"""Weak and strong augmentation (albumentations 2.x), seeded.

Weak: horizontal flip and a small shift-scale-rotate (the geometry). Strong: the same geometry, then
colour jitter, greyscale, blur, noise and coarse dropout on top, so a (weak, strong) pair shows the
same face in the same place: the two-branch method compares their spatial attention maps.
The loader (``ferdata.loader.ShardFaces``) applies them in its workers, reseeded per batch.

On a GPU, :class:`BatchAugment` makes the same families of views on whole batches on the device with
kornia (``train.augment_device``), seeded by the batch's request seed, so the pixels do not depend on
the number of workers either. The two paths draw different random numbers: a run is reproducible on
one path, not across them.
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A
import cv2
import torch


def weak_transform(seed: int) -> A.Compose:
    """Flip plus a small shift-scale-rotate."""
    return A.Compose(
        [
            A.HorizontalFlip(p=0.5),
            A.Affine(
                scale=(0.92, 1.08),
                translate_percent=(-0.06, 0.06),
                rotate=(-10, 10),
                border_mode=cv2.BORDER_REFLECT_101,
                p=0.8,
            ),
        ],
        seed=seed,
    )


def strong_transform(seed: int) -> A.Compose:
    """Photometric corruption applied on top of a weak view."""
    return A.Compose(
        [
            A.ColorJitter(brightness=(0.6, 1.4), contrast=(0.6, 1.4), saturation=(0.6, 1.4), hue=(-0.08, 0.08), p=0.8),
            A.ToGray(p=0.1),
            A.GaussianBlur(blur_limit=(3, 5), p=0.3),
            A.GaussNoise(std_range=(0.02, 0.08), p=0.3),
            A.CoarseDropout(num_holes_range=(1, 3), hole_height_range=(0.1, 0.25), hole_width_range=(0.1, 0.25), p=0.5),
        ],
        seed=seed,
    )


class BatchAugment(torch.nn.Module):
    """weak / strong / two_view on a batch of float images in [0, 1] (N x 3 x H x W) on their device.

    Weak: flip and a small affine (reflected borders). Strong: colour jitter, greyscale, blur, noise and
    one erased patch on top of the weak view, which keeps the weak view's geometry."""

    def __init__(self) -> None:
        super().__init__()
        import kornia.augmentation as K

        self.weak = K.AugmentationSequential(
            K.RandomHorizontalFlip(p=0.5),
            K.RandomAffine(degrees=10, translate=(0.06, 0.06), scale=(0.92, 1.08), padding_mode="reflection", p=0.8),
        )
        self.strong = K.AugmentationSequential(
            K.ColorJitter(brightness=(0.6, 1.4), contrast=(0.6, 1.4), saturation=(0.6, 1.4), hue=(-0.08, 0.08), p=0.8),
            K.RandomGrayscale(p=0.1),
            K.RandomGaussianBlur((5, 5), sigma=(0.1, 1.5), p=0.3),
            K.RandomGaussianNoise(std=0.05, p=0.3),
            K.RandomErasing(scale=(0.01, 0.0625), ratio=(0.5, 2.0), p=0.5),
        )

    @torch.no_grad()
    def forward(self, x: torch.Tensor, augment: str, seed: int) -> dict[str, torch.Tensor]:
        """``{"image": view}`` (plus ``"strong"`` for two_view), drawn from ``seed`` alone."""
        if augment == "none":
            return {"image": x}
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            image = self.weak(x)
            if augment == "weak":
                return {"image": image}
            strong = self.strong(image).clamp_(0, 1)
        return {"image": image, "strong": strong} if augment == "two_view" else {"image": strong}
