#!/usr/bin/env bash
# 2. Prototype scores: the pretrained teacher's mean token embedding of every training example is
#    compared with its domain's centroid and with the other domains' -> DATA_DIR/train_with_weights.tsv,
#    plus dev_standard.tsv and test_standard.tsv in the same schema.
cd "$(dirname "$0")" && source tools/common.sh

TASK="${TASK:-senti}"                                      # senti | mnli | tsv: the same TASK as 1_get_data.sh
DATA_DIR="${DATA_DIR:-data/${TASK^^}}"                     # from 1_get_data.sh
TEACHER_MODEL="${TEACHER_MODEL:-models/bert-base-uncased}"  # pretrained BERT folder (HF layout)
MAX_SEQ_LENGTH="${MAX_SEQ_LENGTH:-128}"                     # tokens per input
EMBED_BATCH_SIZE="${EMBED_BATCH_SIZE:-64}"                  # inference batch
DEVICE="${DEVICE:-auto}"                                    # auto (CUDA when OneFlow sees a GPU) | cpu | cuda | cuda:N (GPU N)
CPU_KERNELS="${CPU_KERNELS:-}"                              # on CPU: numpy (faster) or oneflow (as on CUDA); empty: numpy, or METAKD_CPU_MATMUL's
COMPAT="${COMPAT:-none}"                                    # none | easynlp (reference numerics)
NPROC="${NPROC:-1}"                                         # processes (CPU cores or GPUs) sharing the embedding batches
# domain: one prototype per domain, labels pooled (EasyNLP's and the original scripts'; the default);
# class: one per domain and label, each example compared with its own class's (the paper's class prototypes).
PROTOTYPES="${PROTOTYPES:-domain}"

DISTRIBUTED=1 run_metakd process_data --task "$TASK" --data-dir "$DATA_DIR" --teacher-model "$TEACHER_MODEL" \
  --max-seq-length "$MAX_SEQ_LENGTH" --batch-size "$EMBED_BATCH_SIZE" --device "$DEVICE" ${CPU_KERNELS:+--cpu-kernels "$CPU_KERNELS"} --compat "$COMPAT" \
  --prototypes "$PROTOTYPES"
