#!/usr/bin/env bash
# The naive path of docs/results.md ("Where does the time go?"): the real one-genre run (as tools/real_run.sh)
# with none of the CPU speed work. That is commit 228d8e8 (the code before the speed work) with
# tools/research/naive_path.patch, which takes out what that code already had (the matmul LayerNorm, trimmed batches,
# length-bucketed inference, stage 2's cached teacher logits): OneFlow's own LayerNorm, every batch padded
# to 128, the frozen teacher run at every distillation step, one process.
#
# It is about three hours of one core, and OneFlow's CPU kernels use one thread, so it runs as two
# chains side by side, one per core, each in a checkout of its own (a git worktree under OUT):
#   a: 1_get_data, 2_process_data, 3_train_teacher   (its own data and meta-teacher)
#   b: 4_student_first, 5_student_second, 6_eval     (from a finished run's data and meta-teacher, so
#      that both students learn from the same teacher)
# then evaluates chain a's teacher (with chain b's student) on the test split. Each script's wall
# time and peak RSS go to $OUT/{a,b}/out/stage_times.tsv; before_after.py --before-run reads them.
#
#   AFTER_OUT=out/real AFTER_DATA=data/SENTI bash tools/research/before_run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$(pwd)"
BEFORE_COMMIT="${BEFORE_COMMIT:-228d8e8}"
AFTER_OUT="${AFTER_OUT:?set AFTER_OUT to a finished tools/real_run.sh OUT_DIR (chain b distils its meta_teacher)}"
AFTER_DATA="${AFTER_DATA:-data/SENTI}"
OUT="${OUT:-out/before}"
mkdir -p "$OUT" && OUT="$(cd "$OUT" && pwd)"
export METAKD_PYTHON="${METAKD_PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$METAKD_PYTHON" ] || bash tools/setup_env.sh
[ -f "$AFTER_OUT/meta_teacher/model.safetensors" ] || { echo "error: no meta-teacher in $AFTER_OUT; run tools/real_run.sh first" >&2; exit 2; }
[ -f "$AFTER_DATA/train_with_weights.tsv" ] || { echo "error: no processed data in $AFTER_DATA; run tools/real_run.sh first" >&2; exit 2; }

for chain in a b; do
  tree="$OUT/$chain"
  [ -d "$tree" ] && { echo "error: $tree exists; remove it (git worktree remove --force $tree) to run again" >&2; exit 2; }
  git worktree add -q --detach "$tree" "$BEFORE_COMMIT"
  git -C "$tree" apply "$ROOT/tools/research/naive_path.patch"
done
mkdir -p "$OUT/b/data" "$OUT/b/out"
cp -r "$AFTER_DATA" "$OUT/b/data/SENTI"
cp -r "$AFTER_OUT/meta_teacher" "$OUT/b/out/meta_teacher"

# tools/real_run.sh (this checkout's, with its variables) runs each chain's numbered scripts in its checkout, timed.
(REPO="$OUT/a" OUT_DIR=out FROM=1 TO=3 bash tools/real_run.sh > "$OUT/a.log" 2>&1) & pa=$!
(REPO="$OUT/b" OUT_DIR=out FROM=4 TO=6 bash tools/real_run.sh > "$OUT/b.log" 2>&1) & pb=$!
wait "$pa"; wait "$pb"
# chain a has no student of its own: its teacher is evaluated beside chain b's student
(cd "$OUT/a" && PYTHONPATH=. GLOG_minloglevel=2 "$METAKD_PYTHON" -m metakd.evaluate --genre books --data-dir data/SENTI \
  --out-root out --student "$OUT/b/out/books/meta_student_finetune" --device cpu)
cat "$OUT"/{a,b}/out/stage_times.tsv
