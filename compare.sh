#!/usr/bin/env bash
# Compare Meta-KD with its baselines: METHODS x GENRES x SEEDS, each cell built by the numbered
# scripts (shared teachers and stage-1 students built once), resumable: stop it at any point and run
# it again to continue. Writes RUN_DIR/results.csv, results.md (mean +- std over seeds, paired
# differences with 95% bootstrap intervals), accuracy.png, curves.png and paired.png.
# The numbered scripts' variables (TEACHER_MODEL, STUDENT_MODEL, *_EPOCHS, *_LR, BATCH_SIZE, NPROC,
# EVAL_EVERY, DEVICE, SOURCE, ...) apply to every cell: set them in the environment as for the scripts.
# Methods: teacher_single teacher_mix teacher_meta student_alone kd_single kd_mix kd_meta metakd
#   metakd_no_proto metakd_no_expertise metakd_no_domain_term metakd_teacher_no_domain_loss
#   metakd_no_stage1 metakd_easynlp metakd_hidden_only metakd_hard metakd_lr1e-4 student_alone_lr1e-4
#   metakd_teacher_layers student_alone_teacher_layers metakd_t1 metakd_no_stage1_full metakd_no_stage1_hard
#   metakd_teacher_layers_no_stage1_full
#   (python -m metakd.compare --help says what each is).
cd "$(dirname "$0")" && source tools/common.sh

RUN_DIR="${RUN_DIR:-out/compare}"                   # every cell, the shared data and teachers, the report
METHODS="${METHODS:-metakd,student_alone}"          # comma-separated, in the order they run within a seed
GENRES="${GENRES:-all}"                             # comma-separated, or all
SEEDS="${SEEDS:-42,43,44}"                          # comma-separated; the outermost loop
REFERENCE="${REFERENCE:-metakd}"                    # paired differences: this method minus each other one
REPORT_ONLY="${REPORT_ONLY:-0}"                     # 1: only rewrite the CSV, table and plots
CELLS_FROM="${CELLS_FROM:-}"                        # finished cells kept elsewhere (docs/compare/cells): not recomputed

flags=()
[ "$REPORT_ONLY" = 1 ] && flags+=(--report-only)
[ -n "$CELLS_FROM" ] && flags+=(--cells-from "$CELLS_FROM")
export METAKD_PYTHON
run_metakd compare --run-dir "$RUN_DIR" --methods "$METHODS" --genres "$GENRES" --seeds "$SEEDS" \
  --reference "$REFERENCE" "${flags[@]}"
