"""The same comparison at several distillation budgets, side by side: does the answer depend on the budget?

    python -m metakd.budgets docs/compare docs/compare_10x10 --out docs/budgets

Each argument is a published comparison (``tools/publish_compare.sh`` writes one: ``config.json`` and
``cells/``), its budget read from its settings. Per method both have: the test accuracy (mean ± std over
seeds of the 4-genre average), the paired difference against the student alone at each budget (the
student alone of that budget: the same student fine-tuned alone for stage 1 + stage 2's epochs), and the
effect of the budget itself: the same method at the later budget minus the first, paired on the same test
reviews (``metakd.compare.paired_difference``: a two-level bootstrap over seeds and reviews). The student
alone is paired too, so that its row shows what the longer fine-tuning buys it.

Writes ``<out>.md`` (the table), ``<out>.json`` (every difference) and ``<out>.png`` (each distilled
method minus its student alone at each budget, with intervals); each names the budgets and commits.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from metakd import cli
from metakd.compare import (METHODS, RECIPE_METHODS, Layout, alone_of, budget_of, collect, fmt, paired_difference, provenance,
                            summary_table)
from metakd.infra.entry import cli_main
from metakd.infra.errors import UserError


def load(folder: Path, proc) -> Tuple[str, dict, "object", Dict[Tuple[str, str, int], dict]]:
    """(budget, config, table, evaluations) of one published comparison."""
    cfg_path = folder / "config.json"
    if not cfg_path.is_file() or not (folder / "cells").is_dir():
        raise UserError("not a published comparison (no config.json or cells/); publish one with "
                        "tools/publish_compare.sh RUN_DIR DEST", folder)
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    df, evals = collect(Layout(folder / "cells"), proc)
    return budget_of(cfg.get("settings", {})), cfg, df, evals


def _ci(d: Optional[dict]) -> Tuple[str, str]:
    if d is None:
        return "", ""
    return f"{100 * d['difference']:+.2f}", f"[{100 * d['ci_low']:+.2f}, {100 * d['ci_high']:+.2f}]"


def reproduced(first: Dict[Tuple[str, str, int], dict], last: Dict[Tuple[str, str, int], dict],
               methods: List[str]) -> List[str]:
    """For models the budget does not touch (the teachers): whether both comparisons trained the same model,
    by its dev accuracy at every evaluation and its test predictions, per seed."""
    out = []
    for m in methods:
        same, differ = [], []
        for seed in sorted({s for (mm, _, s) in first if mm == m}):
            keys = [k for k in first if k[0] == m and k[2] == seed and k in last]
            if not keys:
                continue
            ok = all(first[k].get("curve", {}).get("dev") == last[k].get("curve", {}).get("dev")
                     and first[k]["test_predictions"] == last[k]["test_predictions"] for k in keys)
            (same if ok else differ).append(str(seed))
        if same:
            out.append(f"{m}: the same dev accuracy at every evaluation and the same test predictions at both budgets "
                       f"(seeds {', '.join(same)}): reproduced")
        if differ:
            out.append(f"{m}: NOT reproduced at seeds {', '.join(differ)} (other dev curve or test predictions)")
    return out


def recipe_choice(loaded, genres: List[str]) -> List[str]:
    """Which RECIPE dev accuracy would choose at each budget (the 4-genre average over seeds of the recipes'
    methods; test accuracy plays no part)."""
    out = []
    for b, _, df, _ in loaded:
        dev = {}
        for name, m in RECIPE_METHODS.items():
            rows = {r["method"]: r for r in summary_table(df[df.genre.isin(genres)], genres, "dev_accuracy")}
            if m in rows and rows[m]["average"][2]:
                dev[name] = rows[m]["average"]
        if len(dev) > 1:
            best = max(dev, key=lambda k: dev[k][0])
            out.append(f"{b}: dev accuracy " + ", ".join(f"RECIPE={k} {fmt(v)}" for k, v in dev.items())
                       + f": dev chooses RECIPE={best}")
    return out


def budget_table(folders: List[Path], proc, n_boot: int) -> Tuple[List[str], List[dict], List[dict]]:
    """Markdown lines, the rows (per method and budget) and every paired difference (JSON-ready)."""
    loaded = [load(f, proc) for f in folders]
    budgets = [b for b, *_ in loaded]
    if len(set(budgets)) != len(budgets):
        raise UserError(f"two comparisons at the same budget ({', '.join(budgets)}); give each budget once")
    genres = [g for g in proc.domains if all(g in set(df.genre) for _, _, df, _ in loaded)]
    methods = [m for m in METHODS if all(m in set(df.method) for _, _, df, _ in loaded)]
    if not methods:
        raise UserError("the comparisons share no method with finished cells; nothing to put side by side")
    rows, diffs = [], []
    for m in methods:
        row = {"method": m, "budgets": {}}
        alone = alone_of(METHODS[m]) if METHODS[m].kind == "kd" else None
        for (b, _, df, evals) in loaded:
            summary = {r["method"]: r for r in summary_table(df[df.genre.isin(genres)], genres)}
            d = paired_difference(evals, m, alone, n_boot) if alone else None
            row["budgets"][b] = {"average": summary[m]["average"], "minus_alone": d, "alone": alone}
            if d is not None:
                diffs.append({"budget": b, **d})
        first, last = loaded[0], loaded[-1]
        merged = {**{(f"{k[0]}@{first[0]}", k[1], k[2]): v for k, v in first[3].items() if k[0] == m},
                  **{(f"{k[0]}@{last[0]}", k[1], k[2]): v for k, v in last[3].items() if k[0] == m}}
        effect = paired_difference(merged, f"{m}@{last[0]}", f"{m}@{first[0]}", n_boot)
        row["budget_effect"] = effect
        if effect is not None:
            diffs.append({"budget": f"{last[0]} minus {first[0]}", **effect})
        rows.append(row)
    head = ["method"]
    for b in budgets:
        head += [f"test % at {b}", f"minus its student alone at {b}", "95% interval"]
    head += [f"{budgets[-1]} minus {budgets[0]}", "95% interval"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["method"]]
        for b in budgets:
            r = row["budgets"][b]
            cells += [fmt(r["average"]), *_ci(r["minus_alone"])]
        cells += list(_ci(row["budget_effect"]))
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"{b}: {provenance(cfg, evals)}" for b, cfg, _, evals in loaded]
    notes += reproduced(loaded[0][3], loaded[-1][3], [m for m in methods if METHODS[m].kind == "teacher"])
    notes += recipe_choice(loaded, genres)
    lines = [f"Test accuracy (%): the mean ± std over seeds (their number) of the {len(genres)}-genre average. "
             "Differences in accuracy points on the pooled test reviews, paired by genre and seed, with a 95% "
             "two-level bootstrap interval (seeds, then reviews). Each distilled method is paired with the student "
             "alone of its own student at the same budget; the last columns pair each method with itself "
             "across the budgets.", ""] + lines + ["", *[f"- {n}" for n in notes]]
    return lines, rows, diffs


def plot(rows: List[dict], budgets: List[str], path: Path, note: str) -> None:
    """Per distilled method: its difference against its student alone at each budget (95% interval)."""
    from metakd.compare import _pyplot, _save

    kd = [r for r in rows if any(r["budgets"][b]["minus_alone"] for b in budgets)]
    if not kd:
        return
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 1.4 + 0.6 * len(kd)))
    colors = plt.cm.tab10(np.arange(len(budgets)) % 10)
    for i, r in enumerate(reversed(kd)):
        for j, b in enumerate(budgets):
            d = r["budgets"][b]["minus_alone"]
            if d is None:
                continue
            y = i + (j - (len(budgets) - 1) / 2) * 0.22
            ax.errorbar(100 * d["difference"], y, xerr=[[100 * (d["difference"] - d["ci_low"])],
                                                      [100 * (d["ci_high"] - d["difference"])]],
                        fmt="o", color=colors[j], capsize=3, ms=5, label=f"epochs {b}" if i == 0 else None)
            ax.plot([100 * v for v in d["per_seed"].values()], [y] * len(d["per_seed"]), "x", color="black", ms=4,
                    mew=0.8, label="one seed" if i == 0 and j == 0 else None)
    ax.axvline(0, color="0.4", lw=0.8)
    ax.set_yticks(range(len(kd)), [f"{r['method']} - {r['budgets'][budgets[0]]['alone']}" for r in reversed(kd)],
                  fontsize=8)
    ax.set_ylim(-0.6, len(kd) - 0.4)
    ax.set_xlabel("test accuracy difference (points), 95% two-level bootstrap interval")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)
    ax.set_title("Each distilled student minus the same student fine-tuned alone, per budget")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    _save(fig, path, note, 110)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("python -m metakd.budgets", __doc__)
    p.add_argument("comparisons", nargs="+", type=Path,
                   help="published comparisons (folders with config.json and cells/), the shortest budget first")
    p.add_argument("--out", type=Path, required=True, help="writes OUT.md, OUT.json and OUT.png")
    p.add_argument("--bootstrap", type=int, default=10000, help="bootstrap resamples for the paired intervals")
    p.add_argument("--task", default="senti", choices=["senti"])
    return p


@cli_main
def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    if len(a.comparisons) < 2:
        raise UserError("give at least two published comparisons (e.g. docs/compare docs/compare_10x10)")
    if a.bootstrap < 100:
        raise UserError(f"--bootstrap must be >= 100, got {a.bootstrap}")
    for f in a.comparisons:
        if not f.is_dir():
            raise UserError("no such folder; give a published comparison (tools/publish_compare.sh writes one)", f)
    from metakd.infra.fileio import atomic_open, write_json

    proc = cli.processor(a.task)
    lines, rows, diffs = budget_table(a.comparisons, proc, a.bootstrap)
    budgets = list(rows[0]["budgets"])
    out = a.out
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(out.with_suffix(".md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    write_json(out.with_suffix(".json"), diffs)
    plot(rows, budgets, out.with_suffix(".png"), "; ".join(ln[2:] for ln in lines if ln.startswith("- ")))
    print("\n".join(lines))
    print(f"wrote {out.with_suffix('.md')}, {out.with_suffix('.json').name}, {out.with_suffix('.png').name}")
    return 0


if __name__ == "__main__":
    main()
