"""Downloads against a local HTTP server, and archive extraction."""
from __future__ import annotations

import hashlib
import http.server
import io
import os
import socket
import tarfile
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from _http import LocalServer
from metakd.data import download
from metakd.infra.errors import UserError


def make_tar_gz(files: dict) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


ARCHIVE = make_tar_gz({"top/sorted_data_acl/books/positive.review": b"<review_text>\nhi\n</review_text>\n",
                       "top/readme.txt": b"hello"})


class Server(LocalServer):
    """http.server on 127.0.0.1 (port 0) in a thread; counts requests per path.

    Paths: /data.tar.gz (the archive), /flaky.tar.gz (503 on the first request), /down (always
    503), /short (announces more bytes than it sends), anything else 404.
    """

    def __init__(self):
        self.requests = Counter()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.requests[self.path] += 1
                n = outer.requests[self.path]
                if self.path in ("/data.tar.gz", "/a/config.json", "/b/config.json") or (
                        self.path == "/flaky.tar.gz" and n > 1):
                    body = ARCHIVE if self.path.endswith(".gz") else self.path.encode()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                elif self.path in ("/flaky.tar.gz", "/down"):
                    self.send_error(503, "Service Unavailable")
                elif self.path == "/short":
                    self.send_response(200)
                    self.send_header("Content-Length", "1000")
                    self.end_headers()
                    self.wfile.write(b"x" * 10)
                    self.close_connection = True
                else:
                    self.send_error(404, "Not Found")

            do_HEAD = do_GET

            def log_message(self, *args):
                pass

        super().__init__(Handler)


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    with Server() as s:
        yield s


def leftovers(folder: Path) -> list:
    return [p for p in folder.rglob("*") if p.name.startswith(".")]


def test_fetch_and_cache(server, tmp_path):
    url = server.url + "/data.tar.gz"
    path = download.fetch(url, tmp_path / "cache", sha256=hashlib.sha256(ARCHIVE).hexdigest())
    assert path.read_bytes() == ARCHIVE
    assert path == download.cache_path(url, tmp_path / "cache")
    assert path.is_relative_to(tmp_path / "cache") and path.name == "data.tar.gz"
    assert server.requests["/data.tar.gz"] == 1
    assert download.fetch(url, tmp_path / "cache") == path
    assert download.fetch(url, tmp_path / "cache", sha256=hashlib.sha256(ARCHIVE).hexdigest()) == path
    assert server.requests["/data.tar.gz"] == 1  # served from the cache
    assert leftovers(tmp_path) == []


def test_cached_file_with_wrong_checksum_is_fetched_again(server, tmp_path):
    url = server.url + "/data.tar.gz"
    cached = download.cache_path(url, tmp_path)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"damaged")
    assert download.fetch(url, tmp_path, sha256=hashlib.sha256(ARCHIVE).hexdigest()).read_bytes() == ARCHIVE
    assert server.requests["/data.tar.gz"] == 1


def test_checksum_mismatch(server, tmp_path):
    url = server.url + "/data.tar.gz"
    wrong = "0" * 64
    with pytest.raises(UserError) as e:
        download.fetch(url, tmp_path, sha256=wrong)
    message = str(e.value)
    assert message.startswith(f"{download.cache_path(url, tmp_path)}: checksum mismatch for {url}")
    assert wrong in message and hashlib.sha256(ARCHIVE).hexdigest() in message
    assert not download.cache_path(url, tmp_path).exists()
    assert leftovers(tmp_path) == []


def test_404_is_not_retried(server, tmp_path):
    url = server.url + "/missing.tar.gz"
    with pytest.raises(download.DownloadError) as e:
        download.fetch(url, tmp_path, retries=3, backoff_s=0.01)
    assert e.value.status == 404
    assert str(e.value) == (f"could not download {url} after 1 try: HTTP 404 Not Found; "
                            "download it by hand and pass the local path")
    assert server.requests["/missing.tar.gz"] == 1
    assert leftovers(tmp_path) == []


def test_retry_after_one_failure(server, tmp_path):
    path = download.fetch(server.url + "/flaky.tar.gz", tmp_path, retries=3, backoff_s=0.01)
    assert path.read_bytes() == ARCHIVE
    assert server.requests["/flaky.tar.gz"] == 2


