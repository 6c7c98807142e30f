"""Table and file I/O shared by every stage: schema-checked parquet, atomic writes, dataset forks,
hashes. Publishing a stage's outputs as one set and the folder lock are in :mod:`ferdata.core.publish`."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ferdata.core.errors import FerdataError
from ferdata.core.tables import SCHEMA_VERSION, SCHEMAS, TABLES


def _conform(df: pd.DataFrame, kind: str) -> pa.Table:
    """Select and cast the columns of ``df`` to the declared schema of ``kind``."""
    schema = SCHEMAS[kind]
    missing = [name for name in schema.names if name not in df.columns]
    if missing:
        raise FerdataError(f"{kind} table lacks columns {missing}: this is a ferdata bug, please report it")
    columns = df[schema.names]
    columns.attrs = {}  # stage-private attrs never go into the file
    try:
        return pa.Table.from_pandas(columns, schema=schema, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError) as exc:
        raise FerdataError(f"{kind} table does not fit its schema: {exc}") from exc


INTEGRITY_KEYS = ("table", "schema_version", "version", "rows", "ids_hash", "values_hash")  # what write_table adds


def write_table(
    df: pd.DataFrame,
    path: str | Path,
    kind: str,
    meta: dict[str, Any] | None = None,
    *,
    validate: bool = True,
    where: Callable[[str], Path] | None = None,
) -> Path:
    """Write ``df`` as a ``kind`` table, atomically, with ferdata metadata (JSON-encoded values); the
    table's expectation suite runs first, so a table that fails it is never written."""
    from ferdata import __version__

    table = _conform(df, kind)
    if validate and os.environ.get("FERDATA_SUITES", "on") != "off":  # off: throwaway runs (the DVC wiring tests)
        from ferdata.core.validate import check_table

        check_table(df, kind, meta, Path(path), where)
    info = {"ferdata.table": kind, "ferdata.schema_version": SCHEMA_VERSION, "ferdata.version": __version__}
    info.update({f"ferdata.{k}": v for k, v in (meta or {}).items()})
    info.update(
        {
            "ferdata.rows": len(df),
            "ferdata.ids_hash": ids_hash(df["sample_id"]),
            "ferdata.values_hash": values_hash(table),
        }
    )
    encoded = {k.encode(): json.dumps(v, sort_keys=True).encode() for k, v in info.items()}
    table = table.replace_schema_metadata(encoded)
    path = Path(path)
    with atomic_file(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return path


def read_meta(path: str | Path) -> dict[str, Any]:
    """The ferdata metadata of a parquet file, decoded, without the ``ferdata.`` prefix."""
    raw = pq.read_schema(path).metadata or {}
    out = {}
    for key, value in raw.items():
        name = key.decode(errors="replace")
        if name.startswith("ferdata."):
            try:
                out[name[len("ferdata.") :]] = json.loads(value.decode())
            except (UnicodeDecodeError, ValueError):
                raise FerdataError(
                    f"{path}: its metadata {name!r} is damaged (not JSON); re-run the stage that writes it"
                ) from None
    return out


def read_table(path: str | Path, kind: str, *, hint: str = "") -> tuple[pd.DataFrame, dict[str, Any]]:
    """Read a ``kind`` table and its metadata; a missing or foreign file is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise FerdataError(f"{path} not found" + (f": {hint}" if hint else ""))
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise FerdataError(f"{path} is not a readable parquet file ({exc}); re-run the stage that writes it") from exc
    meta = read_meta(path)
    if meta.get("table") != kind:
        raise FerdataError(f"{path} is a {meta.get('table', 'non-ferdata')} table, expected a {kind} table")
    want = SCHEMAS[kind]
    missing = [n for n in want.names if n not in table.column_names]
    writer = f"`ferdata {TABLES[kind].writer}`" if kind in TABLES else "the stage that writes it"
    if missing:
        raise FerdataError(f"{path} lacks columns {missing}; re-run {writer}")
    table = conform_types(table.select(want.names), want, path, writer)
    df = table.to_pandas()
    if "rows" in meta and (len(df) != meta["rows"] or ids_hash(df["sample_id"]) != meta.get("ids_hash")):
        raise FerdataError(
            f"{path} was changed after ferdata wrote it ({len(df)} rows, {meta['rows']} when written, "
            f"or other sample ids); re-run {writer}"
        )
    if "values_hash" in meta and values_hash(table) != meta["values_hash"]:
        raise FerdataError(
            f"{path} was changed after ferdata wrote it (its values no longer match the hash it was written "
            f"with); re-run {writer} to remake it (a table edited on purpose belongs in a new file)"
        )
    return df, meta


def conform_types(table: pa.Table, want: pa.Schema, path: Path, writer: str) -> pa.Table:
    """``table`` with its columns in the schema's types: a lossless cast where one is stored in another
    type (a hand edit, another tool), else a one-line error naming the column."""
    if all(table.schema.field(f.name).type == f.type for f in want):
        return table
    columns = []
    for field in want:
        column = table.column(field.name)
        if column.type != field.type:
            try:
                column = column.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                raise FerdataError(
                    f"{path}: column {field.name!r} is stored as {column.type}, expected {field.type}; re-run {writer}"
                ) from None
        columns.append(column)
    return pa.table(columns, names=want.names)


def values_hash(table: pa.Table) -> str:
    """A short hash of a table's values, column by column (nulls, list lengths and bit patterns included),
    independent of how parquet chunks or encodes them: an in-range edit of one value is noticed. Tables
    written before carry it under this key: a change to how it is computed needs a new key."""
    digest = hashlib.sha256()
    for name in table.column_names:
        digest.update(name.encode() + b"\0")
        _feed(digest, table.column(name).combine_chunks())
    return digest.hexdigest()[:16]


def _feed(digest: Any, array: pa.Array) -> None:
    digest.update(np.asarray(array.is_null(), dtype=np.uint8).tobytes())
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    if pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
        digest.update(np.asarray(pc.list_value_length(array).fill_null(-1), dtype=np.int64).tobytes())
        _feed(digest, array.flatten())
    elif pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
        array = array.cast(pa.large_string())
        _, offsets, data = array.buffers()
        ends = np.frombuffer(offsets, np.int64)[array.offset : array.offset + len(array) + 1]
        digest.update((ends - ends[0]).tobytes())
        if data is not None:
            digest.update(memoryview(data)[ends[0] : ends[-1]])
    else:
        zero = pa.scalar(False) if pa.types.is_boolean(array.type) else pa.scalar(0, array.type)
        digest.update(array.fill_null(zero).to_numpy(zero_copy_only=False).tobytes())


def ids_hash(ids: pd.Series) -> str:
    """A short hash of a table's sample ids in order: a row deleted or edited in place is noticed."""
    digest = hashlib.sha256()
    for sid in ids.astype(str):
        digest.update(sid.encode() + b"\0")
    return digest.hexdigest()[:16]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only when the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; published files get the usual mode
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder that replaces ``path`` whole when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; published folders get the usual mode
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove(path: Path) -> None:
    """Delete a file, link or folder if it is there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def image_root(data_dir: str | Path, meta: dict[str, Any]) -> Path:
    """Where a manifest's image paths start: its ``root`` metadata, relative to the dataset folder."""
    return Path(data_dir) / meta.get("root", ".")


BASE = "base.json"


def lineage(folder: str | Path) -> list[Path]:
    """``folder`` and the dataset folders it was forked from (``base.json``), nearest first."""
    chain = [Path(folder)]
    for _ in range(16):
        base = chain[-1] / BASE
        if not base.is_file():
            break
        try:
            chain.append(chain[-1] / json.loads(base.read_text())["base"])
        except (ValueError, KeyError, TypeError):
            raise FerdataError(f"{base} is damaged; run `ferdata fork` again to remake it") from None
    return chain


def locate(data_dir: str | Path, name: str) -> Path:
    """``data_dir/name``, else the same file in the dataset folder this one was forked from (``base.json``)."""
    for folder in lineage(data_dir):
        if (folder / name).exists():
            return folder / name
    return Path(data_dir) / name


def fork(data_dir: str | Path, to: str | Path) -> Path:
    """Make ``to`` a dataset folder that reads what it lacks (images, manifest, VA) from ``data_dir``."""
    from ferdata.core.publish import settle_all  # publish builds on this module

    data_dir, to = Path(data_dir), Path(to)
    settle_all([data_dir])  # a base left mid-publication is completed before it is forked
    if not (data_dir / TABLES["manifest"].file).is_file() and not (data_dir / BASE).is_file():
        raise FerdataError(f"{data_dir} is not a dataset folder (no manifest.parquet); run `ferdata download` first")
    to.mkdir(parents=True, exist_ok=True)
    return write_json({"base": os.path.relpath(data_dir.resolve(), to.resolve())}, to / BASE)


def write_json(obj: Any, path: str | Path) -> Path:
    """Write ``obj`` as stable, sorted, indented JSON, atomically."""
    path = Path(path)
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    return path


def stable_hash(obj: Any) -> str:
    """A short sha256 of a JSON-serialisable object (params), independent of key order."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_sha256(path: str | Path, *, progress: Callable[[int], Any] | None = None) -> str:
    """sha256 of a file's bytes (``progress`` is told how many bytes each block added)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
            if progress is not None:
                progress(len(block))
    return digest.hexdigest()


def file_problem(path: Path) -> tuple[str, str] | None:
    """(reason, detail) when ``path`` is not a regular file one can read an image from, else None."""
    import stat

    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if os.path.islink(path):
            return "missing_image", f"{path} is a symbolic link to {os.readlink(path)}, which does not exist"
        return "missing_image", f"{path} does not exist"
    except OSError as exc:
        return "unreadable", f"{path}: {exc.strerror}"
    if not stat.S_ISREG(mode):
        kind = "folder" if stat.S_ISDIR(mode) else "named pipe" if stat.S_ISFIFO(mode) else "device or socket"
        return "not_a_file", f"{path} is a {kind}, not an image file; put the image itself there"
    return None
