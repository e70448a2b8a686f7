#!/usr/bin/env bash
# Copy a comparison run's report (small files only: CSV, Markdown, JSON, PNG, wall times) and every
# finished cell's evaluation into docs/compare/ for docs/results.md; models and logs stay in the run dir.
#   bash tools/publish_compare.sh [RUN_DIR]    (default out/compare_real)
set -euo pipefail
cd "$(dirname "$0")/.."
RUN_DIR="${1:-out/compare_real}"
[ -f "$RUN_DIR/results.csv" ] || { echo "error: $RUN_DIR: no results.csv; run tools/compare_real.sh first" >&2; exit 2; }
PY="${METAKD_PYTHON:-.venv/bin/python}"
[ -f "$RUN_DIR/config.json" ] || { echo "error: $RUN_DIR: no config.json; run tools/compare_real.sh first" >&2; exit 2; }
# wall times and commits: merged with what docs/compare holds from earlier run dirs (checked first: same settings)
"$PY" -c 'import sys; from pathlib import Path; from metakd.infra.entry import cli_main; from metakd.compare import merge_records
cli_main(lambda: merge_records(Path(sys.argv[1]), Path("docs/compare")))()' "$RUN_DIR"
for f in results.csv results.md paired.json accuracy.png curves.png paired.png; do
  [ -f "$RUN_DIR/$f" ] && cp "$RUN_DIR/$f" "docs/compare/$f"
done
# every finished cell's evaluation (small, self-contained): a later run takes them with CELLS_FROM
(cd "$RUN_DIR" && find . -path './seed*/*/eval/*.json' -print0) | while IFS= read -r -d '' f; do
  mkdir -p "docs/compare/cells/$(dirname "$f")" && cp "$RUN_DIR/$f" "docs/compare/cells/$f"
done
ls -la docs/compare
