#!/usr/bin/env bash
# Quick start: the whole pipeline (1 -> 6) on a tiny synthetic multi-domain dataset with tiny random
# BERTs, offline, in a few minutes on a laptop CPU. Writes data/SYNTH, models/tiny-*, out/synthetic;
# the student is out/synthetic/books/meta_student_finetune.
# The hyper-parameters below suit models trained from scratch, not the paper's pretrained pair.
#
#   bash tools/quickstart.sh
#
# Variables (environment; defaults in brackets): DATA_DIR [data/SYNTH], MODELS_DIR [models],
# OUT_DIR [out/synthetic], GENRE [books], DEVICE [auto], MAX_SEQ_LENGTH [64], SYNTHETIC_SIZE [200 reviews per
# domain and label], TEACHER_EPOCHS [5], TEACHER_LR [1e-3], STAGE1_EPOCHS [5], STAGE1_LR [3e-3],
# STAGE2_EPOCHS [10], STAGE2_LR [3e-3], EVAL_EVERY [0: per epoch], DOMAIN_LOSS_WEIGHT [0.1]; any other
# variable of the numbered scripts (bash N_script.sh --help) passes through to them.
source "$(dirname "$0")/tool_help.sh"
set -euo pipefail
cd "$(dirname "$0")/.."
export SOURCE=synthetic DATA_DIR="${DATA_DIR:-data/SYNTH}" MODELS_DIR="${MODELS_DIR:-models}" OUT_DIR="${OUT_DIR:-out/synthetic}"
export TEACHER_MODEL="$MODELS_DIR/tiny-teacher" STUDENT_MODEL="$MODELS_DIR/tiny-student"
export MAX_SEQ_LENGTH="${MAX_SEQ_LENGTH:-64}" DEVICE="${DEVICE:-auto}" GENRE="${GENRE:-books}"
export SYNTHETIC_SIZE="${SYNTHETIC_SIZE:-200}"
export TEACHER_EPOCHS="${TEACHER_EPOCHS:-5}" TEACHER_LR="${TEACHER_LR:-1e-3}"
export STAGE1_EPOCHS="${STAGE1_EPOCHS:-5}" STAGE1_LR="${STAGE1_LR:-3e-3}"
export STAGE2_EPOCHS="${STAGE2_EPOCHS:-10}" STAGE2_LR="${STAGE2_LR:-3e-3}"
export EVAL_EVERY="${EVAL_EVERY:-0}"
# Models trained from scratch learn sentiment slowly under the full domain-corruption weight (0.5:
# at chance after 5 epochs for 2 of 3 seeds tried); 0.1 got every seed tried to ~0.85 dev accuracy.
export DOMAIN_LOSS_WEIGHT="${DOMAIN_LOSS_WEIGHT:-0.1}"
for step in 1_get_data 2_process_data 3_train_teacher 4_student_first 5_student_second 6_eval; do
  echo "== $step.sh"
  bash "./$step.sh"
done
