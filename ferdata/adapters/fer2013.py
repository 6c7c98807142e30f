"""FER2013 (``fer2013.csv`` pixels) and FER+ (10 crowd votes per face), in either of FER+'s layouts:
``fer2013.csv`` + ``fer2013new.csv``, or the ``FER2013{Train,Valid,Test}/label.csv`` + PNG folders that
FER+'s ``generate_training_data.py`` writes."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from ferdata.adapters.base import Ingest, image_problem, require_root
from ferdata.core.classes import BASIC7, CANONICAL
from ferdata.core.errors import FerdataError
from ferdata.core.settings import Settings, option

WHERE_FER2013 = "FER2013 is on Kaggle: challenges-in-representation-learning-facial-expression-recognition-challenge"
WHERE_FERPLUS = (
    "FER+ labels are at github.com/microsoft/FERPlus (fer2013new.csv); the images come from FER2013 (fer2013.csv)"
)
FER2013_LABELS = ("anger", "disgust", "fear", "happy", "sad", "surprise", "neutral")
USAGE = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
FERPLUS_VOTES = ("neutral", "happy", "surprise", "sad", "anger", "disgust", "fear", "contempt")
FERPLUS_FOLDERS = {"FER2013Train": "train", "FER2013Valid": "val", "FER2013Test": "test"}
_VOTE_ORDER = [FERPLUS_VOTES.index(c) for c in CANONICAL]  # votes reordered into canonical order


@dataclass(frozen=True)
class Fer2013Options(Settings):
    """The ``fer2013`` section of its params.yaml."""

    section = "fer2013"


@dataclass(frozen=True)
class FerplusOptions(Settings):
    """The ``ferplus`` section of its params.yaml."""

    section = "ferplus"
    label_mode: str = option(
        "plurality",
        "the label from the 10 votes: plurality (top vote) or majority (more than half, else rejected)",
        choices=("majority", "plurality"),
    )


def decode_pixels(pixels: str) -> np.ndarray:
    """A 48x48 grey face from FER2013's 2,304 space-separated values; ValueError when malformed."""
    values = np.array(pixels.split(), dtype=np.int64)
    if values.size != 48 * 48 or values.min(initial=0) < 0 or values.max(initial=0) > 255:
        raise ValueError(f"{values.size} pixel values, expected 2304 in 0..255")
    return values.astype(np.uint8).reshape(48, 48)


def votes_label(counts: list[int], *, mode: str) -> tuple[int | None, str]:
    """The label of FER+ vote counts (8 emotions, unknown, NF) or None with the reason to reject."""
    emotions, unknown, not_face = counts[:8], counts[8], counts[9]
    total, top = sum(counts), max(emotions)
    if not_face and not_face >= top:
        return None, "not_a_face"
    if unknown and unknown >= top:
        return None, "unknown_majority"
    if total == 0 or top == 0:
        return None, "no_emotion_votes"
    winners = [i for i, v in enumerate(emotions) if v == top]
    if mode == "majority" and top * 2 <= total:
        return None, "no_majority"
    if len(winners) > 1:
        return None, "tied_top_votes"
    return CANONICAL.index(FERPLUS_VOTES[winners[0]]), ""


def add_votes(ing: Ingest, root: Path, sid: str, split: str, path: str, counts: list[int], *, mode: str) -> None:
    label, why = votes_label(counts, mode=mode)
    if label is None:
        ing.reject(sid, path, why, "votes " + " ".join(map(str, counts)))
        return
    votes = [counts[i] for i in _VOTE_ORDER]
    dist = np.asarray(votes, np.float64) / sum(votes)
    problem = image_problem(root / path)
    if problem:
        ing.reject(sid, path, *problem)
        return
    ing.add(sid, split, path, label, votes=votes, true_dist=dist)


def parse_counts(cells: list[str]) -> list[int]:
    counts = [int(float(c)) for c in cells]
    if len(counts) != 10 or min(counts) < 0:
        raise ValueError("expected 10 non-negative vote counts")
    return counts


