"""The real one-genre run, before this project's speed work and after, script by script.

    python tools/before_after.py --run out/real2 --before-run out/before            # a measured before-run
    python tools/before_after.py --run out/real2 --data data/SENTI --before before.json   # per-step estimate

"After" is a finished run of the six scripts (``tools/real_run.sh``): its wall times
(``stage_times.tsv``), what it did (steps and dev evaluations, from each ``results.json``) and its
test accuracy (``eval_test.json``).

"Before" is the naive path, the pipeline with none of the speed work: OneFlow's own LayerNorm,
every batch padded to the full length, the frozen teacher run at every distillation step, one
process. Either

* ``--before-run``: a whole such run, ``tools/research/before_run.sh`` (its two chains' ``stage_times.tsv``
  and ``results.json``/``eval_test.json`` files), or
* ``--before``: its cost per step, measured by the benchmark at an old commit

      METAKD_NATIVE_LAYERNORM=1 python -m metakd.bench --pair shared --lengths full --infer-batch-size 64 \\
          --stages embed,teacher_step,stage1_step,stage2_step,eval --iters 3 --json before.json

  times the steps the after-run took (each old step has the same shape whatever the data).
  Process start-up and model loading are not counted, which makes it an underestimate.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path
from typing import Dict, Optional

SCRIPTS = ("1_get_data.sh", "2_process_data.sh", "3_train_teacher.sh", "4_student_first.sh", "5_student_second.sh", "6_eval.sh")


def rows_of(path: Path) -> int:
    with open(path, encoding="utf-8") as f:
        return sum(1 for _ in f) - 1  # header


def read_times(path: Path) -> Dict[str, float]:
    with open(path, encoding="utf-8") as f:
        return {r["script"]: float(r["wall_s"]) for r in csv.DictReader(f, delimiter="\t")}


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def estimate(before_json: Path, run: Path, data: Path, genre: str) -> Dict[str, Optional[float]]:
    """The after-run's work at the old path's measured cost per step."""
    stages = read_json(before_json)["stages"]
    ms = {k: v["ms_per_step"] / 1000.0 for k, v in stages.items()}
    infer_bs = stages["eval"]["batch_size"]
    teacher_batch, student_batch = ms["embed"], ms["eval"]  # a teacher / student forward of infer_bs rows
    teacher = read_json(run / "meta_teacher" / "results.json")
    first = read_json(run / genre / "meta_student_pretrain" / "results.json")
    second = read_json(run / genre / "meta_student_finetune" / "results.json")
    genre_test = read_json(run / "eval_test.json")["results"][genre]["student"]["n"]
    return {
        "1_get_data.sh": None,
        "2_process_data.sh": rows_of(data / "train.tsv") / infer_bs * teacher_batch,
        "3_train_teacher.sh": teacher["steps"] * ms["teacher_step"]
        + len(teacher["history"]) * rows_of(data / "dev_standard.tsv") / infer_bs * teacher_batch,
        "4_student_first.sh": first["steps"] * ms["stage1_step"],
        "5_student_second.sh": second["steps"] * ms["stage2_step"] + len(second["history"]) * second["dev"]["n"] / infer_bs * student_batch,
        "6_eval.sh": genre_test / infer_bs * (teacher_batch + student_batch),
    }


def stage2_per_epoch(run: Path, genre: str, wall: float) -> str:
    r = read_json(run / genre / "meta_student_finetune" / "results.json")
    return f"training {r['train_seconds'] / r['epochs']:.1f} s, whole script {wall / r['epochs']:.1f} s"


def accuracy(eval_json: Path, genre: str) -> str:
    res = read_json(eval_json)["results"][genre]
    return ", ".join(f"{m} {v['accuracy']:.4f} (n={v['n']})" for m, v in res.items())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="OUT_DIR of a finished tools/real_run.sh (after)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--before-run", type=Path, help="OUT of a finished tools/research/before_run.sh")
    src.add_argument("--before", type=Path, help="bench --json of the old code path (per-step estimate)")
    p.add_argument("--data", type=Path, help="the after-run's DATA_DIR (with --before)")
    p.add_argument("--genre", default="books")
    a = p.parse_args()

    after = read_times(a.run / "stage_times.tsv")
    if a.before_run is not None:
        chains = [a.before_run / c / "out" for c in ("a", "b")]
        before: Dict[str, Optional[float]] = {}
        for c in chains:
            before.update(read_times(c / "stage_times.tsv"))
        missing = [s for s in SCRIPTS if s not in before]
        if missing:
            p.error(f"{a.before_run} lacks the times of {', '.join(missing)}; is tools/research/before_run.sh finished?")
    else:
        if a.data is None:
            p.error("--before needs --data")
        before = estimate(a.before, a.run, a.data, a.genre)

    print(f"{'script':22s} {'before s':>10s} {'after s':>9s} {'faster':>7s}")
    tb = ta = 0.0
    for script in SCRIPTS:
        b, w = before.get(script), after.get(script, math.nan)
        ta += w
        if b is None:
            print(f"{script:22s} {'(same)':>10s} {w:9.1f}")
            tb += w
            continue
        tb += b
        print(f"{script:22s} {b:10.1f} {w:9.1f} {b / w:6.2f}x")
    print(f"{'total':22s} {tb:10.1f} {ta:9.1f} {tb / ta:6.2f}x")

    print(f"stage 2 per epoch, after: {stage2_per_epoch(a.run, a.genre, after['5_student_second.sh'])}")
    if a.before_run is not None:
        b = a.before_run / "b" / "out"
        print(f"stage 2 per epoch, before: {stage2_per_epoch(b, a.genre, before['5_student_second.sh'])}")
        print(f"test accuracy, before (chain a's teacher, chain b's student): {accuracy(a.before_run / 'a' / 'out' / 'eval_test.json', a.genre)}")
        print(f"test accuracy, before (chain b, the after-run's teacher): {accuracy(b / 'eval_test.json', a.genre)}")
    print(f"test accuracy, after: {accuracy(a.run / 'eval_test.json', a.genre)}")


if __name__ == "__main__":
    main()
