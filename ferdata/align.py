"""The align stage: warp every face to the canonical 5-point template and write it as JPEG.

Per-sample failures (unreadable image, missing landmarks) are kept in the aligned table with a status
and a reason, never dropped silently; only ``ok`` faces go on to the shards.
"""

from __future__ import annotations

import functools
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from ferdata.errors import FerdataError
from ferdata.io import atomic_dir, image_root, read_table, write_table

ALIGNED = "aligned.parquet"
ALIGNED_DIR = "aligned"
DETECTORS = ("landmarks", "mtcnn", "none")


def read_image(path: Path) -> np.ndarray:
    """Read any image as 8-bit RGB (grey, CMYK, alpha and 16-bit converted); raise ValueError if it is
    missing, unreadable or a truncated JPEG (which OpenCV would silently half-decode)."""
    try:
        data = np.fromfile(path, np.uint8)
    except OSError:
        raise ValueError("unreadable or missing image") from None
    if data[:2].tobytes() == b"\xff\xd8" and b"\xff\xd9" not in data[-64:].tobytes():
        raise ValueError("unreadable image: truncated JPEG (no end marker)")
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None:
        raise ValueError("unreadable or missing image")
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype != np.uint8:
        img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def warp_to_template(img: np.ndarray, landmarks: np.ndarray, size: int) -> np.ndarray:
    """Similarity-warp ``img`` so its 5 landmarks land on the ArcFace template at ``size`` pixels."""
    from insightface.utils import face_align

    return face_align.norm_crop(img, np.asarray(landmarks, np.float32).reshape(5, 2), image_size=size)


def resize_face(img: np.ndarray, size: int) -> np.ndarray:
    """An already-aligned face at ``size`` x ``size`` (area filter down, cubic up)."""
    h, w = img.shape[:2]
    if h != w:  # centre square crop, so faces are never squashed
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        img = img[top:top + side, left:left + side]
    interp = cv2.INTER_AREA if img.shape[0] >= size else cv2.INTER_CUBIC
    return cv2.resize(img, (size, size), interpolation=interp)


@dataclass(frozen=True)
class Settings:
    """How every face of one align run is processed (sent to each worker once per job)."""

    detector: str
    size: int
    quality: int
    weights: str | None = None
    no_face: str = "flag"  # flag (no aligned image) or center_crop
    min_face: int = 20


_DETECTOR: dict[str, object] = {}


def _mtcnn(settings: Settings):
    """One MTCNN per process, built on first use (workers are separate processes)."""
    if "mtcnn" not in _DETECTOR:
        from ferdata.detect import MTCNN

        _DETECTOR["mtcnn"] = MTCNN(settings.weights or None, min_face=settings.min_face)
    return _DETECTOR["mtcnn"]


def choose_face(faces: list, bbox: object, shape: tuple[int, ...]) -> int:
    """The face to keep: best overlap with the dataset's box ``[x, y, w, h]`` when there is one, else the
    largest, most central one."""
    boxes = np.array([f.box for f in faces], np.float64)
    if bbox is not None and np.isfinite(np.asarray(bbox, np.float64)).all():
        x, y, w, h = np.asarray(bbox, np.float64)
        ix = np.clip(np.minimum(boxes[:, 2], x + w) - np.maximum(boxes[:, 0], x), 0, None)
        iy = np.clip(np.minimum(boxes[:, 3], y + h) - np.maximum(boxes[:, 1], y), 0, None)
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        return int(np.argmax(ix * iy / (area + w * h - ix * iy)))
    centre = np.array([shape[1], shape[0]]) / 2
    size = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    offset = np.linalg.norm((boxes[:, :2] + boxes[:, 2:]) / 2 - centre, axis=1)
    return int(np.argmax(size - 0.5 * offset))


