"""ferdata/augment.py: seeded weak and strong views of uint8 faces."""

import numpy as np

from ferdata.augment import strong_transform, weak_transform


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
    t.set_random_seed(7)
    first = [t(image=f)["image"] for f in _faces()]
    t.set_random_seed(7)
    assert all(np.array_equal(x, t(image=f)["image"]) for x, f in zip(first, _faces()))


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
