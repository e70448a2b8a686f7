"""Stage 3 of the pipeline: the meta-teacher, trained on all domains at once.

    python -m metakd.train_teacher --data-dir data/SENTI --model models/bert-base-uncased --out out/meta_teacher

The same fine-tuning gives the paper's baselines (``role`` in the checkpoint says which):

    --no-sample-weights --no-domain-loss                  BERT-mix: all genres mixed, plain CE
    --genre books --no-sample-weights --no-domain-loss    BERT-s: one genre's rows only (train and dev)
    the same with --model <student BERT>                  the student fine-tuned alone, no teacher

Loss per example: ``w * (CE(logits, y) + lambda * CE(domain_logits, shuffled domain))`` with
``w`` the prototype score (``--no-sample-weights`` for w = 1) and the domain-corruption term
switchable (``--no-domain-loss``), averaged over the batch. AdamW with linear warm-up/decay,
gradient clipping, dev accuracy every ``--eval-every`` steps; the best checkpoint is kept in
``--out`` with ``results.json``.
"""
from __future__ import annotations

from pathlib import Path


from metakd import cli
from metakd.infra.entry import cli_main
from metakd.infra.errors import UserError


def build_parser():
    p = cli.parser("python -m metakd.train_teacher", __doc__)
    p.add_argument("--data-dir", type=Path, default=Path("data/SENTI"),
                   help=f"folder with {cli.TRAIN_FILE} and {cli.DEV_FILE} (from 2_process_data.sh)")
    p.add_argument("--model", type=Path, required=True, help="pretrained BERT folder to start from")
    p.add_argument("--out", type=Path, default=Path("out/meta_teacher"), help="checkpoint folder to write")
    p.add_argument("--genre", default="all",
                   help="'all', or train (and select on dev) on this genre's rows only: BERT-s, or the student alone")
    p.add_argument("--no-sample-weights", dest="use_sample_weights", action="store_false",
                   help="do not weight examples by their prototype score")
    p.add_argument("--no-domain-loss", dest="use_domain_loss", action="store_false",
                   help="drop the domain-corruption loss")
    p.add_argument("--domain-loss-weight", type=float, default=0.5, help="lambda of the domain-corruption loss")
    cli.add_common(p)
    cli.add_training(p, epochs=1)
    return p


def fine_tune_role(genre, sample_weights: bool, domain_loss: bool) -> str:
    """What a fine-tuning run is called in its checkpoint: the meta-teacher only with every ingredient."""
    if genre is None and sample_weights and domain_loss:
        return "meta_teacher"
    return "fine_tuned"


@cli_main
def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    from metakd.checkpoint import check_model_folder, save_checkpoint
    from metakd.evaluation import evaluate
    from metakd.meta_model import build_from_pretrained
    from metakd.objectives import TeacherObjective
    from metakd.runtime import resolve_device, seed_everything
    from metakd.trainer import Trainer, claim_output

    proc = cli.processor(a.task, a.data_dir)
    targs = cli.train_args(a)
    targs.validate()
    if not 0 <= a.domain_loss_weight < float("inf"):
        raise UserError(f"--domain-loss-weight must be >= 0 and finite, got {a.domain_loss_weight}")
    device = resolve_device(a.device)
    check_model_folder(a.model)
    genre = None if a.genre == "all" else a.genre
    if genre is not None:
        cli.check_genre(genre, proc)
    train_df = cli.read_standard(a.data_dir / cli.TRAIN_FILE, proc, genre=genre,
                                 min_weight=cli.PROTOTYPE_SCORE_MIN if a.use_sample_weights else None)
    dev_df = cli.read_standard(a.data_dir / cli.DEV_FILE, proc, genre=genre)
    claim_output(a.out, inputs=[a.model, a.data_dir])  # a second run into the same folder stops here, before any work
    seed_everything(a.seed)
    model, _ = build_from_pretrained(a.model, len(proc.labels), len(proc.domains),
                                     head_init="framework" if a.compat == "easynlp" else "bert")
    cli.check_seq_length(a.max_seq_length, model.config)
    model = model.to(device)
    tokenizer = cli.load_tokenizer(a.model)
    train = cli.encode_split(train_df, tokenizer, proc, a.max_seq_length, a.compat, True, a.data_dir / cli.TRAIN_FILE)
    dev = cli.encode_split(dev_df, tokenizer, proc, a.max_seq_length, a.compat, False, a.data_dir / cli.DEV_FILE)
    role = fine_tune_role(genre, a.use_sample_weights, a.use_domain_loss)
    print(f"{role}: {len(train)} training examples ({', '.join(f'{d} {int((train.domains == i).sum())}' for i, d in enumerate(proc.domains))}), "
          f"{len(dev)} dev, device {device}, compat {a.compat}")

    objective = TeacherObjective(model, device, a.seed, a.use_sample_weights, a.use_domain_loss, a.domain_loss_weight,
                                 a.compat)

    def save(folder, results):
        info = model.metakd_info(role, proc.labels, proc.domains, a.task)
        info.update(compat=a.compat, max_seq_length=a.max_seq_length, source_model=str(a.model), genre=a.genre,
                    sample_weights=a.use_sample_weights, domain_loss=a.use_domain_loss)
        save_checkpoint(folder, model, model.config, info, vocab_from=a.model)

    trainer = Trainer(model, train, objective, targs, device, a.out, save, progress=not a.no_progress,
                      evaluate=lambda: evaluate(model, dev, proc.labels, 64, device, compat=a.compat),
                      trim=a.compat != "easynlp", stage=role if genre is None else f"{genre}/{role}",
                      fingerprint={"model": str(a.model), "data": str(a.data_dir), "compat": a.compat,
                                   "sw": a.use_sample_weights, "dl": a.use_domain_loss, "lambda": a.domain_loss_weight,
                                   "len": a.max_seq_length, **({"genre": genre} if genre else {})})
    results = trainer.fit()
    if trainer.rank != 0:
        return 0  # the first process reports
    print(f"{role}: best dev accuracy {results['dev'].get('accuracy', float('nan')):.4f} at step "
          f"{results['best_step']}; saved {a.out}")
    return 0


if __name__ == "__main__":
    main()
