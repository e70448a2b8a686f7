"""The comparison's switches do what they say: stage-1 weights exactly 1, the domain term gone, only
GENRE's rows used, no teacher loaded for the student alone, stage 2 from a pretrained student.
Values are written out by hand or with numpy, not with the code under test."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from _tiny import SEQ, ROOT, call_main, make_checkpoint, teacher_args, tiny
from metakd.losses import Stage1Inputs, stage1_loss, stage1_weights
from metakd.runtime import flow


def T(a, dtype=flow.float32):
    return flow.tensor(np.ascontiguousarray(a), dtype=dtype)


# ------------------------------------------------------------------ stage-1 weights


LOGITS = np.array([[2.0, 0.0], [0.0, 1.0], [0.5, 0.5]], np.float32)
LABELS = np.array([0, 0, 1])
PROTO = np.array([0.2, -0.5, 0.9], np.float32)


def _expertise_by_hand():
    out = []
    for z, y in zip(LOGITS, LABELS):
        p_y = math.exp(z[y]) / (math.exp(z[0]) + math.exp(z[1]))
        out.append(1.0 / (1.0 + math.exp((1.0 - p_y) ** 2)))
    return np.array(out)


@pytest.mark.parametrize("proto,expertise", [(True, True), (False, True), (True, False), (False, False)])
def test_stage1_weights_switches(proto, expertise):
    w = stage1_weights(T(PROTO), T(LOGITS), T(LABELS, flow.int64), proto, expertise).numpy()
    want = (1.0 + PROTO.astype(np.float64) if proto else np.ones(3)) * (_expertise_by_hand() if expertise else 1.0)
    np.testing.assert_allclose(w, want, rtol=1e-6)
    if not proto and not expertise:
        assert (w == 1.0).all()  # plain KD: exactly one, not approximately


def test_stage1_loss_without_domain_term_is_attention_plus_hidden():
    rng = np.random.default_rng(3)
    b, a, l, f = 2, 2, 3, 4
    mask = np.array([[1, 1, 1], [1, 1, 0]])
    sa, ta = rng.normal(size=(b, a, l, l)).astype(np.float32), rng.normal(size=(b, a, l, l)).astype(np.float32)
    sh, th = rng.normal(size=(b, l, f)).astype(np.float32), rng.normal(size=(b, l, f)).astype(np.float32)
    w = np.array([0.4, 0.9], np.float32)
    x = Stage1Inputs(student_attn=[T(sa)], teacher_attn=[T(ta)], student_hidden=[T(sh)], teacher_hidden=[T(th)],
                     student_domain=None, teacher_domain=None, attention_mask=T(mask, flow.int64), weights=T(w))
    loss, parts = stage1_loss(x, domain_loss_weight=0.5)
    assert "domain" not in parts
    want = 0.0
    for i in range(b):  # per example: MSE over real (query, key) pairs and over real tokens
        n = mask[i].sum()
        att = ((sa[i, :, :n, :n].astype(np.float64) - ta[i, :, :n, :n]) ** 2).mean()
        rep = ((sh[i, :n].astype(np.float64) - th[i, :n]) ** 2).mean()
        want += w[i] * (att + rep)
    np.testing.assert_allclose(float(loss.numpy()), want / b, rtol=1e-5)


# ------------------------------------------------------------------ entry points on the tiny data


def _rows(path, genre=None):
    df = pd.read_csv(path, sep="\t", quoting=3, keep_default_na=False)
    return df if genre is None else df[df["domain"] == genre]


def test_train_teacher_genre_uses_only_that_genres_rows(tmp_path):
    t = tiny()
    out = tmp_path / "single"
    code, stdout, err = call_main("metakd.train_teacher", teacher_args(
        out, "--genre", "dvd", "--no-sample-weights", "--no-domain-loss", "--epochs", "1", "--batch-size", "8",
        "--eval-every", "0", "--save-every", "0"))
    assert code == 0, err
    n_train = len(_rows(t.data / "train_with_weights.tsv", "dvd"))
    n_dev = len(_rows(t.data / "dev_standard.tsv", "dvd"))
    assert f"{n_train} training examples (books 0, dvd {n_train}, electronics 0, kitchen 0)" in stdout
    res = json.loads((out / "results.json").read_text())
    assert res["dev"]["n"] == n_dev  # selected on dvd's dev rows only
    assert res["steps"] == math.ceil(n_train / 8)
    info = json.loads((out / "config.json").read_text())["metakd"]
    assert info["role"] == "fine_tuned" and info["genre"] == "dvd"
    assert info["sample_weights"] is False and info["domain_loss"] is False


def test_train_teacher_rejects_unknown_genre(tmp_path):
    code, _, err = call_main("metakd.train_teacher", teacher_args(tmp_path / "x", "--genre", "toys"))
    assert code == 2 and "unknown GENRE 'toys'" in err and not (tmp_path / "x").exists()


def _script_env(tmp_path, **extra):
    import os

    env = dict(os.environ, METAKD_PYTHON=sys.executable, DEVICE="cpu", MAX_SEQ_LENGTH=str(SEQ), BATCH_SIZE="8",
               DATA_DIR=str(tiny().data), OUT_DIR=str(tmp_path / "out"), SAVE_EVERY="0", EVAL_EVERY="0")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def test_student_alone_loads_no_teacher(tmp_path):
    t = tiny()
    # The teacher folder does not exist: the baseline must not need it.
    env = _script_env(tmp_path, STUDENT_ALONE=1, GENRE="kitchen", STUDENT_MODEL=t.student,
                      TEACHER_DIR=tmp_path / "no-such-teacher", STAGE1_EPOCHS=1, STAGE2_EPOCHS=1)
    p = subprocess.run(["bash", "5_student_second.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    out = tmp_path / "out" / "kitchen" / "student_alone"
    res = json.loads((out / "results.json").read_text())
    info = json.loads((out / "config.json").read_text())["metakd"]
    n_train = len(_rows(t.data / "train_with_weights.tsv", "kitchen"))
    assert res["epochs"] == 2 and res["steps"] == 2 * math.ceil(n_train / 8)  # STAGE1 + STAGE2 epochs
    assert info["role"] == "fine_tuned" and info["genre"] == "kitchen" and "teacher" not in info
    assert info["source_model"] == str(t.student)
    assert res["dev"]["n"] == len(_rows(t.data / "dev_standard.tsv", "kitchen"))


def test_student_alone_rejects_bad_epochs(tmp_path):
    env = _script_env(tmp_path, STUDENT_ALONE=1, STAGE1_EPOCHS="x")
    p = subprocess.run(["bash", "5_student_second.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and p.stderr.startswith("error: 5_student_second.sh:")
    assert not (tmp_path / "out").exists()


def _distill(tmp_path, stage, student, *extra):
    t = tiny()
    teacher = tmp_path / "teacher"
    if not teacher.exists():
        make_checkpoint(teacher)
    out = tmp_path / f"out-{stage}"
    code, stdout, err = call_main("metakd.distill", [
        "--stage", stage, "--genre", "books", "--data-dir", t.data, "--teacher", teacher, "--student", student,
        "--out", out, "--max-seq-length", SEQ, "--no-progress", "--device", "cpu", "--batch-size", "8",
        "--max-steps", "2", "--log-every", "1", "--save-every", "0", "--eval-every", "0", *extra])
    assert code == 0, err
    return out, stdout


def test_plain_kd_has_no_domain_term_and_records_its_ingredients(tmp_path):
    out, stdout = _distill(tmp_path, "first", tiny().student, "--plain-kd")
    lines = [ln for ln in stdout.splitlines() if "step 1/" in ln]
    assert lines and " att " in lines[0] and " rep " in lines[0] and "domain" not in lines[0]
    info = json.loads((out / "config.json").read_text())["metakd"]
    assert (info["prototype_weights"], info["expertise_weights"], info["domain_term"]) == (False, False, False)


def _step1_parts(stdout):
    """The first log line's numbers: loss, att, rep (and domain) of step 1."""
    words = [ln for ln in stdout.splitlines() if "step 1/" in ln][0].split("|")[0].split()
    return {k: float(v) for k, v in zip(words, words[1:]) if k in ("loss", "att", "rep", "domain")}


