"""Stages 4 and 5 of the pipeline: distil the meta-teacher into a student for one genre.

    python -m metakd.distill --stage first  --genre books --teacher out/meta_teacher \
        --student models/TinyBERT_General_4L_312D --out out/books/meta_student_pretrain
    python -m metakd.distill --stage second --genre books --teacher out/meta_teacher \
        --student out/books/meta_student_pretrain --out out/books/meta_student_finetune

Stage ``first`` (intermediate layers): attention, hidden-state and domain-representation MSE,
each example weighted by (1 + prototype score) x the teacher's domain expertise
1/(1+exp((1-p_y)^2)); the final model is kept. Stage ``second`` (prediction layer): soft
cross-entropy against the teacher's logits at temperature T; the best model by the genre's
dev accuracy is kept. The teacher is frozen (eval mode, no grad); ``--compat easynlp`` gives
EasyNLP's numerics instead (docs/design.md section 3).

Baselines and ablations: ``--plain-kd`` is TinyBERT-style two-stage KD (every weight 1, no
domain term; ``--no-prototype-weights``, ``--no-expertise-weights`` and ``--no-domain-term``
switch one ingredient each), from any teacher; stage ``second`` with ``--student`` a pretrained
BERT folder skips stage 1.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from metakd import cli
from metakd.infra.entry import cli_main
from metakd.infra.errors import UserError


def build_parser():
    p = cli.parser("python -m metakd.distill", __doc__)
    p.add_argument("--stage", required=True, choices=["first", "second"])
    p.add_argument("--genre", required=True, help="target domain (e.g. books)")
    p.add_argument("--data-dir", type=Path, default=Path("data/SENTI"))
    p.add_argument("--teacher", type=Path, required=True, help="meta-teacher checkpoint (3_train_teacher.sh)")
    p.add_argument("--student", type=Path, required=True,
                   help="stage first: a pretrained BERT folder; stage second: stage first's output")
    p.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")
    p.add_argument("--temperature", "-T", type=float, default=2.0, help="stage second: softmax temperature")
    p.add_argument("--domain-loss-weight", type=float, default=0.5, help="stage first: lambda of the domain term")
    g = p.add_argument_group("stage first: Meta-KD's ingredients (all on by default)")
    g.add_argument("--no-prototype-weights", dest="prototype_weights", action="store_false",
                   help="weight 1 instead of (1 + prototype score)")
    g.add_argument("--no-expertise-weights", dest="expertise_weights", action="store_false",
                   help="weight 1 instead of the teacher's domain expertise 1/(1+exp((1-p_y)^2))")
    g.add_argument("--no-domain-term", dest="domain_term", action="store_false",
                   help="drop the domain-representation MSE")
    g.add_argument("--no-attention-term", dest="attention_term", action="store_false",
                   help="drop the attention-score MSE (hidden states, and the domain term, only)")
    g.add_argument("--plain-kd", action="store_true",
                   help="all three off: plain two-stage KD (TinyBERT-KD) with every example weighted 1")
    g2 = p.add_argument_group("stage second: the KD recipe (the paper's: soft labels only, no T^2)")
    g2.add_argument("--alpha", type=float, default=0.0,
                    help="weight of the hard-label cross-entropy: alpha * CE(y) + (1 - alpha) * soft term")
    g2.add_argument("--t-squared", action="store_true", help="multiply the soft term by T^2 (Hinton et al.)")
    p.add_argument("--teacher-cache-gb", type=float, default=4.0,
                   help="stage first: memory budget (GiB) for the frozen teacher's targets, computed once and reused "
                        "every epoch; larger caches go to a temporary file beside --out, or are recomputed each step "
                        "when the disk is short too; 0: no cache")
    cli.add_common(p)
    cli.add_training(p, epochs=10)
    return p


TEACHER_LOGITS = "teacher_logits.npz"


def teacher_logits_key(teacher_info: dict, train, max_seq_length: int) -> dict:
    """What the frozen teacher's logits on the training rows depend on: its weights, the encoded rows."""
    from metakd.trainer import data_fingerprint

    return {"teacher_weights_sha256": teacher_info.get("weights_sha256"), "data": data_fingerprint(train),
            "max_seq_length": max_seq_length}


