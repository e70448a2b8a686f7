"""The comparison runner: its statistics against numpy written out, its plan, its errors, and the
whole runner on the synthetic data (2 methods x 2 genres x 2 seeds), stopped in the middle and rerun."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from _tiny import ROOT
from metakd import compare
from metakd.compare import METHODS, Layout, model_chain, paired_difference, summary_table
from metakd.infra.errors import UserError


# ------------------------------------------------------------------ statistics


def _ev(labels, preds):
    return {"test_labels": list(labels), "test_predictions": list(preds)}


def test_paired_difference_by_hand():
    y1, y2 = [0, 1, 1, 0], [1, 1, 0]
    evals = {
        # books, seeds 1 and 2; dvd only seed 1 for both (seed 2 lacks b: not paired)
        ("a", "books", 1): _ev(y1, [0, 1, 1, 1]), ("b", "books", 1): _ev(y1, [0, 0, 1, 1]),
        ("a", "books", 2): _ev(y1, [0, 1, 0, 0]), ("b", "books", 2): _ev(y1, [1, 1, 1, 0]),
        ("a", "dvd", 1): _ev(y2, [1, 1, 0]), ("b", "dvd", 1): _ev(y2, [0, 0, 0]),
        ("a", "dvd", 2): _ev(y2, [0, 0, 0]),
    }
    d = paired_difference(evals, "a", "b", n_boot=2000)
    # books per review, mean over seeds of (correct_a - correct_b):
    #   seed 1: a correct [1,1,1,0], b [1,0,1,0] -> [0,1,0,0]; seed 2: a [1,1,0,1], b [0,1,1,1] -> [1,0,-1,0]
    books = np.array([0.5, 0.5, -0.5, 0.0])
    dvd = np.array([1.0, 1.0, 0.0])  # seed 1 only: a [1,1,1], b [0,0,1]
    assert d["difference"] == pytest.approx(np.concatenate([books, dvd]).mean())
    assert d["n_reviews"] == 7 and d["genres"] == ["books", "dvd"] and d["seeds"] == [1, 2]
    assert d["seeds_by_genre"] == {"books": [1, 2], "dvd": [1]}
    # per seed: only seed 1 is in both genres; its pooled difference: books [0,1,0,0] and dvd [1,1,0]
    assert d["per_seed"] == {1: pytest.approx(3 / 7)}
    # same prediction: books seed 1 [1,0,1,1], seed 2 [0,1,0,1] -> [0.5,0.5,0.5,1]; dvd seed 1 [0,0,1]
    assert d["agreement"] == pytest.approx((2.5 + 1) / 7)
    assert d["ci_low"] <= d["difference"] <= d["ci_high"]
    # The interval's bounds are means of 7 reviews' resampled values: multiples of 0.5/7.
    assert (d["ci_low"] * 14) == pytest.approx(round(d["ci_low"] * 14))


def test_paired_difference_interval_holds_the_seed_variation():
    """Seed 1: a right and b wrong on every review; seed 2 the other way round. Every review's mean
    difference is 0, so resampling reviews alone would give [0, 0]; resampling seeds gives a
    replicate with both seeds 1 (+1), both 2 (-1) or one of each (0)."""
    y = [0, 1] * 50
    wrong = [1 - v for v in y]
    evals = {("a", "g", 1): _ev(y, y), ("b", "g", 1): _ev(y, wrong), ("a", "g", 2): _ev(y, wrong), ("b", "g", 2): _ev(y, y)}
    d = paired_difference(evals, "a", "b", n_boot=4000)
    assert d["difference"] == 0.0 and d["per_seed"] == {1: 1.0, 2: -1.0}
    assert (d["ci_low"], d["ci_high"]) == (-1.0, 1.0)  # each happens in a quarter of the resamples


def test_paired_difference_reads_the_compact_form():
    """Evaluations store labels and predictions as digit strings; lists (older files) still read."""
    evals = {("a", "g", 1): {"test_labels": "0110", "test_predictions": "0111"},
             ("b", "g", 1): _ev([0, 1, 1, 0], [1, 1, 1, 0])}
    d = paired_difference(evals, "a", "b", n_boot=200)
    # a: right on 0,1,2 (3/4); b: right on 1,2,3 (3/4): the same accuracy, different reviews
    assert d["difference"] == 0.0 and d["ci_low"] < 0 < d["ci_high"]


def test_paired_difference_of_identical_predictions_is_exactly_zero():
    y = [0, 1, 1]
    evals = {(m, "books", 1): _ev(y, [0, 0, 1]) for m in ("a", "b")}
    d = paired_difference(evals, "a", "b", n_boot=500)
    assert (d["difference"], d["ci_low"], d["ci_high"]) == (0.0, 0.0, 0.0)
    assert paired_difference(evals, "a", "c", n_boot=500) is None


def test_paired_difference_interval_covers_a_known_difference():
    """a is right on 80% of 2,000 reviews, b on 70%: the interval holds 0.10 and excludes 0."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 2000)
    pa = np.where(rng.uniform(size=2000) < 0.8, y, 1 - y)
    pb = np.where(rng.uniform(size=2000) < 0.7, y, 1 - y)
    d = paired_difference({("a", "g", 1): _ev(y, pa), ("b", "g", 1): _ev(y, pb)}, "a", "b", n_boot=2000)
    se = np.std((pa == y).astype(float) - (pb == y)) / np.sqrt(2000)
    assert d["ci_low"] > 0
    assert d["ci_high"] - d["ci_low"] == pytest.approx(2 * 1.96 * se, rel=0.15)  # the normal interval's width


