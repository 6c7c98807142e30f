"""The embedded default dataset: procedural, FERG-like stylised faces with known ambiguity.

Every face is drawn from a true label distribution: a video of one identity ramps from neutral to a peak
expression that may blend two classes. The expression parameters (brows, eyes, mouth, nose wrinkle,
asymmetry) are the distribution-weighted mix of per-class prototypes. The one "annotated" label is a draw
from the distribution, as a single annotator would give, and the annotated valence/arousal is what a rater
reads off the drawn face (:func:`rated_va`): a fixed linear reading of the face's expression parameters,
resting expression included, plus rater noise of ``synth.va_noise``. It is never computed from the true
distribution the benchmarks score against, so VA neighbours are a cue, not an oracle. The face is drawn in a
canonical frame and placed in the photo by a random rotation, scale, shift and a slight yaw squash, so
alignment has real work to do.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ferdata.core.classes import BASIC7, CANONICAL, CONFUSABLE, VA_CENTROIDS
from ferdata.core.groups import split_groups
from ferdata.core.settings import Settings, option

# Expression parameters: brow raise, inner-brow lowering, eye openness, mouth curvature (smile>0),
# mouth openness, mouth width, nose wrinkle, one-sided smile.
PARAMS = ("brow_raise", "brow_inner", "eye_open", "mouth_curve", "mouth_open", "mouth_width", "wrinkle", "asym")
PROTOTYPES: dict[str, tuple[float, ...]] = {
    "neutral": (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
    "happy": (0.1, 0.0, -0.35, 1.0, 0.35, 0.7, 0.0, 0.0),
    "sad": (0.0, -0.9, -0.3, -0.8, 0.0, -0.1, 0.0, 0.0),
    "surprise": (1.0, -0.1, 0.9, 0.0, 0.9, -0.5, 0.0, 0.0),
    "fear": (0.7, -0.6, 0.8, -0.3, 0.45, 0.5, 0.0, 0.0),
    "disgust": (-0.4, 0.5, -0.45, -0.45, 0.15, 0.0, 1.0, 0.0),
    "anger": (-0.7, 1.0, 0.15, -0.3, 0.0, -0.35, 0.3, 0.0),
    "contempt": (0.0, 0.0, -0.1, 0.1, 0.0, 0.0, 0.0, 1.0),
}
# Canonical 112x112 five-point template (eyes, nose tip, mouth corners) the faces are drawn around.
TEMPLATE = np.array([[38.29, 51.70], [73.53, 51.50], [56.03, 71.74], [41.55, 92.37], [70.73, 92.20]], np.float32)
SUPER = 2  # the face is drawn at SUPER x 112 pixels, then warped down into the photo


@dataclass(frozen=True)
class SynthSettings(Settings):
    """Size and difficulty of the synth dataset (the ``synth`` section of params.yaml)."""

    section = "synth"
    n_subjects: int = option(60, "identities", min=1)
    videos_per_subject: int = option(8, "videos per identity", min=1)
    frames_per_video: int = option(8, "frames per video, from neutral to the peak", min=1)
    image_size: int = option(160, "photo size before alignment", min=32)
    blend_prob: float = option(0.4, "share of videos whose peak blends two classes", min=0.0, max=1.0)
    contempt: bool = option(False, "draw contempt too (8 classes instead of 7)")
    val_fraction: float = option(0.15, "share of identities in val", min=0.0, below=1.0)
    test_fraction: float = option(0.2, "share of identities in test", min=0.0, below=1.0)
    va_noise: float = option(
        0.25, "sd of the rater noise on annotated valence and arousal (AffectNet raters: ~0.25)", min=0.0
    )

    @property
    def classes(self) -> tuple[str, ...]:
        return CANONICAL if self.contempt else BASIC7


@dataclass(frozen=True)
class Identity:
    """What stays fixed for one person: geometry, colours, hair and resting expression."""

    subject_id: str
    face_w: float
    face_h: float
    eye_dx: float
    eye_dy: float
    mouth_dy: float
    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    iris: tuple[int, int, int]
    hair_style: int
    rest: np.ndarray


def subject_id(index: int) -> str:
    return f"s{index:03d}"


def make_identity(rng: np.random.Generator, index: int) -> Identity:
    """Draw one random identity."""
    tone = rng.uniform(0.25, 1.0)
    skin = tuple(int(c) for c in np.array([200, 170, 150]) * tone + np.array([45, 40, 30]) + rng.integers(-10, 10, 3))
    hair = tuple(
        int(c)
        for c in rng.choice([[30, 30, 35], [20, 40, 80], [40, 90, 150], [30, 60, 110], [200, 200, 210], [20, 20, 20]])
    )
    iris = tuple(int(c) for c in rng.choice([[60, 40, 20], [120, 90, 40], [40, 80, 60], [30, 30, 30]]))
    rest = np.zeros(len(PARAMS))
    rest[[0, 1, 3]] = rng.normal(0.0, 0.15, 3)
    return Identity(
        subject_id=subject_id(index),
        face_w=rng.uniform(35, 43),
        face_h=rng.uniform(45, 53),
        eye_dx=rng.uniform(-2.0, 2.0),
        eye_dy=rng.uniform(-2.0, 2.0),
        mouth_dy=rng.uniform(-2.5, 2.5),
        skin=skin,
        hair=hair,
        iris=iris,
        hair_style=int(rng.integers(0, 3)),
        rest=rest,
    )


def emotional_mass(intensity: float) -> float:
    """Share of the distribution on the expressed classes (the rest is neutral) at an intensity."""
    return float(1.0 / (1.0 + np.exp(-(intensity - 0.35) / 0.1)))


def video_distributions(rng: np.random.Generator, cfg: SynthSettings, n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """True distributions and intensities of one video's frames, ramping from neutral to the peak."""
    classes = cfg.classes
    n = len(classes)
    weights = np.ones(n)
    weights[0] = 0.5  # neutral videos are rarer; low-intensity frames of the others are neutral-ish
    primary = classes[rng.choice(n, p=weights / weights.sum())]
    peak_mix = np.zeros(n)
    if primary == "neutral":
        peak_mix[0] = 1.0
        if rng.random() < cfg.blend_prob:
            other = next(c for c in CONFUSABLE["neutral"] if c in classes)
            peak_mix[classes.index(other)] = rng.uniform(0.15, 0.45)
            peak_mix[0] = 1.0 - peak_mix[classes.index(other)]
        intensities = np.zeros(n_frames)
        return np.tile(peak_mix, (n_frames, 1)), intensities
    peak_mix[classes.index(primary)] = 1.0
    if rng.random() < cfg.blend_prob:
        near = [c for c in CONFUSABLE[primary] if c in classes and c != "neutral"]
        if near and rng.random() < 0.75:
            second = near[int(rng.integers(len(near)))]
        else:
            second = classes[int(rng.choice([i for i in range(1, n) if classes[i] != primary]))]
        share = rng.uniform(0.2, 0.5)
        peak_mix[:] = 0.0
        peak_mix[classes.index(primary)] = 1.0 - share
        peak_mix[classes.index(second)] = share
    peak = rng.uniform(0.7, 1.0)
    ramp = ((np.arange(n_frames) + 1) / n_frames) ** 0.8
    intensities = peak * ramp
    dists = np.zeros((n_frames, n))
    for t, s in enumerate(intensities):
        m = emotional_mass(s)
        dists[t] = m * peak_mix
        dists[t, 0] += 1.0 - m
    return dists, intensities


