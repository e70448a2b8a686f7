"""Publishing a comparison (paths made portable, the report from the published cells alone) and the
side-by-side of two budgets (metakd.budgets), against the differences written out with numpy."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from _tiny import ROOT
from metakd import budgets, cli, compare
from metakd.infra.errors import UserError

GENRES = ("books", "dvd", "electronics", "kitchen")


def _cell(folder, method, genre, seed, labels, preds, run_dir="/elsewhere/runs/x"):
    acc = float(np.mean(np.asarray(labels) == np.asarray(preds)))
    ev = {"folder": f"{run_dir}/seed{seed}/{genre}/{method}", "method": method, "genre": genre, "seed": seed,
          "dev": {"accuracy": acc, "macro_f1": acc}, "test": {"accuracy": acc, "macro_f1": acc, "n": len(labels)},
          "test_labels": "".join(map(str, labels)), "test_predictions": "".join(map(str, preds)),
          "teacher_epochs": 1, "student_epochs": 6, "wall_s": 1.0, "commit": "abc1234",
          "curve": {"total_steps": 10, "epochs": 1, "dev": [[10, acc]], "train_loss": [0.5]}}
    path = folder / f"seed{seed}" / genre / "eval" / f"{method}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(ev))
    return ev


def _comparison(folder, epochs, preds_of, seeds=(1, 2), n=20, config_name="config.json"):
    """A published comparison: config.json at ``epochs`` (stage 1 = stage 2) and cells whose test
    predictions are ``preds_of(method, genre, seed, labels)``."""
    rng = np.random.default_rng(0)  # the same labels in every comparison: the same test reviews
    labels = {g: rng.integers(0, 2, n) for g in GENRES}
    folder.mkdir(parents=True)
    (folder / config_name).write_text(json.dumps({"settings": {
        "SOURCE": str(ROOT.parent / "shared" / "data"), "TEACHER_EPOCHS": "1", "STAGE1_EPOCHS": str(epochs),
        "STAGE2_EPOCHS": str(epochs)}, "created": "2026-12-07 10:00:00", "commits": ["abc1234"]}))
    for s in seeds:
        for g in GENRES:
            for m in ("student_alone", "metakd"):
                _cell(folder / "cells", m, g, s, labels[g], preds_of(m, g, s, labels[g]))
    return labels


def _flip(y, k):
    """y with its first k labels wrong."""
    p = np.array(y).copy()
    p[:k] = 1 - p[:k]
    return p


def test_portable_settings_hold_no_machine_path():
    out = compare.portable({"SOURCE": str(ROOT.parent / "shared" / "data"), "NPROC": "2", "DEVICE": "cpu"})
    assert out == {"SOURCE": "../shared/data", "NPROC": "2", "DEVICE": "cpu"}
    a = {"settings": {"SOURCE": str(ROOT.parent / "shared" / "d")}}
    assert compare.settings_diff(a, {"settings": {"SOURCE": "../shared/d"}}) == []
    assert compare.settings_diff(a, {"settings": {"SOURCE": "../other/d"}}) == ["SOURCE"]


def test_run_relative_folders(tmp_path):
    run = tmp_path / "run"
    assert compare.run_relative(str(run / "seed42" / "books" / "metakd"), run) == "seed42/books/metakd"
    assert compare.run_relative("/some/machine/runs/compare/seed43/dvd/kd_mix", run) == "seed43/dvd/kd_mix"
    assert compare.run_relative("seed44/books/metakd", run) == "seed44/books/metakd"


def test_budget_and_provenance():
    cfg = {"settings": {"STAGE1_EPOCHS": "10", "STAGE2_EPOCHS": "10"}, "commits": ["aaa (a note)", "bbb"]}
    assert compare.budget_of(cfg["settings"]) == "1/10/10"  # the teacher's epochs: the scripts' default
    assert compare.provenance(cfg, {}) == ("epochs 1/10/10 (teacher / stage 1 / stage 2; the student alone 20); "
                                           "commits aaa, bbb")
    evals = {("metakd", "books", 1): {"commit": "ccc"}, ("metakd", "dvd", 1): {"commit": "ccc"}}
    assert compare.provenance(cfg, evals).endswith("commits ccc")  # the cells' own commits first


def test_publish_writes_portable_cells_and_the_report_from_them(tmp_path):
    run, dest = tmp_path / "run", tmp_path / "docs" / "cmp"
    _comparison(run, 10, lambda m, g, s, y: _flip(y, 2 if m == "metakd" else 1))
    for p in run.glob("cells/*"):  # a run dir holds the cells at its top
        p.rename(run / p.name)
    for p in run.glob("seed*/*/eval/*.json"):
        ev = json.loads(p.read_text())
        ev["folder"] = str(run / ev["folder"].split("/x/")[1])
        p.write_text(json.dumps(ev))
    (run / "walls.tsv").write_text("seed1/books/metakd\t5.0\n")
    compare.publish(run, dest, cli.processor("senti"), "metakd", 200)
    cells = sorted(dest.glob("cells/seed*/*/eval/*.json"))
    assert len(cells) == 16
    assert json.loads(cells[0].read_text())["folder"] == "seed1/books/metakd"
    cfg = json.loads((dest / "config.json").read_text())
    assert cfg["settings"]["SOURCE"] == "../shared/data"
    md = (dest / "results.md").read_text()
    assert "Budget: epochs 1/10/10" in md and "commits abc1234" in md
    assert "| metakd | 90.00 ± 0.00 (2) |" in md  # 2 of 20 wrong in every genre and seed
    for name in ("accuracy.png", "curves.png", "paired.png"):
        assert (dest / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not any("/" in str(v) and str(v).startswith("/") for v in cfg["settings"].values())
    assert "/elsewhere" not in "".join(p.read_text() for p in cells) + (dest / "results.csv").read_text()


def test_budget_table_against_the_differences_written_out(tmp_path):
    # 3/3: Meta-KD wrong on 4 of 20 reviews per genre and seed, the student alone on 2;
    # 10/10: Meta-KD wrong on 1, the student alone on 3 (seed 2: 5).
    short, long = tmp_path / "short", tmp_path / "long"
    _comparison(short, 3, lambda m, g, s, y: _flip(y, 4 if m == "metakd" else 2))
    _comparison(long, 10, lambda m, g, s, y: _flip(y, 1 if m == "metakd" else (3 if s == 1 else 5)))
    lines, rows, diffs = budgets.budget_table([short, long], cli.processor("senti"), 500)
    by = {r["method"]: r for r in rows}
    m = by["metakd"]
    assert m["budgets"]["1/3/3"]["minus_alone"]["difference"] == pytest.approx((2 - 4) / 20)
    assert m["budgets"]["1/10/10"]["minus_alone"]["difference"] == pytest.approx(((3 + 5) / 2 - 1) / 20)
    assert m["budget_effect"]["difference"] == pytest.approx((4 - 1) / 20)
    assert by["student_alone"]["budget_effect"]["difference"] == pytest.approx((2 - (3 + 5) / 2) / 20)
    assert m["budgets"]["1/10/10"]["average"][0] == pytest.approx(19 / 20)
    # the first review is wrong for both at every budget: each interval holds the estimate
    for d in diffs:
        assert d["ci_low"] <= d["difference"] <= d["ci_high"]
    table = "\n".join(lines)
    assert "| metakd | 80.00 ± 0.00 (2) | -10.00 |" in table and "| +15.00 |" in table
    assert "1/3/3: epochs 1/3/3" in table and "1/10/10: epochs 1/10/10" in table


def test_reproduced_compares_dev_curves_and_predictions():
    ev = {"curve": {"dev": [[100, 0.8], [200, 0.85]]}, "test_predictions": "0110"}
    first = {("teacher_meta", g, s): ev for g in GENRES for s in (42, 43)}
    last = dict(first)
    last[("teacher_meta", "dvd", 43)] = {**ev, "curve": {"dev": [[100, 0.8], [200, 0.84]]}}
    notes = budgets.reproduced(first, last, ["teacher_meta"])
    assert notes == ["teacher_meta: the same dev accuracy at every evaluation and the same test predictions at both "
                     "budgets (seeds 42): reproduced",
                     "teacher_meta: NOT reproduced at seeds 43 (other dev curve or test predictions)"]


def test_recipe_choice_is_made_on_dev(tmp_path):
    import pandas as pd

    rows = [{"method": m, "genre": g, "seed": s, "dev_accuracy": dev, "test_accuracy": test}
            for m, dev, test in (("metakd", 0.80, 0.90), ("metakd_teacher_layers", 0.82, 0.70))
            for g in GENRES for s in (1, 2)]
    notes = budgets.recipe_choice([("1/3/3", {}, pd.DataFrame(rows), {})], list(GENRES))
    assert notes == ["1/3/3: dev accuracy RECIPE=paper 80.00 ± 0.00 (2), RECIPE=teacher_layers 82.00 ± 0.00 (2): "
                     "dev chooses RECIPE=teacher_layers"]  # test accuracy says the opposite: not read


def test_budget_table_refuses_two_comparisons_at_one_budget(tmp_path):
    _comparison(tmp_path / "a", 3, lambda m, g, s, y: y)
    _comparison(tmp_path / "b", 3, lambda m, g, s, y: y)
    with pytest.raises(UserError, match="same budget"):
        budgets.budget_table([tmp_path / "a", tmp_path / "b"], cli.processor("senti"), 200)


def test_budgets_cli_bad_input_one_line_and_nothing_written(tmp_path):
    _comparison(tmp_path / "a", 3, lambda m, g, s, y: y)
    p = subprocess.run([sys.executable, "-m", "metakd.budgets", str(tmp_path / "a"), str(tmp_path / "missing"),
                        "--out", str(tmp_path / "o")], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and p.stderr.startswith("error: ")
    assert "missing" in p.stderr and not list(tmp_path.glob("o.*"))
