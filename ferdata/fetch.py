"""Getting dataset bytes onto disk: HTTP download with resume, checksums, and archive extraction that
never trusts the archive (no member outside the target, no links, truncation is an error)."""

from __future__ import annotations

import contextlib
import http.client
import lzma
import os
import shutil
import stat
import tarfile
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from ferdata.core.errors import FerdataError
from ferdata.core.io import atomic_dir, file_sha256

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
CHUNK = 1 << 20
READABLE_ZIP = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
READABLE_ZIP |= {getattr(zipfile, "ZIP_ZSTANDARD", zipfile.ZIP_STORED)}  # Python 3.14 reads zstd members
DAMAGED = (tarfile.TarError, EOFError, OSError, zipfile.BadZipFile, zlib.error, lzma.LZMAError)  # as read


class DamagedArchive(FerdataError):
    """An archive whose bytes are damaged (truncated, corrupt stream), as opposed to one that is unsafe."""


class Names:
    """Member paths already taken, so a second member of one name cannot replace the first unnoticed
    (tar allows it; zip names that differ only after a NUL byte become one)."""

    def __init__(self, archive: Path):
        self.archive, self.files, self.dirs = archive, set(), set()

    def claim(self, rel: PurePosixPath, is_dir: bool) -> None:
        key = rel.as_posix().rstrip("/")
        if key in self.files or (not is_dir and key in self.dirs):
            what = "a file and a folder" if key in self.dirs or is_dir else "two members"
            raise FerdataError(
                f"{self.archive} holds {what} named {key!r}: one would silently replace the other; "
                "re-pack it with unique names"
            )
        for parent in rel.parents:  # a member below a file: that name is both
            name = parent.as_posix()
            if name in self.files:
                raise FerdataError(
                    f"{self.archive} holds a file and a folder named {name!r} ({key!r} lies below it); "
                    "re-pack it with unique names"
                )
            if name != ".":
                self.dirs.add(name)
        (self.dirs if is_dir else self.files).add(key)


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def verify(path: Path, *, sha256: str | None = None, size: int | None = None) -> None:
    """Raise a one-line error when ``path`` has the wrong size or sha256."""
    if size is not None and path.stat().st_size != size:
        raise FerdataError(f"{path} has {path.stat().st_size} bytes, expected {size}: delete it and download again")
    if sha256:
        with tqdm(
            total=path.stat().st_size, desc=f"sha256 {path.name}", unit="B", unit_scale=True, leave=False, disable=None
        ) as bar:
            got = file_sha256(path, progress=bar.update)
        if got != sha256.lower():
            raise FerdataError(
                f"{path} has sha256 {got}, expected {sha256.lower()}: the file is corrupt or not the "
                "one you meant; delete it and download again"
            )


def _remote_size(response) -> int | None:
    """Total size from Content-Range (a resumed answer) or Content-Length."""
    content_range = response.headers.get("Content-Range", "")
    if "/" in content_range and not content_range.endswith("/*"):
        return int(content_range.rsplit("/", 1)[1])
    length = response.headers.get("Content-Length")
    return int(length) if length is not None else None


def download_url(
    url: str, dest: Path, *, sha256: str | None = None, size: int | None = None, timeout: float = 60.0
) -> Path:
    """Download ``url`` to ``dest``, resuming a ``dest.part`` left by a cut transfer; verify, then rename."""
    if dest.is_file():
        verify(dest, sha256=sha256, size=size)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the part file is already whole
            response = None
        else:
            raise FerdataError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise FerdataError(
            f"download of {url} failed: {getattr(exc, 'reason', exc)}; check the URL and your network"
        ) from exc
    if response is not None:
        with response:
            resumed = response.status == 206
            if not resumed:
                have = 0  # the server ignored the range: start over
            total = _remote_size(response)
            with (
                open(part, "ab" if resumed else "wb") as fh,
                tqdm(
                    total=total, initial=have, unit="B", unit_scale=True, desc=dest.name, leave=False, disable=None
                ) as bar,
            ):
                try:
                    for block in iter(lambda: response.read(CHUNK), b""):
                        fh.write(block)
                        bar.update(len(block))
                except (OSError, urllib.error.URLError, http.client.HTTPException) as exc:
                    raise FerdataError(
                        f"download of {url} was cut after {part.stat().st_size} bytes ({exc}); "
                        "run the same command again to resume"
                    ) from exc
            if total is not None and part.stat().st_size < total:
                raise FerdataError(
                    f"download of {url} stopped at {part.stat().st_size} of {total} bytes; "
                    "run the same command again to resume"
                )
    try:
        verify(part, sha256=sha256, size=size)
        refuse_web_page(part, url, dest)
    except FerdataError:
        part.unlink()
        raise
    os.replace(part, dest)
    return dest


