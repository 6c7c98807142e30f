"""Any image folder (``<root>/<split>/<class>/*`` or ``<root>/<class>/*``) or any CSV with a path column
and a label column (class names in any case, common synonyms accepted)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ferdata.adapters.base import (
    SPLIT_ALIASES,
    Ingest,
    canonical_label,
    carve_val,
    finish_splits,
    images_under,
    normal_path,
    path_id,
    safe_id,
)
from ferdata.adapters.subjects import PRESETS, Subjects, choose
from ferdata.core.errors import FerdataError
from ferdata.core.settings import Settings, option

SUBJECT_HELP = (
    "how a file's subject (and video) is read from its path, so splits keep a person together: auto (the "
    f"presets {', '.join(p for p in PRESETS if p != 'subfolder')} when one reads nearly every file), none, "
    + ", ".join(PRESETS)
    + ", or a regex with (?P<subject>...) and optionally (?P<video>...)"
)

PATH_COLUMNS = ("path", "image", "file", "filename", "image_path", "subDirectory_filePath")
LABEL_COLUMNS = ("label", "emotion", "expression", "class")


@dataclass(frozen=True)
class FolderOptions(Settings):
    """The ``folder`` section of its params.yaml."""

    section = "folder"
    name: str = option("", "the prefix of every sample id (default: the dataset's name)")
    val_fraction: float = option(
        0.1, "share of images (or subjects) in val when the folder has no val split", min=0.0, below=1.0
    )
    test_fraction: float = option(
        0.2, "share of images (or subjects) in test when the folder has no splits", min=0.0, below=1.0
    )
    subject_pattern: str = option("auto", SUBJECT_HELP)


@dataclass(frozen=True)
class CsvOptions(Settings):
    """The ``csv`` section of its params.yaml."""

    section = "csv"
    csv: str = option("", "the table (default: --from, or the one CSV under it)")
    images: str = option("", "the folder image paths are relative to (default: guessed beside the table)")
    path_column: str = option("", "column of image paths (default: path, image, file, filename, ...)")
    label_column: str = option("", "column of class names (default: label, emotion, expression, class)")
    split_column: str = option("", "column of train/val/test (optional)")
    subject_column: str = option("", "column of subject ids, so splits keep a person together (optional)")
    name: str = option("", "the prefix of every sample id (default: the dataset's name)")
    val_fraction: float = option(
        0.1, "share of images (or subjects) in val when the table has no val split", min=0.0, below=1.0
    )
    test_fraction: float = option(
        0.2, "share of images (or subjects) in test when the table has no splits", min=0.0, below=1.0
    )
    subject_pattern: str = option("auto", SUBJECT_HELP + " (when subject_column is empty)")


def _splits(ing: Ingest, options: FolderOptions | CsvOptions, seed: int, subjects: Subjects) -> None:
    val, test = options.val_fraction, options.test_fraction
    shipped = any(r["split"] is not None for r in ing.rows)
    if not shipped:
        finish_splits(ing, seed=seed, val=val, test=test)
    else:
        finish_splits(ing, seed=seed, val=0.0)
        carve_val(ing, seed=seed, val=val)
    note_groups(ing, subjects, option=f"{options.name or options.section}.subject_pattern")


def note_groups(ing: Ingest, subjects: Subjects, *, option: str) -> None:
    """A note in the summary line on how the splits keep people apart, a warning when they cannot (no
    subject information, or shipped splits that share subjects)."""
    ing.subject_pattern = subjects.name
    rows = ing.rows
    splits_of: dict[str, set] = {}
    for r in rows:
        if r["subject_id"]:
            splits_of.setdefault(r["subject_id"], set()).add(r["split"])
    shared = sum(len(s) > 1 for s in splits_of.values())
    if not splits_of and rows:
        ing.notes.append(
            f"WARNING no subject information: splits are per image ({len(rows)} images), so one person's faces "
            f"can sit in train and test and the test score flatters; set {option} (ckplus, jaffe, kdef, "
            "subfolder, or a regex) or give the subjects in a CSV column"
        )
    elif shared:
        ing.notes.append(f"WARNING {shared} subjects sit in more than one of the shipped splits")
    elif splits_of:
        how = f"the {subjects.name} pattern" if subjects.name else "the subject column"
        ing.notes.append(f"splits by subject: {len(splits_of)} subjects read with {how}")
    alone = sum(not r["subject_id"] for r in rows)
    if splits_of and alone:
        ing.notes.append(f"{alone} images have no subject (each is its own group)")


def ingest_folder(source: Path, out_dir: Path, *, options: FolderOptions, seed: int = 0) -> tuple[Ingest, Path]:
    if not source.is_dir():
        raise FerdataError(
            f"folder dataset: {source} is not a folder; expected <root>/<split>/<class>/*.jpg or <root>/<class>/*.jpg"
        )
    ing = Ingest(options.name or "custom")
    top = sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith("."))
    while len(top) == 1 and top[0].name.lower() not in SPLIT_ALIASES and canonical_label(top[0].name) is None:
        source = top[0]  # an archive's single top folder
        top = sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith("."))
    by_split = bool(top) and all(p.name.lower() in SPLIT_ALIASES for p in top)
    groups = (
        [(SPLIT_ALIASES[p.name.lower()], c) for p in top for c in sorted(q for q in p.iterdir() if q.is_dir())]
        if by_split
        else [(None, p) for p in top]
    )
    found = []
    for split, cls in groups:
        for img in images_under(cls):
            rel, why = normal_path(str(img.relative_to(source)), source)
            if rel is None:
                ing.reject(f"{ing.dataset}-" + safe_id(str(img.relative_to(source))), None, "bad_path", why)
                continue
            found.append((split, cls, rel))
    if not found and not ing.rejected:
        raise FerdataError(
            f"folder dataset: no images under {source}; expected <root>/<split>/<class>/*.jpg or <root>/<class>/*.jpg"
        )
    # the path below the class folder: a split/class prefix would make every class its own "subject"
    inner = {rel: str(PurePosixPath(rel).relative_to(PurePosixPath(cls.relative_to(source).as_posix())))
             for _, cls, rel in found}  # fmt: skip
    subjects = choose(options.subject_pattern, list(inner.values()), option=f"{ing.dataset}.subject_pattern")
    for split, cls, rel in found:
        subject, video = subjects.read(inner[rel])
        ing.add_checked(
            source,
            path_id(ing.dataset, rel),
            split,
            rel,
            canonical_label(cls.name),
            raw_label=cls.name,
            subject_id=subject,
            video_id=video,
        )
    _splits(ing, options, seed, subjects)
    return ing, source


def _column(header: list[str], wanted: str | None, candidates: tuple[str, ...], what: str, table: Path) -> str:
    if wanted:
        if wanted not in header:
            raise FerdataError(f"{table} has no {what} column {wanted!r}; its columns are {', '.join(header)}")
        return wanted
    lower = {h.lower(): h for h in header}
    for name in candidates:
        if name.lower() in lower:
            return lower[name.lower()]
    raise FerdataError(
        f"{table}: no {what} column among {', '.join(header)}; name it with the csv option {what}_column"
    )


def read_csv(table: Path, ing: Ingest) -> tuple[list[str], list[dict[str, str]]]:
    """A CSV's header and rows: UTF-8 (a byte-order mark, as Excel writes, is dropped), else Latin-1 with
    a note in the summary."""
    for encoding in ("utf-8-sig", "latin-1"):
        try:
            with open(table, newline="", encoding=encoding) as fh:
                reader = csv.DictReader(fh)
                header = [h.strip() for h in (reader.fieldnames or [])]
                reader.fieldnames = header
                rows = list(reader)
        except UnicodeDecodeError:
            continue
        except csv.Error as exc:
            raise FerdataError(
                f"{table} is not a readable CSV ({exc}); save it as a plain comma-separated file"
            ) from exc
        if encoding != "utf-8-sig":
            ing.notes.append(f"{table.name} is not UTF-8: read as Latin-1")
        return header, rows
    raise AssertionError("unreachable: Latin-1 decodes any bytes")


def image_root_candidates(table: Path) -> list[Path]:
    """Where a CSV's relative paths may start: its folder, its parent, or an ``images`` folder beside either."""
    return [table.parent, table.parent.parent, table.parent / "images", table.parent.parent / "images"]