def expression_params(dist: np.ndarray, classes: tuple[str, ...]) -> np.ndarray:
    """The face's expression parameters: the distribution-weighted mix of class prototypes."""
    protos = np.array([PROTOTYPES[c] for c in classes])
    return dist @ protos


def va_reading(classes: tuple[str, ...] = CANONICAL) -> tuple[np.ndarray, np.ndarray]:
    """(W, b): the linear map from expression parameters to valence/arousal that reads every class
    prototype as its circumplex centroid (least squares, minimum norm)."""
    protos = np.array([PROTOTYPES[c] for c in classes])
    centroids = np.array([VA_CENTROIDS[c] for c in classes])
    design = np.hstack([protos, np.ones((len(classes), 1))])
    coef = np.linalg.lstsq(design, centroids, rcond=None)[0]
    return coef[:-1], coef[-1]


def rated_va(seen: np.ndarray, rng: np.random.Generator, noise: float) -> np.ndarray:
    """Valence/arousal as a rater gives it for a face whose expression parameters are ``seen``.

    Raters see the face, not its distribution: the reading of the drawn parameters (per-frame
    expression noise and the person's resting expression included) plus independent rater noise. The
    default ``synth.va_noise`` 0.25 matches AffectNet, whose two raters differ by an RMSE of about
    0.34 (valence) and 0.36 (arousal), i.e. about 0.25 per rater."""
    w, b = va_reading()
    return np.clip(seen @ w + b + rng.normal(0.0, noise, 2), -1.0, 1.0)