def test_alone_of_is_the_same_student_alone():
    from metakd.compare import alone_of

    assert alone_of(METHODS["metakd"]) == alone_of(METHODS["metakd_hard"]) == "student_alone"
    assert alone_of(METHODS["metakd_teacher_layers"]) == "student_alone_teacher_layers"
    for m in METHODS.values():  # every student a distilled method uses has its alone baseline
        if m.kind == "kd":
            assert alone_of(m) is not None, m.name


def test_against_alone_by_hand(tmp_path):
    from metakd.compare import against_alone

    y = [0, 1, 1, 0]
    preds = {"metakd": [0, 1, 1, 1], "student_alone": [0, 0, 1, 1], "metakd_teacher_layers": [0, 1, 1, 0],
             "student_alone_teacher_layers": [1, 0, 0, 0], "teacher_meta": [0, 1, 1, 0]}
    evals = {(m, "books", 1): _ev(y, p) for m, p in preds.items()}
    df = pd.DataFrame({"method": list(preds)})
    rows = {m: (shared, own) for m, shared, own in against_alone(df, evals, n_boot=200)}
    assert set(rows) == {"metakd", "metakd_teacher_layers"}  # distilled methods only
    # correct: metakd [1,1,1,0], alone [1,0,1,0], teacher layers [1,1,1,1], its own alone [0,0,0,1]
    assert rows["metakd"][0]["difference"] == pytest.approx(0.25) and rows["metakd"][1] is None
    shared, own = rows["metakd_teacher_layers"]
    assert shared["b"] == "student_alone" and shared["difference"] == pytest.approx(0.5)
    assert own["b"] == "student_alone_teacher_layers" and own["difference"] == pytest.approx(0.75)
    from metakd.compare import plot_paired

    plot_paired([(m, *pair) for m, pair in rows.items()], tmp_path / "paired.png")
    assert (tmp_path / "paired.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plot_paired([], tmp_path / "none.png")  # no pair: no plot
    assert not (tmp_path / "none.png").exists()


def test_summary_table_against_numpy():
    df = pd.DataFrame([
        {"method": "m", "genre": g, "seed": s, "test_accuracy": acc}
        for (g, s, acc) in [("books", 1, 0.8), ("books", 2, 0.7), ("dvd", 1, 0.6), ("dvd", 2, 0.9), ("books", 3, 0.75)]])
    row = summary_table(df, ["books", "dvd"])[0]
    assert row["books"][0] == pytest.approx(np.mean([0.8, 0.7, 0.75]))
    assert row["books"][1] == pytest.approx(np.std([0.8, 0.7, 0.75], ddof=1))
    assert row["books"][2] == 3
    # average: per seed over both genres (seed 3 lacks dvd, so it is left out), then over seeds
    per_seed = [np.mean([0.8, 0.6]), np.mean([0.7, 0.9])]
    assert row["average"] == (pytest.approx(np.mean(per_seed)), pytest.approx(np.std(per_seed, ddof=1)), 2)


# ------------------------------------------------------------------ the plan


def test_chains_share_teachers_and_stage1(tmp_path):
    lay = Layout(tmp_path)
    chain = {m: model_chain(METHODS[m], "books", 1, lay) for m in METHODS}
    outs = {m: [s.out for s in c] for m, c in chain.items()}
    assert [s.script for s in chain["student_alone"]] == ["5_student_second.sh"]  # no teacher at all
    assert chain["student_alone"][0].env["STUDENT_ALONE"] == "1"
    assert outs["metakd"][0] == outs["kd_meta"][0] == outs["teacher_meta"][0] == outs["metakd_no_stage1"][0]
    assert outs["metakd"][1] != outs["kd_meta"][1]  # other stage-1 ingredients, other stage-1 student
    assert outs["kd_single"][0] == outs["teacher_single"][0] == tmp_path / "seed1" / "books" / "single_teacher"
    assert outs["kd_mix"][0] != outs["kd_meta"][0]
    assert [s.script for s in chain["metakd_no_stage1"]] == ["3_train_teacher.sh", "5_student_second.sh"]
    assert chain["metakd_no_stage1"][1].env["SKIP_STAGE1"] == "1"
    env = {m: {k: v for s in c for k, v in s.env.items()} for m, c in chain.items()}
    assert env["kd_meta"]["USE_PROTOTYPE_WEIGHTS"] == env["kd_meta"]["USE_EXPERTISE_WEIGHTS"] == "0"
    assert env["kd_meta"]["USE_DOMAIN_TERM"] == "0"
    assert env["teacher_mix"]["USE_SAMPLE_WEIGHTS"] == env["teacher_mix"]["USE_DOMAIN_LOSS"] == "0"
    assert env["teacher_single"]["TEACHER_GENRE"] == "books" and env["teacher_mix"]["TEACHER_GENRE"] == "all"
    assert env["metakd_teacher_no_domain_loss"]["USE_DOMAIN_LOSS"] == "0"
    assert env["metakd_teacher_no_domain_loss"]["USE_SAMPLE_WEIGHTS"] == "1"
    assert env["metakd_easynlp"]["COMPAT"] == "easynlp" and env["metakd"]["COMPAT"] == "none"
    # EasyNLP's numerics give other prototype scores: its own data folder, prepared with COMPAT=easynlp
    easy = chain["metakd_easynlp"]
    assert [s.script for s in easy[:2]] == ["1_get_data.sh", "2_process_data.sh"]
    assert all(s.env["DATA_DIR"] == str(tmp_path / "data_easynlp") for s in easy)
    assert easy[1].env["COMPAT"] == "easynlp"
    assert all(s.env.get("DATA_DIR", str(tmp_path / "data")) == str(tmp_path / "data") for s in chain["metakd"])
    # every variable the runner sets is a per-cell one (which the environment may not set) or a
    # setting that a method overrides
    assert {k for e in env.values() for k in e} <= set(compare.PER_CELL) | {"STUDENT_MODEL", "STAGE2_LR", "TEMPERATURE",
                                                                             "STAGE2_EPOCHS"}
    assert env["metakd_hard"]["ALPHA"] == "0.5" and env["metakd_hard"]["T_SQUARED"] == "1"
    assert env["metakd_hidden_only"]["USE_ATTENTION_TERM"] == "0" and env["metakd"]["USE_ATTENTION_TERM"] == "1"
    assert env["student_alone_lr1e-4"]["STAGE2_LR"] == "1e-4" and "STAGE2_LR" not in env["student_alone"]
    assert env["metakd_t1"]["TEMPERATURE"] == "1" and "TEMPERATURE" not in env["metakd"]
    for m in ("metakd_no_stage1_full", "metakd_no_stage1_hard"):
        assert [s.script for s in chain[m]] == ["3_train_teacher.sh", "5_student_second.sh"]
        assert env[m]["SKIP_STAGE1"] == "1" and env[m]["STAGE2_EPOCHS"] == compare.BOTH_STAGES
    assert "STAGE2_EPOCHS" not in env["metakd_no_stage1"]
    assert env["metakd_no_stage1_hard"]["ALPHA"] == "0.5" and env["metakd_no_stage1_hard"]["T_SQUARED"] == "1"
    direct = chain["metakd_teacher_layers_no_stage1_full"]  # the made student, straight into stage 2
    assert [s.module or s.script for s in direct] == ["metakd.make_student", "3_train_teacher.sh", "5_student_second.sh"]
    assert direct[2].env["SKIP_STAGE1"] == "1" and direct[2].env["STUDENT_MODEL"] == str(direct[0].out)
    assert dict(METHODS["metakd_teacher_layers_no_stage1_full"].overrides)["STAGE2_EPOCHS"] == compare.BOTH_STAGES

    made = tmp_path / "students" / "teacher_layers"
    assert outs["metakd_teacher_layers"][0] == outs["student_alone_teacher_layers"][0] == made
    assert chain["metakd_teacher_layers"][0].module == "metakd.make_student"
    assert env["metakd_teacher_layers"]["STUDENT_MODEL"] == str(made) == env["student_alone_teacher_layers"]["STUDENT_MODEL"]
    assert outs["metakd_teacher_layers"][2] != outs["metakd"][1]  # its own stage-1 student


def test_resolve_adds_the_stages_epochs():
    assert compare.resolve("1e-4", {}) == "1e-4"
    assert compare.resolve("$TEACHER_MODEL", {}) == compare.SCRIPT_DEFAULTS["TEACHER_MODEL"]
    assert compare.resolve("$TEACHER_MODEL", {"TEACHER_MODEL": "/m"}) == "/m"
    assert compare.resolve(compare.BOTH_STAGES, {"STAGE1_EPOCHS": "3", "STAGE2_EPOCHS": "4"}) == "7"
    assert compare.resolve(compare.BOTH_STAGES, {"STAGE2_EPOCHS": "4"}) == "14"  # 4_student_first.sh's default 10
    with pytest.raises(UserError, match="STAGE1_EPOCHS=x"):
        compare.resolve(compare.BOTH_STAGES, {"STAGE1_EPOCHS": "x"})


def test_compare_sh_lists_every_method():
    header = (ROOT / "compare.sh").read_text().split("cd \"$(dirname")[0]
    assert all(f" {m}" in header.replace("\n#", " ") for m in METHODS)


def test_compare_real_groups_name_known_methods():
    """tools/compare_real.sh runs for hours: a misspelt method would only fail when its group comes."""
    import re

    text = (ROOT / "tools" / "compare_real.sh").read_text()
    named = {m for group in re.findall(r"METHODS=([\w,.-]+)", text) for m in group.split(",")}
    assert len(named) > 10 and named <= set(METHODS), named - set(METHODS)
    default = re.search(r'PARTS="\$\{PARTS:-([^}]*)\}"', text).group(1).split()
    cases = {p for c in re.findall(r"^\s+([\w|]+)\)", text, flags=re.M) for p in c.split("|")}
    known = set(re.search(r'KNOWN=" ([^"]*) "', text).group(1).split())
    assert set(default) <= cases and known == cases, (known ^ cases)


def test_compare_real_refuses_an_unknown_group_before_running_any(tmp_path):
    p = subprocess.run(["bash", "tools/compare_real.sh"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PARTS="answer ablation", METAKD_PYTHON=str(tmp_path / "absent")))
    assert p.returncode == 2 and "unknown group ablation" in p.stderr and p.stderr.count("\n") == 1, p.stderr


# ------------------------------------------------------------------ errors


def _call(args, **env):
    return subprocess.run([sys.executable, "-m", "metakd.compare", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT), GLOG_minloglevel="2", **env))


