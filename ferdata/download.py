"""The download stage: generate the synth dataset, or fetch/ingest a real one through its adapter, and
write the canonical manifest plus the table of rejected rows."""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from ferdata.core.errors import FerdataError, UsageError
from ferdata.core.groups import describe_splits
from ferdata.core.io import atomic_file
from ferdata.core.settings import Settings, configure, option, resolve
from ferdata.core.stage import Run, Stage
from ferdata.core.tables import TABLES
from ferdata.fetch import ARCHIVE_SUFFIXES, download_url, extract, extract_download, is_archive, is_url, verify
from ferdata.synth import SynthSettings, generate

if TYPE_CHECKING:
    from ferdata.adapters.base import Ingest

RAW = TABLES["raw"].file
EXTRACTED = TABLES["extracted"].file
DOWNLOADS = "downloads"


@dataclass(frozen=True)
class DownloadSettings(Settings):
    """The ``download`` section of params.yaml; the dataset's own options are the section named after it."""

    section = "download"
    source: str = option("", "archive, folder or http(s) URL of a real dataset", flag="--from")
    adapter: str = option(
        "",
        "the adapter that reads it when the dataset's name is not one (folder or csv, for "
        "faces of yours under a name of yours)",
    )
    sha256: str = option("", "expected sha256 of the archive")
    seed: int = option(0, "seed of the synth generator and of every split the adapter carves", min=0)
    dedupe: bool = option(True, "reject byte-identical copies of an earlier image (every real dataset)")
    max_extract_gb: float = option(500.0, "an archive may expand to at most this many GB", above=0.0)
    max_ratio: float = option(100.0, "an archive may expand to at most this many times its size", above=0.0)


STAGE = Stage(
    "download",
    "Generate synth, or ingest a real dataset through its adapter; write its manifest and rejected rows.",
    __name__,
    DownloadSettings,
    writes=("manifest", "rejected", "raw", "extracted"),
)


NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def check_name(name: str, what: str) -> None:
    """A dataset name becomes folders (data/<name>, reports/<name>) and every sample id's prefix: it may
    hold letters, digits, '-' and '_' only, so it can never climb out of a folder or split a key."""
    if not NAME.fullmatch(name):
        raise UsageError(
            f"{what} {name!r} may hold only letters, digits, '-' and '_' (at most 64, starting with a letter or "
            "digit): it names folders and prefixes sample ids"
        )


def dataset_options(name: str, adapter: str = "") -> type[Settings]:
    """The options class of dataset ``name`` (its params section): its adapter's, ``adapter`` when given."""
    from ferdata.adapters import ADAPTERS

    which = adapter or name
    if which not in known_datasets():
        if adapter:
            raise UsageError(f"unknown download.adapter {adapter!r}: known adapters are {', '.join(known_datasets())}")
        raise UsageError(
            f"unknown dataset {name!r}: known datasets are {', '.join(known_datasets())}; for faces "
            "of yours under another name, set download.adapter (folder or csv)"
        )
    return SynthSettings if which == "synth" else ADAPTERS[which].options


def download_synth(run: Run, cfg: SynthSettings) -> pd.DataFrame:
    """Generate the synth dataset's photos and return its manifest."""
    total = cfg.n_subjects * cfg.videos_per_subject * cfg.frames_per_video
    rows = []
    raw = run.output("raw")
    for face in tqdm(
        generate(cfg, run.settings.seed), total=total, desc="synth", unit="face", leave=False, disable=None
    ):
        rel = f"{RAW}/{face.sample_id}.png"
        cv2.imwrite(str(raw / f"{face.sample_id}.png"), cv2.cvtColor(face.image, cv2.COLOR_RGB2BGR))
        rows.append(
            {
                "sample_id": face.sample_id,
                "dataset": "synth",
                "split": face.split,
                "path": rel,
                "label": face.label,
                "video_id": face.video_id,
                "subject_id": face.subject_id,
                "frame": face.frame,
                "bbox": face.bbox,
                "landmarks": face.landmarks.reshape(-1),
                "valence": face.valence,
                "arousal": face.arousal,
                "votes": None,
                "true_dist": face.true_dist,
            }
        )
    df = pd.DataFrame(rows)
    df.attrs["classes"] = list(cfg.classes)
    return df


