"""ferdata/augment.py: seeded weak and strong views of uint8 faces."""

import numpy as np

from ferdata.augment import reseed, strong_transform, weak_transform


def _faces(n=6, size=32):
    return np.random.default_rng(0).integers(0, 255, (n, size, size, 3), dtype=np.uint8)


def _views(seed, faces, strong=True):
    weak_t, strong_t = weak_transform(seed), strong_transform(seed + 1)
    weak = np.stack([weak_t(image=f)["image"] for f in faces])
    return weak, (np.stack([strong_t(image=w)["image"] for w in weak]) if strong else None)


def test_weak_keeps_shape_and_dtype():
    weak, _ = _views(0, _faces(), strong=False)
    assert weak.shape == (6, 32, 32, 3) and weak.dtype == np.uint8


def test_seeded_views_repeat():
    a, b, c = _views(3, _faces()), _views(3, _faces()), _views(4, _faces())
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_reseeding_replays_the_views():
    """The loader reuses one pipeline per worker and reseeds it per batch."""
    t = weak_transform(0)
    reseed(t, 7)
    first = [t(image=f)["image"] for f in _faces()]
    reseed(t, 7)
    assert all(np.array_equal(x, t(image=f)["image"]) for x, f in zip(first, _faces()))


def test_each_transform_draws_on_its_own():
    """Flip (p 0.5) and affine (p 0.8) apply independently: flip alone and nothing at all each about 10%
    of the time (albumentations' own seeding gave 0% and 20%). Greyscale (p 0.1) comes without blur
    (p 0.3) about 7% of the time (0% before)."""
    import collections

    weak, strong = weak_transform(0), strong_transform(0)
    weak.save_applied_params = strong.save_applied_params = True
    face, joint, grey_alone = _faces(1)[0], collections.Counter(), 0
    for seed in range(2000):
        joint[tuple(t[0] for t in reseed(weak, seed)(image=face)["applied_transforms"])] += 1
        applied = {t[0] for t in reseed(strong, seed)(image=face)["applied_transforms"]}
        grey_alone += "ToGray" in applied and "GaussianBlur" not in applied
    assert 0.08 < joint[("HorizontalFlip",)] / 2000 < 0.12 and 0.08 < joint[()] / 2000 < 0.12
    assert 0.05 < grey_alone / 2000 < 0.09


def test_strong_view_keeps_the_weak_geometry():
    """A strong view is the weak view plus photometric noise: same edges, different colours."""
    img = np.zeros((1, 64, 64, 3), np.uint8)
    img[:, 20:44, 10:30] = 255  # a bright block left of centre
    for seed in range(5):
        weak, strong = _views(seed, img)
        assert weak.shape == strong.shape
        w = weak[0].astype(float).mean(2) > 127
        s = strong[0].astype(float).mean(2)
        assert s[w].mean() > s[~w].mean()  # the block is where the weak view put it


# --- BatchAugment: the same families on whole batches on the training device (kornia) ----------------