def ingest_ferplus_folders(root: Path, *, mode: str) -> Ingest:
    ing = Ingest("ferplus", classes=list(CANONICAL))
    for folder, split in FERPLUS_FOLDERS.items():
        table = root / folder / "label.csv"
        if not table.is_file():
            continue
        with open(table, newline="") as fh:
            for n, cells in enumerate(csv.reader(fh), 1):
                if not cells or not cells[0].strip():
                    continue
                name = cells[0].strip()
                sid = "ferplus-" + Path(name).stem
                try:
                    counts = parse_counts(cells[2:12])
                except (ValueError, IndexError):
                    ing.reject(sid, f"{folder}/{name}", "bad_row", f"{table} line {n}")
                    continue
                add_votes(ing, root, sid, split, f"{folder}/{name}", counts, mode=mode)
    return ing


def ingest_csv(root: Path, out_dir: Path, *, ferplus: bool, mode: str) -> Ingest:
    """Decode fer2013.csv into PNGs under ``out_dir/raw``; with FER+, join fer2013new.csv row by row."""
    name = "ferplus" if ferplus else "fer2013"
    ing = Ingest(name, classes=list(CANONICAL) if ferplus else list(BASIC7))
    new_rows: list[dict[str, str]] | None = None
    if ferplus:
        with open(root / "fer2013new.csv", newline="") as fh:
            new_rows = list(csv.DictReader(fh))
    raw = out_dir / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    with open(root / "fer2013.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    if new_rows is not None and len(new_rows) != len(rows):
        raise FerdataError(
            f"{root / 'fer2013new.csv'} has {len(new_rows)} rows but fer2013.csv has {len(rows)}; "
            "they must be the same release, row for row"
        )
    for i, row in enumerate(tqdm(rows, desc=name, unit="face", leave=False, disable=None)):
        sid = f"fer2013-{i:05d}"
        split = USAGE.get((row.get("Usage") or "").strip())
        if new_rows is not None:
            image_name = (new_rows[i].get("Image name") or "").strip()
            if not image_name:
                ing.reject(sid, None, "removed_by_ferplus", f"fer2013.csv row {i + 1}")
                continue
            sid = "ferplus-" + Path(image_name).stem
        if split is None:
            ing.reject(sid, None, "unknown_split", f"fer2013.csv row {i + 1}: Usage {row.get('Usage')!r}")
            continue
        try:
            face = decode_pixels(row.get("pixels") or "")
        except ValueError as exc:
            ing.reject(sid, None, "bad_pixels", f"fer2013.csv row {i + 1}: {exc}")
            continue
        path = f"raw/{sid}.png"
        cv2.imwrite(str(out_dir / path), face)
        if new_rows is not None:
            try:
                counts = parse_counts([new_rows[i].get(k, "") for k in (*_FERPLUS_HEADER,)])
            except ValueError:
                ing.reject(sid, path, "bad_row", f"fer2013new.csv row {i + 1}")
                continue
            add_votes(ing, out_dir, sid, split, path, counts, mode=mode)
            continue
        emotion = (row.get("emotion") or "").strip()
        if not emotion.isdigit() or int(emotion) >= len(FER2013_LABELS):
            ing.reject(sid, path, "unknown_label", f"fer2013.csv row {i + 1}: emotion {emotion!r}")
            continue
        ing.add(sid, split, path, CANONICAL.index(FER2013_LABELS[int(emotion)]))
    return ing


_FERPLUS_HEADER = (
    "neutral",
    "happiness",
    "surprise",
    "sadness",
    "anger",
    "disgust",
    "fear",
    "contempt",
    "unknown",
    "NF",
)


def ingest(
    source: Path, out_dir: Path, *, options: FerplusOptions | Fer2013Options, seed: int = 0
) -> tuple[Ingest, Path]:
    ferplus = isinstance(options, FerplusOptions)
    mode = options.label_mode if ferplus else "plurality"
    if ferplus:
        root, marker = require_root(
            source, ("FER2013Train/label.csv", "FER2013Valid/label.csv", "fer2013new.csv"), "ferplus", WHERE_FERPLUS
        )
        if marker.endswith("label.csv"):
            ing = ingest_ferplus_folders(root, mode=mode)
        else:
            if not (root / "fer2013.csv").is_file():
                raise FerdataError(f"ferplus: {root / 'fer2013.csv'} not found beside fer2013new.csv; {WHERE_FER2013}")
            ing = ingest_csv(root, out_dir, ferplus=True, mode=mode)
            root = out_dir
    else:
        root, _ = require_root(source, ("fer2013.csv",), "fer2013", WHERE_FER2013)
        ing = ingest_csv(root, out_dir, ferplus=False, mode=mode)
        root = out_dir
    return ing, root
