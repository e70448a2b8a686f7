"""Writing outputs so that a crash never leaves a half-written file or folder.

Everything metakd writes goes to a temporary name in the destination's own folder (same file
system, so the final rename is atomic) and is renamed only once complete and flushed to disk:

* a file (:func:`atomic_open`, :func:`write_json`) replaces the old one with ``os.replace``;
* a folder (:func:`atomic_dir`) is swapped with the old one in one step where the system allows
  it (Linux ``renameat2(RENAME_EXCHANGE)``), so there is no moment at which neither exists; on
  other systems the old folder is first moved aside (``.<name>.old.<pid>``) and, should the run
  die right then, :func:`recover` (called by the next :func:`atomic_dir`) puts it back.

A killed run leaves at most hidden ``.<name>.*.tmp`` siblings behind, never a damaged output;
:func:`remove_stale` deletes them (the trainer does, under its output lock).
Outputs get ordinary permissions (0666/0777 minus the umask), not the 0600/0700 of temp files.

Two processes writing one output at once are kept apart by :mod:`metakd.infra.locks`.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import functools
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Dict, Iterator, List, Optional, Union

from metakd.infra.errors import UserError, os_error_of

PathLike = Union[str, os.PathLike]

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (best effort: not every system can open a folder)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        _fsync_dir(Path(dirpath))


def _set_default_modes(root: Path) -> None:
    """Give a finished temporary folder the permissions a plain ``mkdir``/``open`` would have."""
    mask = _umask()
    os.chmod(root, 0o777 & ~mask)
    for dirpath, dirs, files in os.walk(root):
        for d in dirs:
            with contextlib.suppress(OSError):
                os.chmod(os.path.join(dirpath, d), 0o777 & ~mask)
        for f in files:
            p = os.path.join(dirpath, f)
            with contextlib.suppress(OSError):
                if os.stat(p).st_mode & 0o777 == 0o600:  # made by mkstemp: widen to the umask's default
                    os.chmod(p, 0o666 & ~mask)


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "w", encoding: Optional[str] = "utf-8") -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; rename it to ``path`` on success."""
    path = Path(path)
    with _named(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        kwargs = {} if "b" in mode else {"encoding": encoding, "newline": ""}
        with _named(path):
            f = open(tmp, mode, **kwargs)
        with f:
            yield f
            with _named(path):
                f.flush()
                os.fsync(f.fileno())
        with _named(path):
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _named(path: Path) -> Iterator[None]:
    """An OSError about a temporary sibling of ``path`` names ``path``: the user knows that one."""
    try:
        yield
    except OSError as e:
        if e.filename is None or Path(e.filename).parent == path.parent and Path(e.filename).name.startswith(
                f".{path.name}."):
            raise OSError(e.errno, e.strerror, str(path)) from None
        raise


def check_writable(path: PathLike, folder: bool = False) -> None:
    """Before any work: a file (or, ``folder=True``, a folder) can later be written at ``path``: nothing
    in the way and its parent folder can be created and written. A problem is a UserError naming
    ``path``, so a long run does not fail only at its end. Creates missing parent folders."""
    path = Path(path)
    if not folder and path.is_dir():
        raise UserError("is a folder; give a file name for this output", path)
    if folder and path.exists() and not path.is_dir():
        raise UserError("is a file; give a folder for this output", path)
    parent = path if folder and path.is_dir() else path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        why = {errno.ENOTDIR: "part of the path is a file", errno.EEXIST: "part of the path is a file",
               errno.EACCES: "no permission to write there", errno.EPERM: "no permission to write there",
               errno.EROFS: "the file system is read-only"}.get(e.errno, e.strerror or str(e))
        raise UserError(f"cannot write this output ({why}); choose another path", path) from None


def save_safetensors(tensors: Dict[str, Any], path: PathLike, metadata: Optional[Dict[str, str]] = None) -> None:
    """``safetensors.numpy.save_file``, whose I/O errors (a full disk) become OSErrors naming ``path``
    (safetensors raises its own exception type with the errno only in its text)."""
    from safetensors.numpy import save_file

    try:
        save_file(tensors, str(path), metadata=metadata)
    except Exception as raised:
        e = os_error_of(raised)
        if e is None or isinstance(raised, OSError):
            raise
        raise OSError(e.errno, e.strerror, str(path)) from None


def read_json_object(path: PathLike, missing: str = "file not found",
                     damaged_fix: str = "the file is damaged, copy or re-create it",
                     expected: str = "expected a JSON object") -> Dict[str, Any]:
    """A JSON object from ``path``; a missing, unreadable or non-object file is a UserError."""
    path = Path(path)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(missing, path) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"not valid JSON ({e}); {damaged_fix}", path) from None
    if not isinstance(d, dict):
        raise UserError(expected, path)
    return d


