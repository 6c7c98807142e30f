"""The align stage: warp every face to the canonical 5-point template and write it as JPEG.

Per-sample failures (unreadable image, missing landmarks) are kept in the aligned table with a status
and a reason, never dropped silently; only ``ok`` faces go on to the shards.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from ferdata.errors import FerdataError
from ferdata.io import atomic_dir, image_root, read_table, write_table

ALIGNED = "aligned.parquet"
ALIGNED_DIR = "aligned"
DETECTORS = ("landmarks", "none")


def read_image(path: Path) -> np.ndarray:
    """Read any image as 8-bit RGB (grey, alpha and 16-bit converted); raise ValueError if unreadable."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
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


def _align_one(job: tuple[str, str, object, str, int, int, str]) -> dict:
    sample_id, src, landmarks, out, size, quality, detector = job
    row = {"sample_id": sample_id, "detector": detector, "score": None, "path": None, "reason": None}
    try:
        img = read_image(Path(src))
    except ValueError as exc:
        return {**row, "status": "unreadable", "reason": f"{src}: {exc}"}
    if detector == "none":
        face = resize_face(img, size)
    elif landmarks is None or not np.isfinite(np.asarray(landmarks, np.float64)).all():
        return {**row, "status": "no_landmarks", "reason": "manifest has no 5-point landmarks for this face"}
    else:
        face = warp_to_template(img, landmarks, size)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(face, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        return {**row, "status": "unreadable", "reason": "JPEG encoding failed"}
    Path(out).write_bytes(buf.tobytes())
    return {**row, "status": "ok", "path": f"{ALIGNED_DIR}/{sample_id}.jpg"}


def align(data_dir: str | Path, *, detector: str = "landmarks", size: int = 112, jpeg_quality: int = 95,
          workers: int = 1) -> pd.DataFrame:
    """Align every manifest face into ``data_dir/aligned`` and write ``data_dir/aligned.parquet``."""
    if detector not in DETECTORS:
        raise FerdataError(f"unknown align.detector {detector!r}: available here: {', '.join(DETECTORS)}")
    if detector == "landmarks" and size % 112 and size % 128:
        raise FerdataError(f"align.size {size} must be a multiple of 112 or 128 (e.g. 112, 224)")
    data_dir = Path(data_dir)
    manifest, meta = read_table(data_dir / "manifest.parquet", "manifest", hint="run `ferdata download` first")
    root = image_root(data_dir, meta)
    with atomic_dir(data_dir / ALIGNED_DIR) as tmp:
        jobs = [
            (r.sample_id, str(root / r.path), r.landmarks, str(tmp / f"{r.sample_id}.jpg"), size, jpeg_quality, detector)
            for r in manifest.itertuples(index=False)
        ]
        if workers > 1:
            with ProcessPoolExecutor(workers) as pool:
                rows = list(tqdm(pool.map(_align_one, jobs, chunksize=64), total=len(jobs), desc="align", leave=False, disable=None))
        else:
            rows = [_align_one(j) for j in tqdm(jobs, desc="align", leave=False, disable=None)]
    table = pd.DataFrame(rows)
    write_table(table, data_dir / ALIGNED, "aligned", {"classes": meta["classes"], "size": size, "detector": detector})
    return table


def summarize(table: pd.DataFrame) -> str:
    """One line: how many faces per status."""
    counts = table["status"].value_counts().sort_index()
    return f"aligned {int((table['status'] == 'ok').sum())}/{len(table)} faces (" + ", ".join(f"{k} {v}" for k, v in counts.items()) + ")"