def download_real(
    name: str, out_dir: Path, settings: DownloadSettings, options: Settings, run: Run | None = None
) -> pd.DataFrame:
    """Ingest a real dataset from a URL, an archive or a folder through its adapter. An archive is
    extracted into the run's staged ``extracted/``, published together with the manifest: a rejected or
    killed download leaves the old dataset's files and manifest whole."""
    from ferdata.adapters import ADAPTERS

    adapter = ADAPTERS[settings.adapter or name]
    source = settings.source
    if not source:
        raise UsageError(
            f"{name} needs a source: set download.source in its params file or give --from PATH_OR_URL (an "
            f"archive or folder holding {adapter.expected}); {adapter.where}"
        )
    staged = (lambda: run.output("extracted")) if run is not None else None
    root = resolve_source(
        source,
        out_dir,
        sha256=settings.sha256 or None,
        max_gb=settings.max_extract_gb,
        max_ratio=settings.max_ratio,
        staged=staged,
    )
    ing, image_root = adapter.ingest(root, out_dir, options=options, seed=settings.seed)
    extracted = run.staged.get("extracted") if run is not None else None
    published = image_root
    if extracted is not None and root == extracted.resolve():
        keep_inside(ing, image_root, root)
        if image_root.resolve().is_relative_to(root):  # where the files lie once published
            published = (out_dir / EXTRACTED).resolve() / image_root.resolve().relative_to(root)
    elif root == (out_dir / EXTRACTED).resolve():
        keep_inside(ing, image_root, root)
    if settings.dedupe:
        drop_duplicates(ing, image_root)
    df, rejected = finalize(ing)
    df.attrs["root"] = _relative_root(published, out_dir)
    df.attrs["source"] = source
    df.attrs["rejected"] = rejected
    df.attrs["notes"] = ing.notes
    df.attrs["subject_pattern"] = ing.subject_pattern
    return df


def keep_inside(ing: Ingest, image_root: Path, folder: Path) -> None:
    """Reject rows whose image lies outside ``folder`` (the extracted archive): a table that came in an
    archive may name only the archive's own files, never ``../..`` or an absolute path (or a link) to
    files elsewhere on the machine. A CSV the user points at directly may name files anywhere."""
    kept = []
    for row in ing.rows:
        target = (image_root / row["path"]).resolve()
        if target.is_relative_to(folder):
            kept.append(row)
        else:
            detail = (
                f"{row['path']} resolves to {target}, outside the archive's folder {folder}; "
                "an archive's tables may name only its own files"
            )
            ing.reject(row["sample_id"], row["path"], "outside_archive", detail)
    ing.rows = kept


def resolve_source(
    source: str,
    out_dir: Path,
    *,
    sha256: str | None = None,
    max_gb: float = 500.0,
    max_ratio: float = 100.0,
    staged: Callable[[], Path] | None = None,
) -> Path:
    """A local folder holding the dataset: the folder itself, or an archive (downloaded first) extracted
    into ``staged()`` (a run's staging folder, published with the manifest) or else ``out_dir/extracted``;
    skipped when that archive was already extracted there."""
    if is_url(source):
        name = Path(urllib.parse.urlparse(source).path).name or "download"
        archive = download_url(source, out_dir / DOWNLOADS / name, sha256=sha256)
    else:
        archive = Path(source).expanduser()
        if not archive.exists():
            raise FerdataError(f"{archive} not found: give --from an existing archive, folder or http(s) URL")
        if archive.is_dir():
            return archive.resolve()
        verify(archive, sha256=sha256)
    if not is_archive(archive):
        if archive.suffix.lower() == ".csv":
            return archive.resolve()  # a table (csv adapter, fer2013.csv) is read in place
        raise FerdataError(f"{archive} is neither a folder, a CSV nor an archive ({', '.join(ARCHIVE_SUFFIXES)})")
    target = out_dir / EXTRACTED
    stamp = {"archive": str(archive.resolve()), "size": archive.stat().st_size, "mtime_ns": archive.stat().st_mtime_ns}
    if read_marker(target / SOURCE_MARKER) == stamp:
        return target.resolve()
    target = staged() if staged is not None else target
    unpack = extract_download if is_url(source) else extract
    count = unpack(archive, target, max_gb=max_gb, max_ratio=max_ratio)
    with atomic_file(target / SOURCE_MARKER) as tmp:
        tmp.write_text(json.dumps(stamp, sort_keys=True))
    tqdm.write(f"extracted {count} files from {archive.name}")
    return target.resolve()


SOURCE_MARKER = ".ferdata-source.json"


def read_marker(path: Path) -> dict | None:
    """The archive an ``extracted/`` folder came from; None when absent or unreadable (extract again)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _relative_root(root: Path, out_dir: Path) -> str:
    """The image root as stored in the manifest: relative to the dataset folder when inside it."""
    try:
        return str(root.resolve().relative_to(out_dir.resolve())) or "."
    except ValueError:
        return str(root.resolve())


def finalize(ing: Ingest) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Manifest and rejected frames from an adapter's rows: duplicate ids rejected, classes settled."""
    from ferdata.adapters.base import classes_of

    seen: set[str] = set()
    rows = []
    for row in ing.rows:
        if row["sample_id"] in seen:
            ing.reject(row["sample_id"], row["path"], "duplicate_id", "an earlier row has the same id")
            continue
        seen.add(row["sample_id"])
        rows.append(row)
    if not rows:
        reasons = pd.Series([r["reason"] for r in ing.rejected]).value_counts().to_dict() if ing.rejected else {}
        raise FerdataError(
            f"{ing.dataset}: no usable samples (rejected: {reasons or 'none found'}); "
            "check that --from points at the dataset"
        )
    df = pd.DataFrame(rows)
    classes = ing.classes or classes_of(df["label"])
    for col in ("landmarks", "true_dist", "bbox"):
        df[col] = [None if v is None else np.asarray(v, np.float32) for v in df[col]]
    df.attrs["classes"] = classes
    rejected = pd.DataFrame(ing.rejected, columns=["sample_id", "path", "reason", "detail"])
    return df, rejected.sort_values(["sample_id", "reason"], kind="stable").reset_index(drop=True)