def save_teacher_logits(folder: Path, logits: np.ndarray, key: dict) -> None:
    """Stage first already has the teacher's logits (from its cache); stage second reuses them."""
    import json

    from metakd.infra.fileio import atomic_open

    with atomic_open(folder / TEACHER_LOGITS, "wb") as f:
        np.savez(f, logits=logits, key=np.array(json.dumps(key, sort_keys=True)))


def load_teacher_logits(folder: Path, key: dict, n: int) -> "np.ndarray | None":
    """The logits stage first saved, if they are for this teacher and these rows; else None."""
    import json

    path = folder / TEACHER_LOGITS
    if key.get("teacher_weights_sha256") is None or not path.is_file():
        return None
    try:
        with np.load(path) as z:
            if json.loads(str(z["key"])) != key or z["logits"].shape[0] != n:
                return None
            return z["logits"].astype(np.float32)
    except (OSError, ValueError, KeyError):
        return None  # unreadable: compute them again


def check_distillable(teacher_cfg, student_cfg, teacher_tok, student_tok, teacher_dir: Path, student_dir: Path) -> None:
    """Everything that would make the pair fail mid-run, checked before any work starts."""
    from metakd.losses import layer_map

    try:
        layer_map(teacher_cfg.num_hidden_layers, student_cfg.num_hidden_layers)
    except UserError as e:
        raise UserError(f"{e} (teacher {teacher_dir})", student_dir) from None
    if teacher_cfg.num_attention_heads != student_cfg.num_attention_heads:
        raise UserError(f"teacher has {teacher_cfg.num_attention_heads} attention heads and the student "
                        f"{student_cfg.num_attention_heads}: attention maps are compared head by head, so they must be "
                        "equal; choose another student", student_dir)
    if teacher_tok.vocab != student_tok.vocab:
        raise UserError(f"teacher ({teacher_dir}) and student use different vocabularies, but both read the same token "
                        "ids; use a student with the teacher's vocab.txt", student_dir)


def check_options(a) -> None:
    """Every numeric option of this stage in range, before any work starts."""
    if not 0.01 <= a.temperature <= 1000:  # beyond, float32 logits / T is 0 (nothing learnt) or inf (nan)
        raise UserError(f"--temperature must be in [0.01, 1000], got {a.temperature}")
    if not 0.0 <= a.alpha <= 1.0:
        raise UserError(f"--alpha must be in [0, 1], got {a.alpha}")
    if not 0 <= a.domain_loss_weight < math.inf:
        raise UserError(f"--domain-loss-weight must be >= 0 and finite, got {a.domain_loss_weight}")
    if not 0 <= a.teacher_cache_gb <= 1e6:
        raise UserError(f"--teacher-cache-gb must be in [0, 1e6], got {a.teacher_cache_gb}")


def load_models(a, proc, teacher_cfg, student_layout: str, device):
    """(frozen teacher, student, EasyNLP's teacher projection or None), on ``device``. The student
    is the pretrained folder with fresh heads (stage first, or stage second without stage 1), or
    stage first's output."""
    from metakd.meta_model import build_from_pretrained, init_framework_default, load_meta_checkpoint
    from metakd.runtime import flow

    teacher, _ = load_meta_checkpoint(a.teacher, verbose=False)
    fit_size = teacher_cfg.hidden_size
    if a.stage == "first" or student_layout != "metakd":
        if a.stage == "second":
            print(f"stage second from the pretrained {a.student}: no stage 1")
        student, _ = build_from_pretrained(a.student, len(proc.labels), len(proc.domains), fit_size=fit_size,
                                           head_init="framework" if a.compat == "easynlp" else "bert")
    else:
        student, info = load_meta_checkpoint(a.student, fit_size="keep", verbose=False)
        if info.get("role") != "student_first":
            print(f"note: {a.student} is not a stage-first output (role {info.get('role')!r}); continuing")
    teacher, student = teacher.to(device), student.to(device)
    for prm in teacher.parameters():
        prm.requires_grad = False
    # The reference leaves the teacher in training mode (dropout on); by default it is frozen.
    teacher.train(a.compat == "easynlp")
    teacher_fit = None
    if a.compat == "easynlp" and a.stage == "first":
        # EasyNLP loads the teacher as a student class, so its domain representation passes through
        # a freshly random fit_dense (seeded by the run's seed).
        teacher_fit = flow.nn.Linear(teacher_cfg.hidden_size, fit_size)
        init_framework_default(teacher_fit)
        teacher_fit = teacher_fit.to(device)
        for prm in teacher_fit.parameters():
            prm.requires_grad = False
    return teacher, student, teacher_fit


