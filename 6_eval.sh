#!/usr/bin/env bash
# 6. Evaluate GENRE's student (and the meta-teacher, for reference) on GENRE's test split:
#    accuracy and macro-F1 as a table and in OUT_DIR/eval_test.json. GENRE=all: every genre with a student.
cd "$(dirname "$0")" && source tools/common.sh

GENRE="${GENRE:-books}"                   # a genre, or all
TASK="${TASK:-senti}"                     # senti | mnli | tsv: the same TASK as 1_get_data.sh
DATA_DIR="${DATA_DIR:-data/${TASK^^}}"    # data/SENTI, data/MNLI or data/TSV
OUT_DIR="${OUT_DIR:-out}"                                   # where the models and reports go
TEACHER_DIR="${TEACHER_DIR:-$OUT_DIR/meta_teacher}"  # the teacher shown for reference
NO_TEACHER="${NO_TEACHER:-0}"             # 1: the student only (e.g. the student alone, with no teacher trained)
STUDENT_DIR="${STUDENT_DIR:-}"            # one genre: evaluate this folder instead of GENRE/meta_student_finetune
SPLIT="${SPLIT:-test}"                    # test | dev
DEVICE="${DEVICE:-auto}"                                    # auto (CUDA when OneFlow sees a GPU) | cpu | cuda | cuda:N (GPU N)
CPU_KERNELS="${CPU_KERNELS:-}"                              # on CPU: numpy (faster) or oneflow (as on CUDA); empty: numpy, or METAKD_CPU_MATMUL's

flags=()
[ -n "$STUDENT_DIR" ] && flags+=(--student "$STUDENT_DIR")
[ "$NO_TEACHER" = 1 ] && flags+=(--no-teacher)
run_metakd evaluate --task "$TASK" --genre "$GENRE" --data-dir "$DATA_DIR" --out-root "$OUT_DIR" --split "$SPLIT" --device "$DEVICE" ${CPU_KERNELS:+--cpu-kernels "$CPU_KERNELS"} \
  --teacher "$TEACHER_DIR" "${flags[@]}"