def _halves(n=64, size=32):
    """Faces bright on the left half, dark on the right: a flip swaps the halves."""
    import torch

    x = torch.zeros(n, 3, size, size)
    x[..., : size // 2] = 1.0
    return x


def test_batch_views_repeat_with_their_seed_and_keep_shape():
    import torch

    from ferdata.augment import BatchAugment

    aug, x = BatchAugment(), torch.rand(8, 3, 32, 32)
    for mode in ("weak", "strong", "two_view"):
        a, b, c = aug(x, mode, 5), aug(x, mode, 5), aug(x, mode, 6)
        assert set(a) == ({"image", "strong"} if mode == "two_view" else {"image"})
        assert all(torch.equal(a[k], b[k]) for k in a) and not torch.equal(a["image"], c["image"])
        assert all(v.shape == x.shape and v.dtype == x.dtype and 0 <= v.min() and v.max() <= 1 for v in a.values())
    assert torch.equal(aug(x, "none", 1)["image"], x)


def test_batch_flip_and_affine_keep_what_they_should():
    import torch

    from ferdata.augment import BatchAugment

    aug = BatchAugment()
    flat = torch.full((16, 3, 32, 32), 0.4)
    assert torch.allclose(aug(flat, "weak", 0)["image"], flat, atol=1e-5)  # reflected borders add no black
    view = aug(_halves(), "weak", 0)["image"]
    left, right = view[..., :16].mean((1, 2, 3)), view[..., 16:].mean((1, 2, 3))
    flipped = right > left
    assert 0 < int(flipped.sum()) < 64  # some flipped, some not (p = 0.5)
    assert torch.all((left - right).abs() > 0.5)  # a small affine never moves the face's halves across


def test_two_view_strong_keeps_the_weak_geometry():
    import torch

    from ferdata.augment import BatchAugment

    aug = BatchAugment()
    views = aug(_halves(), "two_view", 1)
    assert torch.equal(views["image"], aug(_halves(), "weak", 1)["image"])  # the weak view is the weak pipeline's
    weak_side = views["image"][..., :16].mean((1, 2, 3)) > views["image"][..., 16:].mean((1, 2, 3))
    strong_side = views["strong"][..., :16].mean((1, 2, 3)) > views["strong"][..., 16:].mean((1, 2, 3))
    assert torch.equal(weak_side, strong_side)  # colour changes, the bright half stays where it was


def test_weak_view_flips_and_shifts_exactly():
    """The written-out sampling matrix: a flip mirrors the pixels; a shift of 4.8% of 51 pixels moves them
    2, a whole number of pixels as albumentations' Affine shifts (truncated); x and y scale apart."""
    import torch

    from ferdata.augment import weak_view

    x = torch.rand(2, 3, 51, 51)
    u = torch.tensor([[0.9, 0.1, 0.5, 0.9, 0.5, 0.5, 0.5], [0.1, 0.9, 0.5, 0.5, 0.5, 0.5, 0.5]])  # shift; flip
    out = weak_view(x, u)
    assert torch.allclose(out[0, ..., 2:], x[0, ..., :-2], atol=1e-5)
    assert torch.allclose(out[1], x[1].flip(-1), atol=1e-5)
    still = torch.tensor([[0.9, 0.9, 0.0, 0.0, 0.0, 0.0, 0.0]])  # neither flipped nor moved
    assert torch.allclose(weak_view(x[:1], still), x[:1], atol=1e-5)
    stretched = weak_view(x[:1], torch.tensor([[0.9, 0.1, 0.5, 0.5, 0.5, 1.0, 0.5]]))  # x scaled 1.08, y not
    assert torch.allclose(stretched[0, :, :, 25], x[0, :, :, 25], atol=1e-5)  # the centre column stays put
    assert not torch.allclose(stretched[0, :, 25], x[0, :, 25], atol=1e-2)  # the rows stretch


def test_batch_views_draw_on_the_device_and_read_nothing_back(host_reads):
    """Every draw is a device tensor op from the batch's generator: no host reads, no per-sample work
    on the host (kornia.augmentation's modules draw on the host and copy over, op by op)."""
    import torch

    from ferdata.augment import BatchAugment

    with host_reads() as mode:
        views = BatchAugment()(torch.rand(8, 3, 32, 32), "two_view", 3)
    assert mode.calls == [] and set(views) == {"image", "strong"}


# --- the two paths draw from the same distributions ------------------------------------------------


def _blob(size=64):
    """A Gaussian blob 8 px right of centre: a flip moves it left, the affine moves and stretches it."""
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    return np.exp(-((xx - 8) ** 2 + yy**2) / (2 * 4.0**2))


def _blob_stats(views: np.ndarray) -> dict[str, np.ndarray]:
    """Per view (N x H x W, grey): the blob's centre, its spread and how far from round it is."""
    size = views.shape[-1]
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    mass = views.sum((1, 2))
    cx, cy = (views * xx).sum((1, 2)) / mass, (views * yy).sum((1, 2)) / mass
    vxx = (views * xx**2).sum((1, 2)) / mass - cx**2
    vyy = (views * yy**2).sum((1, 2)) / mass - cy**2
    vxy = (views * xx * yy).sum((1, 2)) / mass - cx * cy
    spread = np.sqrt((vxx - vyy) ** 2 + 4 * vxy**2)
    return {"x": cx, "y": cy, "size": vxx + vyy, "elongation": spread / (vxx + vyy)}


def _colour_stats(views: np.ndarray, stripes: np.ndarray) -> dict[str, np.ndarray]:
    """Per strong view of a flat colour (N x H x W x 3) and of grey stripes one pixel wide: the erased
    share, the brightness, chroma and hue of what is left, the noise on it and the stripes' contrast."""
    erased = (views == 0).all(-1)
    keep = ~erased[..., None]
    count = keep.sum((1, 2))
    mean = (views * keep).sum((1, 2)) / count  # N x 3
    noise = np.sqrt((((views - mean[:, None, None]) ** 2) * keep).sum((1, 2)) / count).mean(-1)
    grey = mean @ np.array([0.299, 0.587, 0.114])
    chroma = mean.max(-1) - mean.min(-1)
    hue = np.arctan2(np.sqrt(3) * (mean[:, 1] - mean[:, 2]), 2 * mean[:, 0] - mean[:, 1] - mean[:, 2])
    sign = (-1.0) ** np.arange(stripes.shape[2])
    stripe_keep = ~(stripes == 0).all(-1)
    contrast = ((stripes.mean(-1) * sign) * stripe_keep).sum((1, 2)) / stripe_keep.sum((1, 2))
    return {
        "erased": erased.mean((1, 2)),
        "brightness": grey,
        "chroma": chroma / grey,
        "hue": hue,
        "noise": noise,
        "stripes": np.abs(contrast),
    }


def _differ(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, float]:
    """The statistics whose two samples a two-sample KS test tells apart (p < 0.001). Rounded first, so
    that an atom (an untouched face, no noise) sits at one value on both paths despite float error."""
    from scipy.stats import ks_2samp

    return {k: p for k in a if (p := float(ks_2samp(a[k].round(3), b[k].round(3)).pvalue)) < 1e-3}


def _device_views(image: np.ndarray, mode: str, n: int = 1600, batch: int = 32) -> np.ndarray:
    """The device path's views of one uint8 image as float N x H x W x 3: BatchAugment's weak views, or
    (``strong``) strong_view alone as the workers' strong pipeline is compared alone; batches of 32 from
    seeds 0, 1, ..., since the colour steps' order is drawn per batch."""
    import random

    import torch

    from ferdata.augment import BatchAugment, strong_view

    x = torch.from_numpy(image).float().div(255).permute(2, 0, 1).expand(batch, -1, -1, -1)
    views = []
    for seed in range(n // batch):
        if mode == "weak":
            views.append(BatchAugment()(x, "weak", seed)["image"])
        else:
            gen = torch.Generator().manual_seed(seed)
            u = torch.rand(batch, BatchAugment.STRONG_DRAWS, generator=gen)
            views.append(strong_view(x, u, gen, random.Random(seed).sample(range(4), 4)))
    return torch.cat(views).permute(0, 2, 3, 1).numpy()


def test_device_weak_views_move_the_face_as_the_workers_do():
    """Flip, rotation, shift (whole pixels) and scale (x and y apart, as albumentations' Affine draws
    them): the blob's centre, size and elongation have the same distributions on both paths."""
    blob = np.repeat((_blob() * 255).round().astype(np.uint8)[..., None], 3, -1)
    t = weak_transform(0)
    cpu = np.stack([reseed(t, seed)(image=blob)["image"] for seed in range(1600)]).astype(float) / 255
    device = _device_views(blob, "weak")
    assert _differ(_blob_stats(cpu.mean(-1)), _blob_stats(device.mean(-1))) == {}


def test_device_strong_views_draw_the_workers_colour_blur_noise_and_holes():
    """Colour jitter, greyscale, blur (3 or 5 taps, sigma 0.5-3), noise (sd 2-8%), 1-3 holes of 10-25%
    of each side: the same distributions of what each does to a flat colour and to fine stripes."""
    flat = np.broadcast_to(np.array([153, 102, 77], np.uint8), (64, 64, 3)).copy()
    stripes = np.zeros((64, 64, 3), np.uint8) + np.where(np.arange(64) % 2, 179, 77).astype(np.uint8)[:, None]
    t = strong_transform(0)
    cpu = [
        np.stack([reseed(t, s)(image=img)["image"] for s in range(1600)]).astype(float) / 255 for img in (flat, stripes)
    ]
    device = [_device_views(img, "strong") for img in (flat, stripes)]
    assert _differ(_colour_stats(*cpu), _colour_stats(*device)) == {}