def _locate_face(img: np.ndarray, landmarks: object, bbox: object, settings: Settings) -> dict:
    """Landmarks (or a resize) for one image, with the detector's score, flags and status."""
    if settings.detector == "none":
        return {"status": "ok", "face": resize_face(img, settings.size)}
    if settings.detector == "landmarks":
        if landmarks is None or not np.isfinite(np.asarray(landmarks, np.float64)).all():
            return {"status": "no_landmarks", "reason": "manifest has no 5-point landmarks for this face"}
        return {"status": "ok", "face": warp_to_template(img, landmarks, settings.size)}
    faces = _mtcnn(settings).detect(img)
    if not faces:
        if settings.no_face == "center_crop":
            return {"status": "ok", "face": resize_face(img, settings.size), "flags": "no_face,center_crop"}
        return {"status": "no_face", "reason": "the detector found no face"}
    best = faces[choose_face(faces, bbox, img.shape)]
    return {"status": "ok", "face": warp_to_template(img, best.landmarks, settings.size), "score": best.score,
            "flags": "multi_face" if len(faces) > 1 else None}


def _align_one(job: tuple[str, str, object, object, str], settings: Settings) -> dict:
    sample_id, src, landmarks, bbox, out = job
    row = {"sample_id": sample_id, "detector": settings.detector, "score": None, "path": None, "reason": None,
           "flags": None}
    try:
        img = read_image(Path(src))
    except ValueError as exc:
        return {**row, "status": "unreadable", "reason": f"{src}: {exc}"}
    found = _locate_face(img, landmarks, bbox, settings)
    face = found.pop("face", None)
    row.update(found)
    if face is None:
        return row
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(face, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, settings.quality])
    if not ok:
        return {**row, "status": "unreadable", "reason": "JPEG encoding failed"}
    Path(out).write_bytes(buf.tobytes())
    return {**row, "path": f"{ALIGNED_DIR}/{sample_id}.jpg"}


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)  # one process per core already


def align(data_dir: str | Path, *, detector: str = "landmarks", size: int = 112, jpeg_quality: int = 95,
          workers: int = 1, weights: str | None = None, no_face: str = "flag", min_face: int = 20) -> pd.DataFrame:
    """Align every manifest face into ``data_dir/aligned`` and write ``data_dir/aligned.parquet``."""
    if detector not in DETECTORS:
        raise FerdataError(f"unknown align.detector {detector!r}: available here: {', '.join(DETECTORS)}")
    if detector != "none" and size % 112 and size % 128:
        raise FerdataError(f"align.size {size} must be a multiple of 112 or 128 (e.g. 112, 224)")
    if no_face not in ("flag", "center_crop"):
        raise FerdataError(f"align.no_face {no_face!r}: use flag or center_crop")
    if detector == "mtcnn":
        from ferdata.detect import find_weights

        find_weights(weights)  # fail before any work when the weights are missing
    settings = Settings(detector, size, jpeg_quality, weights, no_face, min_face)
    data_dir = Path(data_dir)
    manifest, meta = read_table(data_dir / "manifest.parquet", "manifest", hint="run `ferdata download` first")
    root = image_root(data_dir, meta)
    run = functools.partial(_align_one, settings=settings)
    with atomic_dir(data_dir / ALIGNED_DIR) as tmp:
        jobs = [(r.sample_id, str(root / r.path), r.landmarks, r.bbox, str(tmp / f"{r.sample_id}.jpg"))
                for r in manifest.itertuples(index=False)]
        if workers > 1:
            with ProcessPoolExecutor(workers, initializer=_init_worker) as pool:
                rows = list(tqdm(pool.map(run, jobs, chunksize=16), total=len(jobs), desc="align", leave=False, disable=None))
        else:
            rows = [run(j) for j in tqdm(jobs, desc="align", leave=False, disable=None)]
    table = pd.DataFrame(rows)
    write_table(table, data_dir / ALIGNED, "aligned", {"classes": meta["classes"], "size": size, "detector": detector})
    return table


def summarize(table: pd.DataFrame) -> str:
    """One line: how many faces per status and per flag."""
    counts = table["status"].value_counts().sort_index()
    line = f"aligned {int((table['status'] == 'ok').sum())}/{len(table)} faces (" + ", ".join(f"{k} {v}" for k, v in counts.items()) + ")"
    flags = table["flags"].dropna().str.split(",").explode().value_counts().sort_index()
    return line + ("; flagged " + ", ".join(f"{k} {v}" for k, v in flags.items()) if len(flags) else "")
