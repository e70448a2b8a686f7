"""Downloads and archives: the one place where metakd touches the network.

Every download goes through :func:`fetch`: a cache folder (a file already there is not
downloaded again), a progress bar, a few retries with backoff on network errors, an optional
SHA-256 check, and an atomic rename so that an interrupted download never looks complete.
Only the standard library's ``urllib`` is used.
"""
from __future__ import annotations

import contextlib
import gzip
import http.client
import os
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from pathlib import Path
from typing import Optional, Union

from tqdm import tqdm

from metakd.infra.errors import UserError
from metakd.infra.fileio import atomic_dir, sha256_file

PathLike = Union[str, os.PathLike]

USER_AGENT = "metakd (python urllib)"
TIMEOUT_S = 60.0
CHUNK = 1 << 20

# HTTP statuses worth another try: the server or something in between may recover.
_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


def cache_path(url: str, cache_dir: PathLike) -> Path:
    """Where :func:`fetch` keeps ``url``: ``<cache_dir>/<host>/<path...>``.

    The URL's path is kept (not only its last part) so that files with the same name from
    different places (``config.json`` of two models) do not overwrite each other.
    """
    parts = urllib.parse.urlsplit(url)
    pieces = [_safe_name(parts.netloc or "local")]
    for piece in urllib.parse.unquote(parts.path).split("/"):
        if piece not in ("", ".", ".."):
            pieces.append(_safe_name(piece))
    if len(pieces) == 1:
        pieces.append("index")
    return Path(cache_dir).joinpath(*pieces)


def _safe_name(piece: str) -> str:
    return "".join(c if (c.isalnum() or c in "-_.&+@=") else "_" for c in piece)


def _check_sha256(path: Path, shown: Path, sha256: str, url: str) -> None:
    """Compare the digest of ``path``; errors name ``shown`` (the file's final name)."""
    actual = sha256_file(path)
    if actual != sha256.lower():
        raise UserError(
            f"checksum mismatch for {url}: expected sha256 {sha256.lower()}, got {actual}; "
            "the download is corrupt or the file changed upstream",
            path=shown,
        )


class DownloadError(UserError):
    """A download that failed for good; ``status`` is the HTTP status, or None (no network)."""

    def __init__(self, message: str, url: str, status: Optional[int] = None):
        super().__init__(message)
        self.url = url
        self.status = status


class _Retryable(Exception):
    """A failure that another try may fix (connection reset, 503, short read...)."""


def _download_once(url: str, dest: Path, progress: Optional[bool]) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if e.code in _RETRY_STATUS:
            raise _Retryable(f"HTTP {e.code} {e.reason}") from e
        raise  # 404 and friends: asking again will not help
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", e)
        raise _Retryable(str(reason)) from e
    with response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        received = 0
        # disable=None: a bar on a terminal, silence in logs and tests.
        bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                   desc=dest.name[:40], disable=(None if progress is None else not progress),
                   leave=False)
        try:
            with open(dest, "wb") as f:
                while True:
                    try:
                        block = response.read(CHUNK)
                    except (OSError, http.client.HTTPException) as e:
                        raise _Retryable(f"connection broken after {received} bytes: {e}") from e
                    if not block:
                        break
                    f.write(block)
                    received += len(block)
                    bar.update(len(block))
        finally:
            bar.close()
    if total is not None and received != total:
        raise _Retryable(f"short read: got {received} of {total} bytes")


def fetch(url: str, cache_dir: PathLike, sha256: Optional[str] = None, retries: int = 3,
          backoff_s: float = 1.0, progress: Optional[bool] = None) -> Path:
    """Download ``url`` into ``cache_dir`` (once) and return the local path.

    Args:
      url: an http(s) URL.
      cache_dir: the cache folder; the file lands at :func:`cache_path`.
      sha256: expected hex digest, checked after download and on a cached file.
      retries: how many tries in all for network errors (at least 1).
      backoff_s: wait before the second try; doubled for each further try.
      progress: show a progress bar (None: only on a terminal).
    Returns:
      The cached file. A file already cached (and matching ``sha256`` when given) is returned
      without any network access.
    Raises:
      DownloadError: (a UserError) the URL could not be downloaded (404, no network, ...).
      UserError: the checksum differs.
    """
    path = cache_path(url, cache_dir)
    if path.is_file():
        if sha256 is None or sha256_file(path) == sha256.lower():
            return path
        # A stale or damaged cached copy: fetch it again rather than fail outright.
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the cache folder: {e.strerror or e}",
                        path=path.parent) from e
    tries = max(1, int(retries))
    reason = "unknown error"
    status: Optional[int] = None
    done = 0
    for attempt in range(tries):
        if attempt:
            time.sleep(backoff_s * 2 ** (attempt - 1))
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        done = attempt + 1
        try:
            _download_once(url, tmp, progress)
        except _Retryable as e:
            reason = str(e)
            status = getattr(e.__cause__, "code", None)
            tmp.unlink(missing_ok=True)
            continue
        except urllib.error.HTTPError as e:
            tmp.unlink(missing_ok=True)
            reason = f"HTTP {e.code} {e.reason}"
            status = int(e.code)
            break
        except OSError as e:  # network errors became _Retryable: this is the local disk
            tmp.unlink(missing_ok=True)
            raise UserError(f"cannot write the download: {e.strerror or e}", path=path) from e
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        try:
            if sha256 is not None:
                _check_sha256(tmp, path, sha256, url)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path
    plural = "try" if done == 1 else "tries"
    raise DownloadError(f"could not download {url} after {done} {plural}: {reason}; "
                        "download it by hand and pass the local path", url=url, status=status)


