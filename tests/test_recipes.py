"""RECIPE=NAME in the distillation scripts: a named set of defaults that the environment overrides."""
import json
import os
import re
import subprocess
import sys

import pytest

from _tiny import ROOT, tiny
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
    """A METAKD_PYTHON that runs metakd.recipes and metakd.make_student for real and records every other
    command's arguments."""
    log = tmp_path / "argv.txt"
    fake = tmp_path / "python"
    fake.write_text(f"""#!/usr/bin/env bash
case "$2" in metakd.recipes|metakd.make_student) exec {sys.executable} "$@" ;; esac
printf '%s\\n' "$*" >> {log}
""")
    fake.chmod(0o755)
    return fake, log


def run_script(tmp_path, script, **env):
    tmp_path.mkdir(parents=True, exist_ok=True)
    fake, log = fake_python(tmp_path)
    full = dict(os.environ, METAKD_PYTHON=str(fake), PYTHONPATH=str(ROOT), NPROC="1", OUT_DIR=str(tmp_path / "out"))
    for var in (*recipes.KNOBS, "STUDENT_MODEL", "TEACHER_MODEL"):  # the test's own environment must not leak in
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


def _made(folder):
    return json.loads((folder / "config.json").read_text())["metakd_made_from"]


def test_student_from_teacher_is_made_once_and_used_by_both_scripts(tmp_path):
    t = tiny()  # a 4-layer teacher
    student = tmp_path / "out" / "students" / f"{t.teacher.name}_2L"
    p, calls = run_script(tmp_path, "4_student_first.sh", STUDENT_FROM_TEACHER="2", TEACHER_MODEL=str(t.teacher))
    assert p.returncode == 0, p.stderr
    (call,) = calls
    assert f"--student {student} " in call
    assert _made(student) == {"teacher": str(t.teacher), "layers": [1, 3]}
    stamp = (student / "model.safetensors").stat().st_mtime_ns
    p, calls = run_script(tmp_path, "5_student_second.sh", STUDENT_FROM_TEACHER="2", TEACHER_MODEL=str(t.teacher),
                          STUDENT_ALONE="1")
    assert p.returncode == 0, p.stderr
    assert "reusing the student of 2 layers" in p.stdout
    (call,) = calls[1:]  # the log holds script 4's call too
    assert "-m metakd.train_teacher" in call and f"--model {student} " in call
    assert (student / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not rewritten
    p, calls = run_script(tmp_path, "5_student_second.sh", STUDENT_FROM_TEACHER="2", TEACHER_MODEL=str(t.teacher),
                          SKIP_STAGE1="1")
    assert p.returncode == 0, p.stderr
    assert f"--student {student} " in calls[-1] and "--stage second" in calls[-1]


def test_stage2_after_stage1_does_not_make_a_student(tmp_path):
    t = tiny()
    p, calls = run_script(tmp_path, "5_student_second.sh", STUDENT_FROM_TEACHER="2", TEACHER_MODEL=str(t.teacher))
    assert p.returncode == 0, p.stderr
    assert "--stage second" in calls[0] and not (tmp_path / "out" / "students").exists()


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("env,msg", [
    ({"STUDENT_FROM_TEACHER": "two"}, "STUDENT_FROM_TEACHER=two; it must be 0 (use STUDENT_MODEL) or a number"),
    ({"STUDENT_FROM_TEACHER": "2", "STUDENT_MODEL": "models/mine"},
     "STUDENT_MODEL=models/mine and STUDENT_FROM_TEACHER=2 both choose the student; set STUDENT_FROM_TEACHER=0"),
])
def test_student_from_teacher_refuses_bad_settings_before_any_work(tmp_path, script, env, msg):
    p, calls = run_script(tmp_path, script, STUDENT_ALONE="1", **env)
    assert p.returncode == 2 and calls == []
    (line,) = p.stderr.strip().splitlines()
    assert line.startswith(f"error: {script}: {msg}")
    assert not (tmp_path / "out").exists()


def test_student_from_teacher_that_cannot_be_made_stops_the_script(tmp_path):
    t = tiny()
    p, calls = run_script(tmp_path, "4_student_first.sh", STUDENT_FROM_TEACHER="3", TEACHER_MODEL=str(t.teacher))
    assert p.returncode == 2 and calls == []
    assert "--num-layers 3: it must divide the teacher's 4 layers" in p.stderr
    assert not (tmp_path / "out" / "students").exists() or not any((tmp_path / "out" / "students").iterdir())


def test_compare_runner_controls_every_knob():
    """An exported knob cannot change the runner's cells unrecorded: each is set per cell (and refused in the
    environment) or a recorded setting."""
    from metakd import compare

    assert set(recipes.KNOBS) <= set(compare.PER_CELL) | set(compare.SETTINGS)


def _knobs_of(method, tmp_path):
    """The recipe variables a comparison method's scripts run with (the runner sets RECIPE=paper and the
    method's own), its made student read as STUDENT_FROM_TEACHER."""
    from metakd import compare

    knobs = dict(recipes.RECIPES["paper"])
    for step in compare.model_chain(method, "books", 1, compare.Layout(tmp_path)):
        if step.script in SCRIPTS:
            assert step.env["RECIPE"] == "paper"
            knobs.update({k: v for k, v in step.env.items() if k in recipes.KNOBS})
    if method.student is not None:
        args = compare.STUDENTS[method.student]
        assert args[:2] == ("--teacher", "$TEACHER_MODEL") and "--layers" not in args
        knobs["STUDENT_FROM_TEACHER"] = args[args.index("--num-layers") + 1]
    return knobs


def test_each_recipe_is_what_its_comparison_method_measured(tmp_path):
    from metakd import compare

    assert set(compare.RECIPE_METHODS) == set(recipes.RECIPES)
    for name, method in compare.RECIPE_METHODS.items():
        assert _knobs_of(compare.METHODS[method], tmp_path) == recipes.RECIPES[name], name
    # and the check can fail: another method is not the paper's recipe
    assert _knobs_of(compare.METHODS["metakd_hard"], tmp_path) != recipes.RECIPES["paper"]
    assert _knobs_of(compare.METHODS["metakd_teacher_layers"], tmp_path)["STUDENT_FROM_TEACHER"] == "3"
