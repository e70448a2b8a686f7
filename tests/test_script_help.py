"""`--help` of the shell scripts a user runs: complete, and nothing else happens.

Each numbered script's help must list every variable that the script and the shared shell code it
sources (tools/common.sh: its top level and the functions the script calls) read; the variables are
found by reading the shell text, not the help. The tools a user runs print their header on --help
and start nothing.
"""
from __future__ import annotations

import os
import re
import subprocess

import pytest

from _tiny import ROOT

NUMBERED = ["1_get_data.sh", "2_process_data.sh", "3_train_teacher.sh", "4_student_first.sh",
            "5_student_second.sh", "6_eval.sh", "compare.sh"]
TOOLS = ["tools/quickstart.sh", "tools/own_data_example.sh", "tools/real_run.sh", "tools/compare_real.sh",
         "tools/compare_budget.sh"]
LAUNCHER = {"NPROC", "NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT"}
# set or passed on by the shell code itself, not settings: the launcher switch, the checkout's root, the script's
# name for error lines, and PYTHONPATH, which is only extended
INTERNAL = {"DISTRIBUTED", "METAKD_ROOT", "METAKD_SCRIPT", "BASH_SOURCE", "PYTHONPATH"}
READ = re.compile(r"\$\{?!?([A-Z][A-Za-z0-9_]*)")


def _code(text: str) -> str:
    """The shell text without comments (a '#' after a space or at a line's start) and without echo'd text."""
    lines = []
    for line in text.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", line)
        lines.append(line)
    return "\n".join(lines)


def _functions(text: str):
    """{name: body} of the functions defined at column 0, and the text outside them."""
    funcs, rest, name = {}, [], None
    for line in text.splitlines():
        m = re.match(r"^([a-z_]+)\(\) \{", line)
        if m:
            name, funcs[m.group(1)] = m.group(1), []
        elif name and line == "}":
            name = None
        elif name:
            funcs[name].append(line)
        else:
            rest.append(line)
    return {k: "\n".join(v) for k, v in funcs.items()}, "\n".join(rest)


def read_variables(script: str) -> set:
    text = _code((ROOT / script).read_text())
    funcs, top = _functions(_code((ROOT / "tools" / "common.sh").read_text()))
    names = set(READ.findall(text)) | set(READ.findall(top))
    for fname, body in funcs.items():
        if re.search(rf"(^|\s){fname}(\s|$)", text, flags=re.M):
            names |= set(READ.findall(body))
            if fname == "run_metakd":
                names |= {"NPROC", "NNODES"}  # read through ${!v}
    if not re.search(r"DISTRIBUTED=1 run_metakd", text):
        names -= LAUNCHER  # one process whatever they say
    return names - INTERNAL


def _help(script: str, tmp_path) -> subprocess.CompletedProcess:
    marker = tmp_path / "python-ran"
    fake = tmp_path / "python"  # anything that starts Python leaves a mark
    fake.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    fake.chmod(0o755)
    env = dict(os.environ, METAKD_PYTHON=str(fake), DATA_DIR=str(tmp_path / "data"), OUT_DIR=str(tmp_path / "out"),
               MODELS_DIR=str(tmp_path / "models"), RUN_DIR=str(tmp_path / "run"), CACHE_DIR=str(tmp_path / "cache"))
    p = subprocess.run(["bash", script, "--help"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert not marker.exists(), f"{script} --help started Python"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["python"], f"{script} --help wrote files"
    return p


def test_the_reader_finds_the_shared_code_s_variables():
    """The finder itself: common.sh's functions count where they are called, the launcher's variables only where
    a training stage runs under it."""
    four = read_variables("4_student_first.sh")
    assert {"RECIPE", "STUDENT_FROM_TEACHER", "METAKD_PYTHON", "GLOG_minloglevel", "GENRE", "TEACHER_CACHE_GB"} <= four
    assert LAUNCHER <= four and not LAUNCHER & read_variables("6_eval.sh")
    assert "STUDENT_FROM_TEACHER" not in read_variables("2_process_data.sh") and "flags" not in four


@pytest.mark.parametrize("script", NUMBERED)
def test_numbered_script_help_lists_every_variable_it_reads(script, tmp_path):
    out = _help(script, tmp_path).stdout
    listed = set(re.findall(r"^  ([A-Za-z_][A-Za-z0-9_]*)=", out, flags=re.M))
    missing = read_variables(script) - listed
    assert not missing, f"{script} --help does not list {sorted(missing)}"
    example = re.search(r"e\.g\. ([A-Z_0-9]+)=", out).group(1)
    assert example in read_variables(script), f"{script} --help's example sets {example}, which it never reads"
    if "DEVICE" in listed:
        assert "cuda:N" in out


@pytest.mark.parametrize("script", TOOLS)
def test_tool_help_prints_the_header_and_runs_nothing(script, tmp_path):
    out = _help(script, tmp_path).stdout
    assert len(out.splitlines()) >= 5 and "#" not in out.splitlines()[0], out
    defaults = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*):-", (ROOT / script).read_text()))
    missing = {v for v in defaults if not re.search(rf"\b{v}\b", out)}
    assert not missing, f"{script} --help does not name {sorted(missing)}"


@pytest.mark.parametrize("script", TOOLS + ["6_eval.sh"])
def test_scripts_refuse_arguments(script, tmp_path):
    p = subprocess.run(["bash", script, "--epochs", "3"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, METAKD_PYTHON=str(tmp_path / "absent")))
    assert p.returncode == 2 and "takes no arguments" in p.stderr and p.stderr.startswith("error: "), p.stderr
