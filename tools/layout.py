"""The package layout with line counts, for docs/layout.md (tests/test_layout.py keeps it true).

    python tools/layout.py            # print the table
    python tools/layout.py --write    # put it into docs/layout.md (between the layout markers)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN = "<!-- layout: begin (tools/layout.py --write) -->"
END = "<!-- layout: end -->"
LARGE = 600  # lines; a module above it is listed with the reason in docs/layout.md


def lines_of(path: Path) -> int:
    with open(path, encoding="utf-8") as f:
        return sum(1 for _ in f)


def table() -> str:
    """One row per module of metakd/, folder by folder: its path, lines, and a mark when over LARGE."""
    rows = ["| module | lines |", "|---|---:|"]
    package = ROOT / "metakd"
    for path in sorted(package.rglob("*.py"), key=lambda p: (len(p.relative_to(package).parts), str(p))):
        n = lines_of(path)
        mark = f" (over {LARGE})" if n > LARGE else ""
        rows.append(f"| `{path.relative_to(ROOT).as_posix()}` | {n}{mark} |")
    return "\n".join(rows)


def large_modules() -> list:
    return sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "metakd").rglob("*.py") if lines_of(p) > LARGE)


def document(text: str) -> str:
    """``text`` (docs/layout.md) with the generated table between the markers."""
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{table()}\n{END}{tail}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--write", action="store_true", help="write the table into docs/layout.md")
    a = p.parse_args(argv)
    if a.write:
        doc = ROOT / "docs" / "layout.md"
        doc.write_text(document(doc.read_text(encoding="utf-8")), encoding="utf-8")
    else:
        print(table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
