"""Weak and strong augmentation (albumentations 2.x), seeded.

Weak: horizontal flip and a small shift-scale-rotate (the geometry). Strong: the same geometry, then
colour jitter, greyscale, blur, noise and coarse dropout on top, so a (weak, strong) pair shows the
same face in the same place: the two-branch method compares their spatial attention maps.
The loader (``ferdata.loader.ShardFaces``) applies them in its workers, reseeded per batch.

On a GPU, :class:`BatchAugment` makes the same views, drawn from the same distributions, on whole
batches on the device with kornia's operations (``train.augment_device``), seeded by the batch's request
seed, so the pixels do not depend on the number of workers either. The two paths draw different random
numbers: a run is reproducible on one path, not across them.
"""

from __future__ import annotations

import math
import os
import random

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A
import cv2
import numpy as np
import torch
import torch.nn.functional as F


def weak_transform(seed: int) -> A.Compose:
    """Flip plus a small shift-scale-rotate."""
    pipeline = A.Compose(
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
    )
    return reseed(pipeline, seed)


def strong_transform(seed: int) -> A.Compose:
    """Photometric corruption applied on top of a weak view."""
    pipeline = A.Compose(
        [
            A.ColorJitter(brightness=(0.6, 1.4), contrast=(0.6, 1.4), saturation=(0.6, 1.4), hue=(-0.08, 0.08), p=0.8),
            A.ToGray(p=0.1),
            A.GaussianBlur(blur_limit=(3, 5), p=0.3),
            A.GaussNoise(std_range=(0.02, 0.08), p=0.3),
            A.CoarseDropout(num_holes_range=(1, 3), hole_height_range=(0.1, 0.25), hole_width_range=(0.1, 0.25), p=0.5),
        ],
    )
    return reseed(pipeline, seed)


def reseed(pipeline: A.Compose, seed: int) -> A.Compose:
    """Seed ``pipeline`` from ``seed``, every transform with a stream of its own.

    albumentations' ``set_random_seed`` (and ``Compose(seed=)``) hands every transform the same seed, so
    each one's first draw, whether it applies, is the same number: a flip came only with an affine
    (flip alone never, nothing at all 20% of the time instead of 10%), greyscale only with colour jitter,
    blur, noise and dropout together."""
    pipeline.set_random_seed(seed)
    for transform, own in zip(
        pipeline.transforms, np.random.SeedSequence(seed).generate_state(len(pipeline.transforms))
    ):
        transform.set_random_seed(int(own))
    return pipeline


class BatchAugment(torch.nn.Module):
    """weak / strong / two_view on a batch of float images in [0, 1] (N x 3 x H x W) on their device.

    Weak: flip and a small affine (reflected borders), one warp. Strong: colour jitter, greyscale, blur,
    noise and 1-3 erased holes on top of the weak view, which keeps the weak view's geometry. Each
    family draws its parameters from the distribution the albumentations pipelines above draw from
    (``tests/test_augment.py`` compares the two paths' views with KS tests); only the colour steps'
    order is drawn once per batch rather than per face.

    The pixel operations are kornia's colour and blur functions and torch's ``grid_sample`` for the
    warp. Every random draw is made on the device, for the whole batch at once, from a generator seeded
    by the batch's request seed, and a sample that a family skips gets neutral parameters (or keeps its
    pixels), so nothing is read back to the host and no host work is done per sample or per family: 67
    device ops for a weak view, 346 for a two-view pair, the draws included. Why not
    ``kornia.augmentation``'s modules: they draw their parameters on the host, op by op, and copy them
    over, 239 device and 70 host ops for a weak view, 547 and 262 for two views; on an H100 the loader
    with them made 6,000 two-view faces/s (about 18 ms per batch of 128 beside the plain loader's 3 ms;
    albumentations in 12 CPU workers made 6,650) while the bf16 step took 10 ms."""

    WEAK_DRAWS, STRONG_DRAWS = 7, 25

    @torch.no_grad()
    def forward(self, x: torch.Tensor, augment: str, seed: int) -> dict[str, torch.Tensor]:
        """``{"image": view}`` (plus ``"strong"`` for two_view), drawn from ``seed`` alone."""
        if augment == "none":
            return {"image": x}
        gen = torch.Generator(device=x.device)
        gen.manual_seed(int(seed))
        u = torch.rand(len(x), self.WEAK_DRAWS + self.STRONG_DRAWS, generator=gen, device=x.device)
        image = weak_view(x, u[:, : self.WEAK_DRAWS])
        if augment == "weak":
            return {"image": image}
        order = random.Random(seed).sample(range(4), 4)  # the colour steps' order, one per batch (host-side)
        strong = strong_view(image, u[:, self.WEAK_DRAWS :], gen, order)
        return {"image": image, "strong": strong} if augment == "two_view" else {"image": strong}


def _column(flag: torch.Tensor) -> torch.Tensor:
    return flag.reshape(-1, 1, 1, 1)


