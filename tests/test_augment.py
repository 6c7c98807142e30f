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
    """The written-out sampling matrix: a flip mirrors the pixels, a shift of 6% moves them 3 of 50."""
    import torch

    from ferdata.augment import weak_view

    x = torch.rand(2, 3, 50, 50)
    u = torch.tensor([[0.9, 0.1, 0.5, 1.0, 0.5, 0.5], [0.1, 0.9, 0.5, 0.5, 0.5, 0.5]])  # shift right; flip only
    out = weak_view(x, u)
    assert torch.allclose(out[0, ..., 3:], x[0, ..., :-3], atol=1e-5)
    assert torch.allclose(out[1], x[1].flip(-1), atol=1e-5)
    still = torch.tensor([[0.9, 0.9, 0.0, 0.0, 0.0, 0.0]])  # neither flipped nor moved
    assert torch.allclose(weak_view(x[:1], still), x[:1], atol=1e-5)


def test_batch_views_draw_on_the_device_and_read_nothing_back(host_reads):
    """Every draw is a device tensor op from the batch's generator: no host reads, no per-sample work
    on the host (kornia.augmentation's modules draw on the host and copy over, op by op)."""
    import torch

    from ferdata.augment import BatchAugment

    with host_reads() as mode:
        views = BatchAugment()(torch.rand(8, 3, 32, 32), "two_view", 3)
    assert mode.calls == [] and set(views) == {"image", "strong"}
