"""One JSON line per process on standard output, whole: the launcher's processes share one pipe, and
print() may write a line and its newline in two calls, which another process's line can split."""
import json
import os
import sys


def emit(record: dict) -> None:
    line = (json.dumps(record) + "\n").encode()
    assert len(line) <= 4096, "a pipe write is atomic up to PIPE_BUF (4096 bytes on Linux)"
    sys.stdout.flush()
    os.write(sys.stdout.fileno(), line)
