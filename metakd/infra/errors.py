"""User-facing errors: one line naming the file, what is wrong and how to fix it; exit code 2.

A leaf: it imports nothing of metakd, so every module can raise a UserError (the entry points print
it through :func:`metakd.infra.entry.cli_main`)."""
from __future__ import annotations

import errno
import os
import re
from typing import Optional

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A problem with what the user gave us (paths, data, options), not a bug in metakd."""

    def __init__(self, message: str, path: Optional[object] = None, line: Optional[int] = None):
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        self.path = path
        self.line = line
        super().__init__(one_line(where + message))


def one_line(text: str) -> str:
    """``text`` with line breaks (and other control characters) escaped: a message is one line."""
    out = []
    for ch in text:
        if ch in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029" or (ord(ch) < 32 and ch != "\t") or ch == "\x7f" \
                or "\ud800" <= ch <= "\udfff":
            out.append(ascii(ch)[1:-1])
        else:
            out.append(ch)
    return "".join(out)


# Output problems the user fixes (a full disk, a read-only folder, a file or folder in the way): one
# line instead of a traceback. Writers replace outputs atomically, so the earlier ones are intact.
_OS_FIXES = {
    errno.ENOSPC: "the disk is full; free some space (earlier outputs are unchanged)",
    errno.EDQUOT: "the disk quota is exceeded; free some space (earlier outputs are unchanged)",
    errno.EACCES: "no permission to read or write it; fix the permissions or choose another path",
    errno.EPERM: "not permitted; fix the permissions or choose another path",
    errno.EROFS: "the file system is read-only; choose another folder for the outputs",
    errno.EISDIR: "a folder where a file was expected; check the path",
    errno.ENOTDIR: "a file where a folder was expected (part of the path is a file); check the path",
    errno.EEXIST: "a file where a folder was expected; check the path",
    # mkdir under /proc or in a folder removed meanwhile; a missing input is checked (and named) earlier
    errno.ENOENT: "it cannot be found or created there; check the path",
    errno.EFBIG: "the file would be larger than this process may write (ulimit -f) or the file system allows; raise "
                 "the limit or choose another folder (earlier outputs are unchanged)",
    errno.ENAMETOOLONG: "the name is too long; choose a shorter path",
}

# Rust and C++ libraries (safetensors, OneFlow) report an I/O error as their own exception whose
# text ends "(os error N)"; it is the same user problem as an OSError with that errno.
_FOREIGN_OS_ERROR = re.compile(r"(?:I/O error: )?([^:()]*) \(os error (\d+)\)")


def os_error_of(e: BaseException) -> Optional[OSError]:
    """``e`` as an OSError when it is one or wraps one (by its text); None otherwise."""
    if isinstance(e, OSError):
        return e
    m = _FOREIGN_OS_ERROR.search(str(e))
    return OSError(int(m.group(2)), m.group(1).strip() or os.strerror(int(m.group(2)))) if m else None


def os_error_message(raised: BaseException) -> Optional[str]:
    """The one line for an output problem the user fixes (``where: what; fix``), None for another error."""
    e = os_error_of(raised)
    fix = _OS_FIXES.get(e.errno) if e is not None else None
    if fix is None:
        return None
    where = f"{e.filename}: " if e.filename else ""
    return f"{one_line(where + (e.strerror or str(e)))}; {fix}"
