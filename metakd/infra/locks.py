"""Output locks: one writer per output folder.

:func:`output_lock` / :func:`claim` keep two processes from writing one output at once: an
exclusive ``flock`` on ``.<name>.lock`` beside it, released even when the holder is killed.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path
from typing import Dict, Iterator, List, Union

from metakd.infra.errors import UserError

PathLike = Union[str, os.PathLike]

# Locks this process holds: lock file -> [open file, depth]. A flock belongs to an open file, so a
# second open() of the same lock file in this process would wrongly block: nesting is counted.
_HELD_LOCKS: Dict[str, list] = {}
_CLAIMS: List[str] = []


def lock_path(out: PathLike) -> Path:
    out = Path(out)
    return out.parent / f".{out.name}.lock"


def _acquire(out: PathLike) -> str:
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the output's parent folder: {e.strerror or e}", out.parent) from None
    path = lock_path(out)
    key = str(path.parent.resolve() / path.name)
    if key in _HELD_LOCKS:
        _HELD_LOCKS[key][1] += 1
        return key
    try:
        f = open(path, "a+", encoding="utf-8")
    except OSError as e:
        raise UserError(f"cannot create the lock file ({e.strerror or e}); is the output folder writable?", path) from None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        f.seek(0)
        holder = f.read().strip()
        f.close()
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise UserError(f"cannot lock the output folder ({e.strerror or e})", path) from None
        raise UserError("another metakd run" + (f" (process {holder})" if holder.isdigit() else "") + " is writing "
                        "this output folder right now; wait for it to finish or choose another output folder",
                        out) from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    _HELD_LOCKS[key] = [f, 1]
    return key


def _release(key: str) -> None:
    entry = _HELD_LOCKS.get(key)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] <= 0:
        del _HELD_LOCKS[key]
        with contextlib.suppress(OSError):
            entry[0].seek(0)
            entry[0].truncate()
        fcntl.flock(entry[0], fcntl.LOCK_UN)
        entry[0].close()  # the lock file stays: deleting it would let two runs lock different files


@contextlib.contextmanager
def output_lock(out: PathLike) -> Iterator[None]:
    """One writer per output: a second process that asks for the same output gets a UserError.

    An exclusive ``flock`` on ``.<name>.lock`` beside the output, released on exit or when the
    process dies (even by SIGKILL). Re-entrant within one process.
    """
    key = _acquire(out)
    try:
        yield
    finally:
        _release(key)


def claim(out: PathLike) -> None:
    """Take the output lock until :func:`release_claims` (``cli_main`` calls it) or process exit."""
    _CLAIMS.append(_acquire(out))


def release_claims() -> None:
    while _CLAIMS:
        _release(_CLAIMS.pop())
