"""End to end: the six numbered scripts, as a user runs them (through tools/quickstart.sh).

The synthetic run is the README's quick start in temporary folders; the real-data test runs
``1_get_data.sh`` on ``../shared``'s ``sorted_data_acl`` and checks the reference split.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pandas as pd
import pytest

from conftest import ROOT, SORTED_DATA, needs_data

SCRIPTS = ["1_get_data.sh", "2_process_data.sh", "3_train_teacher.sh", "4_student_first.sh",
           "5_student_second.sh", "6_eval.sh"]
MODULES = ["get_data", "process_data", "train_teacher", "distill", "evaluate", "compare", "make_student", "data.synthetic"]


def script_env(tmp_path, **extra):
    env = dict(os.environ)
    # The test already runs inside the project's environment: skip tools/setup_env.sh.
    env.update(METAKD_PYTHON=sys.executable, DATA_DIR=str(tmp_path / "data"), MODELS_DIR=str(tmp_path / "models"),
               OUT_DIR=str(tmp_path / "out"), CACHE_DIR=str(tmp_path / "cache"), DEVICE="cpu")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run(cmd, env, timeout=900):
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{cmd} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("quickstart")
    p = run(["bash", "tools/quickstart.sh"], script_env(tmp))
    return tmp, p.stdout + p.stderr


def test_six_scripts_on_synthetic_data(quickstart):
    tmp, log = quickstart
    for s in SCRIPTS:
        assert f"== {s[:-3]}" in log
    data, out = tmp / "data", tmp / "out"
    for name in ("train.tsv", "dev.tsv", "test.tsv", "train_with_weights.tsv", "dev_standard.tsv",
                 "test_standard.tsv", "prototypes.json"):
        assert (data / name).is_file(), name
    weights = pd.read_csv(data / "train_with_weights.tsv", sep="\t", quoting=3, keep_default_na=False)
    assert list(weights.columns) == ["guid", "text_a", "text_b", "label", "domain", "weight"]
    assert weights["weight"].astype(float).between(-1, 1).all()

    for folder in (out / "meta_teacher", out / "books" / "meta_student_pretrain",
                   out / "books" / "meta_student_finetune"):
        for name in ("config.json", "model.safetensors", "vocab.txt", "results.json"):
            assert (folder / name).is_file(), folder / name
        # Only the lock file (kept on purpose, see fileio.output_lock) may sit beside the output.
        leftovers = [p.name for p in folder.parent.glob(f".{folder.name}*") if p.name != f".{folder.name}.lock"]
        assert not leftovers and not list(folder.parent.glob(f"{folder.name}.resume")), leftovers

    teacher = json.loads((out / "meta_teacher" / "results.json").read_text())
    student = json.loads((out / "books" / "meta_student_finetune" / "results.json").read_text())
    assert teacher["kernels"] == student["kernels"] == "cpu-numpy"
    assert teacher["dev"]["accuracy"] > 0.7, teacher["dev"]
    assert student["dev"]["accuracy"] > 0.65, student["dev"]

    table = json.loads((out / "eval_test.json").read_text())
    rows = {(g, m): r for g, models in table["results"].items() for m, r in models.items()}
    assert set(rows) == {("books", "student"), ("books", "meta-teacher")}
    # 50 books test reviews: 0.65 is more than two standard deviations above chance (0.5).
    assert rows[("books", "student")]["n"] == 50
    assert rows[("books", "student")]["accuracy"] > 0.65
    assert rows[("books", "meta-teacher")]["accuracy"] > 0.65
    assert "accuracy" in log and "macro_f1" in log  # the printed table


@pytest.mark.slow
def test_six_scripts_with_oneflow_cpu_kernels(tmp_path):
    """The quick start again with OneFlow's own CPU kernels (the code that runs on CUDA) instead of
    the numpy ones: the same pipeline, recorded in results.json, and it learns."""
    p = run(["bash", "tools/quickstart.sh"], script_env(tmp_path, CPU_KERNELS="oneflow"))
    out = tmp_path / "out"
    for folder in (out / "meta_teacher", out / "books" / "meta_student_pretrain", out / "books" / "meta_student_finetune"):
        assert json.loads((folder / "results.json").read_text())["kernels"] == "cpu-oneflow"
    student = json.loads((out / "books" / "meta_student_finetune" / "results.json").read_text())
    assert student["dev"]["accuracy"] > 0.65, student["dev"]
    assert "accuracy" in p.stdout


def test_eval_all_genres_reuses_outputs(quickstart, tmp_path):
    tmp, _ = quickstart
    # Only books has a student: "all" evaluates each genre that has one, and the teacher on all.
    p = run(["bash", "6_eval.sh"], script_env(tmp, GENRE="all", DATA_DIR=tmp / "data", OUT_DIR=tmp / "out"))
    table = json.loads((tmp / "out" / "eval_test.json").read_text())
    assert "books" in table["results"] and "student" in table["results"]["books"], p.stdout


def test_teacher_layers_recipe_after_the_quick_start(quickstart):
    """RECIPE=teacher_layers through scripts 4 and 5 for real: the student made of the teacher's layers
    (STUDENT_FROM_TEACHER=2 here: the tiny teacher has 4), distilled in two stages, and that student alone."""
    tmp, _ = quickstart
    env = script_env(tmp, DATA_DIR=tmp / "data", OUT_DIR=tmp / "recipe", TEACHER_DIR=tmp / "out" / "meta_teacher",
                     TEACHER_MODEL=tmp / "models" / "tiny-teacher", RECIPE="teacher_layers", STUDENT_FROM_TEACHER=2,
                     STAGE1_EPOCHS=1, STAGE2_EPOCHS=1, MAX_SEQ_LENGTH=64, EVAL_EVERY=0)
    env.pop("STUDENT_MODEL", None)
    run(["bash", "4_student_first.sh"], env)
    p = run(["bash", "5_student_second.sh"], env)
    alone = run(["bash", "5_student_second.sh"], dict(env, STUDENT_ALONE="1"))
    made = tmp / "recipe" / "students" / "tiny-teacher_2L"
    assert json.loads((made / "config.json").read_text())["metakd_made_from"]["layers"] == [1, 3]
    assert "reusing the student of 2 layers" in alone.stdout
    for folder in ("books/meta_student_pretrain", "books/meta_student_finetune", "books/student_alone"):
        cfg = json.loads((tmp / "recipe" / folder / "config.json").read_text())
        assert cfg["num_hidden_layers"] == 2 and cfg["hidden_size"] == 64, folder  # the teacher's width
        assert (tmp / "recipe" / folder / "results.json").is_file()
    assert "accuracy" in p.stdout + p.stderr


@pytest.mark.parametrize("script", SCRIPTS + ["compare.sh"])
def test_script_help(script, tmp_path):
    p = run(["bash", script, "--help"], script_env(tmp_path), timeout=60)
    assert "Variables" in p.stdout and "=" in p.stdout
    assert not (tmp_path / "data").exists()


def test_script_rejects_arguments(tmp_path):
    p = subprocess.run(["bash", "3_train_teacher.sh", "--epochs", "3"], cwd=ROOT, env=script_env(tmp_path),
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "environment" in p.stderr


@pytest.mark.parametrize("module", MODULES)
def test_module_help(module):
    p = subprocess.run([sys.executable, "-m", f"metakd.{module}", "--help"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert p.returncode == 0 and "usage:" in p.stdout, p.stderr


@needs_data
def test_get_data_script_on_real_reviews(tmp_path):
    run(["bash", "1_get_data.sh"], script_env(tmp_path, SOURCE=SORTED_DATA), timeout=600)
    counts = {}
    for split in ("train", "dev", "test"):
        df = pd.read_csv(tmp_path / "data" / f"{split}.tsv", sep="\t", keep_default_na=False)
        counts[split] = df["domain"].value_counts().to_dict()
    assert {k: sum(v.values()) for k, v in counts.items()} == {"train": 6480, "dev": 720, "test": 800}
    assert counts == {
        "train": {"books": 1631, "dvd": 1621, "electronics": 1615, "kitchen": 1613},
        "dev": {"books": 170, "dvd": 194, "electronics": 172, "kitchen": 184},
        "test": {"books": 199, "dvd": 185, "electronics": 213, "kitchen": 203},
    }


def _readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def readme_student_commands() -> list:
    """The commands of the README's "Using the student" section: its ```sh blocks, one command a line."""
    blocks = re.findall(r"```sh\n(.*?)```", _readme_section("Using the student"), flags=re.S)
    return [line for b in blocks for line in b.splitlines() if line.strip() and not line.startswith("#")]


