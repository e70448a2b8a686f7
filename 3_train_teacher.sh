#!/usr/bin/env bash
# 3. The meta-teacher: fine-tune TEACHER_MODEL on all domains at once, each example weighted by its
#    prototype score, with the domain-corruption loss -> OUT_DIR/meta_teacher/ (best by dev accuracy).
#    Baseline teachers: USE_SAMPLE_WEIGHTS=0 USE_DOMAIN_LOSS=0 is BERT-mix (all genres, plain CE), and
#    with TEACHER_GENRE=books too, BERT-s (one genre); set TEACHER_DIR so they do not replace the meta-teacher.
cd "$(dirname "$0")" && source tools/common.sh

TASK="${TASK:-senti}"                                       # senti | mnli | tsv: the same TASK as 1_get_data.sh
DATA_DIR="${DATA_DIR:-data/${TASK^^}}"                      # from 2_process_data.sh
TEACHER_MODEL="${TEACHER_MODEL:-models/bert-base-uncased}"  # pretrained BERT folder to start from
OUT_DIR="${OUT_DIR:-out}"                                   # where the models and reports go
TEACHER_DIR="${TEACHER_DIR:-$OUT_DIR/meta_teacher}"         # the checkpoint folder to write
TEACHER_GENRE="${TEACHER_GENRE:-all}"                       # all, or one genre's rows only (BERT-s)
TEACHER_EPOCHS="${TEACHER_EPOCHS:-1}"                       # EasyNLP's setting
TEACHER_LR="${TEACHER_LR:-3e-5}"                            # peak LR; linear warm-up 10%, then linear decay
BATCH_SIZE="${BATCH_SIZE:-16}"                              # per process; global batch = BATCH_SIZE x NPROC
MAX_SEQ_LENGTH="${MAX_SEQ_LENGTH:-128}"
USE_SAMPLE_WEIGHTS="${USE_SAMPLE_WEIGHTS:-1}"               # 1: weight each example by its prototype score
USE_DOMAIN_LOSS="${USE_DOMAIN_LOSS:-1}"                     # 1: add the domain-corruption loss
DOMAIN_LOSS_WEIGHT="${DOMAIN_LOSS_WEIGHT:-0.5}"             # its weight (lambda)
EVAL_EVERY="${EVAL_EVERY:-50}"                              # dev evaluation every N steps (0: per epoch)
LOG_EVERY="${LOG_EVERY:-20}"                                # a log line every N steps
SEED="${SEED:-42}"                                          # training seed (the data split has its own, SPLIT_SEED)
DEVICE="${DEVICE:-auto}"                                    # auto (CUDA when OneFlow sees a GPU) | cpu | cuda | cuda:N (GPU N)
CPU_KERNELS="${CPU_KERNELS:-}"                              # on CPU: numpy (faster) or oneflow (as on CUDA); empty: numpy, or METAKD_CPU_MATMUL's
COMPAT="${COMPAT:-none}"                                    # none | easynlp (reference numerics)
NPROC="${NPROC:-1}"                                         # processes (CPU cores or GPUs) for training
SAVE_EVERY="${SAVE_EVERY:-50}"                              # a resumable state every N steps (rerun to resume)
RESTART="${RESTART:-0}"                                     # 1: throw away a saved state and start over

flags=(--save-every "$SAVE_EVERY")
[ "$RESTART" = 1 ] && flags+=(--restart)
[ "$USE_SAMPLE_WEIGHTS" = 1 ] || flags+=(--no-sample-weights)
[ "$USE_DOMAIN_LOSS" = 1 ] || flags+=(--no-domain-loss)
DISTRIBUTED=1 run_metakd train_teacher --task "$TASK" --data-dir "$DATA_DIR" --model "$TEACHER_MODEL" --out "$TEACHER_DIR" \
  --genre "$TEACHER_GENRE" \
  --epochs "$TEACHER_EPOCHS" --lr "$TEACHER_LR" --batch-size "$BATCH_SIZE" --max-seq-length "$MAX_SEQ_LENGTH" \
  --domain-loss-weight "$DOMAIN_LOSS_WEIGHT" --eval-every "$EVAL_EVERY" --log-every "$LOG_EVERY" --seed "$SEED" \
  --device "$DEVICE" ${CPU_KERNELS:+--cpu-kernels "$CPU_KERNELS"} --compat "$COMPAT" "${flags[@]}"