def weak_view(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Flip (p 0.5), then (p 0.8) rotate +-10 degrees, scale x and y apart by 0.92-1.08 and shift by a
    whole number of pixels up to 6% of each side, about the centre, as one reflected bilinear warp: the
    draws of albumentations' ``Affine`` (scale before rotation, shift truncated to whole pixels).
    ``u``: N x 7 uniform draws.

    The sampling matrix is written out (a dozen ops on N numbers) rather than built with kornia's
    ``get_affine_matrix2d`` and ``warp_affine``, which take some 220 kernel launches per batch for it."""
    h, w = x.shape[-2:]
    flip, moved = 1 - 2 * (u[:, 0] < 0.5).to(x.dtype), (u[:, 1] < 0.8).to(x.dtype)
    angle = moved * (u[:, 2] * 20 - 10) * (math.pi / 180)
    tx = moved * torch.trunc((u[:, 3] * 0.12 - 0.06) * w)
    ty = moved * torch.trunc((u[:, 4] * 0.12 - 0.06) * h)
    inv_sx, inv_sy = (1 / (1 + moved * (u[:, i] * 0.16 - 0.08)) for i in (5, 6))
    # output pixel p' = c + t + R S (mirror(p) - c); in coordinates normalised to [-1, 1] about the
    # centre c (half-sizes dx, dy) the source of p' is mirror(D^-1 S^-1 R(-angle) (D q' - t))
    dx, dy = (w - 1) / 2, (h - 1) / 2
    cos, sin = torch.cos(angle), torch.sin(angle)
    row0 = torch.stack([cos, sin * dy / dx, -(cos * tx + sin * ty) / dx], 1) * (flip * inv_sx)[:, None]
    row1 = torch.stack([-sin * dx / dy, cos, (sin * tx - cos * ty) / dy], 1) * inv_sy[:, None]
    grid = F.affine_grid(torch.stack([row0, row1], 1), list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=True)


def strong_view(x: torch.Tensor, u: torch.Tensor, gen: torch.Generator, order: list[int]) -> torch.Tensor:
    """On top of a weak view, with the draws of the albumentations pipeline: colour jitter (p 0.8;
    brightness, contrast, saturation 0.6-1.4, hue +-0.08 turn, in ``order``), greyscale (p 0.1),
    Gaussian blur of 3 or 5 taps (1 : 2) with sigma 0.5-3 (p 0.3), Gaussian noise of sd 0.02-0.08
    (p 0.3), 1-3 erased holes each 10-25% of the height and of the width, in whole pixels (p 0.5).
    ``u``: N x 25 uniform draws; the noise comes from ``gen``."""
    from kornia.color import rgb_to_grayscale
    from kornia.enhance import (
        adjust_brightness_accumulative,
        adjust_contrast_with_mean_subtraction,
        adjust_hue,
        adjust_saturation_with_gray_subtraction,
    )
    from kornia.filters import filter2d_separable

    jitter = (u[:, 0] < 0.8).to(x.dtype)
    factors = 1 + jitter[:, None] * (u[:, 1:4] * 0.8 - 0.4)  # brightness, contrast, saturation; 1 = unchanged
    hue = jitter * (u[:, 4] * 0.16 - 0.08) * 2 * math.pi
    steps = [
        lambda v: adjust_brightness_accumulative(v, factors[:, 0]),
        lambda v: adjust_contrast_with_mean_subtraction(v, factors[:, 1]),
        lambda v: adjust_saturation_with_gray_subtraction(v, factors[:, 2]),
        lambda v: adjust_hue(v, hue),
    ]
    for i in order:
        x = steps[i](x).clamp(0, 1)
    x = torch.where(_column(u[:, 5] < 0.1), rgb_to_grayscale(x).expand_as(x), x)
    kernel = _gaussian_taps(u[:, 7] < 1 / 3, 0.5 + 2.5 * u[:, 8])
    x = torch.where(_column(u[:, 6] < 0.3), filter2d_separable(x, kernel, kernel, "reflect"), x)
    noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    x = x + _column((u[:, 9] < 0.3).to(x.dtype) * (0.02 + 0.06 * u[:, 10])) * noise
    erased = _holes(u[:, 11:], *x.shape[-2:])
    return x.masked_fill(erased, 0).clamp(0, 1)


def _gaussian_taps(three: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """N x 5 normalised Gaussian kernels, the outer taps zero where ``three`` (a 3-tap kernel): the size
    varies per face, which kornia's ``get_gaussian_kernel1d`` (one size per call) cannot do."""
    taps = torch.arange(-2, 3, device=sigma.device, dtype=sigma.dtype)
    kernel = torch.exp(-0.5 * (taps / sigma[:, None]) ** 2) * ((taps.abs() < 2) | ~three[:, None])
    return kernel / kernel.sum(1, keepdim=True)


def _holes(u: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """N x 1 x H x W mask of coarse dropout (p 0.5): 1-3 holes, each 10-25% of the height and of the
    width (whole pixels, anywhere inside the face), as albumentations' ``CoarseDropout`` draws them.
    ``u``: N x 14 (apply, count, 3 heights, 3 widths, 3 tops, 3 lefts)."""
    count = 1 + (u[:, 1:2] * 3).floor()
    live = (torch.arange(3, device=u.device) < count) & (u[:, :1] < 0.5)  # N x 3 holes in use
    hh, ww = (h * (0.1 + 0.15 * u[:, 2:5])).floor(), (w * (0.1 + 0.15 * u[:, 5:8])).floor()
    top, left = (u[:, 8:11] * (h - hh + 1)).floor(), (u[:, 11:14] * (w - ww + 1)).floor()
    ys = torch.arange(h, device=u.device, dtype=u.dtype)[:, None]
    xs = torch.arange(w, device=u.device, dtype=u.dtype)[None, :]

    def spans(lo: torch.Tensor, size: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        return (at >= lo[..., None, None]) & (at < (lo + size)[..., None, None])

    inside = spans(top, hh, ys) & spans(left, ww, xs) & live[..., None, None]  # N x 3 x H x W
    return inside.sum(1, keepdim=True) > 0
