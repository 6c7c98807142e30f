"""The contract of a stage, declared once in its module: its settings, and the tables it reads and
writes by kind. The CLI builds the stage's command from it, tests/test_stages.py checks dvc.yaml
against it, and a :class:`Run` enforces it: reading or writing an undeclared kind is a ferdata bug.

A run is a context manager: it holds the writer lock of the folders it writes, writes every output to
a hidden staging path, and publishes them all as one set when its block ends without an error (a
journal completes a publication cut short by a kill); after an error, or a kill before that point,
the old outputs stay whole and the next run of the stage removes the staged leftovers.

Every table a run writes carries, in its metadata, the run's resolved settings and a settings hash
over them and the settings hashes of every table it read: two outputs made differently (an override
on the command line included) never carry the same hash.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ferdata.core.errors import FerdataError
from ferdata.core.io import locate, read_table, remove, stable_hash, write_table
from ferdata.core.publish import locked, publish, recover, settle_all, staging, stale
from ferdata.core.settings import Settings, as_dict, configure
from ferdata.core.tables import TABLES, Table


@dataclass(frozen=True)
class Stage:
    """A pipeline stage: the ferdata command that runs it, its settings class, its inputs and outputs."""

    name: str
    help: str
    module: str  # the module that runs it: its imports inside ferdata are the stage's code dependencies
    settings: type[Settings] | None = None
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    may_read: tuple[str, ...] = ()  # inputs only some settings read (va.source circumplex reads the prior)

    def __post_init__(self) -> None:
        for kind in (*self.reads, *self.writes, *self.may_read):
            if kind not in TABLES:
                raise KeyError(f"stage {self.name} declares unknown table kind {kind!r}")

    @property
    def folders(self) -> tuple[str, ...]:
        """The dataset folders (data, models, reports) its tables live in."""
        used = {TABLES[k].folder for k in (*self.reads, *self.may_read, *self.writes)} - {"repo"}
        return tuple(f for f in ("data", "models", "reports") if f in used)

    def start(
        self,
        settings: Settings | None = None,
        overrides: Mapping[str, Any] | None = None,
        *,
        extra: Settings | None = None,
        lock: bool = True,
        **folders: str | Path | None,
    ) -> Run:
        """A run of this stage on the named folders with ``settings`` (the defaults when None) changed by
        ``overrides`` (field -> value); ``extra`` are settings of another section the run depends on too
        (the dataset's own options, for download). ``lock=False`` lets several processes share the
        folders (align's parts); only rank 0 of a torchrun job locks and publishes."""
        return Run(
            self,
            configure(self.settings, settings, overrides),
            {k: Path(v) for k, v in folders.items() if v is not None},
            extra,
            lock=lock and int(os.environ.get("RANK", "0")) == 0,
        )


class Run:
    """One run of a stage: declared inputs read by kind (following dataset forks), declared outputs
    written with the run's settings and lineage in their metadata."""

    def __init__(
        self,
        stage: Stage,
        settings: Settings | None,
        folders: dict[str, Path],
        extra: Settings | None = None,
        *,
        lock: bool = True,
    ):
        self.stage, self.settings, self.folders, self.extra, self.lock = stage, settings, folders, extra, lock
        self.inputs: dict[str, Any] = {}
        self.staged: dict[str, Path] = {}
        self.adopted: dict[str, Path] = {}  # outputs built elsewhere (align's work folder): kept on failure
        self.then_remove: list[Path] = []
        self.token = uuid.uuid4().hex[:12]
        self._held = contextlib.ExitStack()

    def __enter__(self) -> Run:
        """Lock the folders it writes and complete the publications killed runs left in them, clear the
        staged leftovers of killed runs of this stage; complete (under their writers' locks) those left
        in the folders it only reads."""
        for key, folder in self.folders.items():
            if folder.exists() and not folder.is_dir():
                raise FerdataError(f"{folder} is a file, not a folder: give --{key} a dataset folder (or a new path)")
        try:
            if self.lock:
                written = {self._folder(TABLES[k]) for k in self.stage.writes if TABLES[k].folder != "repo"}
                for folder in sorted(written):
                    self._held.enter_context(locked(folder, self.stage.name))
                    recover(folder)
                for kind in self.stage.writes:
                    if TABLES[kind].folder != "repo":
                        for leftover in stale(self._folder(TABLES[kind]) / TABLES[kind].file):
                            remove(leftover)
            settle_all(self.folders.values())  # those it locked were recovered above and are skipped
        except BaseException:
            self._held.close()
            raise
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: Any) -> None:
        try:
            if exc_type is None:
                self.commit()
        finally:
            for path in self.staged.values():
                remove(path)
            self._held.close()

    def commit(self) -> None:
        """Publish every staged (and adopted) output as one set, with a journal in each folder it lands
        in, owned by this run (nothing staged, nothing to do)."""
        sets: dict[Path, tuple[list[tuple[Path, Path]], list[Path]]] = {}
        for kind, path in {**self.staged, **self.adopted}.items():
            if path.exists():
                folder = self._folder(TABLES[kind])
                sets.setdefault(folder, ([], []))[0].append((path, folder / TABLES[kind].file))
        for path in self.then_remove:
            folder = next(f for f in self.folders.values() if f.resolve() in path.resolve().parents)
            sets.setdefault(folder, ([], []))[1].append(path)
        if sets:
            publish(sets, f"{self.stage.name}-{self.token}")
        self.staged.clear()
        self.adopted.clear()

    def adopt(self, kind: str, path: Path) -> None:
        """Publish ``path`` (built and resumable outside the staging paths) as the declared output
        ``kind``; unlike a staged output it stays where it is if the run fails or is killed."""
        self._table(kind, self.stage.writes)
        self.adopted[kind] = path

    def _table(self, kind: str, declared: tuple[str, ...]) -> Table:
        if kind not in declared:
            raise RuntimeError(f"ferdata bug: stage {self.stage.name} uses {kind!r}, which its Stage does not declare")
        return TABLES[kind]

    def _folder(self, table: Table) -> Path:
        if table.folder == "repo":
            return Path(".")
        if table.folder not in self.folders:
            raise RuntimeError(f"ferdata bug: stage {self.stage.name} was started without its {table.folder} folder")
        return self.folders[table.folder]

    def input(self, kind: str, *, folder: Path | None = None) -> Path:
        """Where a declared input lies (in a forked dataset folder, possibly in the folder it forks);
        ``folder`` reads it from another dataset's folder instead."""
        table = self._table(kind, self.stage.reads + self.stage.may_read)
        return locate(folder if folder is not None else self._folder(table), table.file)

    def output(self, kind: str) -> Path:
        """Where to write a declared output: its staging path, published when the run ends well. A folder
        output is created empty; a file output is left to the caller."""
        table = self._table(kind, self.stage.writes)
        if kind not in self.staged:
            final = self._folder(table) / table.file
            final.parent.mkdir(parents=True, exist_ok=True)
            self.staged[kind] = staging(final, self.token)
            if table.is_folder:
                self.staged[kind].mkdir()
        return self.staged[kind]

    def read(self, kind: str, *, folder: Path | None = None) -> tuple[pd.DataFrame, dict[str, Any]]:
        """A declared input table and its metadata; a missing file is a one-line error naming its stage."""
        path = self.input(kind, folder=folder)
        df, meta = read_table(path, kind, hint=TABLES[kind].hint)
        self.inputs[kind if folder is None else f"{kind}@other"] = meta.get("settings_hash")
        return df, meta

    def resolved(self) -> dict[str, Any]:
        """The run's resolved settings (and options) as plain values."""
        out = as_dict(self.settings)
        if self.extra is not None:
            out[self.extra.section] = as_dict(self.extra)
        return out

    @property
    def settings_hash(self) -> str:
        return stable_hash({"stage": self.stage.name, "settings": self.resolved(), "inputs": self.inputs})

    def stamp(self) -> dict[str, Any]:
        """The provenance every output carries: stage, resolved settings, settings hash with lineage."""
        return {"stage": self.stage.name, "settings": self.resolved(), "settings_hash": self.settings_hash}

    def write(
        self,
        df: pd.DataFrame,
        kind: str,
        meta: dict[str, Any] | None = None,
        *,
        path: Path | None = None,
        validate: bool = True,
    ) -> Path:
        """Write a declared output table (to ``path`` instead of its staging path for work files)."""
        self._table(kind, self.stage.writes)
        target = path or self.output(kind)
        meta = {**(meta or {}), **self.stamp()}
        return write_table(df, target, kind, meta, validate=validate, where=self._where(target.parent))

    def _where(self, folder: Path):
        """Where a path relative to ``folder`` is now: inside this run's staged folder outputs if it
        starts with one of them (the manifest's ``raw/...`` before ``raw/`` is published, align's faces
        in its work folder)."""
        staged = {**self.staged, **self.adopted}
        folders = {TABLES[k].file: p for k, p in staged.items() if TABLES[k].is_folder}

        def where(rel: str) -> Path:
            head, _, rest = rel.partition("/")
            return folders[head] / rest if head in folders and rest else folder / rel

        return where
