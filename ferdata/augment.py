"""Weak and strong augmentation (albumentations 2.x), seeded.

Weak: horizontal flip and a small shift-scale-rotate (the geometry). Strong: the same geometry, then
colour jitter, greyscale, blur, noise and coarse dropout on top, so a (weak, strong) pair shows the
same face in the same place: the two-branch method compares their spatial attention maps.
The loader (``ferdata.loader.ShardFaces``) applies them in its workers, reseeded per batch.
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A
import cv2


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
