"""Stage 6 of the pipeline: the student of a genre (and the meta-teacher) on that genre's test split.

    python -m metakd.evaluate --genre books --out-root out
    python -m metakd.evaluate --genre all --out-root out      # every genre with a student

Prints a table (accuracy, macro-F1) and writes ``<out-root>/eval_<split>.json`` plus
``eval_<split>.json`` inside each evaluated student's folder.
"""
from __future__ import annotations

import time
from pathlib import Path

from metakd import cli
from metakd.infra.entry import cli_main
from metakd.infra.errors import UserError

STUDENT_SUBDIR = "meta_student_finetune"


def build_parser():
    p = cli.parser("python -m metakd.evaluate", __doc__)
    p.add_argument("--genre", default="books", help="a genre, or 'all' for every genre that has a student")
    p.add_argument("--data-dir", type=Path, default=Path("data/SENTI"))
    p.add_argument("--out-root", type=Path, default=Path("out"),
                   help=f"where 3-5 wrote: <out-root>/meta_teacher and <out-root>/<genre>/{STUDENT_SUBDIR}")
    p.add_argument("--student", type=Path, default=None, help="evaluate this student folder instead (one genre)")
    p.add_argument("--teacher", type=Path, default=None, help="meta-teacher folder (default <out-root>/meta_teacher)")
    p.add_argument("--no-teacher", action="store_true", help="evaluate the students only")
    p.add_argument("--split", default="test", choices=["test", "dev"])
    p.add_argument("--json", type=Path, default=None,
                   help="with --student: also write its metrics and every review's predicted and true label "
                        "(for paired comparisons) to this file")
    p.set_defaults(batch_size=64)
    cli.add_common(p, batch_size=64)
    return p


@cli_main
def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    cli.check_batch_size(a)
    from metakd.checkpoint import check_model_folder, read_metakd_info
    from metakd.evaluation import classification_metrics, predict_logits
    from metakd.infra.fileio import check_writable, write_json_together
    from metakd.meta_model import load_meta_checkpoint
    from metakd.runtime import resolve_device

    proc = cli.processor(a.task, a.data_dir)
    split_file = a.data_dir / (cli.TEST_FILE if a.split == "test" else cli.DEV_FILE)
    if a.genre == "all":
        if a.student is not None:
            raise UserError("--student evaluates one model: give --genre too, not 'all'")
        genres = [g for g in proc.domains if (a.out_root / g / STUDENT_SUBDIR).exists()]
        if not genres:
            raise UserError(f"no students found (expected <out-root>/<genre>/{STUDENT_SUBDIR}); run 4 and 5 first", a.out_root)
    else:
        cli.check_genre(a.genre, proc)
        genres = [a.genre]
    if a.json is not None and a.student is None:
        raise UserError("--json writes one model's predictions: give --student too")
    device = resolve_device(a.device)
    teacher_dir = a.teacher or a.out_root / "meta_teacher"
    models = []  # (genre, role, folder)
    for g in genres:
        folder = a.student or a.out_root / g / STUDENT_SUBDIR
        models.append((g, "student", folder))
        if not a.no_teacher:
            models.append((g, "meta-teacher", teacher_dir))
    for _, role, folder in models:  # every folder and every genre's rows checked before any work
        if not Path(folder).exists():
            step = "5_student_second.sh" if role == "student" else "3_train_teacher.sh"
            raise UserError(f"no {role} here; run {step} first (or point "
                            f"{'STUDENT_DIR' if role == 'student' else 'TEACHER_DIR'} at one)", folder)
        check_model_folder(folder, metakd=True)
        labels = read_metakd_info(folder).get("labels")
        if labels is not None and list(labels) != list(proc.labels):
            # Label ids index the classifier's outputs: other names or another order would score nonsense.
            raise UserError(f"the model was trained for labels {', '.join(map(str, labels))}, but this data's are "
                            f"{', '.join(proc.labels)}; evaluate it on the data (DATA_DIR, TASK) it was trained on",
                            folder)
    for g in genres:
        cli.read_standard(split_file, proc, genre=g)
    out = a.out_root / f"eval_{a.split}.json"
    reports = {}  # path -> content, written together at the end: all new or all old
    for path in [out, a.json] + [Path(folder) / f"eval_{a.split}.json" for _, role, folder in models if role == "student"]:
        if path is not None:
            check_writable(path)  # before the models run, not after

    rows, results = [], {}
    loaded = {}
    for genre, role, folder in models:
        if folder not in loaded:
            model, info = load_meta_checkpoint(folder, verbose=False)
            loaded[folder] = (model.to(device), info, cli.load_tokenizer(folder))
        model, info, tok = loaded[folder]
        compat = info.get("compat", "none")
        df = cli.read_standard(split_file, proc, genre=genre)
        enc = cli.encode_split(df, tok, proc, int(info.get("max_seq_length", a.max_seq_length)), compat, False, split_file)
        t0 = time.perf_counter()
        logits = predict_logits(model, enc, a.batch_size, device, compat=compat, progress=not a.no_progress,
                                desc=f"{genre} {role}")
        m = classification_metrics(enc.labels, logits, proc.labels)
        secs = time.perf_counter() - t0
        entry = {"genre": genre, "model": role, "folder": str(folder), "split": a.split, **m,
                 "samples_per_second": round(len(enc) / max(secs, 1e-9), 1)}
        results.setdefault(genre, {})[role] = entry
        rows.append({"genre": genre, "model": role, "n": m["n"], "accuracy": f"{m['accuracy']:.4f}",
                     "macro_f1": f"{m['macro_f1']:.4f}", "folder": str(folder)})
        if role == "student":
            reports[Path(folder) / f"eval_{a.split}.json"] = entry
            if a.json is not None:
                reports[a.json] = {**entry, "labels": [int(v) for v in enc.labels],
                                   "predictions": [int(v) for v in logits.argmax(axis=1)]}
    cli.print_table(rows, ["genre", "model", "n", "accuracy", "macro_f1", "folder"])
    reports[out] = {"split": a.split, "data": str(split_file), "results": results}
    write_json_together(reports)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    main()