def guess_image_root(table: Path, paths: list[str]) -> Path:
    """The folder the CSV's paths are relative to: the first candidate where most of them exist."""
    paths = [p for p in paths if p]
    for folder in image_root_candidates(table):
        if paths and sum((folder / p).is_file() for p in paths) * 2 > len(paths):
            return folder
    return table.parent


def ingest_csv(source: Path, out_dir: Path, *, options: CsvOptions, seed: int = 0) -> tuple[Ingest, Path]:
    table = Path(options.csv) if options.csv else source
    if table.is_dir():
        found = sorted(table.rglob("*.csv"))
        if len(found) != 1:
            raise FerdataError(f"csv dataset: {table} holds {len(found)} CSV files; name one with the csv option `csv`")
        table = found[0]
    if not table.is_file():
        raise FerdataError(f"csv dataset: {table} not found; give --from a CSV with a path and a label column")
    root = Path(options.images) if options.images else None
    ing = Ingest(options.name or "custom")
    header, rows = read_csv(table, ing)
    path_col = _column(header, options.path_column, PATH_COLUMNS, "path", table)
    label_col = _column(header, options.label_column, LABEL_COLUMNS, "label", table)
    root = root or guess_image_root(table, [(r.get(path_col) or "").strip() for r in rows[:50]])
    split_col = options.split_column
    subject_col = options.subject_column
    subjects = (
        Subjects(None, None)  # the column names them
        if subject_col
        else choose(
            options.subject_pattern, [(r.get(path_col) or "").strip() for r in rows], option="csv.subject_pattern"
        )
    )
    seen: set[str] = set()
    for n, row in enumerate(rows, 2):
        rel, why = normal_path((row.get(path_col) or "").strip(), root)
        if rel is None:
            ing.reject(f"{ing.dataset}-line{n}", None, "bad_path", f"{table.name} line {n}: {why}")
            continue
        sid = path_id(ing.dataset, rel)
        if sid in seen:
            ing.reject(sid, rel, "duplicate_path", f"{table.name} line {n} lists {rel!r} again")
            continue
        seen.add(sid)
        split = SPLIT_ALIASES.get((row.get(split_col) or "").strip().lower()) if split_col else None
        if split_col and split is None:
            ing.reject(sid, rel, "unknown_split", f"{table.name} line {n}: {row.get(split_col)!r}")
            continue
        raw = (row.get(label_col) or "").strip()
        subject, video = ((row.get(subject_col) or "").strip() or None, None) if subject_col else subjects.read(rel)
        ing.add_checked(root, sid, split, rel, canonical_label(raw), raw_label=raw, subject_id=subject, video_id=video)
    guessed = [f"paths from column {path_col!r}", f"labels from {label_col!r}"]
    guessed.append(f"images under {root}" + ("" if options.images else " (guessed)"))
    ing.notes.append(f"read {table.name}: " + ", ".join(guessed))
    missing = sum(r["reason"] == "missing_image" for r in ing.rejected)
    if missing and missing * 2 >= len(rows):
        searched = [str(options.images)] if options.images else [str(p) for p in image_root_candidates(table)]
        detail = (
            f"{missing} of {len(rows)} images listed in {table} are not under {root} (searched "
            f"{', '.join(searched)}); set the csv option images to the folder the paths start from"
        )
        if not ing.rows:
            raise FerdataError(detail)
        ing.notes.append("WARNING " + detail)
    _splits(ing, options, seed, subjects)
    return ing, root
