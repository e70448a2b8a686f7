"""Ctrl-C as docs/usage.md promises: a real SIGINT to a running training gives one message and exit
130, and the same command then resumes from the last saved state."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _tiny import ROOT, env, teacher_args


def test_sigint_to_a_running_training_then_resume(tmp_path):
    out = tmp_path / "teacher"
    args = [sys.executable, "-m", "metakd.train_teacher",
            *map(str, teacher_args(out, "--epochs", "6", "--batch-size", "8", "--save-every", "2",
                                   "--eval-every", "0", "--log-every", "5"))]
    p = subprocess.Popen(args, cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    state = tmp_path / "teacher.resume" / "state"
    deadline = time.time() + 120
    while not state.exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)
    assert state.exists(), p.communicate()
    os.killpg(p.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    stdout, stderr = p.communicate(timeout=60)
    assert p.returncode == 130, (p.returncode, stderr[-2000:])
    assert "interrupted; rerun the same command to continue" in stderr
    assert not (out / "results.json").exists()  # nothing published
    p2 = subprocess.run(args, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert p2.returncode == 0, p2.stderr[-2000:]
    assert "resuming from" in p2.stdout + p2.stderr and (out / "results.json").exists()


def test_sigint_to_a_numbered_script_then_twice(tmp_path):
    """Ctrl-C in a terminal signals the script's whole process group: bash and python."""
    from _tiny import SEQ, tiny

    t = tiny()
    script_env = dict(env(), METAKD_PYTHON=sys.executable, DATA_DIR=str(t.data), TEACHER_MODEL=str(t.teacher),
                      TEACHER_DIR=str(tmp_path / "teacher"), MAX_SEQ_LENGTH=str(SEQ), DEVICE="cpu", TEACHER_EPOCHS="6",
                      BATCH_SIZE="8", SAVE_EVERY="2", EVAL_EVERY="0")
    state = tmp_path / "teacher.resume" / "state"

    def start():
        return subprocess.Popen(["bash", "3_train_teacher.sh"], cwd=ROOT, env=script_env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)

    p = start()
    deadline = time.time() + 120
    while not state.exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)
    assert state.exists(), p.communicate()
    os.killpg(p.pid, signal.SIGINT)
    _, stderr = p.communicate(timeout=60)
    assert p.returncode == 130 and stderr.strip() == "interrupted; rerun the same command to continue a training " \
        "stage from its last saved state", (p.returncode, stderr[-2000:])
    assert not (tmp_path / "teacher").exists()

    # Twice in a row, once the run is training again: it still ends at once (no hang), says so once, no traceback.
    p = start()
    mtime = state.stat().st_mtime_ns
    deadline = time.time() + 120
    while state.stat().st_mtime_ns == mtime and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGINT)
    time.sleep(0.05)
    os.killpg(p.pid, signal.SIGINT)
    _, stderr = p.communicate(timeout=60)
    assert p.returncode in (130, -signal.SIGINT), (p.returncode, stderr[-2000:])  # bash: 130 in the terminal
    assert "Traceback" not in stderr and stderr.count("interrupted; rerun the same command") == 1, stderr[-2000:]
    assert not (tmp_path / "teacher").exists()  # (the resume itself: the test above)


def test_sigint_to_a_two_process_script(tmp_path):
    """NPROC=2 (metakd.launch around OneFlow's launcher): Ctrl-C to the group gives exit 130, the message
    from the processes, no traceback, nothing published; the same as one process."""
    from _tiny import SEQ, tiny

    t = tiny()
    script_env = dict(env(), METAKD_PYTHON=sys.executable, DATA_DIR=str(t.data), TEACHER_MODEL=str(t.teacher),
                      TEACHER_DIR=str(tmp_path / "teacher"), MAX_SEQ_LENGTH=str(SEQ), DEVICE="cpu", TEACHER_EPOCHS="6",
                      BATCH_SIZE="8", SAVE_EVERY="2", EVAL_EVERY="0", NPROC="2", MASTER_PORT="29533")
    state = tmp_path / "teacher.resume" / "state"
    p = subprocess.Popen(["bash", "3_train_teacher.sh"], cwd=ROOT, env=script_env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 180
    while not state.exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)
    assert state.exists(), p.communicate()
    os.killpg(p.pid, signal.SIGINT)
    _, stderr = p.communicate(timeout=60)
    assert p.returncode == 130, (p.returncode, stderr[-2000:])
    assert "interrupted; rerun the same command to continue" in stderr and "Traceback" not in stderr, stderr[-2000:]
    assert not (tmp_path / "teacher").exists()


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux's /proc to see the start-up")
def test_sigint_while_an_entry_point_starts(tmp_path):
    """Ctrl-C during the imports (before any work): the message and 130, not a KeyboardInterrupt traceback.
    (Inside OneFlow's own loading: the next test.)"""
    out = tmp_path / "teacher"
    p = subprocess.Popen([sys.executable, "-m", "metakd.train_teacher", *map(str, teacher_args(out))], cwd=ROOT,
                         env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    maps = Path(f"/proc/{p.pid}/maps")
    deadline = time.time() + 30
    # numpy's library is mapped once metakd's package is imported (numpy comes after it), OneFlow's later
    while time.time() < deadline and p.poll() is None and "_multiarray_umath" not in maps.read_text():
        time.sleep(0.005)
    assert "oneflow" not in maps.read_text(), "too late: OneFlow is loaded already"
    os.killpg(p.pid, signal.SIGINT)
    _, stderr = p.communicate(timeout=60)
    assert p.returncode == 130 and "Traceback" not in stderr and "interrupted; rerun the same command" in stderr, \
        (p.returncode, stderr[-2000:])
    assert not out.exists()


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux's /proc to see the start-up")
def test_sigint_while_oneflow_itself_loads(tmp_path):
    """Ctrl-C while OneFlow's C++ library loads (its static initializer installs a SIGINT handler
    that calls exit(-1), a few tenths of a second before the loading returns): still the message
    and 130. From the moment the library is mapped until the process ends, SIGINT every few
    milliseconds: one of them lands after that handler is installed (without metakd's guard, exit
    255), and none may end the process another way."""
    out = tmp_path / "teacher"
    p = subprocess.Popen([sys.executable, "-m", "metakd.train_teacher", *map(str, teacher_args(out))], cwd=ROOT,
                         env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    maps = Path(f"/proc/{p.pid}/maps")
    deadline = time.time() + 60
    while time.time() < deadline and p.poll() is None and "liboneflow" not in maps.read_text():
        time.sleep(0.002)
    assert p.poll() is None, p.communicate()
    sent = 0
    while p.poll() is None and time.time() < deadline:
        try:
            os.killpg(p.pid, signal.SIGINT)
        except ProcessLookupError:
            break
        sent += 1
        time.sleep(0.003)
    _, stderr = p.communicate(timeout=60)
    assert p.returncode == 130 and stderr.strip() == "interrupted; rerun the same command to continue a training " \
        "stage from its last saved state", (p.returncode, sent, stderr[-2000:])
    assert not out.exists()