def drop_duplicates(ing: Ingest, root: Path) -> None:
    """Reject byte-identical copies of an earlier image (by sample id), so one picture never lands in two
    splits or counts twice; a ``duplicate_image`` row names the kept one."""
    import hashlib

    seen: dict[str, str] = {}
    kept = []
    for row in tqdm(
        sorted(ing.rows, key=lambda r: r["sample_id"]), desc="duplicates", unit="image", leave=False, disable=None
    ):
        digest = hashlib.sha256((root / row["path"]).read_bytes()).hexdigest()
        if digest in seen:
            ing.reject(row["sample_id"], row["path"], "duplicate_image", f"same bytes as {seen[digest]}")
            continue
        seen[digest] = row["sample_id"]
        kept.append(row)
    ing.rows = kept


def known_datasets() -> list[str]:
    from ferdata.adapters import ADAPTERS

    return sorted(["synth", *ADAPTERS])


def download(
    name: str,
    out_dir: str | Path,
    settings: DownloadSettings | None = None,
    dataset: Settings | Mapping[str, Any] | None = None,
    **options: Any,
) -> pd.DataFrame:
    """Fetch dataset ``name`` into ``out_dir``; write its manifest and rejected rows there. ``dataset`` holds
    the dataset's own options (``SynthSettings`` for synth, the adapter's ``Options``, or a mapping of
    them); ``options`` change fields of ``settings`` (``seed=3``)."""
    settings = configure(DownloadSettings, settings, options)
    check_name(name, "the dataset's name")
    cls = dataset_options(name, settings.adapter)
    if not isinstance(dataset, Settings):
        dataset = resolve(cls, {name: dict(dataset or {})}, section=name)
    if getattr(dataset, "name", None) == "":  # the generic adapters name their samples after the dataset
        dataset = replace(dataset, name=name)
    if getattr(dataset, "name", None):
        check_name(dataset.name, f"{name}.name")
    with STAGE.start(settings, extra=dataset, data=out_dir) as run:
        out_dir = Path(out_dir)
        if name == "synth" and not settings.adapter:
            df = download_synth(run, dataset)
            df.attrs["rejected"] = pd.DataFrame(columns=["sample_id", "path", "reason", "detail"])
        else:
            df = download_real(name, out_dir, run.settings, dataset, run)
        if df.empty:
            raise FerdataError(f"dataset {name} produced no samples; check its options")
        dup = df["sample_id"][df["sample_id"].duplicated()]
        if len(dup):
            raise FerdataError(f"dataset {name} has duplicate sample ids, e.g. {dup.iloc[0]!r}")
        if df["sample_id"].str.contains(".", regex=False).any():
            raise FerdataError(f"dataset {name} has sample ids with dots; WebDataset keys must be dot-free")
        attrs = dict(df.attrs)
        df = df.sort_values("sample_id", kind="stable").reset_index(drop=True)
        df.attrs = attrs
        meta = {"dataset": name, "classes": attrs["classes"], "root": attrs.get("root", ".")}
        meta["splits_by"] = {**describe_splits(df), "pattern": attrs.get("subject_pattern")}
        if attrs.get("source"):
            meta["source"] = attrs["source"]
        run.write(attrs["rejected"], "rejected", {"dataset": name})
        run.write(df, "manifest", meta)
        return df


def summarize(df: pd.DataFrame) -> str:
    """Kept samples per split and class, rejected rows by reason."""
    from ferdata.core.classes import CANONICAL

    splits = df["split"].value_counts().sort_index()
    classes = df["label"].value_counts().sort_index()
    line = (
        f"kept {len(df)} ("
        + ", ".join(f"{k} {v}" for k, v in splits.items())
        + "; "
        + ", ".join(f"{CANONICAL[int(k)]} {v}" for k, v in classes.items())
        + ")"
    )
    rejected = df.attrs.get("rejected")
    if rejected is not None and len(rejected):
        reasons = rejected["reason"].value_counts()
        line += f"; rejected {len(rejected)} (" + ", ".join(f"{k} {v}" for k, v in reasons.items()) + ")"
    else:
        line += "; rejected 0"
    for note in df.attrs.get("notes") or []:
        line += f"; {note}"
    train = df.loc[df["split"] == "train", "label"].value_counts()
    few = {CANONICAL[int(k)]: int(train.get(k, 0)) for k in classes.index if train.get(k, 0) < FEW_FACES}
    if few:
        line += (
            f"; WARNING classes with fewer than {FEW_FACES} training faces ("
            + ", ".join(f"{k} {v}" for k, v in few.items())
            + "): their accuracy and soft labels rest on very little"
        )
    return line


FEW_FACES = 10
