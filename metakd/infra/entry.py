"""The entry-point wrapper (:func:`cli_main`) and Ctrl-C while an entry point starts.

Ctrl-C while an entry point (``python -m metakd.<stage>``) is still starting (its imports, about a
second, OneFlow's included) ends it at once with the documented message and exit 130: nothing has
been written yet, and a KeyboardInterrupt there would be a traceback (the imports run before
``cli_main``), OneFlow's own handler an exit 255 or a hang. ``cli_main`` hands Ctrl-C back
to Python (KeyboardInterrupt) when the entry point itself starts.

Loading OneFlow's C++ library installs, from a static initializer (``oneflow::AbortSignalHandler``,
liboneflow's util.cpp), a SIGINT handler that calls ``exit(-1)`` (exit 255, no message; run on
another thread while the library is still loading it can also crash). That library loads inside
``create_module`` of ``oneflow._oneflow_internal``, C code that Python cannot interrupt, so
``_CtrlCAfterLoading`` runs every C extension's loading with SIGINT blocked in the main thread and,
once OneFlow's is loaded, puts Python's handler back before unblocking: a Ctrl-C in between waits
(its Python handler could not have run before the loading returned anyway) and then stops the
process as documented. Threads a C extension starts while loading (OpenBLAS's, numpy's import)
inherit the blocked SIGINT, so none of them can run OneFlow's handler meanwhile; if some thread
could (one started otherwise), OneFlow's loading is not blocked and only that C part is left open.
"""
from __future__ import annotations

import functools
import importlib.machinery
import os
import signal
import sys
import threading
from typing import Callable, TypeVar

from metakd.infra.errors import EXIT_USER_ERROR, UserError, os_error_message
from metakd.infra.locks import release_claims

F = TypeVar("F", bound=Callable[..., int])

INTERRUPTED = "interrupted; rerun the same command to continue a training stage from its last saved state"
_ONEFLOW_EXTENSION = "oneflow._oneflow_internal"


def _interrupted_while_starting(signum, frame):
    os.write(_STDERR, (INTERRUPTED + "\n").encode())  # fd 2 itself is silenced while OneFlow imports
    os._exit(130)


def _other_threads_block_sigint() -> bool:
    """Whether every thread but this one blocks SIGINT (Linux's /proc; False when it cannot be read),
    i.e. whether blocking it here too holds a SIGINT back from the whole process."""
    me = str(threading.get_native_id())
    bit = 1 << (signal.SIGINT - 1)
    try:
        for tid in os.listdir("/proc/self/task"):
            if tid == me:
                continue
            with open(f"/proc/self/task/{tid}/status") as f:
                blocked = next(line for line in f if line.startswith("SigBlk:"))
            if not int(blocked.split()[1], 16) & bit:
                return False
    except (OSError, StopIteration, ValueError):  # a thread that ended meanwhile, or no /proc
        return False
    return True


class _ExtensionLoader(importlib.machinery.ExtensionFileLoader):
    def create_module(self, spec):
        in_main = threading.current_thread() is threading.main_thread()
        saved = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT}) if in_main else None
        try:
            if self.name == _ONEFLOW_EXTENSION and saved is not None and not _other_threads_block_sigint():
                signal.pthread_sigmask(signal.SIG_SETMASK, saved)
                saved = None
            return super().create_module(spec)
        finally:
            if self.name == _ONEFLOW_EXTENSION:
                _CtrlCAfterLoading.uninstall()
                handler = signal.getsignal(signal.SIGINT)
                if in_main and handler is not None:
                    signal.signal(signal.SIGINT, handler)  # Python's C-level handler again, over OneFlow's
            if saved is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, saved)  # a Ctrl-C held back is handled now


class _CtrlCAfterLoading:
    """A meta-path finder that hands C extensions (until OneFlow's) to ``_ExtensionLoader``."""

    @classmethod
    def find_spec(cls, fullname, path, target=None):
        if cls not in sys.meta_path:
            return None
        for finder in sys.meta_path[sys.meta_path.index(cls) + 1:]:
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if type(loader) is importlib.machinery.ExtensionFileLoader:
            spec.loader = _ExtensionLoader(loader.name, loader.path)
        return spec

    @classmethod
    def install(cls) -> None:
        if _ONEFLOW_EXTENSION not in sys.modules and cls not in sys.meta_path:
            sys.meta_path.insert(0, cls)

    @classmethod
    def uninstall(cls) -> None:
        if cls in sys.meta_path:
            sys.meta_path.remove(cls)


starting = False
_STDERR = 2


def guard_start() -> None:
    """Called once by ``import metakd``, before anything imports OneFlow: install the guard."""
    global starting, _STDERR
    _CtrlCAfterLoading.install()
    # While ``python -m`` locates the module (importing the package) sys.argv[0] is "-m" (documented).
    starting = sys.argv[:1] == ["-m"]
    if starting:
        _STDERR = os.dup(2)
        signal.signal(signal.SIGINT, _interrupted_while_starting)


def started() -> None:
    """Called by cli_main: from now on Ctrl-C raises KeyboardInterrupt (unless the launcher's
    handler, metakd.runtime's, is in place)."""
    global starting
    if starting:
        starting = False
        signal.signal(signal.SIGINT, signal.default_int_handler)


def cli_main(func: F) -> F:
    """Wrap an entry point: a UserError becomes ``error: ...`` on stderr and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            started()  # Ctrl-C from here on: KeyboardInterrupt, handled below
            return func(*args, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
        except Exception as raised:
            message = os_error_message(raised)
            if message is None or os.environ.get("METAKD_DEBUG") == "1":  # METAKD_DEBUG=1: the traceback
                raise
            print(f"error: {message}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
        except KeyboardInterrupt:
            print(INTERRUPTED, file=sys.stderr)
            sys.exit(130)
        finally:
            release_claims()  # output folders locked by this entry point

    return wrapper  # type: ignore[return-value]
