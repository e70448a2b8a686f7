"""A tiny synthetic SENTI dataset and tiny random BERTs, built once per test process.

Shared by the reliability tests (test_trainer.py, test_robustness.py,
test_checkpoint_integrity.py) without a conftest fixture: ``tiny()`` builds, on first use,

    <root>/data/{train,dev,test}.tsv, train_with_weights.tsv, dev_standard.tsv, test_standard.tsv
    <root>/models/tiny-teacher, <root>/models/tiny-student

with the project's own CLIs (get_data --source synthetic, process_data), and returns the paths.
The folder is removed when the process exits. ``run_cli`` runs an entry point in a subprocess
as a user would; ``call_main`` runs one in-process and returns (exit code, stdout, stderr).
"""
from __future__ import annotations

import atexit
import contextlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
SEQ = 32  # --max-seq-length of every tiny run


@dataclass(frozen=True)
class Tiny:
    root: Path
    data: Path
    teacher: Path
    student: Path


_CACHE: dict = {}


def tiny() -> Tiny:
    """The shared tiny dataset (built on the first call; read-only for callers)."""
    if "tiny" not in _CACHE:
        root = Path(tempfile.mkdtemp(prefix="metakd-tiny-"))
        atexit.register(shutil.rmtree, root, True)
        data, models = root / "data", root / "models"
        code, out, err = call_main("metakd.get_data", ["--source", "synthetic", "--out", data, "--models-out", models,
                                                       "--cache-dir", root / "cache", "--synthetic-size", "20"])
        assert code == 0, err
        code, out, err = call_main("metakd.process_data", ["--data-dir", data, "--teacher-model", models / "tiny-teacher",
                                                           "--max-seq-length", SEQ, "--no-progress", "--device", "cpu"])
        assert code == 0, err
        _CACHE["tiny"] = Tiny(root, data, models / "tiny-teacher", models / "tiny-student")
    return _CACHE["tiny"]


def copy_data(dest: Path) -> Path:
    """A private, editable copy of the tiny data folder."""
    shutil.copytree(tiny().data, dest)
    return dest


def random_encoded(n: int, length: int, vocab: int, num_domains: int = 3, seed: int = 0):
    """An ``Encoded`` split of ``n`` random rows, 2..``length`` real tokens each (ids 5..vocab-1)."""
    import numpy as np

    from metakd.features import Encoded

    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, length + 1, size=n)
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int64)
    return Encoded(input_ids=rng.integers(5, vocab, size=(n, length)) * mask, attention_mask=mask,
                   token_type_ids=np.zeros((n, length), np.int64), labels=rng.integers(0, 2, n),
                   domains=rng.integers(0, num_domains, n), weights=rng.uniform(size=n).astype(np.float32),
                   guids=[str(i) for i in range(n)])


def env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", GLOG_minloglevel="2")


def run_cli(module: str, args: Sequence, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    """``python -m <module> args`` in a subprocess; stdout and stderr captured as text."""
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=timeout, **kw)


def call_main(module: str, args: Sequence) -> Tuple[int, str, str]:
    """Run ``<module>.main(args)`` in this process: (exit code, stdout, stderr)."""
    import importlib

    main = importlib.import_module(module).main
    out, err = io.StringIO(), io.StringIO()
    code: Optional[int] = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:
            code = e.code
    return int(code or 0), out.getvalue(), err.getvalue()


def teacher_args(out: Path, *extra, data: Optional[Path] = None) -> list:
    """train_teacher arguments for a tiny, CPU-only run into ``out``."""
    t = tiny()
    return ["--data-dir", data or t.data, "--model", t.teacher, "--out", out, "--max-seq-length", SEQ,
            "--no-progress", "--device", "cpu", *extra]


def make_checkpoint(dest: Path, role: str = "meta_teacher", genre: Optional[str] = None) -> Path:
    """An untrained metakd checkpoint of the tiny teacher (or student, by role) written with
    ``save_checkpoint``, as stages 3-5 write theirs; quick (no training)."""
    from metakd.checkpoint import save_checkpoint
    from metakd.data.senti import SENTI_DOMAINS, SENTI_LABELS
    from metakd.meta_model import build_from_pretrained

    t = tiny()
    source = t.teacher if role == "meta_teacher" else t.student
    fit = None if role == "meta_teacher" else 64  # the tiny teacher's hidden size
    model, _ = build_from_pretrained(source, len(SENTI_LABELS), len(SENTI_DOMAINS), fit_size=fit, verbose=False)
    info = model.metakd_info(role, SENTI_LABELS, SENTI_DOMAINS, "senti")
    info.update(compat="none", max_seq_length=SEQ, source_model=str(source), genre=genre)
    return save_checkpoint(dest, model, model.config, info, vocab_from=source)
