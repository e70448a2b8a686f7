"""Bad inputs, one table: each case is an input a user can
give, the one-line message it must produce, exit code 2, and every earlier output (a whole tiny
pipeline's data, models and results) byte-identical afterwards.

Classes: 1 writers outside training, 2 output sets, 3 a full disk while
saving (here: the real writers under ``ulimit -f``, no root needed), 4 numeric options, 5
argparse's own errors, 7 model folders, 8 messages naming the right fix, and the ones found
beyond them. Ctrl-C (6) is in test_signals.py, the optimizer checksum (9) in
test_checkpoint_integrity.py.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from _tiny import ROOT, SEQ, call_main, copy_data, env, make_checkpoint, tiny


class World:
    """A finished tiny pipeline: data, pretrained models, a teacher, a stage-1 and a final student,
    evaluation reports; plus things that are in the way (a file, bad model folders, bad data)."""

    def __init__(self, root: Path):
        t = tiny()
        self.root, self.teacher_model, self.student_model = root, t.teacher, t.student
        self.data = copy_data(root / "data")
        self.out = root / "out"
        self.teacher = make_checkpoint(self.out / "meta_teacher")
        self.stage1 = make_checkpoint(self.out / "books" / "meta_student_pretrain", role="student", genre="books")
        self.student = make_checkpoint(self.out / "books" / "meta_student_finetune", role="student", genre="books")
        (self.student / "eval_test.json").write_text('{"earlier": "student report"}\n')
        (self.out / "eval_test.json").write_text('{"earlier": "report"}\n')
        self.afile = root / "afile"
        self.afile.write_text("a file, not a folder\n")
        self.big_vocab = Path(shutil.copytree(t.teacher, root / "in" / "big_vocab"))
        with open(self.big_vocab / "vocab.txt", "a") as f:
            f.write("extra0\nextra1\n")
        self.str_config = Path(shutil.copytree(t.teacher, root / "in" / "str_config"))
        cfg = json.loads((self.str_config / "config.json").read_text())
        cfg["hidden_size"] = str(cfg["hidden_size"])
        (self.str_config / "config.json").write_text(json.dumps(cfg))
        self.negative = copy_data(root / "in" / "negative_weight")
        train = self.negative / "train_with_weights.tsv"
        lines = train.read_text().split("\n")
        fields = lines[3].split("\t")
        fields[5] = "-1.25"  # below every prototype score; -0.036 is real (test_prototypes)
        lines[3] = "\t".join(fields)
        train.write_text("\n".join(lines))

    def snapshot(self) -> dict:
        return {str(p.relative_to(self.root)): p.read_bytes() for p in sorted(self.root.rglob("*"))
                if p.is_file() and not p.name.endswith(".lock")}

    def teacher_args(self, *extra, out=None, data=None, model=None) -> list:
        return ["--data-dir", data or self.data, "--model", model or self.teacher_model, "--out",
                out or self.teacher, "--max-seq-length", SEQ, "--no-progress", "--device", "cpu", *extra]

    def distill_args(self, *extra, stage="first", student=None, teacher=None, out=None, data=None) -> list:
        default_out = self.stage1 if stage == "first" else self.student
        return ["--stage", stage, "--genre", "books", "--data-dir", data or self.data, "--teacher", teacher or self.teacher,
                "--student", student or (self.student_model if stage == "first" else self.stage1),
                "--out", out or default_out, "--max-seq-length", SEQ, "--no-progress", "--device", "cpu", *extra]

    def eval_args(self, *extra, out_root=None) -> list:
        return ["--genre", "books", "--data-dir", self.data, "--out-root", out_root or self.out, "--device", "cpu",
                "--no-progress", *extra]

    def script_env(self, **variables) -> dict:
        return {**env(), "METAKD_PYTHON": sys.executable, "DATA_DIR": str(self.data), "OUT_DIR": str(self.out),
                "TEACHER_MODEL": str(self.teacher_model), "STUDENT_MODEL": str(self.student_model),
                "MAX_SEQ_LENGTH": str(SEQ), "DEVICE": "cpu", **variables}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return World(tmp_path_factory.mktemp("world"))


# (id, how it runs, what the user gives, what the one line must say). "how": a module run in this
# process (its main(), as `python -m` does), or a numbered script run by bash (for the variables).
CASES = [
    # 1. writers outside training: a file or a folder in the way, a path that cannot be made
    ("get_data out is a file", "metakd.get_data", lambda w: ["--source", "synthetic", "--out", w.afile, "--models-out",
     w.root / "m2", "--cache-dir", w.root / "c2", "--synthetic-size", "5"], "is a file; give a folder"),
    ("get_data out under a file", "metakd.get_data", lambda w: ["--source", "synthetic", "--out", w.afile / "d",
     "--models-out", w.root / "m2", "--cache-dir", w.root / "c2", "--synthetic-size", "5"], "part of the path is a file"),
    ("get_data models-out is a file", "metakd.get_data", lambda w: ["--source", "synthetic", "--out", w.root / "d2",
     "--models-out", w.afile, "--cache-dir", w.root / "c2", "--synthetic-size", "5"], "is a file; give a folder"),
    ("evaluate --json is a folder", "metakd.evaluate", lambda w: w.eval_args("--student", w.student, "--json", w.out),
     "is a folder; give a file name for this output"),
    ("evaluate out-root is a file", "metakd.evaluate", lambda w: w.eval_args("--student", w.student, "--teacher",
     w.teacher, out_root=w.afile), "eval_test.json: cannot write this output (part of the path is a file)"),
    ("evaluate --json under a file", "metakd.evaluate", lambda w: w.eval_args("--student", w.student, "--json",
     w.afile / "p.json"), "cannot write this output (part of the path is a file)"),
    ("bench --json is a folder", "metakd.bench", lambda w: ["--json", w.root, "--iters", "1"], "give a file name"),
    ("bench --json under a file", "metakd.bench", lambda w: ["--json", w.afile / "b.json", "--iters", "1"],
     "cannot write this output (part of the path is a file)"),
    ("training out is a file", "metakd.train_teacher", lambda w: w.teacher_args(out=w.afile),
     "the output exists and is a file"),
    ("training out under a file", "metakd.distill", lambda w: w.distill_args(out=w.afile / "s1"), "a file is in the way"),
    # 4. numeric options: a finite range, checked before any work
    ("seed -1", "metakd.train_teacher", lambda w: w.teacher_args("--seed", "-1"), "seed must be in [0, 2^32), got -1"),
    ("seed 2^40", "metakd.train_teacher", lambda w: w.teacher_args("--seed", str(2**40)), "seed must be in [0, 2^32)"),
    ("device cpu:5", "metakd.train_teacher", lambda w: w.teacher_args("--device", "cpu:5"), "there is one CPU device"),
    ("lr nan", "metakd.train_teacher", lambda w: w.teacher_args("--lr", "nan"), "learning rate must be in (0, 1)"),
    ("lr -1e-3", "metakd.train_teacher", lambda w: w.teacher_args("--lr", "-1e-3"), "learning rate must be in (0, 1)"),
    ("domain loss weight inf", "metakd.train_teacher", lambda w: w.teacher_args("--domain-loss-weight", "inf"),
     "--domain-loss-weight must be >= 0 and finite"),
    ("log every 0", "metakd.train_teacher", lambda w: w.teacher_args("--log-every", "0"), "log interval must be >= 1"),
    ("max seq length 2", "metakd.train_teacher", lambda w: w.teacher_args("--max-seq-length", "2"),
     "--max-seq-length must be >= 3"),
    ("temperature inf", "metakd.distill", lambda w: w.distill_args("--temperature", "inf", stage="second"),
     "--temperature must be in [0.01, 1000]"),
    ("temperature 1e308 (trained nothing)", "metakd.distill",
     lambda w: w.distill_args("--temperature", "1e308", stage="second"), "--temperature must be in [0.01, 1000]"),
    ("temperature 1e-300 (diverged)", "metakd.distill",
     lambda w: w.distill_args("--temperature", "1e-300", stage="second"), "--temperature must be in [0.01, 1000]"),
    ("alpha 2", "metakd.distill", lambda w: w.distill_args("--alpha", "2", stage="second"), "--alpha must be in [0, 1]"),
    ("teacher cache -1", "metakd.distill", lambda w: w.distill_args("--teacher-cache-gb", "-1"),
     "--teacher-cache-gb must be in [0, 1e6]"),
    ("teacher cache 1e300 (OverflowError)", "metakd.distill", lambda w: w.distill_args("--teacher-cache-gb", "1e300"),
     "--teacher-cache-gb must be in [0, 1e6]"),
    ("sample weight below -1", "metakd.train_teacher", lambda w: w.teacher_args(data=w.negative),
     "train_with_weights.tsv:4: sample weight -1.25 is below -1"),
    ("eval batch 0", "metakd.evaluate", lambda w: w.eval_args("--batch-size", "0"), "--batch-size must be >= 1"),
    ("NPROC=1.5", "3_train_teacher.sh", {"NPROC": "1.5"}, "NPROC=1.5; it must be a whole number >= 1"),
    ("NNODES=x", "4_student_first.sh", {"NNODES": "x"}, "NNODES=x; it must be a whole number >= 1"),
    # 5. argparse's own errors: one line, naming the option (or, from a script, its variable)
    ("epochs 1.5", "metakd.train_teacher", lambda w: w.teacher_args("--epochs", "1.5"),
     "argument --epochs: invalid int value: '1.5'; see python -m metakd.train_teacher --help"),
    ("COMPAT=garbage", "3_train_teacher.sh", {"COMPAT": "garbage"}, "check COMPAT"),
    ("SPLIT=train", "6_eval.sh", {"SPLIT": "train"}, "check SPLIT"),
    ("SEED=abc", "5_student_second.sh", {"SEED": "abc"}, "check SEED"),
    # 7. model folders that would load but compute something else
    ("vocab longer than the table", "metakd.train_teacher", lambda w: w.teacher_args(model=w.big_vocab),
     "entries but config.json's vocab_size is"),
    ("config value a string", "metakd.process_data", lambda w: ["--data-dir", w.data, "--teacher-model", w.str_config,
     "--max-seq-length", SEQ, "--device", "cpu", "--no-progress"], "hidden_size"),
    # 8. messages that name the right fix
    ("5 before 4", "metakd.distill", lambda w: w.distill_args(stage="second", student=w.root / "none"),
     "run 4_student_first.sh first"),
    ("4 before 3", "metakd.distill", lambda w: w.distill_args(teacher=w.root / "none"), "run 3_train_teacher.sh first"),
    ("6 without a student", "metakd.evaluate", lambda w: w.eval_args("--student", w.root / "none"),
     "run 5_student_second.sh first"),
    ("SKIP_STAGE1 without STUDENT_MODEL", "5_student_second.sh", {"SKIP_STAGE1": "1", "STUDENT_MODEL": "/nonexistent"},
     "check STUDENT_MODEL (SKIP_STAGE1=1 starts from it)"),
    ("missing pretrained model", "metakd.train_teacher", lambda w: w.teacher_args(model=w.root / "none"),
     "model folder not found; check the path (TEACHER_MODEL / STUDENT_MODEL"),
    ("a pretrained BERT as the teacher", "metakd.distill", lambda w: w.distill_args(teacher=w.teacher_model),
     "not a metakd checkpoint"),
    ("unknown genre", "metakd.distill", lambda w: w.distill_args()[:2] + ["--genre", "toys"] + w.distill_args()[4:],
     "unknown GENRE 'toys'"),
    ("output is an input", "metakd.distill", lambda w: w.distill_args(out=w.teacher), "the output folder is also an input"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(world, case):
    _, runner, given, expected = case
    before = world.snapshot()
    if runner.endswith(".sh"):
        p = subprocess.run(["bash", runner], cwd=ROOT, env=world.script_env(**given), capture_output=True, text=True,
                           timeout=120)
        code, err = p.returncode, p.stderr
    else:
        code, _, err = call_main(runner, given(world))
    lines = err.strip().splitlines()
    assert code == 2, f"exit {code}: {err[-2000:]}"
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-2000:]
    assert expected in lines[0], lines[0]
    assert world.snapshot() == before, "an earlier output changed"
    assert _documented(lines[0]), f"docs/errors.md's table of messages has no template for: {lines[0]}"


def _documented(line: str) -> bool:
    import importlib.util

    if "em" not in _CACHE:
        spec = importlib.util.spec_from_file_location("error_messages", ROOT / "tools" / "error_messages.py")
        em = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(em)
        block = em.table_block((ROOT / "docs" / "errors.md").read_text(encoding="utf-8")) or ""
        rows = [r.split(" | ")[0][3:-1].replace("\\|", "|") for r in block.splitlines() if r.startswith("| `")]
        _CACHE["em"], _CACHE["rows"] = em, rows
    return _CACHE["em"].covering_template(line, _CACHE["rows"]) is not None


_CACHE: dict = {}


def test_the_table_covers_every_class():
    """The ids name the classes; a class dropped from the table is noticed here."""
    text = " ".join(c[0] for c in CASES) + " " + " ".join(c[3] for c in CASES)
    for needle in ("a file", "a folder", "--json", "seed", "cpu:5", "temperature", "teacher cache", "sample weight",
                   "NPROC", "NNODES", "COMPAT", "SPLIT", "SEED", "vocab", "config value", "5 before 4",
                   "6 without a student"):
        assert needle in text, needle


# 2 and 3: a real full disk, without root: the real writers (safetensors, the TSV writers, flow.save's
# resumable state) under RLIMIT_FSIZE, where a write past the limit fails with EFBIG (Python
# ignores SIGXFSZ), as it would with ENOSPC on a full disk.
def _limited(kib: int):
    def set_limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (kib * 1024, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    return set_limit


@pytest.mark.parametrize("what", ["train_teacher", "process_data", "get_data"])
def test_file_size_limit_is_one_line_and_keeps_earlier_outputs(world, what):
    # The tiny BERT's weights are about 650 kB, train_with_weights.tsv about 25 kB: the limits let
    # the small files through and stop the big ones part-way.
    if what == "train_teacher":
        args, kib = world.teacher_args("--epochs", "1", "--save-every", "2", "--eval-every", "0", "--restart"), 300
    elif what == "process_data":
        args, kib = ["--data-dir", world.data, "--teacher-model", world.teacher_model, "--max-seq-length", SEQ,
                     "--device", "cpu", "--no-progress"], 10
    else:
        args, kib = ["--source", "synthetic", "--out", world.data, "--models-out", world.root / "in" / "models",
                     "--cache-dir", world.root / "in" / "cache", "--synthetic-size", "30"], 8
    before = world.snapshot()
    p = subprocess.run([sys.executable, "-m", f"metakd.{what}", *map(str, args)], cwd=ROOT, env=env(),
                       capture_output=True, text=True, timeout=180, preexec_fn=_limited(kib))
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), p.stderr[-3000:]
    assert "File too large" in lines[0], lines[0]
    after = world.snapshot()
    assert {k: v for k, v in after.items() if ".resume" not in k and "/in/" not in f"/{k}"} == \
        {k: v for k, v in before.items() if ".resume" not in k and "/in/" not in f"/{k}"}
    shutil.rmtree(world.teacher.parent / "meta_teacher.resume", ignore_errors=True)
    assert not [p for p in world.data.iterdir() if p.name.startswith(".")]  # no staging or temporary left


def test_evaluate_reports_are_one_set(world, monkeypatch):
    """A full disk while writing the second of evaluate's reports (the out-root's and the student's)
    leaves both as they were: they are renamed into place only once all are written."""
    from metakd.infra import fileio

    real = fileio.json.dump
    calls = []

    def disk_full_on_second(obj, f, **kw):
        calls.append(f)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real(obj, f, **kw)

    before = world.snapshot()
    monkeypatch.setattr(fileio.json, "dump", disk_full_on_second)
    code, _, err = call_main("metakd.evaluate", world.eval_args("--student", world.student, "--teacher", world.teacher))
    monkeypatch.undo()
    assert len(calls) == 2 and code == 2 and "No space left on device" in err, err
    assert world.snapshot() == before
    assert not list(world.out.rglob(".eval_test.json.*")), "a temporary was left behind"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder")
def test_read_only_folder_is_one_line(world, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        code, _, err = call_main("metakd.evaluate", world.eval_args("--student", world.student, "--json", ro / "p.json"))
    finally:
        ro.chmod(0o755)
    assert code == 2 and err.count("\n") == 1 and "no permission to write there" in err, err
