"""Data-parallel training with OneFlow's launcher on CPU (2 processes, as CI's 2 cores)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pandas as pd
import pytest

from _tiny import ROOT, SEQ, copy_data, env, tiny


def launch(args, timeout=600):
    cmd = [sys.executable, "-m", "oneflow.distributed.launch", "--nproc_per_node", "2",
           "--master_port", str(29500 + os.getpid() % 1000), *map(str, args)]
    return subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("mode", ["dense", "sparse"])
def test_all_reduced_gradient_is_the_global_batch_gradient(mode):
    """``sparse``: the word-embedding rows are all-reduced only where some process looked them up.
    Both the write-back (``all_reduce_mean_grads``) and the CPU optimizer's numpy read
    (``mean_grads_numpy``) are checked."""
    p = launch(["tests/helpers/ddp_grad_check.py", mode])
    assert p.returncode == 0, p.stderr[-3000:]
    lines = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    assert sorted(r["rank"] for r in lines) == [0, 1]
    for r in lines:
        assert r["world_size"] == 2 and r["n_grads"] > 40 and r["sparse"] == (mode == "sparse")
        assert r["max_grad_diff"] < 1e-6 and r["numpy_max_grad_diff"] < 1e-6, r
        assert r["untouched_rows_zero"] and r["word_grad_changed"] > 1e-4, r
    # Different random initialisations per process were replaced by rank 0's weights.
    assert lines[0]["param_abs_sum"] == lines[1]["param_abs_sum"]


def test_three_training_scripts_with_nproc_2(tmp_path):
    t = tiny()
    e = dict(env(), METAKD_PYTHON=sys.executable, NPROC="2", MASTER_PORT=str(30500 + os.getpid() % 1000),
             DATA_DIR=str(t.data), OUT_DIR=str(tmp_path / "out"), TEACHER_MODEL=str(t.teacher),
             STUDENT_MODEL=str(t.student), MAX_SEQ_LENGTH=str(SEQ), DEVICE="cpu", BATCH_SIZE="8",
             TEACHER_EPOCHS="1", STAGE1_EPOCHS="1", STAGE2_EPOCHS="1", EVAL_EVERY="0", GENRE="books")
    n_train = len(pd.read_csv(t.data / "train_with_weights.tsv", sep="\t", quoting=3, keep_default_na=False))
    for script in ("3_train_teacher.sh", "4_student_first.sh", "5_student_second.sh"):
        p = subprocess.run(["bash", script], cwd=ROOT, env=e, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, f"{script}:\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
    teacher = json.loads((tmp_path / "out" / "meta_teacher" / "results.json").read_text())
    assert teacher["world_size"] == 2
    assert teacher["steps"] == math.ceil(n_train / (8 * 2))  # global batch = BATCH_SIZE x NPROC
    assert teacher["dev"]["n"] > 0
    student = json.loads((tmp_path / "out" / "books" / "meta_student_finetune" / "results.json").read_text())
    assert student["world_size"] == 2 and student["steps"] > 0
    assert not list((tmp_path / "out").glob("*.resume"))


def test_sharded_inference_and_shared_teacher_cache_give_every_process_all_rows(tmp_path):
    p = launch(["tests/helpers/ddp_sharded_inference.py", tmp_path / "cache"])
    assert p.returncode == 0, p.stderr[-3000:]
    lines = sorted((json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")), key=lambda r: r["rank"])
    assert [r["rank"] for r in lines] == [0, 1]
    for r in lines:
        assert r["where"] == "a file shared by 2 processes"
        # Against one example at a time on one process: equal up to float rounding of other batch shapes.
        for key in ("logits_diff", "emb_diff", "cache_diff", "cache_logits_diff", "cache_domain_diff"):
            assert r[key] < 1e-5, (key, r)
    assert lines[0]["logits_sum"] == lines[1]["logits_sum"]
    assert not (tmp_path / "cache").exists()  # rank 0 removed the shared file


def test_process_data_with_nproc_2_gives_the_same_prototype_scores(tmp_path):
    t = tiny()
    outputs = {}
    for nproc in ("1", "2"):
        data = copy_data(tmp_path / f"data{nproc}")
        e = dict(env(), METAKD_PYTHON=sys.executable, NPROC=nproc, MASTER_PORT=str(31500 + os.getpid() % 1000),
                 DATA_DIR=str(data), TEACHER_MODEL=str(t.teacher), MAX_SEQ_LENGTH=str(SEQ), DEVICE="cpu",
                 EMBED_BATCH_SIZE="8")
        p = subprocess.run(["bash", "2_process_data.sh"], cwd=ROOT, env=e, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, f"{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
        assert p.stdout.count("prototype scores (") == 1  # one process reports and writes
        outputs[nproc] = (data / "train_with_weights.tsv").read_text()
    # The two processes embed alternate length buckets, the same buckets one process would: the
    # same numbers bit for bit.
    assert outputs["1"] == outputs["2"]


@pytest.mark.parametrize("kind", ["numpy", "oneflow"])
def test_easynlp_adamw_skips_parameters_no_process_reached(kind):
    """COMPAT=easynlp with NPROC=2: the averaged gradient is zero where no process had one, and
    EasyNLP's AdamW must still skip those parameters (no decay, no step), as with one process."""
    p = launch(["tests/helpers/ddp_hf_adamw.py", kind])
    assert p.returncode == 0, p.stderr[-3000:]
    lines = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    assert sorted(r["rank"] for r in lines) == [0, 1]
    for r in lines:  # order: first weight, first bias, second weight, second bias
        assert r["moved"] == [True, False, False, False], r
        assert r["steps"] == [1, 0, 0, 0], r


def test_ctrl_c_with_two_processes_stops_both_and_the_rerun_resumes(tmp_path):
    """SIGINT to the whole group (Ctrl-C) under the launcher: no process is left blocked in a
    collective, the first one says how to continue, and the same command resumes."""
    import signal
    import time

    t = tiny()
    out = tmp_path / "teacher"
    script_env = dict(env(), METAKD_PYTHON=sys.executable, NPROC="2", BATCH_SIZE="4", DATA_DIR=str(t.data),
                      TEACHER_MODEL=str(t.teacher), TEACHER_DIR=str(out), MAX_SEQ_LENGTH=str(SEQ), DEVICE="cpu",
                      TEACHER_EPOCHS="6", EVAL_EVERY="0", SAVE_EVERY="2", MASTER_PORT=str(30500 + os.getpid() % 1000))
    p = subprocess.Popen(["bash", "3_train_teacher.sh"], cwd=ROOT, env=script_env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    state = tmp_path / "teacher.resume" / "state"
    deadline = time.time() + 300
    while not state.exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)
    assert state.exists(), p.communicate()
    os.killpg(p.pid, signal.SIGINT)
    stdout, stderr = p.communicate(timeout=60)  # a hang would time out here
    assert p.returncode != 0 and "interrupted; rerun the same command" in stderr, stderr[-2000:]
    time.sleep(1)
    assert subprocess.run(["pgrep", "-f", str(out)], capture_output=True).returncode == 1  # no process left
    p2 = subprocess.run(["bash", "3_train_teacher.sh"], cwd=ROOT, env=script_env, capture_output=True, text=True,
                        timeout=600)
    assert p2.returncode == 0, p2.stderr[-2000:]
    assert "resuming from" in p2.stdout + p2.stderr and (out / "results.json").exists()