@pytest.mark.parametrize("route, reason", [("/down", "HTTP 503"), ("/short", "short read")])
def test_gives_up_after_n_tries(server, tmp_path, route, reason):
    with pytest.raises(download.DownloadError, match=rf"after 3 tries: {reason}.*download it by hand"):
        download.fetch(server.url + route, tmp_path, retries=3, backoff_s=0.01)
    assert server.requests[route] == 3
    assert leftovers(tmp_path) == []


def test_unreachable_host(tmp_path, monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x.tar.gz"
    with pytest.raises(download.DownloadError, match=r"^could not download .* after 2 tries: .*refused") as e:
        download.fetch(url, tmp_path, retries=2, backoff_s=0.01)
    assert e.value.status is None


def test_url_status(server):
    assert download.url_status(server.url + "/data.tar.gz") == 200
    assert download.url_status(server.url + "/nothing") == 404


def test_cache_path_keeps_url_path():
    a = download.cache_path("https://h.co/bert-base-uncased/resolve/main/config.json", "c")
    b = download.cache_path("https://h.co/other/resolve/main/config.json", "c")
    assert a != b and a.name == b.name == "config.json"
    assert download.cache_path("http://x:8080/../../etc/passwd", "c") == Path("c/x_8080/etc/passwd")


# ---------------------------------------------------------------------------- archives

def test_extract_tar_gz_and_replace(tmp_path):
    archive = tmp_path / "d.tar.gz"
    archive.write_bytes(ARCHIVE)
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "stale").write_text("old")
    assert download.extract_archive(archive, dest) == dest
    assert (dest / "top/readme.txt").read_bytes() == b"hello"
    assert not (dest / "stale").exists()
    assert leftovers(tmp_path) == []


def test_extract_zip_and_plain_tar(tmp_path):
    z = tmp_path / "d.zip"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("a/b.txt", "zip")
    assert (download.extract_archive(z, tmp_path / "z") / "a/b.txt").read_text() == "zip"
    t = tmp_path / "d.tar"
    with tarfile.open(t, "w") as tar:
        tar.add(z, arcname="inner.zip")
    assert (download.extract_archive(t, tmp_path / "t") / "inner.zip").read_bytes() == z.read_bytes()
    assert download.archive_stem("x/domain_sentiment_data.tar.gz") == "domain_sentiment_data"


def evil_tar(path: Path, member: tarfile.TarInfo) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        tar.addfile(member, io.BytesIO(b"x" * member.size))
    return path


@pytest.mark.parametrize("make", [
    lambda: tarfile.TarInfo("../evil.txt"),
    lambda: tarfile.TarInfo("/tmp/evil.txt"),
    lambda: tarfile.TarInfo("a/../../evil.txt"),
])
def test_extract_refuses_escaping_paths(tmp_path, make):
    archive = evil_tar(tmp_path / "evil.tgz", make())
    with pytest.raises(UserError, match="outside the destination"):
        download.extract_archive(archive, tmp_path / "sub" / "out")
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "sub" / "out").exists()
    assert leftovers(tmp_path) == []


def test_extract_refuses_links_out(tmp_path):
    link = tarfile.TarInfo("a/link")
    link.type, link.linkname = tarfile.SYMTYPE, "../../outside"
    with pytest.raises(UserError, match="links outside"):
        download.extract_archive(evil_tar(tmp_path / "l.tar.gz", link), tmp_path / "out")
    z = tmp_path / "evil.zip"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("../evil.txt", "x")
    with pytest.raises(UserError, match="outside the destination"):
        download.extract_archive(z, tmp_path / "out")


def test_extract_corrupt_archives(tmp_path):
    truncated = tmp_path / "t.tar.gz"
    truncated.write_bytes(ARCHIVE[: len(ARCHIVE) // 2])
    with pytest.raises(UserError, match=r"t.tar.gz: corrupt or truncated tar archive"):
        download.extract_archive(truncated, tmp_path / "out")
    junk = tmp_path / "j.zip"
    junk.write_bytes(os.urandom(100))
    with pytest.raises(UserError, match=r"j.zip: corrupt or truncated zip archive"):
        download.extract_archive(junk, tmp_path / "out")
    other = tmp_path / "notes.txt"
    other.write_text("text")
    with pytest.raises(UserError, match="not a .tar.gz, .tgz, .tar or .zip archive"):
        download.extract_archive(other, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert leftovers(tmp_path) == []