def _pts(points: np.ndarray) -> np.ndarray:
    return np.round(points * SUPER * 16).astype(np.int32)  # cv2 fixed point, shift=4


def _ellipse(
    img: np.ndarray,
    centre: tuple[float, float],
    axes: tuple[float, float],
    colour: tuple[int, ...],
    *,
    thickness: int = -1,
    arc: tuple[int, int] = (0, 360),
) -> None:
    """An anti-aliased ellipse at sub-pixel precision (centre and axes in 112-unit face coordinates)."""
    cv2.ellipse(
        img, tuple(_pts(np.array(centre))), tuple(_pts(np.array(axes))), 0, *arc, colour, thickness, cv2.LINE_AA, 4
    )


def _bezier(a: np.ndarray, mid: np.ndarray, b: np.ndarray, n: int = 16) -> np.ndarray:
    """Quadratic curve from ``a`` to ``b`` passing through ``mid`` at its middle."""
    ctrl = 2 * mid - (a + b) / 2
    t = np.linspace(0, 1, n)[:, None]
    return (1 - t) ** 2 * a + 2 * (1 - t) * t * ctrl + t**2 * b


def draw_face(ident: Identity, expr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Draw a face in the canonical frame: RGBA at SUPER x 112 pixels and its 5 landmarks (112 units)."""
    size = 112 * SUPER
    img = np.zeros((size, size, 4), np.uint8)
    aa, sh = cv2.LINE_AA, 4
    brow_raise, brow_inner, eye_open, curve, mouth_open, width, wrinkle, asym = expr + ident.rest
    skin = (*ident.skin, 255)
    hair = (*ident.hair, 255)
    cx, cy = 56.0, 64.0
    # hair behind, head, hair on top
    if ident.hair_style == 1:
        _ellipse(img, (cx, cy + 6), (ident.face_w + 7, ident.face_h + 10), hair)
    _ellipse(img, (cx, cy), (ident.face_w, ident.face_h), skin)
    if ident.hair_style != 2:
        _ellipse(img, (cx, cy - ident.face_h * 0.55), (ident.face_w * 1.02, ident.face_h * 0.5), hair, arc=(180, 360))
    # eyes
    eyes = TEMPLATE[:2].copy()
    eyes[0, 0] += ident.eye_dx
    eyes[1, 0] -= ident.eye_dx
    eyes[:, 1] += ident.eye_dy
    half_h = max(0.4, 3.2 * (1.0 + 0.65 * eye_open))
    for (ex, ey), side in zip(eyes, (-1, 1)):
        _ellipse(img, (ex, ey), (6.5, half_h), (245, 245, 240, 255))
        iris_h = min(2.6, half_h)
        _ellipse(img, (ex, ey), (2.6, iris_h), (*ident.iris, 255))
        _ellipse(img, (ex, ey), (1.1, min(1.1, half_h)), (10, 10, 10, 255))
        _ellipse(img, (ex, ey), (6.5, half_h), (40, 30, 30, 255), thickness=1)
        # brow: outer and inner ends; inner end lowered by brow_inner
        base = ey - 8.5 - 5.0 * brow_raise
        outer = np.array([ex + side * 8.0, base + 1.0])
        inner = np.array([ex - side * 6.0, base + 4.0 * brow_inner])
        mid = (outer + inner) / 2 + np.array([0.0, -1.5])
        brow = _bezier(outer, mid, inner, 8)
        dark = tuple(int(c * 0.6) for c in ident.hair)
        cv2.polylines(img, [_pts(brow)], False, (*dark, 255), 2 * SUPER, aa, sh)
    # nose
    nose = TEMPLATE[2]
    cv2.polylines(
        img,
        [_pts(np.array([[nose[0] - 1, nose[1] - 14], [nose[0] - 2.5, nose[1]], [nose[0] + 2, nose[1] + 1]]))],
        False,
        (*[int(c * 0.75) for c in ident.skin], 255),
        SUPER,
        aa,
        sh,
    )
    if wrinkle > 0.05:
        shade = tuple(int(c * (1.0 - 0.35 * min(1.0, wrinkle))) for c in ident.skin)
        for k in range(3):
            y = nose[1] - 13 + 2.2 * k
            cv2.polylines(
                img,
                [
                    _pts(
                        _bezier(
                            np.array([nose[0] - 4, y + 1]), np.array([nose[0], y]), np.array([nose[0] + 4, y + 1]), 6
                        )
                    )
                ],
                False,
                (*shade, 255),
                SUPER,
                aa,
                sh,
            )
    # mouth: corners move with width/curve/asym, lips part with openness
    corners = TEMPLATE[3:].copy()
    corners[:, 1] += ident.mouth_dy
    corners[0, 0] -= 4.0 * width
    corners[1, 0] += 4.0 * width
    corners[:, 1] -= 5.0 * curve
    corners[1, 1] -= 6.0 * asym
    centre_y = corners[:, 1].mean() + 3.5 * curve - 2.0 * wrinkle
    mid_up = np.array([corners[:, 0].mean(), centre_y])
    upper = _bezier(corners[0], mid_up, corners[1])
    lip = (150, 60, 70, 255)
    if mouth_open > 0.05:
        lower = _bezier(corners[0], mid_up + np.array([0.0, 11.0 * mouth_open + 1.0]), corners[1])
        cv2.fillPoly(img, [_pts(np.vstack([upper, lower[::-1]]))], (60, 15, 25, 255), aa, sh)
        cv2.polylines(img, [_pts(lower)], False, lip, SUPER + 1, aa, sh)
    cv2.polylines(img, [_pts(upper)], False, lip, SUPER + 1, aa, sh)
    landmarks = np.vstack([eyes, TEMPLATE[2:3], corners]).astype(np.float32)
    return img, landmarks


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A cluttered background: a colour gradient plus a few random shapes."""
    c0, c1 = rng.integers(0, 256, (2, 3))
    ramp = np.linspace(0, 1, size)[None, :, None] if rng.random() < 0.5 else np.linspace(0, 1, size)[:, None, None]
    bg = (c0 * (1 - ramp) + c1 * ramp) * np.ones((size, size, 1))
    bg = bg.astype(np.uint8)
    for _ in range(int(rng.integers(2, 6))):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        p = rng.integers(0, size, 2)
        if rng.random() < 0.5:
            cv2.circle(bg, tuple(int(v) for v in p), int(rng.integers(5, size // 4)), colour, -1, cv2.LINE_AA)
        else:
            q = p + rng.integers(-size // 3, size // 3, 2)
            cv2.rectangle(bg, tuple(int(v) for v in p), tuple(int(v) for v in q), colour, -1)
    return bg


def place_face(
    rng: np.random.Generator, face: np.ndarray, landmarks: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Composite the canonical face into a photo with random pose; return image, landmarks, bbox."""
    angle = float(np.clip(rng.normal(0.0, 12.0), -30, 30))
    face_px = rng.uniform(0.45, 0.75) * size  # width of the canonical 112 frame in the photo
    scale = face_px / (112 * SUPER)
    squash = rng.uniform(0.85, 1.0)  # a little yaw: not a similarity, alignment cannot undo it fully
    centre = size / 2 + rng.uniform(-0.12, 0.12, 2) * size
    rot = cv2.getRotationMatrix2D((0.0, 0.0), angle, scale)
    affine = rot[:, :2] @ np.diag([squash, 1.0])
    shift = centre - affine @ np.array([56.0 * SUPER, 60.0 * SUPER])
    m = np.hstack([affine, shift[:, None]])
    warped = cv2.warpAffine(face, m, (size, size), flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    bg = _background(rng, size).astype(np.float32)
    alpha = warped[..., 3:4].astype(np.float32) / 255.0
    light = np.linspace(rng.uniform(0.7, 1.0), rng.uniform(1.0, 1.2), size)
    light = light[None, :, None] if rng.random() < 0.5 else light[:, None, None]
    img = alpha * warped[..., :3].astype(np.float32) * light + (1 - alpha) * bg
    img += rng.normal(0.0, rng.uniform(2.0, 8.0), img.shape)
    img = np.clip(img, 0, 255).astype(np.uint8)
    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img, (3, 3), 0)
    pts = (landmarks * SUPER) @ m[:, :2].T + m[:, 2]
    corners = np.array([[0, 0], [112, 0], [0, 112], [112, 112]], np.float64) * SUPER @ m[:, :2].T + m[:, 2]
    bbox = np.array([*corners.min(0), *(corners.max(0) - corners.min(0))], np.float32)
    return img, pts.astype(np.float32), bbox


@dataclass
class SynthFace:
    """One generated face and its ground truth."""

    sample_id: str
    subject_id: str
    video_id: str
    frame: int
    split: str
    image: np.ndarray
    landmarks: np.ndarray
    bbox: np.ndarray
    true_dist: np.ndarray
    label: int
    valence: float
    arousal: float


def generate(cfg: SynthSettings, seed: int = 0):
    """Yield every face of the dataset in a fixed order; same settings and seed, same faces. Splits are
    by identity: test faces belong to people never seen in training."""
    classes = cfg.classes
    subjects = [subject_id(s) for s in range(cfg.n_subjects)]
    split_of = split_groups(subjects, seed=seed, val=cfg.val_fraction, test=cfg.test_fraction)
    for s in range(cfg.n_subjects):
        rng = np.random.default_rng([seed, s])
        ident = make_identity(rng, s)
        split = split_of[ident.subject_id]
        for v in range(cfg.videos_per_subject):
            dists, _ = video_distributions(rng, cfg, cfg.frames_per_video)
            video_id = f"{ident.subject_id}v{v:02d}"
            for f, dist in enumerate(dists):
                expr = expression_params(dist, classes) + rng.normal(0.0, 0.08, len(PARAMS))
                face, lmk = draw_face(ident, expr)
                image, pts, bbox = place_face(rng, face, lmk, cfg.image_size)
                label_index = int(rng.choice(len(classes), p=dist / dist.sum()))
                va = rated_va(expr + ident.rest, rng, cfg.va_noise)
                yield SynthFace(
                    sample_id=f"synth_{video_id}f{f:02d}",
                    subject_id=ident.subject_id,
                    video_id=video_id,
                    frame=f,
                    split=split,
                    image=image,
                    landmarks=pts,
                    bbox=bbox,
                    true_dist=dist.astype(np.float32),
                    label=CANONICAL.index(classes[label_index]),
                    valence=float(va[0]),
                    arousal=float(va[1]),
                )
