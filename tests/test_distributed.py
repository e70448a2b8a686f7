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