def fingerprint(a) -> dict:
    """What a saved training state must match to be resumed by this run."""
    fp = {"teacher": str(a.teacher), "student": str(a.student), "data": str(a.data_dir), "genre": a.genre,
          "compat": a.compat, "T": a.temperature, "len": a.max_seq_length, "lambda": a.domain_loss_weight}
    ingredients = [a.prototype_weights, a.expertise_weights, a.domain_term, a.attention_term]
    if a.stage == "first" and not all(ingredients):
        fp["ingredients"] = ingredients
    if a.stage == "second" and (a.alpha or a.t_squared):
        fp["recipe"] = [a.alpha, a.t_squared]
    return fp


def stage2_objective(a, teacher, student, device, train, logits_key: dict):
    """Stage 2's objective; by default the frozen teacher's logits are computed once for all
    epochs, or taken from the ones stage first saved for its cache (same teacher weights, same rows)."""
    from metakd.objectives import Stage2Objective

    objective = Stage2Objective(teacher, student, device, a.temperature, a.alpha, a.t_squared, a.compat)
    if a.compat == "easynlp":  # EasyNLP's teacher stays in training mode: its logits change every step
        return objective
    cached = load_teacher_logits(a.student, logits_key, len(train))
    if cached is not None:
        objective.teacher_logits = cached
        print(f"teacher logits from stage first ({a.student / TEACHER_LOGITS}): {len(train)} examples")
    else:
        _, seconds = objective.precompute_teacher_logits(train, 64, progress=not a.no_progress)
        print(f"teacher logits computed once for all epochs: {len(train)} examples, {seconds:.1f} s")
    return objective


def build_stage1_cache(a, objective, train):
    """Stage 1's frozen teacher gives the same targets every epoch: compute them once
    (docs/design.md section 8.2); None when they fit neither memory nor disk, or in compat."""
    if a.compat == "easynlp" or a.teacher_cache_gb <= 0:
        return None
    from metakd.teacher_cache import describe

    t0 = time.perf_counter()
    built = objective.build_cache(train, int(a.teacher_cache_gb * 2**30), a.out.parent / f".{a.out.name}.teacher-cache",
                                  progress=not a.no_progress)
    if built is None:
        print(f"note: the teacher's targets do not fit --teacher-cache-gb {a.teacher_cache_gb:g} nor the disk "
              "beside --out; the teacher runs every step")
    else:
        print(f"teacher targets cached once for all epochs: {describe(built.layout.nbytes)} in {built.where}, "
              f"{time.perf_counter() - t0:.1f} s")
    return built