def refuse_web_page(path: Path, url: str, dest: Path) -> None:
    """Raise when an archive's download is a web page (a captive portal's login, a sharing site's
    'download' page): kept, it would be reused and fail as a corrupt archive on every run."""
    if not is_archive(dest):
        return
    with open(path, "rb") as fh:
        head = fh.read(512).lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head")):
        raise FerdataError(
            f"{url} answered with a web page, not the archive (a network login page, or a sharing site's page "
            "in front of the file): open it in a browser, then give --from the file's direct link or the saved archive"
        )


def extract_download(archive: Path, target: Path, **caps: float) -> int:
    """``extract`` for a file ferdata downloaded: a damaged one is moved aside, so that the next run
    downloads it again instead of reusing it."""
    try:
        return extract(archive, target, **caps)
    except DamagedArchive as exc:
        aside = archive.with_name(archive.name + ".damaged")
        os.replace(archive, aside)
        text = str(exc).removesuffix("; download it again")
        raise FerdataError(f"{text}; it was moved to {aside}: the same command downloads it again") from None


def _member_path(name: str, archive: Path) -> PurePosixPath:
    """The relative path a member may take; absolute paths and ``..`` are refused."""
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or (path.parts and path.parts[0].endswith(":")) or ".." in path.parts:
        raise FerdataError(
            f"{archive} is unsafe: member {name!r} would land outside the target folder; refusing to extract it"
        )
    return path


class Budget:
    """How many bytes an extraction may still write (its cap), with a progress bar over them."""

    def __init__(self, archive: Path, limit: int, bar: tqdm):
        self.archive, self.left, self.limit, self.bar = archive, limit, limit, bar

    def take(self, n: int) -> None:
        self.left -= n
        self.bar.update(n)
        if self.left < 0:
            raise FerdataError(
                f"{self.archive} expands beyond {self.limit / 1e9:.3g} GB (download.max_extract_gb, "
                "download.max_ratio, or the free disk space); nothing was extracted. Raise the cap if it is right"
            )


class Unwritable(Exception):
    """The machine refused to write a member (full disk, a name too long, ...): not the archive's fault."""

    def __init__(self, error: OSError):
        self.error = error


def _write_member(out: Path, is_dir: bool, open_src, budget: Budget) -> int:
    """Write one checked member (a folder, or a file's bytes) within ``budget``; return its size in bytes."""
    size = 0
    with open_src() if not is_dir else contextlib.nullcontext() as src:
        try:
            (out if is_dir else out.parent).mkdir(parents=True, exist_ok=True)
            fh = None if is_dir else open(out, "wb")
        except OSError as exc:
            raise Unwritable(exc) from None
        if fh is None:
            return 0
        with fh:
            while block := src.read(CHUNK):  # a read error is the archive's
                budget.take(len(block))
                try:
                    fh.write(block)
                except OSError as exc:
                    raise Unwritable(exc) from None
                size += len(block)
    return size


def _extract_tar(archive: Path, target: Path, budget: Budget) -> int:
    count, names = 0, Names(archive)
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                rel = _member_path(member.name, archive)
                names.claim(rel, member.isdir())
                if member.issym() or member.islnk():
                    raise FerdataError(f"{archive} is unsafe: member {member.name!r} is a link; refusing to extract it")
                if not (member.isfile() or member.isdir()):
                    raise FerdataError(f"{archive} is unsafe: member {member.name!r} is a device or fifo")
                size = _write_member(target / rel, member.isdir(), lambda m=member: tar.extractfile(m), budget)
                if member.isfile() and size != member.size:
                    raise EOFError(f"member {member.name} is short")
                count += member.isfile()
            check_tar_end(tar)
    except Unwritable as exc:  # the CLI names the machine's problem and its fix
        raise OSError(exc.error.errno, exc.error.strerror, f"{archive} (member {str(rel)[:80]!r})") from None
    except DAMAGED as exc:
        raise DamagedArchive(f"{archive} is truncated or corrupt ({_why(exc)}); download it again") from exc
    return count


