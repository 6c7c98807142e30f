"""The align stage: warp every face to the canonical 5-point template and write it as JPEG.

Per-sample failures (unreadable image, missing landmarks) are kept in the aligned table with a status
and a reason, never dropped silently; only ``ok`` faces go on to the shards.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from ferdata.core.errors import FerdataError, UsageError
from ferdata.core.io import file_problem, image_root, read_table, stable_hash, write_json
from ferdata.core.settings import Settings, option
from ferdata.core.stage import Run, Stage
from ferdata.core.tables import TABLES

DETECTORS = ("auto", "landmarks", "mtcnn", "insightface", "none")
ALIGNED_DIR = TABLES["aligned_faces"].file


@dataclass(frozen=True)
class AlignSettings(Settings):
    """The ``align`` section of params.yaml."""

    section = "align"
    detector: str = option(
        "auto",
        "landmarks (the dataset's own 5 points), mtcnn or insightface (detect them), none (already aligned: "
        "resize only), auto (landmarks when every face has them, else mtcnn)",
        choices=DETECTORS,
    )
    size: int = option(
        112, "output size in pixels (a multiple of 112 or 128 unless detector is none)", min=16, max=1024
    )
    jpeg_quality: int = option(95, "JPEG quality of the aligned faces", min=1, max=100)
    workers: int = option(2, "worker processes", min=1)
    mtcnn_weights: str = option("", "folder of facenet-pytorch's MTCNN weight files (default: the installed package)")
    insightface_models: str = option("", "folder of an insightface model pack (det_*.onnx)")
    no_face: str = option(
        "flag", "when the detector finds no face: flag it, or keep a center crop", choices=("flag", "center_crop")
    )
    min_face: int = option(20, "smallest face the detector looks for, in pixels", min=1)
    max_pixels: int = option(50_000_000, "larger images are flagged too_large, not decoded", min=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.detector != "none" and self.size % 112 and self.size % 128:
            raise UsageError(f"align.size {self.size} must be a multiple of 112 or 128 (e.g. 112, 224)")

    @property
    def weights(self) -> str:
        """The model files of the chosen detector."""
        return self.mtcnn_weights if self.detector == "mtcnn" else self.insightface_models


STAGE = Stage(
    "align",
    "Align every face to the canonical 5-point template (resumable; --part i/n splits the work).",
    __name__,
    AlignSettings,
    reads=("manifest",),
    may_read=("raw",),
    writes=("aligned_faces", "aligned"),
)


class ImageTooLarge(ValueError):
    """An image beyond ``align.max_pixels``: a ``too_large`` row, not an unreadable one."""


def read_image(path: Path, *, max_pixels: int | None = None) -> np.ndarray:
    """Read any image as 8-bit RGB (grey, CMYK, alpha and 16-bit converted); raise ValueError if it is
    missing, unreadable, a corrupt or truncated JPEG (which OpenCV would silently half-decode), or larger
    than ``max_pixels``. Bytes after a JPEG's end marker are ignored, as every decoder does. An EXIF
    orientation (a phone photo's) is applied, so the face is upright as a viewer shows it."""
    problem = file_problem(path)
    if problem:  # a named pipe would block the read for ever
        raise ValueError(f"unreadable or missing image: {problem[1]}")
    try:
        data = np.fromfile(path, np.uint8)
    except OSError:
        raise ValueError("unreadable or missing image") from None
    if data[:2].tobytes() == b"\xff\xd8":
        check_jpeg(data.tobytes())
    size, orientation = image_header(data.tobytes())
    if max_pixels is not None and size is not None and size[0] * size[1] > max_pixels:
        raise ImageTooLarge(f"too large: {size[0]}x{size[1]} pixels, more than align.max_pixels ({max_pixels})")
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None:
        raise ValueError("unreadable or missing image")
    img = to_rgb8(img)
    return apply_orientation(img, orientation)


def to_rgb8(img: np.ndarray) -> np.ndarray:
    """OpenCV's decoded array (grey, BGR, BGRA; 8 or 16 bit) as 8-bit RGB."""
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype != np.uint8:
        img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def check_jpeg(data: bytes) -> None:
    """Raise ValueError for corrupt or truncated JPEG data: libjpeg-turbo decodes strictly (a warning is
    an error); colour spaces it cannot convert here (CMYK) are left to OpenCV."""
    import simplejpeg

    try:
        simplejpeg.decode_jpeg(data, colorspace="gray", strict=True)
    except ValueError as exc:
        text = str(exc)
        if "Corrupt JPEG" in text or "Premature end" in text or "truncated" in text.lower() or "Bogus" in text:
            raise ValueError(f"unreadable image: corrupt JPEG ({text})") from None


def image_header(data: bytes) -> tuple[tuple[int, int] | None, int]:
    """(width, height) and the EXIF orientation (1-8, 1 = as stored) from the header alone; (None, 1) for
    what PIL does not know (OpenCV decides). PIL's own pixel limit is lifted for this read, since its
    DecompressionBombError would hide the size that align.max_pixels judges."""
    import warnings

    from PIL import Image

    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as img:
                size = img.size
                try:
                    orientation = int(img.getexif().get(0x0112, 1))
                except Exception:  # a damaged EXIF block: the pixels as stored
                    orientation = 1
    except Exception:
        return None, 1
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    return size, orientation if 1 <= orientation <= 8 else 1


def apply_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
    """``img`` turned upright by its EXIF orientation tag (the TIFF/EXIF definition of values 1-8)."""
    moves = {2: (0, True), 3: (2, False), 4: (2, True), 5: (1, True), 6: (3, False), 7: (3, True), 8: (1, False)}
    if orientation not in moves:
        return img
    turns, mirror = moves[orientation]  # counter-clockwise quarter turns, after a left-right mirror
    if mirror:
        img = img[:, ::-1]
    return np.ascontiguousarray(np.rot90(img, turns))


def warp_to_template(img: np.ndarray, landmarks: np.ndarray, size: int) -> np.ndarray:
    """Similarity-warp ``img`` so its 5 landmarks land on the ArcFace template at ``size`` pixels."""
    import warnings

    from insightface.utils import face_align

    with warnings.catch_warnings():  # insightface calls skimage's deprecated estimate(); the result is the same
        warnings.simplefilter("ignore", FutureWarning)
        return face_align.norm_crop(img, np.asarray(landmarks, np.float32).reshape(5, 2), image_size=size)


def resize_face(img: np.ndarray, size: int) -> np.ndarray:
    """An already-aligned face at ``size`` x ``size`` (area filter down, cubic up)."""
    h, w = img.shape[:2]
    if h != w:  # centre square crop, so faces are never squashed
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        img = img[top : top + side, left : left + side]
    interp = cv2.INTER_AREA if img.shape[0] >= size else cv2.INTER_CUBIC
    return cv2.resize(img, (size, size), interpolation=interp)


_DETECTOR: dict[str, object] = {}


def _detector(settings: AlignSettings):
    """One detector per process, built on first use (workers are separate processes)."""
    if settings.detector not in _DETECTOR:
        from ferdata.detect import MTCNN, InsightFace

        _DETECTOR[settings.detector] = (
            MTCNN(settings.weights or None, min_face=settings.min_face)
            if settings.detector == "mtcnn"
            else InsightFace(settings.weights or None)
        )
    return _DETECTOR[settings.detector]


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


def _locate_face(img: np.ndarray, landmarks: object, bbox: object, settings: AlignSettings) -> dict:
    """Landmarks (or a resize) for one image, with the detector's score, flags and status."""
    if settings.detector == "none":
        return {"status": "ok", "face": resize_face(img, settings.size)}
    if settings.detector == "landmarks":
        if landmarks is None or not np.isfinite(np.asarray(landmarks, np.float64)).all():
            return {"status": "no_landmarks", "reason": "manifest has no 5-point landmarks for this face"}
        return {"status": "ok", "face": warp_to_template(img, landmarks, settings.size)}
    faces = _detector(settings).detect(img)
    if not faces:
        if settings.no_face == "center_crop":
            return {"status": "ok", "face": resize_face(img, settings.size), "flags": "no_face,center_crop"}
        return {"status": "no_face", "reason": "the detector found no face"}
    best = faces[choose_face(faces, bbox, img.shape)]
    return {
        "status": "ok",
        "face": warp_to_template(img, best.landmarks, settings.size),
        "score": best.score,
        "flags": "multi_face" if len(faces) > 1 else None,
    }


def _align_one(job: tuple[str, str, object, object, str], settings: AlignSettings) -> dict:
    sample_id, src, landmarks, bbox, out = job
    row = {
        "sample_id": sample_id,
        "detector": settings.detector,
        "score": None,
        "path": None,
        "reason": None,
        "flags": None,
    }
    try:
        img = read_image(Path(src), max_pixels=settings.max_pixels)
    except ValueError as exc:
        status = "too_large" if isinstance(exc, ImageTooLarge) else "unreadable"
        return {**row, "status": status, "reason": f"{src}: {exc}"}
    found = _locate_face(img, landmarks, bbox, settings)
    face = found.pop("face", None)
    row.update(found)
    if face is None:
        return row
    ok, buf = cv2.imencode(
        ".jpg", cv2.cvtColor(face, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, settings.jpeg_quality]
    )
    if not ok:
        return {**row, "status": "unreadable", "reason": "JPEG encoding failed"}
    Path(out).write_bytes(buf.tobytes())
    return {**row, "path": f"{ALIGNED_DIR}/{sample_id}.jpg"}


def _init_worker(parent: int) -> None:
    """A worker process: it dies with the stage's process (Linux), so a killed ``ferdata align`` leaves
    no workers behind; and one thread (one process per core already)."""
    die_with_parent(parent)
    import torch

    torch.set_num_threads(1)


def die_with_parent(parent: int) -> None:
    """Ask the kernel to end this process when its parent ends (Linux); end now if it already has."""
    import ctypes
    import signal
    import sys

    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(1)


WORK = ".align-work"
CHUNK = 512


def _chunk_rows(
    settings: AlignSettings, chunk: list[tuple], workers: int, pool: ProcessPoolExecutor | None
) -> list[dict]:
    run = functools.partial(_align_one, settings=settings)
    if pool is None:
        return [run(job) for job in chunk]
    return list(pool.map(run, chunk, chunksize=max(1, len(chunk) // (4 * workers))))


def _work_dir(data_dir: Path, settings: AlignSettings, manifest: pd.DataFrame) -> Path:
    """The resumable work folder; started afresh when the settings or the manifest changed."""
    work = data_dir / WORK
    same = {k: v for k, v in asdict(settings).items() if k != "workers"}  # the worker count changes no face
    stamp = {"settings": same, "manifest": stable_hash(manifest["sample_id"].tolist()), "chunk": CHUNK}
    if work.is_dir() and (
        not (work / "settings.json").is_file()
        or json.loads((work / "settings.json").read_text()) != json.loads(json.dumps(stamp, sort_keys=True))
    ):
        shutil.rmtree(work)
    (work / ALIGNED_DIR).mkdir(parents=True, exist_ok=True)
    write_json(stamp, work / "settings.json")
    return work


def align(
    data_dir: str | Path, settings: AlignSettings | None = None, *, part: tuple[int, int] = (1, 1), **options: Any
) -> pd.DataFrame:
    """Align the manifest's faces in chunks under ``data_dir/.align-work`` (an interrupted run resumes
    from the chunks already done); ``part=(i, n)`` does only every n-th chunk, so n machines can share
    the work. Once every chunk is done, publish the aligned faces and their table; before that,
    return the rows done so far."""
    index, parts = part
    if not 1 <= index <= parts:
        raise UsageError(f"--part {index}/{parts}: use i/n with 1 <= i <= n")
    with STAGE.start(settings, options, data=data_dir, lock=parts == 1) as run:  # parts run side by side
        manifest, meta = run.read("manifest")
        s = choose_detector(run.settings, manifest, Path(data_dir))
        if s.detector in ("mtcnn", "insightface"):  # fail before any work when the model files are missing
            from ferdata.detect import find_insightface_model, find_weights

            (find_weights if s.detector == "mtcnn" else find_insightface_model)(s.weights or None)
        data_dir = Path(data_dir)
        root = image_root(run.input("manifest").parent, meta)
        work = _work_dir(data_dir, s, manifest)
        jobs = [
            (r.sample_id, str(root / r.path), r.landmarks, r.bbox, str(work / ALIGNED_DIR / f"{r.sample_id}.jpg"))
            for r in manifest.itertuples(index=False)
        ]
        chunks = [jobs[i : i + CHUNK] for i in range(0, len(jobs), CHUNK)]
        todo = [
            c for c in range(len(chunks)) if c % parts == index - 1 and not (work / f"chunk-{c:06d}.parquet").is_file()
        ]
        _align_chunks(run, s, work, [(c, chunks[c]) for c in todo])
        done = sorted(work.glob("chunk-*.parquet"))
        table = pd.concat([read_table(p, "aligned")[0] for p in done], ignore_index=True) if done else pd.DataFrame()
        if len(done) < len(chunks):
            table.attrs["total"] = len(jobs)  # partial: the other parts (or a rerun) finish it
            return table
        table = table.sort_values("sample_id", kind="stable").reset_index(drop=True)
        faces = work / ALIGNED_DIR
        lost = [p for p in table["path"].dropna() if not (work / p).is_file()]
        if lost:
            shutil.rmtree(work)
            raise FerdataError(
                f"{len(lost)} aligned faces of the finished chunks are missing from {faces} (e.g. "
                f"{lost[0]}); the work was cleared: run `ferdata align` again"
            )
        run.adopt("aligned_faces", faces)  # moved by the publication itself: a kill before it loses no face
        run.write(table, "aligned", {"classes": meta["classes"], "size": s.size, "detector": s.detector})
        run.then_remove.append(work)  # the work folder goes with the publication, not before
    if not (table["status"] == "ok").any():  # published, so its reasons can be read; but nothing can go on
        raise FerdataError(
            f"no face of {data_dir} could be aligned ({counts(table)}); read the reason column of "
            f"{data_dir / TABLES['aligned'].file}, then change align.detector (mtcnn for photos, none "
            "for aligned crops) and run `ferdata align` again"
        )
    return table


def choose_detector(settings: AlignSettings, manifest: pd.DataFrame, data_dir: Path) -> AlignSettings:
    """The settings with ``auto`` made concrete: the dataset's own landmarks when every face has them, else
    MTCNN (its weights are part of the set-up); a note says which."""
    if settings.detector != "auto":
        return settings
    has = manifest["landmarks"].map(lambda v: v is not None and bool(np.isfinite(np.asarray(v, float)).all()))
    chosen = "landmarks" if len(has) and has.all() else "mtcnn"
    tqdm.write(f"align {data_dir}: detector auto -> {chosen} ({int(has.sum())}/{len(has)} faces have landmarks)")
    return replace(settings, detector=chosen)


def _align_chunks(run: Run, settings: AlignSettings, work: Path, todo: list[tuple[int, list[tuple]]]) -> None:
    """Align the chunks ``todo``, each committed as its own table under ``work`` when it is done."""
    pool = (
        ProcessPoolExecutor(settings.workers, initializer=_init_worker, initargs=(os.getpid(),))
        if settings.workers > 1 and todo
        else None
    )
    try:
        with tqdm(total=sum(len(c) for _, c in todo), desc="align", unit="face", leave=False, disable=None) as bar:
            for c, chunk in todo:
                rows = pd.DataFrame(_chunk_rows(settings, chunk, settings.workers, pool))
                run.write(rows, "aligned", path=work / f"chunk-{c:06d}.parquet")  # the chunk's commit point
                bar.update(len(rows))
    finally:
        if pool is not None:
            pool.shutdown()


def summarize(table: pd.DataFrame) -> str:
    """One line: how many faces per status and per flag (and how far a partial run is), and where the
    faces not aligned went."""
    line = counts(table)
    left = int((table["status"] != "ok").sum()) if "total" not in table.attrs else 0
    if left:
        line += (
            f"; the {left} faces not aligned are left out of every later stage (aligned.parquet lists them with "
            "their reason, the report counts them)"
        )
        if (table["status"] == "no_face").any():
            line += "; align.no_face: center_crop keeps undetected faces as centre crops"
    return line


def counts(table: pd.DataFrame) -> str:
    """How many faces per status and per flag (and how far a partial run is)."""
    if "total" in table.attrs:
        return (
            f"aligned {len(table)}/{table.attrs['total']} faces so far; run `ferdata align` again (or the other "
            "parts) to finish"
        )
    per_status = table["status"].value_counts().sort_index()
    line = (
        f"aligned {int((table['status'] == 'ok').sum())}/{len(table)} faces ("
        + ", ".join(f"{k} {v}" for k, v in per_status.items())
        + ")"
    )
    flags = table["flags"].dropna().str.split(",").explode().value_counts().sort_index()
    return line + ("; flagged " + ", ".join(f"{k} {v}" for k, v in flags.items()) if len(flags) else "")