def sha256_file(path: PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def copy_file(src: PathLike, dest: PathLike) -> Path:
    """Copy one file to ``dest`` atomically (:func:`atomic_open`): ``dest`` is the old file or the whole copy."""
    dest = Path(dest)
    with open(src, "rb") as fin, atomic_open(dest, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)
    return dest


def write_json(path: PathLike, obj: Any) -> None:
    with atomic_open(path) as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")


def write_json_together(objects: Dict[PathLike, Any]) -> None:
    """JSON files in different folders that belong together (evaluate's reports): each is written to
    a temporary sibling first, and only when all are written and flushed are they renamed into
    place (a rename needs no space), so a full disk or a folder in the way leaves every old file as
    it was. Only a kill in the instant between the renames could mix old and new."""
    staged: List[tuple] = []
    try:
        for path, obj in objects.items():
            path = Path(path)
            with _named(path):
                if path.is_dir():
                    raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
                staged.append((tmp, path))
                with open(fd, "w", encoding="utf-8", newline="") as f:
                    json.dump(obj, f, indent=2, sort_keys=False)
                    f.write("\n")
                    f.flush()
                    os.fsync(f.fileno())
                os.chmod(tmp, 0o666 & ~_umask())
        for tmp, path in staged:
            with _named(path):
                os.replace(tmp, path)
        for folder in {path.parent for _, path in staged}:
            _fsync_dir(folder)
    finally:
        for tmp, _ in staged:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


@functools.lru_cache(maxsize=1)
def _renameat2():
    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True).renameat2
    except (OSError, AttributeError):  # not glibc >= 2.28 / not Linux
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths atomically (Linux >= 3.15); False where the system cannot."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _aside_names(path: Path) -> List[Path]:
    pattern = re.compile(rf"\.{re.escape(path.name)}\.old\.\d+")
    return sorted(p for p in path.parent.glob(f".{path.name}.old.*") if pattern.fullmatch(p.name))


def _temp_names(path: Path) -> List[Path]:
    # mkstemp/mkdtemp names: ".<name>." + 8 random characters + ".tmp" (exactly, so that the
    # temporaries of an output called "<name>.v2" are never taken for ours); ".<name>.done.tmp"
    # is a finished run's retired state.
    pattern = re.compile(rf"\.{re.escape(path.name)}\.([a-z0-9_]{{8}}|done)\.tmp")
    return sorted(p for p in path.parent.glob(f".{path.name}.*.tmp") if pattern.fullmatch(p.name))


def recover(path: PathLike) -> None:
    """Put back a folder a run moved aside and then died before renaming its replacement."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        return
    aside = _aside_names(path)
    if aside:
        os.replace(aside[-1], path)


def remove_stale(path: PathLike) -> List[Path]:
    """Delete the hidden temporaries a killed run left beside ``path``; returns what was removed.

    Only call it while no other process can be writing ``path`` (e.g. under the trainer's lock).
    """
    path = Path(path)
    recover(path)
    removed = []
    for p in _temp_names(path) + _aside_names(path):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        removed.append(p)
    return removed


def replace_dir(src: PathLike, dst: PathLike) -> None:
    """Move the finished folder ``src`` to ``dst`` (same file system), replacing ``dst`` atomically."""
    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    recover(dst)
    if dst.is_dir() and not dst.is_symlink() and _exchange(src, dst):
        shutil.rmtree(src, ignore_errors=True)  # src now holds the old folder
    else:
        old = None
        if dst.exists() or dst.is_symlink():
            old = dst.parent / f".{dst.name}.old.{os.getpid()}"
            os.replace(dst, old)
        os.replace(src, dst)
        if old is not None:
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink()
    _fsync_dir(dst.parent)
    if src.parent != dst.parent:
        _fsync_dir(src.parent)


@contextlib.contextmanager
def atomic_dir(path: PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` (old one removed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        _set_default_modes(tmp)
        _fsync_tree(tmp)
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_files(folder: PathLike) -> Iterator[Path]:
    """Files that belong together appear together: write them into the yielded staging folder
    (inside ``folder``, so on the same file system); on success each one replaces its namesake in
    ``folder`` by a rename, which cannot fail for lack of space; on any failure before that (a full
    disk, a folder in the way, a kill while writing) the old set is left as it was. Only a kill in
    the instant between the renames could mix the sets."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob(".staging.*.tmp"):  # left by a killed run; harmless, but not forever
        shutil.rmtree(old, ignore_errors=True)
    try:
        stage = Path(tempfile.mkdtemp(prefix=".staging.", suffix=".tmp", dir=folder))
    except OSError as e:
        raise UserError(f"cannot write here: {e.strerror}; choose another folder", path=folder) from None
    try:
        try:
            yield stage
        except OSError as e:  # a full disk, a read-only folder: one line, the old set kept
            raise UserError(f"cannot write the outputs ({e.strerror}); nothing was replaced; free some space or "
                            "choose another folder", path=folder) from None
        names = sorted(p.name for p in stage.iterdir())
        for name in names:  # checked before the first rename, so that none happens
            if (folder / name).is_dir():
                raise UserError("a folder is in the way of an output file; move it", path=folder / name)
        _set_default_modes(stage)
        _fsync_tree(stage)
        for name in names:
            os.replace(stage / name, folder / name)
        _fsync_dir(folder)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
