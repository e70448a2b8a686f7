#!/usr/bin/env bash
# Your own data, worked example: a generated CSV of support messages about three products (the
# domains: laptop, phone, router) of three kinds (the labels: complaint, praise, question), with tiny
# random BERTs, through the six scripts with TASK=tsv; ends with the results table. Offline, a minute or
# two on a laptop CPU. Writes data/tickets.csv, data/TSV, models/tickets/tiny-*, out/tickets.
# For real data: replace the CSV, the column names and the models; keep the rest.
#
#   bash tools/own_data_example.sh
#
# Variables (environment; defaults in brackets): TABLE [data/tickets.csv], ROWS_PER_CLASS [60 rows per
# product and kind], DATA_DIR [data/TSV], MODELS_DIR [models/tickets], OUT_DIR [out/tickets], GENRE [phone],
# DEVICE [auto], MAX_SEQ_LENGTH [32], TEACHER_EPOCHS [8], TEACHER_LR [1e-3], STAGE1_EPOCHS [5],
# STAGE1_LR [3e-3], STAGE2_EPOCHS [10], STAGE2_LR [3e-3], EVAL_EVERY [0], DOMAIN_LOSS_WEIGHT [0.1],
# METAKD_PYTHON [.venv/bin/python]; other variables of the numbered scripts pass through to them.
source "$(dirname "$0")/tool_help.sh"
set -euo pipefail
cd "$(dirname "$0")/.."
TABLE="${TABLE:-data/tickets.csv}"
ROWS_PER_CLASS="${ROWS_PER_CLASS:-60}"   # rows per product and kind
export TASK=tsv SOURCE="$TABLE" TEXT_COLUMN=message LABEL_COLUMN=category DOMAIN_COLUMN=product
export DATA_DIR="${DATA_DIR:-data/TSV}" MODELS_DIR="${MODELS_DIR:-models/tickets}" OUT_DIR="${OUT_DIR:-out/tickets}"
export TEACHER_MODEL="$MODELS_DIR/tiny-teacher" STUDENT_MODEL="$MODELS_DIR/tiny-student"
export MAX_SEQ_LENGTH="${MAX_SEQ_LENGTH:-32}" DEVICE="${DEVICE:-auto}" GENRE="${GENRE:-phone}"
# Models trained from scratch: larger learning rates and a smaller domain-corruption weight than the
# paper's, as in tools/quickstart.sh.
export TEACHER_EPOCHS="${TEACHER_EPOCHS:-8}" TEACHER_LR="${TEACHER_LR:-1e-3}"
export STAGE1_EPOCHS="${STAGE1_EPOCHS:-5}" STAGE1_LR="${STAGE1_LR:-3e-3}"
export STAGE2_EPOCHS="${STAGE2_EPOCHS:-10}" STAGE2_LR="${STAGE2_LR:-3e-3}"
export EVAL_EVERY="${EVAL_EVERY:-0}" DOMAIN_LOSS_WEIGHT="${DOMAIN_LOSS_WEIGHT:-0.1}"
PYTHON="${METAKD_PYTHON:-}"
if [ -z "$PYTHON" ]; then bash tools/setup_env.sh; PYTHON=.venv/bin/python; fi
echo "== the data: $TABLE and tiny BERTs in $MODELS_DIR"
PYTHONPATH="$PWD" "$PYTHON" -m metakd.data.synthetic --table "$TABLE" --rows-per-class "$ROWS_PER_CLASS" \
  --models-out "$MODELS_DIR"
for step in 1_get_data 2_process_data 3_train_teacher 4_student_first 5_student_second 6_eval; do
  echo "== $step.sh"
  bash "./$step.sh"
done
