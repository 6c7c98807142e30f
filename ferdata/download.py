"""The download stage: fetch or generate a dataset and write its canonical manifest.

Only the embedded ``synth`` dataset exists so far; real-dataset adapters register here too.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from ferdata.errors import FerdataError
from ferdata.io import atomic_dir, write_table
from ferdata.synth import SynthConfig, generate

MANIFEST = "manifest.parquet"
RAW = "raw"


def download_synth(out_dir: Path, *, options: dict[str, Any]) -> pd.DataFrame:
    """Generate the synth dataset's photos under ``out_dir/raw`` and return its manifest."""
    try:
        cfg = SynthConfig(**options)
    except TypeError as exc:
        raise FerdataError(f"bad synth option: {exc}; see the synth section of params.yaml") from exc
    if cfg.n_subjects < 1 or cfg.videos_per_subject < 1 or cfg.frames_per_video < 1:
        raise FerdataError("synth needs n_subjects, videos_per_subject and frames_per_video >= 1")
    total = cfg.n_subjects * cfg.videos_per_subject * cfg.frames_per_video
    rows = []
    with atomic_dir(out_dir / RAW) as raw:
        for face in tqdm(generate(cfg), total=total, desc="synth", unit="face", leave=False, disable=None):
            rel = f"{RAW}/{face.sample_id}.png"
            cv2.imwrite(str(raw / f"{face.sample_id}.png"), cv2.cvtColor(face.image, cv2.COLOR_RGB2BGR))
            rows.append({
                "sample_id": face.sample_id, "dataset": "synth", "split": face.split, "path": rel,
                "label": face.label, "video_id": face.video_id, "subject_id": face.subject_id,
                "frame": face.frame, "bbox": face.bbox, "landmarks": face.landmarks.reshape(-1),
                "valence": face.valence, "arousal": face.arousal, "votes": None, "true_dist": face.true_dist,
            })
    df = pd.DataFrame(rows)
    df.attrs["classes"] = list(cfg.classes)
    return df


DATASETS: dict[str, Callable[..., pd.DataFrame]] = {"synth": download_synth}


def download(name: str, out_dir: str | Path, *, options: dict[str, Any] | None = None) -> pd.DataFrame:
    """Fetch dataset ``name`` into ``out_dir`` and write ``out_dir/manifest.parquet``."""
    if name not in DATASETS:
        raise FerdataError(f"unknown dataset {name!r}: known datasets are {', '.join(sorted(DATASETS))}")
    out_dir = Path(out_dir)
    df = DATASETS[name](out_dir, options=options or {})
    if df.empty:
        raise FerdataError(f"dataset {name} produced no samples; check its options")
    dup = df["sample_id"][df["sample_id"].duplicated()]
    if len(dup):
        raise FerdataError(f"dataset {name} has duplicate sample ids, e.g. {dup.iloc[0]!r}")
    if df["sample_id"].str.contains(".", regex=False).any():
        raise FerdataError(f"dataset {name} has sample ids with dots; WebDataset keys must be dot-free")
    df = df.sort_values("sample_id", kind="stable").reset_index(drop=True)
    write_table(df, out_dir / MANIFEST, "manifest", {"dataset": name, "classes": df.attrs["classes"]})
    return df


def summarize(df: pd.DataFrame) -> str:
    """One line: samples per split."""
    counts = df["split"].value_counts().sort_index()
    return f"{len(df)} samples (" + ", ".join(f"{k} {v}" for k, v in counts.items()) + ")"
