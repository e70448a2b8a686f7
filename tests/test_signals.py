"""Ctrl-C as the README promises: a real SIGINT to a running training gives one message and exit
130, and the same command then resumes from the last saved state."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

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
