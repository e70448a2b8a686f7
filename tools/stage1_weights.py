"""How much Meta-KD's stage-1 example weights vary, per genre, from a comparison run's files.

Stage 1 weighs example i by ``w_i = (1 + prototype_i) * expertise_i``, ``expertise_i = 1 / (1 +
exp((1 - p_i)^2))``, ``p_i`` the frozen teacher's probability of the true label (metakd/losses.py).
Adam(W)'s update is unchanged when the loss is multiplied by a constant (up to its epsilon), so the
weights' mean does not matter to training, only their spread around it: the table gives the mean
and the coefficient of variation of ``w``, and the 5th and 95th percentiles of ``w / mean(w)``.
Written out in numpy from the saved files (not through metakd's losses), as a check on them.

    python tools/stage1_weights.py out/compare_real --seed 42

Reads RUN_DIR/data/train_with_weights.tsv (the prototype scores), RUN_DIR/seedS/meta_teacher/config.json
(the label order) and RUN_DIR/seedS/GENRE/stage1_meta_metakd/teacher_logits.npz (the teacher's logits on
GENRE's training rows, in the file's order, saved by stage 1).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from metakd.data.tsv import read_standard_tsv  # noqa: E402  (the reader stage 1 uses: same rows, same order)
from metakd.infra.errors import UserError  # noqa: E402


def weights(prototype: np.ndarray, logits: np.ndarray, label_index: np.ndarray) -> Dict[str, np.ndarray]:
    """[N], [N, K], [N] -> the teacher's p_y, the expertise and the weight, each [N]."""
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    p_y = p[np.arange(len(p)), label_index]
    expertise = 1.0 / (1.0 + np.exp((1.0 - p_y) ** 2))
    return {"p_y": p_y, "expertise": expertise, "w": (1.0 + prototype) * expertise}


def genre_rows(run: Path, seed: int) -> List[dict]:
    tsv = run / "data" / "train_with_weights.tsv"
    config = run / f"seed{seed}" / "meta_teacher" / "config.json"
    for f, fix in ((tsv, "run 2_process_data.sh (compare.sh does) into RUN_DIR/data"),
                   (config, f"train seed {seed}'s meta-teacher first (compare.sh, method teacher_meta)")):
        if not f.is_file():
            raise ValueError(f"{f}: not found; {fix}")
    info = json.loads(config.read_text()).get("metakd", {})
    labels = info.get("labels")
    if not labels:
        raise ValueError(f"{config}: no labels list; give a meta-teacher folder that metakd wrote")
    rows = read_standard_tsv(tsv, labels=labels)  # a label the teacher lacks: a UserError naming the line
    out = []
    for genre in dict.fromkeys([*info.get("domains", []), *rows["domain"]]):
        npz = run / f"seed{seed}" / genre / "stage1_meta_metakd" / "teacher_logits.npz"
        if not npz.is_file():
            continue  # that genre's Meta-KD stage 1 has not run
        mine = rows[rows["domain"] == genre]
        with np.load(npz) as z:
            logits = z["logits"].astype(np.float64)
        if len(logits) != len(mine):
            raise ValueError(f"{npz}: {len(logits)} rows for {len(mine)} training rows of {genre}; "
                             "the run dir's data changed after stage 1: rerun its stage 1")
        y = mine["label"].map(labels.index).to_numpy()
        v = weights(mine["weight"].to_numpy(), logits, y)
        w = v["w"]
        out.append({"genre": genre, "n": len(mine), "teacher_accuracy": float((logits.argmax(1) == y).mean()),
                    "p_y": float(v["p_y"].mean()), "expertise": float(v["expertise"].mean()),
                    "w_mean": float(w.mean()), "w_cv": float(w.std() / w.mean()),
                    "p5": float(np.percentile(w / w.mean(), 5)), "p95": float(np.percentile(w / w.mean(), 95))})
    if not out:
        raise ValueError(f"{run / f'seed{seed}'}: no genre has stage1_meta_metakd/teacher_logits.npz; "
                         "run Meta-KD's stage 1 (method metakd) for this seed first")
    return out


def table(rows: List[dict]) -> str:
    lines = ["| genre | rows | teacher accuracy | mean p_y | mean expertise | mean w | cv of w | w / mean, 5% | 95% |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['genre']} | {r['n']} | {100 * r['teacher_accuracy']:.1f}% | {r['p_y']:.3f} | "
                     f"{r['expertise']:.3f} | {r['w_mean']:.3f} | {r['w_cv']:.3f} | {r['p5']:.2f} | {r['p95']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, help="a comparison's RUN_DIR (compare.sh)")
    p.add_argument("--seed", type=int, default=42)
    a = p.parse_args(argv)
    try:
        print(table(genre_rows(a.run_dir, a.seed)))
    except (ValueError, UserError) as e:
        print(f"error: tools/stage1_weights.py: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
