"""RECIPE=NAME in the distillation scripts: a named set of defaults that the environment overrides."""
import os
import re
import subprocess
import sys

import pytest

from _tiny import ROOT
from metakd import recipes

SCRIPTS = ("4_student_first.sh", "5_student_second.sh")


def script_defaults():
    """Each variable of scripts 4 and 5 and its default, read from the ``X="${X:-v}"`` lines."""
    out = {}
    for name in SCRIPTS:
        for var, value in re.findall(r'^([A-Z_0-9]+)="\$\{\1:-([^}]*)\}"', (ROOT / name).read_text(), re.M):
            out[var] = value
    return out


def fake_python(tmp_path):
    """A METAKD_PYTHON that runs metakd.recipes for real and records every other command's arguments."""
    log = tmp_path / "argv.txt"
    fake = tmp_path / "python"
    fake.write_text(f"""#!/usr/bin/env bash
if [ "$2" = metakd.recipes ]; then exec {sys.executable} "$@"; fi
printf '%s\\n' "$*" >> {log}
""")
    fake.chmod(0o755)
    return fake, log


def run_script(tmp_path, script, **env):
    tmp_path.mkdir(parents=True, exist_ok=True)
    fake, log = fake_python(tmp_path)
    full = dict(os.environ, METAKD_PYTHON=str(fake), PYTHONPATH=str(ROOT), NPROC="1", OUT_DIR=str(tmp_path / "out"))
    for var in recipes.KNOBS:  # the test's own environment must not leak in
        full.pop(var, None)
    full.pop("RECIPE", None)
    full.update(env)
    p = subprocess.run(["bash", str(ROOT / script)], env=full, capture_output=True, text=True)
    return p, (log.read_text().splitlines() if log.exists() else [])


def test_every_knob_is_a_script_variable():
    defaults = script_defaults()
    assert "RECIPE" in defaults and defaults["RECIPE"] == "paper"
    for name, values in recipes.RECIPES.items():
        assert set(values) <= set(recipes.KNOBS), name
        assert set(values) <= set(defaults), name
        assert name in recipes.DESCRIPTIONS


def test_paper_recipe_is_the_scripts_own_defaults():
    defaults = script_defaults()
    assert recipes.RECIPES["paper"] == {k: defaults[k] for k in recipes.RECIPES["paper"]}


@pytest.mark.parametrize("name", sorted(recipes.RECIPES))
def test_shell_sets_only_what_the_environment_leaves_unset(name):
    values = recipes.recipe(name)
    code = recipes.shell(name) + "\n" + "; ".join(f'echo "{k}=${k}"' for k in values)
    unset = subprocess.run(["bash", "-c", code], env={"PATH": os.environ["PATH"]}, capture_output=True, text=True)
    assert unset.stdout.split() == [f"{k}={v}" for k, v in values.items()]
    chosen = {k: "7" for k in values}
    kept = subprocess.run(["bash", "-c", code], env={"PATH": os.environ["PATH"], **chosen}, capture_output=True, text=True)
    assert kept.stdout.split() == [f"{k}=7" for k in values]


def test_unknown_recipe_is_one_error_line():
    p = subprocess.run([sys.executable, "-m", "metakd.recipes", "--shell", "nope"], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.strip().splitlines() == [
        "error: python -m metakd.recipes: RECIPE=nope: unknown recipe; use one of "
        + ", ".join(recipes.RECIPES) + " (python -m metakd.recipes lists them)"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_refuses_an_unknown_recipe_before_any_work(tmp_path, script):
    p, calls = run_script(tmp_path, script, RECIPE="nope")
    assert p.returncode == 2 and calls == []
    assert p.stderr.strip().splitlines()[-1].startswith(f"error: {script}: RECIPE=nope: unknown recipe;")
    assert not (tmp_path / "out").exists()


def test_listing_names_every_recipe():
    p = subprocess.run([sys.executable, "-m", "metakd.recipes"], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert p.returncode == 0
    for name, values in recipes.RECIPES.items():
        assert re.search(rf"^{re.escape(name)}\s", p.stdout, re.M)
        assert " ".join(f"{k}={v}" for k, v in values.items()) in p.stdout


def test_stage2_gets_the_recipe_and_the_environment_wins(tmp_path):
    p, calls = run_script(tmp_path, "5_student_second.sh", RECIPE="paper")
    assert p.returncode == 0, p.stderr
    (call,) = calls
    assert "-m metakd.distill" in call and "--lr 3e-5" in call and "--alpha 0 " in call and "--t-squared" not in call
    p, calls = run_script(tmp_path / "b", "5_student_second.sh", RECIPE="paper", ALPHA="0.25", T_SQUARED="1",
                          STAGE2_LR="1e-4")
    (call,) = calls
    assert "--alpha 0.25 " in call and "--t-squared" in call and "--lr 1e-4" in call


def test_stage1_skipped_when_the_recipe_or_the_environment_says_so(tmp_path):
    p, calls = run_script(tmp_path, "4_student_first.sh", SKIP_STAGE1="1")
    assert p.returncode == 0 and calls == []
    assert "no stage 1" in p.stderr
    assert not (tmp_path / "out").exists()
    p, calls = run_script(tmp_path / "b", "4_student_first.sh", USE_ATTENTION_TERM="0")
    (call,) = calls
    assert "--stage first" in call and "--no-attention-term" in call
