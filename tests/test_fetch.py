import hashlib
import io
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from ferdata.core.errors import FerdataError
from ferdata.fetch import download_url, extract

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


class Handler(BaseHTTPRequestHandler):
    """Serves PAYLOAD with Range support; the first plain GET is cut half way when ``cut`` is set."""

    cut = False
    requests: ClassVar[list] = []

    def do_GET(self):
        rng = self.headers.get("Range")
        type(self).requests.append(rng)
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        body = PAYLOAD[start:]
        self.send_response(206 if rng else 200)
        self.send_header("Content-Length", str(len(body)))
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        self.end_headers()
        if type(self).cut and not rng:
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(2)
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture()
def server():
    Handler.cut, Handler.requests = False, []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/data.tar.gz"
    httpd.shutdown()


def test_download_verifies_checksum(server, tmp_path):
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    out = download_url(server, tmp_path / "data.tar.gz", sha256=sha, size=len(PAYLOAD))
    assert out.read_bytes() == PAYLOAD and not (tmp_path / "data.tar.gz.part").exists()


def test_download_resumes_after_a_cut(server, tmp_path):
    Handler.cut = True
    dest = tmp_path / "data.tar.gz"
    with pytest.raises(FerdataError, match="run the same command again to resume"):
        download_url(server, dest)
    part = tmp_path / "data.tar.gz.part"
    assert 0 < part.stat().st_size < len(PAYLOAD) and not dest.exists()
    download_url(server, dest, sha256=hashlib.sha256(PAYLOAD).hexdigest())
    assert dest.read_bytes() == PAYLOAD
    assert Handler.requests[-1] == f"bytes={len(PAYLOAD) // 2}-"


def test_download_wrong_checksum_keeps_nothing(server, tmp_path):
    with pytest.raises(FerdataError, match="expected 0000"):
        download_url(server, tmp_path / "data.tar.gz", sha256="0000" + "0" * 60)
    assert list(tmp_path.iterdir()) == []


def test_download_unreachable(tmp_path):
    with pytest.raises(FerdataError, match="download of http://127.0.0.1:9/x.zip failed"):
        download_url("http://127.0.0.1:9/x.zip", tmp_path / "x.zip", timeout=5)


def _tar(path, members):
    with tarfile.open(path, "w:gz") as tar:
        for name, data, kind in members:
            info = tarfile.TarInfo(name)
            if kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def test_extract_tar_and_zip(tmp_path):
    _tar(tmp_path / "ok.tar.gz", [("basic/a.txt", b"a", "file"), ("basic/sub/b.txt", b"bb", "file")])
    assert extract(tmp_path / "ok.tar.gz", tmp_path / "out") == 2
    assert (tmp_path / "out/basic/sub/b.txt").read_bytes() == b"bb"
    with zipfile.ZipFile(tmp_path / "ok.zip", "w") as zf:
        zf.writestr("x/y.txt", "y")
    assert extract(tmp_path / "ok.zip", tmp_path / "outz") == 1


@pytest.mark.parametrize(
    "name,kind,match",
    [
        ("../evil.txt", "file", "outside the target"),
        ("/abs/evil.txt", "file", "outside the target"),
        ("basic/../../evil.txt", "file", "outside the target"),
        ("basic/link", "sym", "is a link"),
    ],
)
def test_extract_refuses_malicious_tar(tmp_path, name, kind, match):
    archive = _tar(tmp_path / "evil.tar.gz", [("basic/ok.txt", b"ok", "file"), (name, b"x", kind)])
    target = tmp_path / "sandbox" / "out"
    with pytest.raises(FerdataError, match=match):
        extract(archive, target)
    assert not target.exists() and not (tmp_path / "evil.txt").exists()
    assert [p.name for p in (tmp_path / "sandbox").iterdir()] == []  # no half-extracted temp folder left


