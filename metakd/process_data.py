"""Stage 2 of the pipeline: prototype scores for the training set, standard files for dev/test.

    python -m metakd.process_data --data-dir data/SENTI --teacher-model models/bert-base-uncased

reads ``train.tsv``, ``dev.tsv``, ``test.tsv`` and writes ``train_with_weights.tsv`` (the
prototype score of every training example in ``weight``), ``dev_standard.tsv`` and
``test_standard.tsv`` (weight 0), all in the standard schema, plus ``prototypes.json``
(per-domain score statistics and how they were made).

Prototypes (``--prototypes``): ``domain`` (the default, as EasyNLP and the original scripts)
averages each domain's examples with all labels pooled; ``class`` averages each domain's
examples of one label, the paper's class prototypes (metakd.prototypes). For sentence pairs
(``TASK=mnli``, or a ``tsv`` second text) the embedding averages the tokens of both sentences and
both [SEP]s (``[CLS] a [SEP] b [SEP]``, [CLS] left out).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from metakd import cli
from metakd.infra.entry import cli_main
from metakd.infra.errors import UserError
from metakd.infra.fileio import atomic_files, atomic_open, write_json


def build_parser():
    p = cli.parser("python -m metakd.process_data", __doc__)
    p.add_argument("--data-dir", type=Path, default=Path("data/SENTI"), help="folder with train.tsv, dev.tsv, test.tsv")
    p.add_argument("--teacher-model", type=Path, required=True,
                   help="pretrained BERT folder whose mean token embeddings define the prototypes")
    p.add_argument("--save-embeddings", action="store_true", help="also write train.embeddings.npy [N,H]")
    p.add_argument("--prototypes", default="domain", choices=["domain", "class"],
                   help="domain: one centroid per domain, labels pooled (EasyNLP's); class: one per domain and label "
                        "(the paper's class prototypes)")
    cli.add_common(p, batch_size=64)
    return p


@cli_main
def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    cli.check_batch_size(a)
    from metakd.checkpoint import check_model_folder, load_backbone
    from metakd.data.tsv import write_standard_tsv
    from metakd.features import encode
    from metakd.prototypes import class_prototype_scores, mean_embeddings, prototype_scores
    from metakd.runtime import rank, resolve_device, seed_everything

    proc = cli.processor(a.task, a.data_dir)
    paths = {s: a.data_dir / f"{s}.tsv" for s in ("train", "dev", "test")}
    for p in paths.values():
        if not p.exists():
            raise UserError("file not found; run 1_get_data.sh first (it writes train/dev/test.tsv)", p)
    check_model_folder(a.teacher_model)
    device = resolve_device(a.device)
    seed_everything(a.seed)
    standard = {s: proc.standard_split(p, s) for s, p in paths.items()}
    backbone, _ = load_backbone(a.teacher_model)
    cli.check_seq_length(a.max_seq_length, backbone.config)
    backbone = backbone.to(device)
    tokenizer = cli.load_tokenizer(a.teacher_model)

    train = standard["train"]
    # The reference embeds single sentences ([CLS] text [SEP]) in both numerics; pairs are
    # embedded as the models read them, [CLS] a [SEP] b [SEP].
    enc = encode(train, tokenizer, proc.labels, proc.domains, a.max_seq_length, source=str(paths["train"]))
    t0 = time.perf_counter()
    emb = mean_embeddings(backbone, enc, a.batch_size, device, compat=a.compat, progress=not a.no_progress)
    seconds = time.perf_counter() - t0
    if a.prototypes == "class":
        scores = class_prototype_scores(emb, enc.domains, enc.labels)
    else:
        scores = prototype_scores(emb, enc.domains, len(proc.domains))
    if rank() != 0:
        return 0  # under the launcher every process has all embeddings; the first one writes
    train["weight"] = scores

    rows = []
    for d in proc.domains:
        s = scores[train["domain"].to_numpy() == d]
        if len(s):
            rows.append({"domain": d, "n": len(s), "mean": f"{s.mean():.4f}", "min": f"{s.min():.4f}", "max": f"{s.max():.4f}"})
    print(f"prototype scores ({len(train)} training examples, {seconds:.1f} s, {len(train) / seconds:.1f} samples/s):")
    cli.print_table(rows, ["domain", "n", "mean", "min", "max"])
    with atomic_files(a.data_dir) as stage:  # the standard files and prototypes.json: all new or all old
        write_standard_tsv(train, stage / cli.TRAIN_FILE)
        write_standard_tsv(standard["dev"], stage / cli.DEV_FILE)
        write_standard_tsv(standard["test"], stage / cli.TEST_FILE)
        if a.save_embeddings:
            with atomic_open(stage / "train.embeddings.npy", "wb") as f:
                np.save(f, emb)
        write_json(stage / "prototypes.json", {
            "teacher_model": str(a.teacher_model), "compat": a.compat, "max_seq_length": a.max_seq_length,
            "prototypes": a.prototypes,
            "per_domain": rows, "embedding_seconds": round(seconds, 3),
            "files": [cli.TRAIN_FILE, cli.DEV_FILE, cli.TEST_FILE]})
    print(f"wrote {a.data_dir / cli.TRAIN_FILE}, {cli.DEV_FILE}, {cli.TEST_FILE}")
    return 0


if __name__ == "__main__":
    main()
