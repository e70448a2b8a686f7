"""What a run leaves in the checkout stays out of git: the environment (a folder or, in a shared checkout, a
symbolic link to one: `.venv/` alone does not match a link, and a committed link replaces the real
environment of every checkout that merges it), data, models, outputs and the README's export folder."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from _tiny import ROOT


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="not a git checkout")
@pytest.mark.parametrize("path", [".venv", "data/SENTI/train.tsv", "models/tiny-teacher",
                                  "out/synthetic/meta_teacher", "cache/x.tar.gz", "export/books-onnx/model.onnx"])
def test_run_outputs_are_ignored(path):
    p = subprocess.run(["git", "check-ignore", "--no-index", "-q", path], cwd=ROOT)
    assert p.returncode == 0, f"{path} is not ignored by .gitignore"
