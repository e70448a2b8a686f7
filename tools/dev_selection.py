"""The recipe choice of docs/results.md: dev accuracy of each method on one seed, per genre and on
average, and its difference from a reference method on the same dev reviews. Dev only: test
accuracy is not read.

    python tools/dev_selection.py docs/compare/results.csv --seed 42 [--reference student_alone]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from metakd.compare import METHODS  # noqa: E402


def selection_table(results: pd.DataFrame, seed: int, reference: str) -> str:
    d = results[results.seed == seed]
    dev = d.pivot_table(index="method", columns="genre", values="dev_accuracy") * 100
    dev = dev.dropna()  # only methods with every genre
    genres = list(dev.columns)
    dev["average"] = dev[genres].mean(axis=1)
    if reference not in dev.index:
        raise ValueError(f"{reference}: no finished cells for every genre of seed {seed}; pick another --reference")
    dev["minus_ref"] = dev["average"] - dev.loc[reference, "average"]
    dev = dev.sort_values("average", ascending=False)
    head = ["method", *genres, "average", f"minus {reference}", "what"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, row in dev.iterrows():
        cells = [f"{row[g]:.2f}" for g in genres] + [f"{row['average']:.2f}", f"{row['minus_ref']:+.2f}"]
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {METHODS[m].label if m in METHODS else ''} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("csv", type=Path, help="a comparison's results.csv")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--reference", default="student_alone")
    a = p.parse_args(argv)
    try:
        if not a.csv.is_file():
            raise ValueError(f"{a.csv}: not found; give a comparison's results.csv (compare.sh writes it)")
        print(selection_table(pd.read_csv(a.csv), a.seed, a.reference))
    except ValueError as e:
        print(f"error: tools/dev_selection.py: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