@cli_main
def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    if a.plain_kd:
        a.prototype_weights = a.expertise_weights = a.domain_term = False
    from metakd.checkpoint import check_model_folder, read_config, read_metakd_info, save_checkpoint
    from metakd.evaluation import evaluate
    from metakd.objectives import Stage1Objective
    from metakd.runtime import resolve_device, seed_everything
    from metakd.trainer import Trainer, claim_output

    proc = cli.processor(a.task, a.data_dir)
    cli.check_genre(a.genre, proc)
    targs = cli.train_args(a)
    targs.validate()
    check_options(a)
    compat = a.compat
    device = resolve_device(a.device)

    # Earlier steps first: a missing folder names the script that makes it.
    if not a.teacher.exists():
        raise UserError("no teacher here; run 3_train_teacher.sh first (or point TEACHER_DIR at a trained teacher)",
                        a.teacher)
    if a.stage == "second" and not a.student.exists():
        raise UserError("no stage-1 student here; run 4_student_first.sh first (or SKIP_STAGE1=1 to start from "
                        "STUDENT_MODEL)", a.student)
    # Shapes first: a pair that cannot be distilled fails before anything is loaded or trained.
    check_model_folder(a.teacher, metakd=True)
    student_layout = check_model_folder(a.student)
    teacher_info = read_metakd_info(a.teacher)
    teacher_cfg = read_config(a.teacher)
    student_cfg = read_config(a.student)
    teacher_tok, student_tok = cli.load_tokenizer(a.teacher), cli.load_tokenizer(a.student)
    check_distillable(teacher_cfg, student_cfg, teacher_tok, student_tok, a.teacher, a.student)
    cli.check_seq_length(a.max_seq_length, teacher_cfg, student_cfg)
    if list(teacher_info.get("labels", [])) != list(proc.labels) or list(teacher_info.get("domains", [])) != list(proc.domains):
        raise UserError(f"the teacher was trained for labels {teacher_info.get('labels')} and domains "
                        f"{teacher_info.get('domains')}, not this task's; train it on this data", a.teacher)

    train_df = cli.read_standard(a.data_dir / cli.TRAIN_FILE, proc, genre=a.genre,
                                 min_weight=cli.PROTOTYPE_SCORE_MIN if a.stage == "first" and a.prototype_weights else None)
    dev_df = cli.read_standard(a.data_dir / cli.DEV_FILE, proc, genre=a.genre)
    claim_output(a.out, inputs=[a.teacher, a.student, a.data_dir])  # a second run into the same folder stops here, before any work
    seed_everything(a.seed)
    teacher, student, teacher_fit = load_models(a, proc, teacher_cfg, student_layout, device)

    train = cli.encode_split(train_df, student_tok, proc, a.max_seq_length, compat, True, a.data_dir / cli.TRAIN_FILE)
    dev = cli.encode_split(dev_df, student_tok, proc, a.max_seq_length, compat, False, a.data_dir / cli.DEV_FILE)
    print(f"stage {a.stage} for {a.genre}: {len(train)} training / {len(dev)} dev examples; teacher "
          f"{teacher_cfg.num_hidden_layers}L/{teacher_cfg.hidden_size}H -> student {student_cfg.num_hidden_layers}L/"
          f"{student_cfg.hidden_size}H; device {device}; compat {compat}")
    logits_key = teacher_logits_key(teacher_info, train, a.max_seq_length)
    if a.stage == "first":
        objective = Stage1Objective(teacher, student, device, a.domain_loss_weight, compat, a.prototype_weights,
                                    a.expertise_weights, a.domain_term, a.attention_term, teacher_fit)
        evaluate_fn = None
    else:
        objective = stage2_objective(a, teacher, student, device, train, logits_key)
        evaluate_fn = lambda: evaluate(student, dev, proc.labels, 64, device, compat=compat)

    role = "student_first" if a.stage == "first" else "student_second"
    stage1_logits = None

    def save(folder, results):
        info = student.metakd_info(role, proc.labels, proc.domains, a.task)
        info.update(genre=a.genre, compat=compat, max_seq_length=a.max_seq_length, teacher=str(a.teacher),
                    source_model=str(a.student), temperature=a.temperature if a.stage == "second" else None)
        if a.stage == "first":
            info.update(prototype_weights=a.prototype_weights, expertise_weights=a.expertise_weights,
                        domain_term=a.domain_term, attention_term=a.attention_term)
        else:
            info.update(alpha=a.alpha, t_squared=a.t_squared)
        save_checkpoint(folder, student, student.config, info, vocab_from=a.student)
        if stage1_logits is not None:
            save_teacher_logits(folder, stage1_logits, logits_key)

    trainer = Trainer(student, train, objective, targs, device, a.out, save, evaluate=evaluate_fn, trim=compat != "easynlp",
                      progress=not a.no_progress, rng_modules=[teacher],
                      stage=f"{a.genre}/{a.stage}",
                      fingerprint=fingerprint(a))
    cache = None
    if a.stage == "first":
        trainer.check_saved_state()  # a state this run would refuse: now, not after building the cache
        cache = build_stage1_cache(a, objective, train)
        stage1_logits = cache.logits if cache is not None else None  # close() keeps them
    try:
        results = trainer.fit()
    finally:
        if cache is not None:
            cache.close()
    if trainer.rank != 0:
        return 0  # the first process reports
    if a.stage == "second":
        print(f"stage second for {a.genre}: best dev accuracy {results['dev'].get('accuracy', float('nan')):.4f} at step "
              f"{results['best_step']}; saved {a.out}")
    else:
        print(f"stage first for {a.genre}: {results['steps']} steps; saved {a.out}")
    return 0


if __name__ == "__main__":
    main()
