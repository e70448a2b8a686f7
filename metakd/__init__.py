"""metakd: Meta-KD in OneFlow.

Ctrl-C while an entry point (``python -m metakd.<stage>``) is still starting (its imports, about a
second, OneFlow's included) ends it at once with the documented message and exit 130: nothing has
been written yet, and a KeyboardInterrupt there would be a traceback (the imports run before
``errors.cli_main``), OneFlow's own handler an exit 255 or a hang. ``cli_main`` hands Ctrl-C back
to Python (KeyboardInterrupt) when the entry point itself starts.
"""
import os
import signal
import sys

INTERRUPTED = "interrupted; rerun the same command to continue a training stage from its last saved state"


def _interrupted_while_starting(signum, frame):
    os.write(_STDERR, (INTERRUPTED + "\n").encode())  # fd 2 itself is silenced while OneFlow imports
    os._exit(130)


# While ``python -m`` locates the module (importing this package) sys.argv[0] is "-m" (documented).
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
