"""User-facing errors: one line naming the file, what is wrong and how to fix it; exit code 2."""
from __future__ import annotations

import functools
import sys
from typing import Callable, Optional, TypeVar

EXIT_USER_ERROR = 2

F = TypeVar("F", bound=Callable[..., int])


class UserError(Exception):
    """A problem with what the user gave us (paths, data, options), not a bug in metakd."""

    def __init__(self, message: str, path: Optional[object] = None, line: Optional[int] = None):
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(where + message)


def cli_main(func: F) -> F:
    """Wrap an entry point: a UserError becomes ``error: ...`` on stderr and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]
