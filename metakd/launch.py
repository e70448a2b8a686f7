"""OneFlow's multi-process launcher (``oneflow.distributed.launch``), started through metakd.

    python -m metakd.launch --nproc_per_node 2 -m metakd.train_teacher ...   (what NPROC=2 runs)

The same launcher and options; two differences, both about Ctrl-C. OneFlow's import in the
launcher itself is guarded like an entry point's (``metakd/infra/entry.py``): a Ctrl-C there gives
the message and exit 130, not OneFlow's exit 255. And a Ctrl-C once the processes run ends the
launcher with exit 130 (the launcher stops its processes, each of which stops as documented), not
the launcher's exit 1, so a numbered script reports an interruption the same with NPROC=1 or 2.
"""
from __future__ import annotations

import os
import signal
import sys

import metakd  # noqa: F401  (first: the Ctrl-C guard, before OneFlow loads)
from metakd.infra.entry import INTERRUPTED


class _SignalsSeen:
    """``signal`` for the launcher's module: the same, but it remembers that a SIGINT arrived."""

    interrupted = False

    def __getattr__(self, name):
        return getattr(signal, name)

    def signal(self, signum, handler):
        if signum == signal.SIGINT and callable(handler):
            def seen(s, frame, _handler=handler):
                _SignalsSeen.interrupted = True
                return _handler(s, frame)

            return signal.signal(signum, seen)
        return signal.signal(signum, handler)


def _interrupted_before_launch(signum, frame):
    os.write(2, (INTERRUPTED + "\n").encode())
    os._exit(130)


def main() -> int:
    import subprocess

    from oneflow.distributed import launch

    launch.signal = _SignalsSeen()
    signal.signal(signal.SIGINT, _interrupted_before_launch)  # until the launcher sets its own
    try:
        launch.main()
    except (SystemExit, KeyboardInterrupt):
        if _SignalsSeen.interrupted:
            sys.stdout.flush()
            os._exit(130)  # the processes said "interrupted; ..." themselves
        raise
    except subprocess.CalledProcessError as e:  # a process failed and said why; no launcher traceback
        return e.returncode if e.returncode > 0 else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
