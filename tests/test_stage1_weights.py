"""tools/stage1_weights.py: the stage-1 weights written out in numpy, against metakd's losses and by hand."""
import importlib.util
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from _tiny import ROOT

spec = importlib.util.spec_from_file_location("stage1_weights", ROOT / "tools" / "stage1_weights.py")
stage1_weights = importlib.util.module_from_spec(spec)
spec.loader.exec_module(stage1_weights)


def test_weights_by_hand():
    v = stage1_weights.weights(np.array([0.5, 0.0]), np.array([[0.0, 0.0], [math.log(3), 0.0]]), np.array([0, 1]))
    # row 0: p_y = 1/2; row 1: p = (3/4, 1/4), the label is the second
    assert v["p_y"] == pytest.approx([0.5, 0.25])
    e = [1 / (1 + math.exp(0.5 ** 2)), 1 / (1 + math.exp(0.75 ** 2))]
    assert v["expertise"] == pytest.approx(e)
    assert v["w"] == pytest.approx([1.5 * e[0], 1.0 * e[1]])


def test_weights_match_metakd_losses():
    from metakd.losses import stage1_weights as ours
    from metakd.runtime import flow

    rng = np.random.default_rng(0)
    proto, logits, labels = rng.uniform(0, 1, 64), rng.normal(0, 2, (64, 3)), rng.integers(0, 3, 64)
    w = ours(flow.tensor(proto, dtype=flow.float32), flow.tensor(logits, dtype=flow.float32),
             flow.tensor(labels, dtype=flow.int64)).numpy()
    assert stage1_weights.weights(proto, logits, labels)["w"] == pytest.approx(w, rel=1e-5)


def _run_dir(tmp_path, logits_rows=2):
    run = tmp_path / "run"
    (run / "data").mkdir(parents=True)
    (run / "data" / "train_with_weights.tsv").write_text(
        "guid\ttext_a\ttext_b\tlabel\tdomain\tweight\n"
        "a\tgood\t\tpositive\tbooks\t0.5\n" "b\tbad\t\tnegative\tdvd\t0.2\n" "c\tmeh\t\tnegative\tbooks\t0.0\n")
    (run / "seed1" / "meta_teacher").mkdir(parents=True)
    (run / "seed1" / "meta_teacher" / "config.json").write_text(json.dumps(
        {"metakd": {"labels": ["positive", "negative"], "domains": ["books", "dvd"]}}))
    stage1 = run / "seed1" / "books" / "stage1_meta_metakd"
    stage1.mkdir(parents=True)
    np.savez(stage1 / "teacher_logits.npz", logits=np.array([[0.0, 0.0], [math.log(3), 0.0]][:logits_rows]), key="x")
    return run


def test_table_of_a_run_dir_by_hand(tmp_path):
    rows = stage1_weights.genre_rows(_run_dir(tmp_path), 1)
    assert [r["genre"] for r in rows] == ["books"]  # dvd has no stage 1 yet
    r = rows[0]
    e = [1 / (1 + math.exp(0.5 ** 2)), 1 / (1 + math.exp(0.75 ** 2))]  # p_y 1/2 and 1/4 (the second is negative)
    w = np.array([1.5 * e[0], 1.0 * e[1]])
    assert r["n"] == 2 and r["teacher_accuracy"] == 0.5 and r["p_y"] == pytest.approx(0.375)
    assert r["w_mean"] == pytest.approx(w.mean()) and r["w_cv"] == pytest.approx(w.std() / w.mean())
    assert stage1_weights.table(rows).splitlines()[2].startswith("| books | 2 | 50.0% | 0.375 |")


def test_bad_run_dir_is_one_error_line(tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "tools" / "stage1_weights.py"), str(tmp_path)],
                       capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.count("\n") == 1
    assert p.stderr.startswith("error: tools/stage1_weights.py: ") and "2_process_data.sh" in p.stderr
    with pytest.raises(ValueError, match="1 rows for 2 training rows"):
        stage1_weights.genre_rows(_run_dir(tmp_path, logits_rows=1), 1)
    tsv = tmp_path / "run" / "data" / "train_with_weights.tsv"  # a label the teacher does not have
    tsv.write_text(tsv.read_text().replace("negative\tdvd", "neutral\tdvd"))
    p = subprocess.run([sys.executable, str(ROOT / "tools" / "stage1_weights.py"), str(tmp_path / "run"), "--seed", "1"],
                       capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "train_with_weights.tsv:3: " in p.stderr, p.stderr