@pytest.mark.parametrize("args,msg", [
    (["--methods", "metakd,bert"], "unknown method 'bert'"),
    (["--genres", "toys"], "unknown GENRE 'toys'"),
    (["--seeds", "1,x"], "--seeds must be comma-separated integers"),
    (["--methods", "metakd,metakd"], "names an item twice"),
    (["--bootstrap", "5"], "--bootstrap must be >= 100"),
])
def test_bad_options_one_line_exit_2(tmp_path, args, msg):
    p = _call(["--run-dir", str(tmp_path / "run"), *args])
    assert p.returncode == 2 and msg in p.stderr and p.stderr.startswith("error: ")
    assert len(p.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_per_cell_variable_in_environment_is_refused(tmp_path):
    p = _call(["--run-dir", str(tmp_path / "run")], GENRE="books")
    assert p.returncode == 2 and "GENRE set in the environment" in p.stderr and not (tmp_path / "run").exists()


def test_other_settings_in_an_existing_run_dir_are_refused(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps({"settings": {"STAGE2_EPOCHS": "3"}}))
    p = _call(["--run-dir", str(tmp_path / "run")], STAGE2_EPOCHS="5")
    assert p.returncode == 2 and "STAGE2_EPOCHS" in p.stderr and "other settings" in p.stderr


def test_merge_records_keeps_what_earlier_run_dirs_published(tmp_path):
    run, dest = tmp_path / "run", tmp_path / "docs"
    run.mkdir(), dest.mkdir()
    settings = {"STAGE2_EPOCHS": "3", "NPROC": "2"}
    (dest / "walls.tsv").write_text("data/1_get_data\t3.0\nseed42/meta_teacher\t628.1\nseed42/books/metakd\t248.4\n")
    (dest / "config.json").write_text(json.dumps({"settings": settings, "created": "2026-11-29 18:34:04",
                                                  "commits": ["aaa", "bbb"]}))
    # a fresh run dir: the data again, the meta-teacher retrained (its checkpoint was lost), one new cell
    (run / "walls.tsv").write_text("data/1_get_data\t3.4\nseed42/meta_teacher\t700.0\nseed42/books/kd_mix\t180.0\n")
    (run / "config.json").write_text(json.dumps({"settings": settings, "created": "2026-12-02 16:50:31",
                                                 "commits": ["bbb", "ccc"]}))
    compare.merge_records(run, dest)
    assert (dest / "walls.tsv").read_text() == ("seed42/books/metakd\t248.4\ndata/1_get_data\t3.4\n"
                                                "seed42/meta_teacher\t700.0\nseed42/books/kd_mix\t180.0\n")
    cfg = json.loads((dest / "config.json").read_text())
    assert cfg == {"settings": settings, "created": "2026-11-29 18:34:04", "commits": ["aaa", "bbb", "ccc"]}
    compare.merge_records(run, dest)  # publishing the same run dir twice adds nothing
    assert json.loads((dest / "config.json").read_text()) == cfg
    assert (dest / "walls.tsv").read_text().count("\n") == 4


def test_merge_records_refuses_other_settings_and_writes_nothing(tmp_path):
    run, dest = tmp_path / "run", tmp_path / "docs"
    run.mkdir(), dest.mkdir()
    (dest / "config.json").write_text(json.dumps({"settings": {"STAGE2_EPOCHS": "3"}, "created": "x", "commits": []}))
    (dest / "walls.tsv").write_text("a\t1.0\n")
    (run / "config.json").write_text(json.dumps({"settings": {"STAGE2_EPOCHS": "5"}, "created": "y", "commits": []}))
    (run / "walls.tsv").write_text("b\t2.0\n")
    with pytest.raises(UserError, match="STAGE2_EPOCHS differ"):
        compare.merge_records(run, dest)
    assert (dest / "walls.tsv").read_text() == "a\t1.0\n"


# ------------------------------------------------------------------ the whole runner


SYNTH = dict(SOURCE="synthetic", SYNTHETIC_SIZE="20", MAX_SEQ_LENGTH="32", DEVICE="cpu", BATCH_SIZE="8",
             TEACHER_EPOCHS="1", STAGE1_EPOCHS="3", STAGE2_EPOCHS="2", TEACHER_LR="1e-3", STAGE1_LR="1e-3",
             STAGE2_LR="1e-3", EVAL_EVERY="3", SAVE_EVERY="2", NPROC="1")


def _runner_env(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in compare.PER_CELL}
    env.update(SYNTH, METAKD_PYTHON=sys.executable, MODELS_DIR=str(tmp_path / "models"),
               CACHE_DIR=str(tmp_path / "cache"), TEACHER_MODEL=str(tmp_path / "models" / "tiny-teacher"),
               STUDENT_MODEL=str(tmp_path / "models" / "tiny-student"), RUN_DIR=str(tmp_path / "run"),
               METHODS="metakd,student_alone", GENRES="books,dvd", SEEDS="1,2", GLOG_minloglevel="2")
    return env


@pytest.mark.slow
def test_runner_stopped_and_rerun_keeps_finished_cells(tmp_path):
    env = _runner_env(tmp_path)
    run = tmp_path / "run"
    first_cell = run / "seed1" / "books" / "eval" / "metakd.json"
    # Like Ctrl-C in a terminal: SIGINT to the whole process group, once the first cell is done and
    # the next training has started.
    p = subprocess.Popen(["bash", "compare.sh"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, start_new_session=True)
    deadline = time.time() + 600
    while not first_cell.exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.2)
    assert first_cell.exists(), p.communicate()[0][-3000:]
    # Stop while the next stage-1 training runs: once it has saved a resumable state.
    stage1 = run / "seed1" / "dvd" / "stage1_meta_metakd"
    state = stage1.parent / (stage1.name + ".resume") / "state"
    while not state.exists() and not (stage1 / "results.json").exists() and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(p.pid, signal.SIGINT)
    out1 = p.communicate(timeout=120)[0]
    interrupted = not (stage1 / "results.json").exists()  # it may have finished in between (then nothing resumes)
    assert p.returncode == 130, out1[-3000:]
    assert "rerun the same command to continue" in out1
    time.sleep(0.5)
    assert subprocess.run(["pgrep", "-f", str(run)], capture_output=True).returncode == 1  # no training left behind
    first_mtime = first_cell.stat().st_mtime_ns
    done_before = [ln.split("\t")[0] for ln in (run / "walls.tsv").read_text().splitlines()]

    p2 = subprocess.run(["bash", "compare.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert p2.returncode == 0, p2.stdout[-3000:] + p2.stderr[-3000:]
    assert first_cell.stat().st_mtime_ns == first_mtime  # a finished cell is not evaluated again
    walls = [ln.split("\t")[0] for ln in (run / "walls.tsv").read_text().splitlines()]
    # Every artifact built once (nothing recomputed); the stopped one has its part before the stop too.
    twice = {w for w in walls if walls.count(w) > 1}
    assert twice <= {"seed1/dvd/stage1_meta_metakd"}, walls
    assert len(set(walls)) == 2 + 2 + 4 * 3  # data steps, teachers, stage 1, stage 2 and student alone per cell
    assert set(done_before) <= set(walls) and "seed1/meta_teacher" in done_before
    log = (run / "logs" / "seed1__dvd__stage1_meta_metakd.log").read_text()
    if interrupted:  # the stopped training resumed from its saved state
        assert log.count("\n== ") == 2 and "resuming from" in log and twice

    df = pd.read_csv(run / "results.csv")
    assert len(df) == 8 and set(df.method) == {"metakd", "student_alone"}
    assert set(zip(df.method, df.genre, df.seed)) == {(m, g, s) for m in ("metakd", "student_alone")
                                                      for g in ("books", "dvd") for s in (1, 2)}
    assert set(df.student_epochs) == {5}  # stage 1 + stage 2 for Meta-KD, the same for the student alone
    assert df.test_accuracy.between(0, 1).all() and (df.wall_s > 0).all()
    for name in ("accuracy.png", "curves.png", "paired.png"):
        assert (run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (run / "results.md").read_text()
    assert "| metakd |" in md and "| student_alone |" in md and "95%" in md
    paired = json.loads((run / "paired.json").read_text())
    assert paired[0]["b"] == "student_alone" and paired[0]["seeds"] == [1, 2]
    # every cell's evaluation is self-contained (what a report needs when the models are gone)
    ev = json.loads(first_cell.read_text())
    assert ev["student_epochs"] == 5 and ev["teacher_epochs"] == 1 and ev["wall_s"] > 0
    assert ev["curve"]["dev"] and ev["curve"]["train_loss"] and set(ev["test_predictions"]) <= {"0", "1"}
    # a new run dir that takes the finished cells (CELLS_FROM): the same table, nothing trained
    env2 = dict(env, RUN_DIR=str(tmp_path / "run2"), CELLS_FROM=str(run), REPORT_ONLY="1")
    p4 = subprocess.run(["bash", "compare.sh"], cwd=ROOT, env=env2, capture_output=True, text=True, timeout=300)
    assert p4.returncode == 0 and "8 finished cells taken" in p4.stdout, p4.stdout[-2000:] + p4.stderr[-2000:]
    df2 = pd.read_csv(tmp_path / "run2" / "results.csv")
    assert df2.drop(columns="folder").equals(df.drop(columns="folder"))
    assert not (tmp_path / "run2" / "seed1" / "meta_teacher").exists()
    # rerun once more: nothing to do, the report is rewritten from the same cells
    p3 = subprocess.run(["bash", "compare.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p3.returncode == 0 and "bash " not in p3.stdout
    assert pd.read_csv(run / "results.csv").equals(df)


def test_bad_epochs_for_a_both_stages_method_fail_before_any_cell(tmp_path):
    p = _call(["--run-dir", str(tmp_path / "run"), "--methods", "metakd_no_stage1_hard", "--genres", "books",
               "--seeds", "1"], STAGE1_EPOCHS="x")
    assert p.returncode == 2 and "STAGE1_EPOCHS=x" in p.stderr and "whole numbers of epochs" in p.stderr
    assert not (tmp_path / "run").exists()


def test_dry_run_shows_the_resolved_epochs(tmp_path):
    p = _call(["--run-dir", str(tmp_path / "run"), "--dry-run", "--methods", "metakd_no_stage1_hard",
               "--genres", "books", "--seeds", "1"], STAGE1_EPOCHS="2", STAGE2_EPOCHS="3")
    assert p.returncode == 0, p.stderr
    (line,) = [l for l in p.stdout.splitlines() if "5_student_second.sh" in l]
    assert "STAGE2_EPOCHS=5" in line and "SKIP_STAGE1=1" in line and "ALPHA=0.5" in line
