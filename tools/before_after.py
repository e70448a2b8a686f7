"""The real one-genre run, before this project's speed work and after, script by script.

    METAKD_NATIVE_LAYERNORM=1 python -m metakd.bench --pair shared --lengths full --infer-batch-size 64 \
        --stages embed,teacher_step,stage1_step,stage2_step,eval --iters 3 --json before.json   # at the old commit
    python tools/before_after.py --before before.json --run out/real2 --data data/SENTI

"After" is a finished run of the six scripts (``tools/real_run.sh``): its wall times
(``stage_times.tsv``) and what it did (steps and dev evaluations from each ``results.json``).
"Before" is the same work at the old code path's measured cost per step: OneFlow's own LayerNorm,
every batch padded to the full length (the old code never trimmed), the frozen teacher run at
every distillation step, one process. Each old step has the same shape whatever the data, so its
cost is (measured ms per step) x (steps the run took); process start-up and model loading are not
counted for "before", which makes it an underestimate and the ratio conservative.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path


def rows_of(path: Path) -> int:
    with open(path, encoding="utf-8") as f:
        return sum(1 for _ in f) - 1  # header


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", type=Path, required=True, help="bench --json of the old code path")
    p.add_argument("--run", type=Path, required=True, help="OUT_DIR of a finished tools/real_run.sh")
    p.add_argument("--data", type=Path, required=True, help="its DATA_DIR")
    p.add_argument("--genre", default="books")
    a = p.parse_args()

    stages = json.loads(a.before.read_text())["stages"]
    ms = {k: v["ms_per_step"] / 1000.0 for k, v in stages.items()}
    infer_bs = stages["eval"]["batch_size"]
    teacher_batch, student_batch = ms["embed"], ms["eval"]  # a teacher / student forward of infer_bs rows

    teacher = json.loads((a.run / "meta_teacher" / "results.json").read_text())
    first = json.loads((a.run / a.genre / "meta_student_pretrain" / "results.json").read_text())
    second = json.loads((a.run / a.genre / "meta_student_finetune" / "results.json").read_text())
    n_train = rows_of(a.data / "train.tsv")
    n_dev = rows_of(a.data / "dev_standard.tsv")
    genre_dev = second["dev"]["n"]
    genre_test = json.loads((a.run / "eval_test.json").read_text())["results"][a.genre]["student"]["n"]

    before = {
        "1_get_data.sh": None,
        "2_process_data.sh": n_train / infer_bs * teacher_batch,
        "3_train_teacher.sh": teacher["steps"] * ms["teacher_step"] + len(teacher["history"]) * n_dev / infer_bs * teacher_batch,
        "4_student_first.sh": first["steps"] * ms["stage1_step"],
        "5_student_second.sh": second["steps"] * ms["stage2_step"] + len(second["history"]) * genre_dev / infer_bs * student_batch,
        "6_eval.sh": genre_test / infer_bs * (teacher_batch + student_batch),
    }
    with open(a.run / "stage_times.tsv", encoding="utf-8") as f:
        after = {r["script"]: float(r["wall_s"]) for r in csv.DictReader(f, delimiter="\t")}
    print(f"{'script':22s} {'before s':>10s} {'after s':>9s} {'ratio':>6s}")
    tb = ta = 0.0
    for script, b in before.items():
        w = after.get(script, math.nan)
        ta += w
        if b is None:
            print(f"{script:22s} {'(same)':>10s} {w:9.1f}")
            tb += w
            continue
        tb += b
        print(f"{script:22s} {b:10.1f} {w:9.1f} {b / w:6.2f}")
    print(f"{'total':22s} {tb:10.1f} {ta:9.1f} {tb / ta:6.2f}")
    per_epoch_before = second["steps"] / second["epochs"] * ms["stage2_step"]
    print(f"stage 2 training per epoch: before {per_epoch_before:.1f} s; after: see results.json train_seconds / epochs "
          f"({second['train_seconds'] / second['epochs']:.1f} s) plus the one-off teacher-logit pass / epochs")


if __name__ == "__main__":
    main()
