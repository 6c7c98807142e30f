import numpy as np

from ferdata.augment import Augmenter


def _faces(n=6, size=32):
    return np.random.default_rng(0).integers(0, 255, (n, size, size, 3), dtype=np.uint8)


def test_weak_only_and_shapes():
    weak, strong = Augmenter(0)(_faces())
    assert weak.shape == (6, 32, 32, 3) and weak.dtype == np.uint8 and strong is None


def test_seeded_views_repeat():
    a = Augmenter(3, strong=True)(_faces())
    b = Augmenter(3, strong=True)(_faces())
    c = Augmenter(4, strong=True)(_faces())
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_strong_view_keeps_the_weak_geometry():
    """A strong view is the weak view plus photometric noise: same edges, different colours."""
    img = np.zeros((1, 64, 64, 3), np.uint8)
    img[:, 20:44, 10:30] = 255  # a bright block left of centre
    for seed in range(5):
        weak, strong = Augmenter(seed, strong=True)(img)
        assert weak.shape == strong.shape
        w = weak[0].astype(float).mean(2) > 127
        s = strong[0].astype(float).mean(2)
        assert s[w].mean() > s[~w].mean()  # the block is where the weak view put it