@pytest.mark.slow
def test_readme_using_the_student_commands_run_verbatim_after_the_quick_start(quickstart, tmp_path):
    """The README's predict and export commands, exactly as written, in a folder laid out as the quick start
    leaves the checkout (its data and out folders, .venv), so the README cannot drift from the code."""
    tmp, _ = quickstart
    commands = readme_student_commands()
    assert len(commands) >= 4 and all(c.startswith(("echo ", ".venv/bin/python ")) for c in commands), commands
    # the folders the commands name are the ones the quick start writes by default
    qs = (ROOT / "tools" / "quickstart.sh").read_text()
    assert 'OUT_DIR="${OUT_DIR:-out/synthetic}"' in qs and 'DATA_DIR="${DATA_DIR:-data/SYNTH}"' in qs
    assert 'GENRE="${GENRE:-books}"' in qs
    work = tmp_path / "checkout"
    (work / "out").mkdir(parents=True)
    (work / "data").mkdir()
    (work / "out" / "synthetic").symlink_to(tmp / "out")
    (work / "data" / "SYNTH").symlink_to(tmp / "data")
    (work / ".venv").symlink_to(sys.prefix)  # the environment running the tests is the checkout's .venv
    env = dict(os.environ, PYTHONPATH=str(ROOT))  # the package, as `python -m` finds it in the checkout
    outputs = []
    for c in commands:
        p = subprocess.run(["bash", "-c", f"set -euo pipefail; {c}"], cwd=work, env=env, capture_output=True,
                           text=True, timeout=600)
        assert p.returncode == 0, f"{c}\nfailed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}"
        assert "Traceback" not in p.stderr and "cuda runtime version" not in p.stderr, p.stderr
        outputs.append(p.stdout)
    sentence = [o for c, o in zip(commands, outputs) if c.startswith("echo ")][0].splitlines()
    assert sentence[0] == "row,label,prob_positive,prob_negative" and len(sentence) == 2, sentence
    assert sentence[1].split(",")[1] in ("positive", "negative")
    rows = (work / "predictions.csv").read_text().splitlines()
    n_test = len(pd.read_csv(tmp / "data" / "test.tsv", sep="\t", quoting=3, keep_default_na=False))
    assert rows[0].startswith("row,label,") and len(rows) == n_test + 1
    hf = json.loads((work / "export" / "books-student" / "config.json").read_text())
    assert hf["architectures"] == ["BertForSequenceClassification"] and set(hf["label2id"]) == {"positive", "negative"}
    assert (work / "export" / "books-student" / "model.safetensors").is_file()
    assert (work / "export" / "books-onnx" / "model.onnx").is_file()
