#!/usr/bin/env bash
# The real one-genre run of docs/results.md: the real reviews and the ../shared/models pair on CPU,
# each numbered script timed (wall seconds and peak RSS, into TIMES). Epochs 1/3/3 (teacher / stage 1 /
# stage 2) instead of the scripts' own 1/10/10, to fit two CPU cores.
#
#   NPROC=2 BATCH_SIZE=8 bash tools/real_run.sh
#
# Variables (environment; defaults in brackets): SHARED [../shared: the data and models folder],
# SOURCE [SHARED/data/amazon_multidomain/sorted_data_acl], TEACHER_MODEL [SHARED/models/all-MiniLM-L6-v2],
# STUDENT_MODEL [SHARED/models/paraphrase-MiniLM-L3-v2], DATA_DIR [data/SENTI], OUT_DIR [out/real],
# GENRE [books], DEVICE [cpu], TEACHER_EPOCHS [1], STAGE1_EPOCHS [3], STAGE2_EPOCHS [3], EVAL_EVERY [100],
# TIMES [OUT_DIR/stage_times.tsv], FROM [1] and TO [6] (the first and last script to run, e.g. FROM=4 to
# continue after the teacher), REPO [.: run another checkout's numbered scripts, as tools/research/before_run.sh
# does]; the numbered scripts' other variables (NPROC, BATCH_SIZE, ...) pass through.
source "$(dirname "$0")/tool_help.sh"
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED="$(realpath -m "${SHARED:-../shared}")"  # absolute, as REPO may lie elsewhere
cd "${REPO:-.}"
export SOURCE="${SOURCE:-$SHARED/data/amazon_multidomain/sorted_data_acl}"
export TEACHER_MODEL="${TEACHER_MODEL:-$SHARED/models/all-MiniLM-L6-v2}"
export STUDENT_MODEL="${STUDENT_MODEL:-$SHARED/models/paraphrase-MiniLM-L3-v2}"
export DATA_DIR="${DATA_DIR:-data/SENTI}" OUT_DIR="${OUT_DIR:-out/real}" GENRE="${GENRE:-books}" DEVICE="${DEVICE:-cpu}"
export TEACHER_EPOCHS="${TEACHER_EPOCHS:-1}" STAGE1_EPOCHS="${STAGE1_EPOCHS:-3}" STAGE2_EPOCHS="${STAGE2_EPOCHS:-3}"
export EVAL_EVERY="${EVAL_EVERY:-100}"
TIMES="${TIMES:-$OUT_DIR/stage_times.tsv}"
FROM="${FROM:-1}"   # first script to run (e.g. FROM=4 to continue after the teacher)
TO="${TO:-6}"       # last script to run
mkdir -p "$OUT_DIR"
[ "$FROM" != 1 ] && [ -f "$TIMES" ] || printf 'script\twall_s\tpeak_rss_mb\n' > "$TIMES"
for step in 1_get_data 2_process_data 3_train_teacher 4_student_first 5_student_second 6_eval; do
  [ "${step%%_*}" -ge "$FROM" ] && [ "${step%%_*}" -le "$TO" ] || continue
  echo "== $step.sh"
  /usr/bin/time -f "%e %M" -o "$OUT_DIR/.time" bash "./$step.sh"
  read -r wall rss < "$OUT_DIR/.time"
  printf '%s\t%s\t%s\n' "$step.sh" "$wall" "$((rss / 1024))" >> "$TIMES"
  echo "== $step.sh: ${wall} s, peak RSS $((rss / 1024)) MB"
done
rm -f "$OUT_DIR/.time"
cat "$TIMES"
