"""docs/errors.md's table of error messages is every message the code can print.

tools/error_messages.py reads them from the source (all of metakd/, recursively, and the
scripts); the table in docs/errors.md must be its output, and real printed lines must be instances of a
listed template (test_bad_inputs.py checks that for each of its cases too).
"""
from __future__ import annotations

import importlib.util

from _tiny import ROOT

spec = importlib.util.spec_from_file_location("error_messages", ROOT / "tools" / "error_messages.py")
em = importlib.util.module_from_spec(spec)
spec.loader.exec_module(em)


def test_documented_table_is_the_code_s_messages():
    page = (ROOT / "docs" / "errors.md").read_text(encoding="utf-8")
    block = em.table_block(page)
    assert block is not None, "docs/errors.md lost its error-messages markers"
    assert block == em.table(), "docs/errors.md's table of messages is out of date: run python tools/error_messages.py --write"
    assert em.table_block((ROOT / "README.md").read_text(encoding="utf-8")) is None  # one copy, in docs/errors.md


def test_every_error_site_is_read():
    """Each UserError in metakd/ gives a template (an unreadable one raises), and the sources are all there."""
    found = em.python_messages()
    files = {where for _, where in found}
    calls = sum(p.read_text(encoding="utf-8").count("UserError(") + p.read_text(encoding="utf-8").count("Error(f\"")
                for p in (ROOT / "metakd").rglob("*.py"))
    assert len(found) >= 150 and calls > 0
    for needed in ("metakd/trainer.py", "metakd/infra/fileio.py", "metakd/cli.py", "metakd/data/senti.py"):
        assert needed in files, needed
    templates = [t for t, _ in found]
    assert "seed must be in [0, 2^32), got …" in templates  # from a [(condition, message)] list
    assert any(t.startswith("config.json not found; a model folder needs") for t in templates)  # a parameter's value
    assert "input file not found" in templates and "not a file" in templates  # both branches of an if-expression
    assert any("NPROC" in t or "it must be a whole number >= 1" in t for t, _ in em.script_messages())


def test_printed_lines_are_covered():
    for line in [
        "error: /d/train_with_weights.tsv:4: sample weight -1.25 is below -1, so it is not a prototype score (a mean of "
        "two cosines, in [-1, 1]); correct the weight column (2_process_data.sh writes it)",
        "error: 3_train_teacher.sh: NPROC=1.5; it must be a whole number >= 1",
        "error: 6_eval.sh: argument --split: invalid choice: 'train' (choose from 'test', 'dev'); check SPLIT (bash "
        "6_eval.sh --help lists the variables)",
        "error: /x/model.safetensors: File too large; the file would be larger than this process may write (ulimit -f) "
        "or the file system allows; raise the limit or choose another folder (earlier outputs are unchanged)",
        "interrupted; rerun the same command to continue a training stage from its last saved state",
    ]:
        assert em.covering_template(line) is not None, line
    assert em.covering_template("error: something the code never says") is None
