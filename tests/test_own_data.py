"""TASK=tsv (the user's own data): reading a CSV/TSV, the stratified split, given files, labels and
domains from the data, the one-line errors for bad input, and the six scripts end to end."""
from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from metakd.data import synthetic, table, tasks, tsv
from metakd.infra.errors import UserError
from test_get_data import check_one_line_error, run_cli

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ["--text-column", "message", "--label-column", "category", "--domain-column", "product"]


def write_rows(path: Path, header, rows, delimiter=","):
    """Rows written with Python's csv module (quoting where needed): an independent writer."""
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter=delimiter, lineterminator="\n",
                       quoting=csv.QUOTE_MINIMAL if delimiter == "," else csv.QUOTE_NONE, escapechar=None)
        w.writerow(header)
        w.writerows(rows)
    return path


def small_rows(n_per_class=10, domains=("a", "b", "c"), labels=("x", "y", "z")):
    return [[f"{d} {l} message {i}, with a comma", l, d] for d in domains for l in labels for i in range(n_per_class)]


def read_out(folder: Path, split: str):
    return tsv.read_pair_split(folder / f"{split}.tsv")


def test_one_file_split_sizes_labels_and_csv_quoting(tmp_path):
    path = synthetic.write_synthetic_table(tmp_path / "t.csv", rows_per_class=17, seed=1)
    r = run_cli(["--task", "tsv", "--source", path, "--out", "out", *COLUMNS], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out"
    info = json.loads((out / "task.json").read_text())
    assert info["labels"] == ["complaint", "praise", "question"]  # sorted, from the data
    assert info["domains"] == ["laptop", "phone", "router"]
    assert info["columns"] == {"text": "message", "text_b": "", "label": "category", "domain": "product"}
    # Python's csv reader of the same file: what the split files must hold, whitespace normalised.
    with open(path, newline="", encoding="utf-8") as f:
        source = [(" ".join(r["message"].split()), r["category"], r["product"]) for r in csv.DictReader(f)]
    assert any('"' in t for t, _, _ in source) and any("," in t for t, _, _ in source)
    got = {s: read_out(out, s) for s in ("train", "dev", "test")}
    rows = sorted(t for s in got.values() for t in zip(s["text_a"], s["label"], s["domain"]))
    assert rows == sorted(source)  # every row once, none changed
    k = math.floor(0.1 * 17 + 0.5)  # 2 per stratum for dev and for test
    for s, n in (("dev", k), ("test", k), ("train", 17 - 2 * k)):
        assert Counter(zip(got[s]["domain"], got[s]["label"])) == {(d, l): n for d in info["domains"]
                                                                   for l in info["labels"]}, s
        assert (got[s]["text_b"] == "").all()
    # Deterministic for the seed; another seed draws other rows.
    r = run_cli(["--task", "tsv", "--source", path, "--out", "again", *COLUMNS], cwd=tmp_path)
    assert r.returncode == 0 and (tmp_path / "again/test.tsv").read_bytes() == (out / "test.tsv").read_bytes()
    r = run_cli(["--task", "tsv", "--source", path, "--out", "other", "--split-seed", "5", *COLUMNS], cwd=tmp_path)
    assert r.returncode == 0 and (tmp_path / "other/test.tsv").read_bytes() != (out / "test.tsv").read_bytes()


def test_given_files_and_second_text(tmp_path):
    header = ["question", "answer", "label", "domain"]
    rows = [[f"q {d} {i}", f"a {l} {i}" if i % 4 else "", l, d] for d in ("shop1", "shop2") for l in ("no", "yes")
            for i in range(6)]
    for name, part in (("train", rows[0::3] + rows[1::3]), ("dev", rows[2::6]), ("test", rows[5::6])):
        write_rows(tmp_path / f"{name}.tsv", header, part, delimiter="\t")
    r = run_cli(["--task", "tsv", "--train-file", "train.tsv", "--dev-file", "dev.tsv", "--test-file", "test.tsv",
                 "--out", "out", "--text-column", "question", "--text-b-column", "answer"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    info = json.loads((tmp_path / "out/task.json").read_text())
    assert (info["labels"], info["domains"], info["split"]["how"]) == (["no", "yes"], ["shop1", "shop2"], "given files")
    got = read_out(tmp_path / "out", "train")
    assert list(zip(got["text_a"], got["text_b"], got["label"], got["domain"])) == \
        [tuple(r) for r in rows[0::3] + rows[1::3]]  # the given rows, in their order


BAD = {
    "dev label not in train": ("train", "dev", 3, "label", "label 'w' does not occur in the training rows"),
    "test domain not in train": ("train", "test", 2, "domain", "domain 'q' does not occur in the training rows"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_dev_or_test_values_unknown_to_train(tmp_path, case):
    _, split, line, what, message = BAD[case]
    rows = small_rows(2)
    for name in ("train", "dev", "test"):
        part = [list(r) for r in rows]
        if name == split:
            part[line - 2][1 if what == "label" else 2] = "w" if what == "label" else "q"
        write_rows(tmp_path / f"{name}.csv", ["message", "category", "product"], part)
    r = run_cli(["--task", "tsv", "--train-file", "train.csv", "--dev-file", "dev.csv", "--test-file", "test.csv",
                 "--out", "out", *COLUMNS], cwd=tmp_path)
    check_one_line_error(r, f"{split}.csv:{line}: {message}")
    assert not (tmp_path / "out").exists()


def write_one(tmp_path, rows, header=("message", "category", "product"), name="data.csv"):
    return write_rows(tmp_path / name, list(header), rows)


@pytest.mark.parametrize("case", ["few rows", "missing column", "empty text", "one domain", "reserved domain",
                                  "fields", "only dev fraction"])
def test_bad_input_one_line_errors(tmp_path, case):
    rows = small_rows(10)
    args = ["--task", "tsv", "--source", "data.csv", "--out", "out", *COLUMNS]
    if case == "few rows":
        rows += [["tiny domain text", "x", "d"], ["another", "y", "d"]]
        expect = ["domain 'd' has 2 row(s), too few to split", "give it more rows"]
    elif case == "missing column":
        args[args.index("category")] = "kind"
        expect = ["data.csv:1: no column 'kind' (the file's columns: message, category, product)", "LABEL_COLUMN"]
    elif case == "empty text":
        rows[4][0] = "  "
        expect = ["data.csv:6: empty text in column 'message'"]
    elif case == "one domain":
        rows = [r for r in rows if r[2] == "a"]
        expect = ["the training rows have only domain 'a'", "at least 2 labels and 2 domains"]
    elif case == "reserved domain":
        rows[0][2] = "all"
        expect = ["data.csv:2: domain 'all' cannot name a folder"]
    elif case == "fields":
        rows[7] = rows[7] + ["extra"]
        expect = ["data.csv:9: expected 3 comma-separated fields (as the header), found 4"]
    else:
        args += ["--dev-fraction", "0.6", "--test-fraction", "0.5"]
        expect = ["--dev-fraction + --test-fraction must be < 1"]
    write_one(tmp_path, rows)
    check_one_line_error(run_cli(args, cwd=tmp_path), *expect)
    assert not (tmp_path / "out").exists()


def test_read_table_tsv_is_unquoted_and_csv_may_span_lines(tmp_path):
    (tmp_path / "a.tsv").write_text('text\tlabel\tdomain\n"quoted" text\tx\td1\n', encoding="utf-8")
    df = table.read_table(tmp_path / "a.tsv", table.Columns())
    assert df["text_a"].tolist() == ['"quoted" text']
    (tmp_path / "a.csv").write_text('\ufefftext,label,domain\n"two\nlines, one text",x,d1\n\nnext,y,d2\n',
                                    encoding="utf-8")
    df = table.read_table(tmp_path / "a.csv", table.Columns())
    assert df["text_a"].tolist() == ["two lines, one text", "next"] and df["line"].tolist() == [2, 5]
    (tmp_path / "comma.tsv").write_text("text,label,domain\nx,y,z\n", encoding="utf-8")
    with pytest.raises(UserError, match="a comma-separated file must end in .csv"):
        table.read_table(tmp_path / "comma.tsv", table.Columns())


def test_processor_reads_task_json_and_refuses_another_task(tmp_path):
    write_one(tmp_path, small_rows(10))
    r = run_cli(["--task", "tsv", "--source", "data.csv", "--out", "out", *COLUMNS], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    proc = tasks.processor("tsv", tmp_path / "out")
    assert (proc.labels, proc.domains) == (("x", "y", "z"), ("a", "b", "c"))
    with pytest.raises(UserError, match=r"task.json: this data folder holds TASK=tsv data .*set TASK=tsv"):
        tasks.processor("senti", tmp_path / "out")
    with pytest.raises(UserError, match=r"no task.json here .*run 1_get_data.sh with TASK=tsv"):
        tasks.processor("tsv", tmp_path)
    # The Amazon split written into the same folder removes the stale task.json.
    r = run_cli(["--source", "synthetic", "--out", "out", "--models-out", "m", "--synthetic-size", "5"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "out/task.json").exists()


def script_env(tmp_path, **extra):
    env = dict(os.environ, METAKD_PYTHON=sys.executable, DEVICE="cpu", TABLE=str(tmp_path / "tickets.csv"),
               DATA_DIR=str(tmp_path / "data"), MODELS_DIR=str(tmp_path / "models"), OUT_DIR=str(tmp_path / "out"))
    env.update({k: str(v) for k, v in extra.items()})
    return env


@pytest.mark.slow
def test_own_data_six_scripts_end_to_end(tmp_path):
    """README's worked example (tools/own_data_example.sh): a generated 3-domain, 3-label CSV through
    the six scripts with TASK=tsv; the student beats chance (1/3) on its domain's test rows."""
    p = subprocess.run(["bash", "tools/own_data_example.sh"], cwd=ROOT, env=script_env(tmp_path), capture_output=True,
                       text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    out = tmp_path / "out"
    for folder in (out / "meta_teacher", out / "phone" / "meta_student_pretrain", out / "phone" / "meta_student_finetune"):
        info = json.loads((folder / "config.json").read_text())["metakd"]
        assert info["task"] == "tsv"
        assert info["labels"] == ["complaint", "praise", "question"], folder
        assert info["domains"] == ["laptop", "phone", "router"], folder
    rows = json.loads((out / "eval_test.json").read_text())["results"]["phone"]
    student = rows["student"]
    assert student["n"] == 18  # 3 labels x round(0.1 x 60)
    # 18 rows: 0.7 is more than three standard deviations above chance (1/3 +- 0.11).
    assert student["accuracy"] > 0.7, student
    assert "accuracy" in p.stdout and "macro_f1" in p.stdout


def test_scripts_pass_task_and_refuse_a_mismatch(tmp_path):
    """TASK=senti's later scripts on a TASK=tsv data folder: one line naming the TASK to set."""
    write_one(tmp_path, small_rows(10))
    r = run_cli(["--task", "tsv", "--source", "data.csv", "--out", "data", *COLUMNS], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    synthetic.make_tiny_bert(tmp_path / "bert", num_layers=1, hidden_size=16, num_heads=2, intermediate_size=32)
    p = subprocess.run(["bash", "2_process_data.sh"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env=script_env(tmp_path, TEACHER_MODEL=tmp_path / "bert", MAX_SEQ_LENGTH=16))
    check_one_line_error(p, "holds TASK=tsv data", "set TASK=tsv")
    assert not (tmp_path / "data" / "train_with_weights.tsv").exists()


def test_synthetic_table_shape_and_determinism():
    df = synthetic.make_synthetic_table(rows_per_class=7, seed=2)
    assert list(df.columns) == ["id", "product", "message", "category"] and len(df) == 63
    assert df.groupby(["product", "category"]).size().to_dict() == {
        (d, l): 7 for d in ("laptop", "phone", "router") for l in ("complaint", "question", "praise")}
    assert df.equals(synthetic.make_synthetic_table(rows_per_class=7, seed=2))
    assert not df.equals(synthetic.make_synthetic_table(rows_per_class=7, seed=3))


@pytest.mark.parametrize("prototypes", ["domain", "class"])
def test_process_data_prototypes_against_numpy(tmp_path, prototypes):
    """2_process_data's weights on TASK=tsv pairs: the scores of the saved embeddings, recomputed by the
    numpy formulas written out in test_prototypes.py (PROTOTYPES=class: per domain and label)."""
    from _tiny import call_main
    from test_prototypes import np_class_scores, np_scores

    rows = [[f"{d} {l} words {i}", f"second {l} {i % 3}", l, d] for d in ("a", "b", "c") for l in ("x", "y", "z")
            for i in range(6)]
    write_rows(tmp_path / "data.csv", ["message", "reply", "category", "product"], rows)
    r = run_cli(["--task", "tsv", "--source", "data.csv", "--out", "data", "--text-b-column", "reply", *COLUMNS],
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    bert = synthetic.make_tiny_bert(tmp_path / "bert", num_layers=1, hidden_size=16, num_heads=2, intermediate_size=32)
    code, out, err = call_main("metakd.process_data", ["--task", "tsv", "--data-dir", tmp_path / "data",
                                                       "--teacher-model", bert, "--max-seq-length", 24, "--device", "cpu",
                                                       "--no-progress", "--save-embeddings", "--prototypes", prototypes])
    assert code == 0, err
    data = tmp_path / "data"
    train = tsv.read_pair_split(data / "train.tsv")
    assert json.loads((data / "prototypes.json").read_text())["prototypes"] == prototypes
    got = pd.read_csv(data / "train_with_weights.tsv", sep="\t", quoting=3, keep_default_na=False)
    assert got["text_b"].tolist() == train["text_b"].tolist()
    emb = np.load(data / "train.embeddings.npy")
    domains = np.array([["a", "b", "c"].index(d) for d in train["domain"]])
    labels = np.array([["x", "y", "z"].index(y) for y in train["label"]])
    want = np_class_scores(emb, domains, labels) if prototypes == "class" else np_scores(emb, domains)
    np.testing.assert_allclose(got["weight"].to_numpy(), want, atol=1e-10)


def test_evaluate_refuses_a_model_with_other_labels(tmp_path):
    """A checkpoint stores its labels; 6_eval.sh on data with other labels says so instead of scoring."""
    from _tiny import call_main, make_checkpoint

    write_one(tmp_path, small_rows(10))
    r = run_cli(["--task", "tsv", "--source", "data.csv", "--out", "data", *COLUMNS], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    model = make_checkpoint(tmp_path / "senti_model", role="student_second", genre="books")
    code, _, err = call_main("metakd.evaluate", ["--task", "tsv", "--data-dir", tmp_path / "data", "--genre", "a",
                                                 "--student", model, "--no-teacher", "--device", "cpu"])
    assert code == 2 and err.count("\n") == 1, err
    assert "the model was trained for labels positive, negative, but this data's are x, y, z" in err