@pytest.mark.parametrize("flags,expect", [
    (["--plain-kd"], lambda p: p["att"] + p["rep"]),  # every weight exactly 1, no domain term
    (["--no-prototype-weights", "--no-expertise-weights"], lambda p: p["att"] + p["rep"] + 0.5 * p["domain"]),
])
def test_switched_off_weights_reach_the_loss(tmp_path, flags, expect):
    """With unit weights the step's loss is the plain sum of the per-example terms' means; the
    default weights ((1 + prototype) x expertise, at most 1 x 0.5 here) give another value."""
    _, stdout = _distill(tmp_path, "first", tiny().student, *flags)
    parts = _step1_parts(stdout)
    assert parts["loss"] == pytest.approx(expect(parts), abs=2e-4)  # the log prints 4 decimals
    _, stdout = _distill(tmp_path / "default", "first", tiny().student)
    default = _step1_parts(stdout)
    assert default["loss"] < 0.9 * (default["att"] + default["rep"] + 0.5 * default["domain"])


def test_metakd_stage1_keeps_its_ingredients(tmp_path):
    out, stdout = _distill(tmp_path, "first", tiny().student)
    assert " domain " in [ln for ln in stdout.splitlines() if "step 1/" in ln][0]
    info = json.loads((out / "config.json").read_text())["metakd"]
    assert (info["prototype_weights"], info["expertise_weights"], info["domain_term"]) == (True, True, True)


def test_stage_second_from_a_pretrained_student(tmp_path):
    out, stdout = _distill(tmp_path, "second", tiny().student)
    assert "no stage 1" in stdout
    info = json.loads((out / "config.json").read_text())["metakd"]
    assert info["role"] == "student_second" and info["source_model"] == str(tiny().student)


def test_scripts_pass_the_switches(tmp_path):
    """4_student_first.sh's variables reach the entry point (the flags in the log's command line)."""
    teacher = make_checkpoint(tmp_path / "teacher")
    env = _script_env(tmp_path, GENRE="books", STUDENT_MODEL=tiny().student, TEACHER_DIR=teacher, STAGE1_EPOCHS=1,
                      USE_DOMAIN_TERM=0, USE_EXPERTISE_WEIGHTS=0, STAGE1_DIR=tmp_path / "s1")
    p = subprocess.run(["bash", "4_student_first.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    info = json.loads((tmp_path / "s1" / "config.json").read_text())["metakd"]
    assert (info["prototype_weights"], info["expertise_weights"], info["domain_term"]) == (True, False, False)
    assert info["teacher"] == str(teacher)
