"""Publishing a stage's outputs as one set, and the one-writer lock of a dataset folder.

A run writes its outputs to hidden staging paths, then publishes them: the moves are first written to a
journal in each folder they land in (paths relative to that folder, so the folder can be moved or copied
with a pending journal), then done. A run killed half way leaves its journals; the next process that holds
the folder's lock completes them before it reads anything. Only the lock's holder completes a journal: a
process that only reads a folder waits for the lock when it finds one, so a paused writer is never
completed behind its back, and a reader never writes into a folder that has nothing pending.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from ferdata.core.errors import FerdataError
from ferdata.core.io import lineage, remove, write_json

JOURNALS = ".ferdata-*.journal.json"
LOCK = ".ferdata.lock"
_HELD: set[Path] = set()  # folders whose lock this process holds (POSIX locks are per process)


class FolderBusy(FerdataError):
    """Another ferdata process holds the folder's writer lock."""


def staging(path: Path, token: str) -> Path:
    """Where a run writes ``path`` until it publishes its outputs (a hidden sibling)."""
    return path.with_name(f".{path.name}.{token}.tmp")


def stale(path: Path) -> list[Path]:
    """The temporaries a killed writer of ``path`` may have left beside it."""
    mine = (f".{path.name}.*.tmp", f"..{path.name}.*.tmp", f".{path.name}.old")  # staged, its atomic temp, set aside
    return [p for pattern in mine for p in path.parent.glob(pattern)]


Moves = list[tuple[Path, Path]]


def publish(sets: dict[Path, tuple[Moves, list[Path]]], name: str) -> None:
    """Publish ``{folder: (moves, then_remove)}`` as one set: every folder's journal is written before
    any move is made, so a kill at any point leaves each folder either untouched or completable."""
    journals = []
    for folder, (moves, then_remove) in sets.items():
        plan = {
            "moves": [[_relative(folder, a), _relative(folder, b)] for a, b in moves],
            "remove": [_relative(folder, p) for p in then_remove],
        }
        journals.append(write_json(plan, folder / f".ferdata-{name}.journal.json"))
    for journal in journals:
        _complete(journal)


def _relative(folder: Path, path: Path) -> str:
    rel = os.path.relpath(path.resolve(), folder.resolve())
    if rel == ".." or rel.startswith(".." + os.sep) or os.path.isabs(rel):
        raise RuntimeError(f"ferdata bug: {path} is published through the journal of {folder}, outside it")
    return rel


def recover(folder: Path) -> list[str]:
    """Complete every publication a killed run left half done in ``folder`` (the caller holds its lock)."""
    done = []
    for journal in sorted(folder.glob(JOURNALS)):
        _complete(journal)
        done.append(journal.name)
    return done


def _inside(folder: Path, rel: str, journal: Path) -> Path:
    path = folder / rel
    root = folder.resolve()
    where = path.parent.resolve() / path.name
    if os.path.isabs(rel) or (where != root and root not in where.parents):
        raise FerdataError(
            f"{journal} names {rel}, outside its folder (not a journal ferdata wrote); delete that journal "
            "and run the stage that made the folder again"
        )
    return path


def _complete(journal: Path) -> None:
    folder = journal.parent
    try:
        plan = json.loads(journal.read_text())
        moves = [(_inside(folder, a, journal), _inside(folder, b, journal)) for a, b in plan["moves"]]
        removes = [_inside(folder, p, journal) for p in plan["remove"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise FerdataError(
            f"{journal} is damaged ({type(exc).__name__}); delete it and run the stage that made {folder} again"
        ) from None
    for src, dst in moves:
        old = dst.with_name(f".{dst.name}.old")
        if src.exists() or src.is_symlink():
            _move(src, dst, old)
        remove(old)
    for path in removes:
        remove(path)
    journal.unlink()


def _move(src: Path, dst: Path, old: Path) -> None:
    """Put ``src`` at ``dst``; a folder cannot be replaced in one rename, so the old one steps aside."""
    if dst.is_dir() and not dst.is_symlink():
        remove(old)
        dst.rename(old)
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dst)


@contextlib.contextmanager
def locked(folder: Path, holder: str) -> Iterator[None]:
    """Hold ``folder``'s writer lock (one ferdata stage writes a dataset folder at a time); a second
    writer gets a one-line error naming the first."""
    try:
        import fcntl
    except ImportError:  # no advisory locks on this platform: run unguarded
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    key = folder.resolve()
    with open(folder / LOCK, "a+") as fh:
        try:
            fcntl.lockf(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a POSIX lock: not inherited by forked workers
        except OSError:
            fh.seek(0)
            other = fh.read().strip() or "another ferdata stage"
            raise FolderBusy(f"{folder} is being written by {other}; wait for it to finish") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"ferdata {holder} (pid {os.getpid()})")
        fh.flush()
        _HELD.add(key)
        try:
            yield
        finally:
            _HELD.discard(key)
            fh.seek(0)
            fh.truncate()
            fcntl.lockf(fh, fcntl.LOCK_UN)


def held(folder: Path) -> bool:
    """Whether this process holds ``folder``'s lock (its pending journals are then its own to complete)."""
    return folder.resolve() in _HELD


def settle(folder: Path, *, wait: float = 30.0) -> None:
    """Before reading a folder this process does not write: complete a publication a killed run left in
    it, under its lock. A live writer mid-publication is waited for (up to ``wait`` seconds)."""
    if not folder.is_dir() or held(folder) or not any(folder.glob(JOURNALS)):
        return
    deadline = time.monotonic() + wait
    while True:
        try:
            with locked(folder, "recovery"):
                recover(folder)
            return
        except FolderBusy as busy:
            if time.monotonic() > deadline:
                raise FolderBusy(f"{busy} (it is publishing its outputs), then run this again") from None
            time.sleep(0.2)
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            raise FerdataError(
                f"{folder} holds outputs a killed ferdata run left half published, and it is not writable: make it "
                "writable and run this once (it completes them), or copy the folder somewhere writable"
            ) from None
        if not any(folder.glob(JOURNALS)):  # its writer finished while we waited
            return


def settle_all(folders: Iterable[Path]) -> None:
    """:func:`settle` every folder and every folder it forks."""
    for folder in folders:
        for each in lineage(folder):
            settle(each)