def url_status(url: str, timeout_s: float = 30.0) -> Optional[int]:
    """HTTP status of a HEAD request to ``url`` (after redirects); None if unreachable.

    Used to tell "this file is not there" from "the network is down" without downloading it.
    """
    request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except (urllib.error.URLError, OSError, http.client.HTTPException):
        return None


# --------------------------------------------------------------------------------- archives

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")


def archive_stem(archive: PathLike) -> str:
    """``domain_sentiment_data.tar.gz`` -> ``domain_sentiment_data``."""
    name = Path(archive).name
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or name
    return name


def is_archive(path: PathLike) -> bool:
    return Path(path).name.lower().endswith(ARCHIVE_SUFFIXES)


def _inside(root: Path, name: str) -> bool:
    """True if ``name`` (a member path) stays inside ``root`` once joined and normalised."""
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return False
    target = os.path.normpath(os.path.join(root, name))
    return target == str(root) or target.startswith(str(root) + os.sep)


def _extract_tar(archive: Path, out: Path) -> None:
    with tarfile.open(archive, "r:*") as tar:
        members = tar.getmembers()
        for m in members:
            if not _inside(out, m.name):
                raise UserError(f"archive member {m.name!r} would be written outside the "
                                "destination; refusing to extract", path=archive)
            if m.issym() or m.islnk():
                # A link target is relative to the link's folder (symlink) or the root (hardlink).
                base = os.path.dirname(m.name) if m.issym() else ""
                if not _inside(out, os.path.join(base, m.linkname)):
                    raise UserError(f"archive member {m.name!r} links outside the destination "
                                    f"({m.linkname!r}); refusing to extract", path=archive)
            elif not (m.isfile() or m.isdir()):
                raise UserError(f"archive member {m.name!r} is a device or fifo; refusing to "
                                "extract", path=archive)
        if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12: belt and braces
            tar.extractall(out, members=members, filter="data")
        else:
            tar.extractall(out, members=members)


def _extract_zip(archive: Path, out: Path) -> None:
    with zipfile.ZipFile(archive) as z:
        for name in z.namelist():
            if not _inside(out, name):
                raise UserError(f"archive member {name!r} would be written outside the "
                                "destination; refusing to extract", path=archive)
        z.extractall(out)


def extract_archive(archive: PathLike, dest: PathLike) -> Path:
    """Extract a .tar.gz/.tgz/.tar/.zip archive into ``dest`` and return ``dest``.

    Extraction goes to a temporary folder beside ``dest`` that replaces ``dest`` only when
    complete. Members with absolute paths, ``..`` or links leading outside are refused.

    Raises:
      UserError: unknown format, a corrupt or truncated archive, or an unsafe member.
    """
    archive, dest = Path(archive), Path(dest)
    if not archive.is_file():
        raise UserError("no such archive file", path=archive)
    name = archive.name.lower()
    if name.endswith(".zip"):
        kind = "zip"
    elif name.endswith((".tar.gz", ".tgz", ".tar")):
        kind = "tar"
    elif zipfile.is_zipfile(archive):
        kind = "zip"
    elif _is_tarfile(archive):
        kind = "tar"
    else:
        raise UserError("not a .tar.gz, .tgz, .tar or .zip archive", path=archive)
    try:
        with atomic_dir(dest) as tmp:
            tmp = tmp.resolve()
            if kind == "zip":
                _extract_zip(archive, tmp)
            else:
                _extract_tar(archive, tmp)
    except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, gzip.BadGzipFile) as e:
        raise UserError(f"corrupt or truncated {kind} archive ({e}); delete it and download "
                        "it again", path=archive) from e
    except OSError as e:
        raise UserError(f"could not extract into {dest}: {e}", path=archive) from e
    return dest


def _is_tarfile(path: Path) -> bool:
    with contextlib.suppress(OSError, tarfile.TarError, EOFError, zlib.error):
        return tarfile.is_tarfile(path)
    return False


__all__ = ["DownloadError", "fetch", "cache_path", "url_status", "extract_archive",
           "archive_stem", "is_archive"]
