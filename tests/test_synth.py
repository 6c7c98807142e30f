import numpy as np

from ferdata.core.classes import BASIC7, CANONICAL
from ferdata.synth import SynthSettings, emotional_mass, generate, video_distributions

CFG = SynthSettings(n_subjects=5, videos_per_subject=3, frames_per_video=5, image_size=96)
SEED = 11


def test_same_seed_same_faces():
    a, b = list(generate(CFG, SEED)), list(generate(CFG, SEED))
    assert [f.sample_id for f in a] == [f.sample_id for f in b]
    assert all(np.array_equal(x.image, y.image) and x.label == y.label for x, y in zip(a, b))


def test_other_seed_other_faces():
    a = next(iter(generate(CFG, SEED)))
    b = next(iter(generate(CFG, 12)))
    assert not np.array_equal(a.image, b.image)


def test_ground_truth_is_consistent():
    faces = list(generate(CFG, SEED))
    assert len(faces) == 5 * 3 * 5
    for f in faces:
        assert f.image.shape == (96, 96, 3) and f.image.dtype == np.uint8
        assert abs(f.true_dist.sum() - 1) < 1e-5 and (f.true_dist >= 0).all()
        assert CANONICAL[f.label] in BASIC7
        assert f.true_dist[BASIC7.index(CANONICAL[f.label])] > 0  # the annotated label is a draw from the truth
        assert -1 <= f.valence <= 1 and -1 <= f.arousal <= 1
        assert f.landmarks.shape == (5, 2) and (f.landmarks > 0).all() and (f.landmarks < 96).all()
        assert "." not in f.sample_id


def test_splits_are_subject_disjoint():
    faces = list(generate(CFG, SEED))
    split_of = {}
    for f in faces:
        assert split_of.setdefault(f.subject_id, f.split) == f.split
    assert {"train", "val", "test"} <= set(split_of.values())


def test_videos_ramp_from_neutral_to_peak():
    rng = np.random.default_rng(0)
    cfg = SynthSettings(blend_prob=1.0)
    for _ in range(20):
        dists, intensity = video_distributions(rng, cfg, 8)
        if intensity.max() > 0:  # not a neutral video
            assert (np.diff(dists[:, 0]) <= 1e-9).all() and dists[0, 0] > dists[-1, 0]
            assert (np.diff(intensity) > 0).all()
            assert (dists[-1] > 0).sum() == 3  # a blend: two classes plus a little neutral
    assert emotional_mass(0.0) < 0.05 and emotional_mass(1.0) > 0.99


def test_contempt_is_optional():
    cfg = SynthSettings(n_subjects=3, videos_per_subject=6, frames_per_video=2, contempt=True)
    assert cfg.classes == CANONICAL
    assert all(len(f.true_dist) == 8 for f in generate(cfg, 2))


def test_rated_va_reads_the_face_not_the_true_distribution():
    from dataclasses import replace

    from ferdata.core.classes import VA_CENTROIDS
    from ferdata.synth import PROTOTYPES, va_reading

    w, b = va_reading()
    for c in CANONICAL:  # each prototype face reads as its class's circumplex centroid
        assert np.allclose(np.array(PROTOTYPES[c]) @ w + b, VA_CENTROIDS[c], atol=1e-6)
    centroids = np.array([VA_CENTROIDS[c] for c in BASIC7])

    def residual_sd(noise: float) -> float:
        faces = list(generate(replace(CFG, va_noise=noise), SEED))
        oracle = np.stack([f.true_dist @ centroids for f in faces])
        rated = np.array([[f.valence, f.arousal] for f in faces])
        return float((rated - oracle).std())

    quiet, default = residual_sd(0.0), residual_sd(SynthSettings().va_noise)
    assert 0.05 < quiet < 0.25  # no rater noise: still the drawn face (expression noise, resting face)
    assert default > quiet + 0.05  # rater noise of realistic size on top