def _why(exc: BaseException) -> str:
    """An archive library's error on one line (tarfile lists every method it tried, one per line)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def check_tar_end(tar: tarfile.TarFile) -> None:
    """Raise EOFError unless the members are followed by tar's end-of-archive (zero) block; then read a
    compressed stream to its end, which checks its CRC. tarfile itself stops quietly at a cut inside a
    header or at a member boundary, and never reaches the gzip trailer."""
    fh = tar.fileobj
    fh.seek(tar.offset)
    tail = fh.read(tarfile.BLOCKSIZE)
    if len(tail) < tarfile.BLOCKSIZE or tail.strip(b"\0"):
        raise EOFError("it ends before tar's end-of-archive block: cut short or damaged after the last whole member")
    while fh.read(CHUNK):
        pass


def _extract_zip(archive: Path, target: Path, budget: Budget) -> int:
    count, names = 0, Names(archive)
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                rel = _member_path(info.filename, archive)
                names.claim(rel, info.is_dir())
                if info.flag_bits & 0x1:
                    raise FerdataError(
                        f"{archive}: member {info.filename!r} is encrypted; unpack it with its password and "
                        "give --from the folder"
                    )
                if info.compress_type not in READABLE_ZIP:
                    raise FerdataError(
                        f"{archive}: member {info.filename!r} uses a compression Python cannot read "
                        f"({zipfile.compressor_names.get(info.compress_type, info.compress_type)}); re-pack it "
                        "as a plain zip (deflate) or a tar"
                    )
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise FerdataError(
                        f"{archive} is unsafe: member {info.filename!r} is a link; refusing to extract it"
                    )
                _write_member(target / rel, info.is_dir(), lambda i=info: zf.open(i), budget)
                count += not info.is_dir()
    except Unwritable as exc:  # the CLI names the machine's problem and its fix
        raise OSError(exc.error.errno, exc.error.strerror, f"{archive} (member {str(rel)[:80]!r})") from None
    except (*DAMAGED, zipfile.LargeZipFile, NotImplementedError) as exc:
        raise DamagedArchive(f"{archive} is truncated or corrupt ({_why(exc)}); download it again") from exc
    return count


def declared_size(archive: Path) -> int | None:
    """The bytes the archive's headers say it holds (for the progress bar; not trusted for the cap)."""
    try:
        if archive.name.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                return sum(i.file_size for i in zf.infolist())
        if archive.name.lower().endswith(".tar"):
            with tarfile.open(archive, "r:") as tar:
                return sum(m.size for m in tar if m.isfile())
    except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError):
        return None
    return None  # compressed tars would be read twice: the bar counts up without a total


def extract(archive: Path, target: Path, *, max_gb: float = 500.0, max_ratio: float = 100.0) -> int:
    """Extract ``archive`` into ``target`` as a whole (atomically); return how many files it held. It may
    write at most ``max_gb`` GB, ``max_ratio`` times the archive's size, and what the disk has free:
    past that, nothing is kept and the error says which cap to raise (an archive bomb stops early)."""
    if not archive.is_file():
        raise FerdataError(f"{archive} not found")
    target.parent.mkdir(parents=True, exist_ok=True)
    limit = int(min(max_gb * 1e9, max_ratio * max(archive.stat().st_size, 1), shutil.disk_usage(target.parent).free))
    with (
        atomic_dir(target) as tmp,
        tqdm(
            total=declared_size(archive),
            desc=f"extract {archive.name}",
            unit="B",
            unit_scale=True,
            leave=False,
            disable=None,
        ) as bar,
    ):
        budget = Budget(archive, limit, bar)
        count = (
            _extract_zip(archive, tmp, budget)
            if archive.name.lower().endswith(".zip")
            else _extract_tar(archive, tmp, budget)
        )
        if count == 0:
            raise FerdataError(f"{archive} holds no files")
    return count