def test_extract_refuses_zip_slip(tmp_path):
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as zf:
        zf.writestr("ok.txt", "ok")
        zf.writestr("../../evil.txt", "x")
    with pytest.raises(FerdataError, match="outside the target"):
        extract(tmp_path / "evil.zip", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("suffix", ["tar.gz", "zip"])
def test_truncated_archive_is_an_error(tmp_path, suffix):
    big = bytes(range(256)) * 2000
    path = tmp_path / f"whole.{suffix}"
    if suffix == "zip":
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("a.bin", big)
            zf.writestr("b.bin", big)
    else:
        _tar(path, [("a.bin", big, "file"), ("b.bin", big, "file")])
    cut = tmp_path / f"cut.{suffix}"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
    with pytest.raises(FerdataError, match="truncated or corrupt"):
        extract(cut, tmp_path / "out", max_ratio=1e6)  # the fixture compresses 200x: no cap here
    assert not (tmp_path / "out").exists()


def _plain_tar(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _damaged(kind: str, tmp_path):
    """An archive of four 8 KiB images damaged in one way a download or a disk damages them."""
    import gzip
    import lzma

    rng = __import__("random").Random(0)
    members = [(f"img{i}.jpg", bytes(rng.randrange(256) for _ in range(8192))) for i in range(4)]
    whole = _plain_tar(members)
    if kind == "tar cut at a member boundary":
        return ("a.tar", whole[: 512 + 8192 + 512 + 8192])
    if kind == "tar cut inside a header":
        return ("a.tar", whole[: 512 + 8192 + 200])
    if kind == "gzip with bytes flipped":
        packed = bytearray(gzip.compress(whole, mtime=0))
        for i in range(len(packed) // 2, len(packed) // 2 + 64):
            packed[i] ^= 0xFF
        return ("a.tar.gz", bytes(packed))
    if kind == "xz corrupt":
        packed = bytearray(lzma.compress(whole))
        packed[len(packed) // 2] ^= 0xFF
        return ("a.tar.xz", bytes(packed))
    if kind == "tar with two members of one name":
        return ("a.tar", _plain_tar([*members, ("img1.jpg", b"other")]))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("img0.jpg", members[0][1])
        zf.writestr("img0.jpg\0.exe", members[1][1])  # zip readers cut the name at the NUL
    return ("a.zip", buf.getvalue())


@pytest.mark.parametrize(
    "kind",
    [
        "tar cut at a member boundary",
        "tar cut inside a header",
        "gzip with bytes flipped",
        "xz corrupt",
        "tar with two members of one name",
        "zip names equal before a NUL",
    ],
)
def test_a_damaged_archive_is_an_error_never_a_partial_dataset(tmp_path, kind):
    name, data = _damaged(kind, tmp_path)
    (tmp_path / name).write_bytes(data)
    with pytest.raises(FerdataError, match="truncated or corrupt|two members named"):
        extract(tmp_path / name, tmp_path / "out", max_ratio=1e6)
    assert not (tmp_path / "out").exists()


def test_encrypted_and_unreadable_zip_members_name_the_fix(tmp_path):
    path = tmp_path / "a.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a.jpg", b"x" * 100)
    raw = bytearray(path.read_bytes())
    for sig in (b"PK\x03\x04", b"PK\x01\x02"):  # mark the member encrypted in both headers
        at = raw.index(sig)
        raw[at + (6 if sig == b"PK\x03\x04" else 8)] |= 0x1
    path.write_bytes(bytes(raw))
    with pytest.raises(FerdataError, match="is encrypted; unpack it with its password"):
        extract(path, tmp_path / "out")
    for sig, off in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):  # now PPMd (98), which Python cannot read
        at = raw.index(sig)
        raw[at + (6 if sig == b"PK\x03\x04" else 8)] &= 0xFE
        raw[at + off] = 98
    path.write_bytes(bytes(raw))
    with pytest.raises(FerdataError, match="ppmd"):
        extract(path, tmp_path / "out")


class Files(BaseHTTPRequestHandler):
    """Serves ``bodies[path]``, one body per request in turn (the last one for ever after)."""

    bodies: ClassVar[dict[str, list[bytes]]] = {}

    def do_GET(self):
        queue = type(self).bodies[self.path]
        body = queue.pop(0) if len(queue) > 1 else queue[0]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_a_web_page_or_a_damaged_download_is_never_reused(tmp_path):
    """A captive portal's page in place of the archive is refused and not kept; a damaged archive is moved
    aside, so the next run downloads it again and succeeds."""
    import gzip

    from ferdata.download import resolve_source

    good = gzip.compress(_plain_tar([("faces/a.jpg", b"a" * 1000)]), mtime=0)
    Files.bodies = {
        "/portal.tar.gz": [b"<!DOCTYPE html><html><body>Log in to the hotel Wi-Fi</body></html>"],
        "/data.tar.gz": [good[: len(good) // 2] + b"\0" * (len(good) - len(good) // 2), good],
    }
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Files)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        with pytest.raises(FerdataError, match="answered with a web page"):
            resolve_source(f"{base}/portal.tar.gz", tmp_path / "p")
        assert not list((tmp_path / "p").rglob("portal.tar.gz*"))
        with pytest.raises(FerdataError, match="truncated or corrupt.*moved to .*the same command downloads it again"):
            resolve_source(f"{base}/data.tar.gz", tmp_path / "d")
        root = resolve_source(f"{base}/data.tar.gz", tmp_path / "d")
        assert (root / "faces/a.jpg").read_bytes() == b"a" * 1000
    finally:
        httpd.shutdown()


@pytest.mark.parametrize("fmt", ["zip", "tar"])
@pytest.mark.parametrize("order", [("img.png", "img.png/x.png"), ("img.png/x.png", "img.png")])
def test_a_file_and_a_folder_of_one_name_is_named_not_called_corrupt(tmp_path, fmt, order):
    import io
    import tarfile

    path = tmp_path / f"a.{fmt}"
    if fmt == "zip":
        with zipfile.ZipFile(path, "w") as zf:
            for name in order:
                zf.writestr(name, b"x" * 10)
    else:
        with tarfile.open(path, "w") as tf:
            for name in order:
                info = tarfile.TarInfo(name)
                info.size = 10
                tf.addfile(info, io.BytesIO(b"x" * 10))
    with pytest.raises(FerdataError, match="holds a file and a folder named 'img.png'.*re-pack it") as caught:
        extract(path, tmp_path / "out")
    assert "corrupt" not in str(caught.value) and not (tmp_path / "out").exists()


def test_a_member_name_the_file_system_refuses_is_the_machine_s_error_not_corruption(tmp_path):
    path = tmp_path / "a.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a" * 300 + ".png", b"x" * 10)
    with pytest.raises(OSError) as caught:
        extract(path, tmp_path / "out")
    assert caught.value.errno == 36 and str(path) in str(caught.value.filename)  # ENAMETOOLONG, for the CLI's line
    assert not isinstance(caught.value, FerdataError) and not (tmp_path / "out").exists()
