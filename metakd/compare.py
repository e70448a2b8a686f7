"""Does Meta-KD pay off? A grid of methods x genres x seeds through the numbered scripts, resumable.

    bash compare.sh                                   # variables at its top
    python -m metakd.compare --run-dir out/compare --methods metakd,student_alone --seeds 42,43,44

Every cell (method, genre, seed) is built by the numbered scripts with the variables that pick the
method (``TEACHER_DIR``, ``PLAIN_KD``, ``STUDENT_ALONE``, ...); every other variable (epochs, rates,
models, ``NPROC``, ...) comes from the environment, as for the scripts, and is recorded in
``<run-dir>/config.json`` so that a rerun cannot mix settings. What can be shared is built once:
the processed data, each teacher per seed, each stage-1 student per (teacher, ingredients, genre,
seed). A finished artifact (its ``results.json``) or cell (its ``eval/<method>.json``) is never
recomputed: stop the runner at any point and rerun it to continue (an interrupted training
resumes from its last saved state).

Writes into ``<run-dir>``: ``results.csv`` (one row per cell), ``results.md`` (mean +- std over
seeds per genre and on average; the paired difference of ``--reference`` against every other
method on the pooled test reviews with a 95% bootstrap interval), ``accuracy.png``,
``curves.png`` and ``paired.png`` (each distilled student minus a student alone).
``--report-only`` rewrites them from the finished cells without training; ``--publish DIR`` copies the
finished cells' evaluations into ``DIR/cells`` and writes the same report into ``DIR`` from them alone.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

import numpy as np

from metakd import cli
from metakd.infra.entry import cli_main
from metakd.infra.errors import UserError

if TYPE_CHECKING:
    import pandas as pd

ROOT = Path(__file__).resolve().parent.parent  # the numbered scripts

# The environment variables the scripts read that change what a cell computes; recorded per run dir.
SETTINGS = ["SOURCE", "SYNTHETIC_SIZE", "TEACHER_MODEL", "STUDENT_MODEL", "TEACHER_EPOCHS", "TEACHER_LR",
            "STAGE1_EPOCHS", "STAGE1_LR", "STAGE2_EPOCHS", "STAGE2_LR", "TEMPERATURE", "DOMAIN_LOSS_WEIGHT",
            "BATCH_SIZE", "MAX_SEQ_LENGTH", "EVAL_EVERY", "DEVICE", "CPU_KERNELS", "NPROC", "NNODES", "METAKD_CPU_MATMUL",
            "METAKD_NATIVE_LAYERNORM"]
SCRIPT_DEFAULTS = {"TEACHER_MODEL": "models/bert-base-uncased",  # as in the scripts, relative to ROOT
                   "TEACHER_EPOCHS": "1", "STAGE1_EPOCHS": "10", "STAGE2_EPOCHS": "10"}
# Set by the runner per cell: the environment must not set them (they would be silently overridden).
PER_CELL = ["DATA_DIR", "OUT_DIR", "GENRE", "SEED", "COMPAT", "TEACHER_DIR", "TEACHER_GENRE", "USE_SAMPLE_WEIGHTS",
            "USE_DOMAIN_LOSS", "STAGE1_DIR", "STUDENT_DIR", "PLAIN_KD", "USE_PROTOTYPE_WEIGHTS",
            "USE_EXPERTISE_WEIGHTS", "USE_DOMAIN_TERM", "USE_ATTENTION_TERM", "SKIP_STAGE1", "STUDENT_ALONE", "ALPHA",
            "T_SQUARED", "STUDENT_FROM_TEACHER", "RECIPE", "RESTART"]


@dataclass(frozen=True)
class Teacher:
    """How a teacher is fine-tuned (3_train_teacher.sh variables); ``single``: on the cell's genre only."""

    name: str
    sample_weights: bool
    domain_loss: bool
    single: bool = False
    compat: str = "none"


TEACHERS = {t.name: t for t in [
    Teacher("meta", True, True),
    Teacher("mix", False, False),
    Teacher("single", False, False, single=True),
    Teacher("meta_no_domain_loss", True, False),
    Teacher("meta_easynlp", True, True, compat="easynlp"),
]}

# Stage-1 ingredients: 4_student_first.sh's switches (all 1 is Meta-KD); a method's stage1=None skips it.
_ON = {"USE_PROTOTYPE_WEIGHTS": "1", "USE_EXPERTISE_WEIGHTS": "1", "USE_DOMAIN_TERM": "1", "USE_ATTENTION_TERM": "1"}
STAGE1 = {
    "metakd": _ON,
    "plain": {**_ON, "USE_PROTOTYPE_WEIGHTS": "0", "USE_EXPERTISE_WEIGHTS": "0", "USE_DOMAIN_TERM": "0"},
    "no_proto": {**_ON, "USE_PROTOTYPE_WEIGHTS": "0"},
    "no_expertise": {**_ON, "USE_EXPERTISE_WEIGHTS": "0"},
    "no_domain_term": {**_ON, "USE_DOMAIN_TERM": "0"},
    "hidden_only": {**_ON, "USE_ATTENTION_TERM": "0"},
}
# Students other than STUDENT_MODEL, made once per run dir: name -> python -m metakd.make_student arguments.
STUDENTS = {"teacher_layers": ("--teacher", "$TEACHER_MODEL", "--num-layers", "3")}


BOTH_STAGES = "$STAGE1_EPOCHS+$STAGE2_EPOCHS"  # the student alone's budget, for a method without stage 1


def resolve(value: str, env: Dict[str, str]) -> str:
    """A step's variable or argument: ``$A`` is setting A (a script's default where the environment
    has none); ``$A+$B`` the sum of those whole-number settings, as 5_student_second.sh adds epochs
    for the student alone; anything else is itself."""
    if not value.startswith("$"):
        return value
    names = [v[1:] for v in value.split("+")]
    if len(names) == 1:
        return env.get(names[0], SCRIPT_DEFAULTS[names[0]])
    try:
        return str(sum(int(env.get(n, SCRIPT_DEFAULTS[n])) for n in names))
    except ValueError:
        raise UserError(f"{value}: {', '.join(f'{n}={env.get(n)}' for n in names)}; "
                        "these must be whole numbers of epochs") from None


@dataclass(frozen=True)
class Method:
    """kind: 'teacher' (the teacher itself), 'alone' (the student, no teacher) or 'kd' (two stages)."""

    name: str
    kind: str
    teacher: Optional[str] = None
    stage1: Optional[str] = None
    label: str = ""
    student: Optional[str] = None  # a STUDENTS entry instead of STUDENT_MODEL
    overrides: Tuple[Tuple[str, str], ...] = ()  # variables of the last step (stage 2 or the student alone); see resolve


METHODS = {m.name: m for m in [
    Method("teacher_single", "teacher", "single", label="BERT-s (teacher, one genre)"),
    Method("teacher_mix", "teacher", "mix", label="BERT-mix (teacher, all genres)"),
    Method("teacher_meta", "teacher", "meta", label="Meta-teacher"),
    Method("student_alone", "alone", label="student alone (fine-tuned, no teacher)"),
    Method("kd_single", "kd", "single", "plain", label="TinyBERT-KD from BERT-s"),
    Method("kd_mix", "kd", "mix", "plain", label="TinyBERT-KD from BERT-mix"),
    Method("kd_meta", "kd", "meta", "plain", label="TinyBERT-KD from the meta-teacher"),
    Method("metakd", "kd", "meta", "metakd", label="Meta-KD"),
    Method("metakd_no_proto", "kd", "meta", "no_proto", label="Meta-KD, no prototype weights"),
    Method("metakd_no_expertise", "kd", "meta", "no_expertise", label="Meta-KD, no expertise weights"),
    Method("metakd_no_domain_term", "kd", "meta", "no_domain_term", label="Meta-KD, no domain term in stage 1"),
    Method("metakd_teacher_no_domain_loss", "kd", "meta_no_domain_loss", "metakd",
           label="Meta-KD, teacher without domain loss"),
    Method("metakd_no_stage1", "kd", "meta", None, label="Meta-KD, no stage 1"),
    Method("metakd_easynlp", "kd", "meta_easynlp", "metakd", label="Meta-KD, COMPAT=easynlp"),
    # Making the transfer work (each alone; their dev accuracy picks the recipe)
    Method("metakd_hidden_only", "kd", "meta", "hidden_only", label="Meta-KD, stage 1 without the attention term"),
    Method("metakd_hard", "kd", "meta", "metakd", label="Meta-KD, stage 2 0.5 CE(y) + 0.5 T^2 soft",
           overrides=(("ALPHA", "0.5"), ("T_SQUARED", "1"))),
    Method("metakd_lr1e-4", "kd", "meta", "metakd", label="Meta-KD, stage 2 lr 1e-4", overrides=(("STAGE2_LR", "1e-4"),)),
    Method("student_alone_lr1e-4", "alone", label="student alone, lr 1e-4", overrides=(("STAGE2_LR", "1e-4"),)),
    Method("metakd_t1", "kd", "meta", "metakd", label="Meta-KD, stage 2 at temperature 1",
           overrides=(("TEMPERATURE", "1"),)),
    Method("metakd_no_stage1_full", "kd", "meta", None, label="Meta-KD, no stage 1, stage 2 for both stages' epochs",
           overrides=(("STAGE2_EPOCHS", BOTH_STAGES),)),
    Method("metakd_no_stage1_hard", "kd", "meta", None,
           label="no stage 1, stage 2 0.5 CE(y) + 0.5 T^2 soft for both stages' epochs (Hinton's KD)",
           overrides=(("STAGE2_EPOCHS", BOTH_STAGES), ("ALPHA", "0.5"), ("T_SQUARED", "1"))),
    Method("metakd_teacher_layers", "kd", "meta", "metakd", student="teacher_layers",
           label="Meta-KD, student = 3 of the pretrained teacher's layers"),
    Method("student_alone_teacher_layers", "alone", student="teacher_layers",
           label="student alone, = 3 of the pretrained teacher's layers"),
    # after the choice: which of the two stages lifts the made student (stage 2 given both stages' epochs)
    Method("metakd_teacher_layers_no_stage1_full", "kd", "meta", None, student="teacher_layers",
           label="the made student, no stage 1, stage 2 for both stages' epochs",
           overrides=(("STAGE2_EPOCHS", BOTH_STAGES),)),
]}


# The method that measured each RECIPE preset (metakd/recipes.py) in the comparison: the same variables
# (tests/test_recipes.py checks), so that its cells are the preset's results.
RECIPE_METHODS = {"paper": "metakd", "teacher_layers": "metakd_teacher_layers"}


def alone_of(m: Method) -> Optional[str]:
    """The student alone a distilled method ``m`` must beat: ``m``'s own student fine-tuned without a
    teacher at the default recipe (student_alone for the shared STUDENT_MODEL)."""
    for a in METHODS.values():
        if a.kind == "alone" and a.student == m.student and not a.overrides:
            return a.name
    return None


def build_parser():
    p = cli.parser("python -m metakd.compare", __doc__)
    p.epilog = "methods:\n" + "\n".join(f"  {m.name:31s} {m.label}" for m in METHODS.values())
    p.add_argument("--run-dir", type=Path, default=Path("out/compare"), help="where every cell and the report go")
    p.add_argument("--methods", default="metakd,student_alone",
                   help="comma-separated, run in this order within each seed; known: " + ", ".join(METHODS))
    p.add_argument("--genres", default="all", help="comma-separated genres, or all")
    p.add_argument("--seeds", default="42,43,44", help="comma-separated integer seeds (the outermost loop)")
    p.add_argument("--reference", default="metakd", help="the method whose paired differences are reported")
    p.add_argument("--bootstrap", type=int, default=10000, help="bootstrap resamples for the paired intervals")
    p.add_argument("--report-only", action="store_true", help="only rewrite the CSV, table and plots")
    p.add_argument("--cells-from", type=Path, default=None,
                   help="a folder of finished cells' evaluations (seed*/<genre>/eval/<method>.json, as "
                        "tools/publish_compare.sh keeps them in docs/compare/cells): those not yet in --run-dir are "
                        "copied in first and count as done, so a lost run dir is not recomputed")
    p.add_argument("--publish", type=Path, default=None, metavar="DIR",
                   help="copy --run-dir's finished cells, wall times and commits into DIR (e.g. docs/compare) and "
                        "write the report there from the published cells alone; nothing is trained")
    p.add_argument("--dry-run", action="store_true", help="print the steps that would run, run none")
    p.add_argument("--task", default="senti", choices=["senti"])
    return p


def parse_list(text: str, what: str) -> List[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise UserError(f"--{what} is empty; give a comma-separated list")
    if len(set(items)) != len(items):
        raise UserError(f"--{what} names an item twice: {text}")
    return items


# ---------------------------------------------------------------------------------------------
# The run directory's layout
# ---------------------------------------------------------------------------------------------

class Layout:
    def __init__(self, run_dir: Path):
        self.run = run_dir
        self.data = run_dir / "data"
        self.walls = run_dir / "walls.tsv"
        self.logs = run_dir / "logs"

    def data_for(self, compat: str) -> Path:
        """Prototype scores depend on the numerics (EasyNLP's content vector averages padding)."""
        return self.data if compat == "none" else self.run / f"data_{compat}"

    def seed(self, seed: int) -> Path:
        return self.run / f"seed{seed}"

    def teacher(self, t: Teacher, genre: str, seed: int) -> Path:
        if t.single:
            return self.seed(seed) / genre / "single_teacher"
        return self.seed(seed) / ("meta_teacher" if t.name == "meta" else f"{t.name}_teacher")

    def stage1(self, teacher: str, variant: str, genre: str, seed: int, student: Optional[str] = None) -> Path:
        return self.seed(seed) / genre / (f"stage1_{teacher}_{variant}" + (f"_{student}" if student else ""))

    def student(self, name: str) -> Path:
        return self.run / "students" / name

    def final(self, m: Method, genre: str, seed: int) -> Path:
        return self.seed(seed) / genre / m.name

    def evaluation(self, method: str, genre: str, seed: int) -> Path:
        return self.seed(seed) / genre / "eval" / f"{method}.json"


@dataclass
class Step:
    """One numbered script run (or ``python -m <module>`` when ``module`` is set) that produces
    ``out``; done when ``out/<done_file>`` exists."""

    script: str
    out: Path
    env: Dict[str, str]
    done_file: str = "results.json"
    key: str = ""  # its name in walls.tsv, when the folder is not enough (the two data steps)
    module: str = ""
    args: Tuple[str, ...] = ()

    @property
    def command(self) -> str:
        return f"python -m {self.module} {' '.join(self.args)}" if self.module else f"bash {self.script}"

    @property
    def done(self) -> bool:
        return (self.out / self.done_file).exists()


def data_steps(lay: Layout, compat: str = "none") -> List[Step]:
    """1_get_data.sh and 2_process_data.sh into the data folder of these numerics."""
    data = lay.data_for(compat)
    env = {"DATA_DIR": str(data), "COMPAT": compat}
    tag = "" if compat == "none" else f"_{compat}"
    return [Step("1_get_data.sh", data, env, done_file="test.tsv", key=f"data{tag}/1_get_data"),
            Step("2_process_data.sh", data, env, done_file=cli.TEST_FILE, key=f"data{tag}/2_process_data")]


def model_chain(m: Method, genre: str, seed: int, lay: Layout) -> List[Step]:
    """The steps a cell needs, in order (shared ones are the same Step paths in every cell)."""
    compat = TEACHERS[m.teacher].compat if m.teacher is not None else "none"
    steps: List[Step] = [] if compat == "none" else data_steps(lay, compat)
    # RECIPE=paper: every recipe variable is the scripts' default unless the method sets it
    base = {"DATA_DIR": str(lay.data_for(compat)), "GENRE": genre, "SEED": str(seed), "OUT_DIR": str(lay.seed(seed)),
            "RECIPE": "paper"}
    if m.student is not None:
        sdir = lay.student(m.student)
        steps.append(Step("", sdir, {}, done_file="model.safetensors", module="metakd.make_student",
                          args=("--out", str(sdir), *STUDENTS[m.student])))
        base["STUDENT_MODEL"] = str(sdir)
    if m.teacher is not None:
        t = TEACHERS[m.teacher]
        tdir = lay.teacher(t, genre, seed)
        steps.append(Step("3_train_teacher.sh", tdir, {
            **base, "COMPAT": compat, "TEACHER_DIR": str(tdir), "TEACHER_GENRE": genre if t.single else "all",
            "USE_SAMPLE_WEIGHTS": str(int(t.sample_weights)), "USE_DOMAIN_LOSS": str(int(t.domain_loss))}))
    last = dict(m.overrides)
    if m.kind == "alone":
        steps.append(Step("5_student_second.sh", lay.final(m, genre, seed), {
            **base, "COMPAT": compat, "STUDENT_ALONE": "1", "STUDENT_DIR": str(lay.final(m, genre, seed)), **last}))
    elif m.kind == "kd":
        tdir = steps[-1].out
        second = {**base, "COMPAT": compat, "TEACHER_DIR": str(tdir), "STUDENT_DIR": str(lay.final(m, genre, seed))}
        if m.stage1 is None:
            second["SKIP_STAGE1"] = "1"
        else:
            s1 = lay.stage1(m.teacher, m.stage1, genre, seed, m.student)
            steps.append(Step("4_student_first.sh", s1, {
                **base, "COMPAT": compat, "TEACHER_DIR": str(tdir), "STAGE1_DIR": str(s1), **STAGE1[m.stage1]}))
            second["STAGE1_DIR"] = str(s1)
        steps.append(Step("5_student_second.sh", lay.final(m, genre, seed), {**second, **last}))
    return steps


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------

def code_commit() -> str:
    """The commit of the code that runs (with '+changes' when the checkout is not clean), or ''."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return head + ("+changes" if head and dirty else "")


def portable(settings: Dict[str, str]) -> Dict[str, str]:
    """Settings as published: an absolute path (SOURCE, TEACHER_MODEL, ...) made relative to the checkout
    (``../shared/...``), so that docs hold no path of the machine that ran them and a checkout beside the
    same folders compares equal."""
    return {k: os.path.relpath(v, ROOT) if os.path.isabs(v) else v for k, v in settings.items()}


def settings_diff(a: dict, b: dict) -> List[str]:
    """The sorted names of the settings two ``config.json`` records disagree on (paths compared portably)."""
    sa, sb = portable(a.get("settings", {})), portable(b.get("settings", {}))
    return sorted(k for k in set(sa) | set(sb) if sa.get(k) != sb.get(k))


def record_settings(lay: Layout, env: Dict[str, str]) -> dict:
    """The result-changing variables of this run dir; a rerun with other values is refused."""
    settings = {k: env[k] for k in SETTINGS if k in env}
    path = lay.run / "config.json"
    if path.exists():
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved.get("settings") != settings:
            diff = settings_diff(saved, {"settings": settings})
            raise UserError(f"this run dir was made with other settings ({', '.join(diff)} differ: "
                            f"{[(k, saved.get('settings', {}).get(k), settings.get(k)) for k in diff]}); rerun with the "
                            "recorded ones (config.json) or choose another --run-dir", lay.run)
        commit = code_commit()
        if commit and commit not in saved.get("commits", []):
            print(f"note: this run dir has cells from commits {', '.join(saved.get('commits', [])) or '(not recorded)'}; "
                  f"now {commit}")
            saved["commits"] = saved.get("commits", []) + [commit]
            from metakd.infra.fileio import write_json
            write_json(path, saved)
        return saved
    from metakd.infra.fileio import write_json

    cfg = {"settings": settings, "created": time.strftime("%Y-%m-%d %H:%M:%S"), "commits": [c for c in [code_commit()] if c]}
    lay.run.mkdir(parents=True, exist_ok=True)
    write_json(path, cfg)
    return cfg


class Runner:
    def __init__(self, lay: Layout, env: Dict[str, str], dry_run: bool = False):
        self.lay, self.env, self.dry_run = lay, env, dry_run
        self.child: Optional[subprocess.Popen] = None

    def stop_child(self) -> None:
        """The scripts run in their own session (so that a stop reaches the launcher and every
        training process): end the whole group; a rerun resumes from its last saved state."""
        if self.child is not None and self.child.poll() is None:
            os.killpg(self.child.pid, signal.SIGTERM)
            try:
                self.child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.child.pid, signal.SIGKILL)
                self.child.wait()

    def run(self, step: Step, what: str) -> None:
        if step.done:
            return
        if self.dry_run:
            print(f"would run: {' '.join(f'{k}={resolve(v, self.env)}' for k, v in step.env.items())} "
                  f"{step.command}   # {what}")
            return
        self.lay.logs.mkdir(parents=True, exist_ok=True)
        log = self.lay.logs / (str(step.out.relative_to(self.lay.run)).replace("/", "__") + ".log")
        print(f"[{time.strftime('%H:%M:%S')}] {what}: {step.command} -> {step.out} (log {log})", flush=True)
        t0 = time.perf_counter()
        step_env = {k: resolve(v, self.env) for k, v in step.env.items()}
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"\n== {time.strftime('%Y-%m-%d %H:%M:%S')} {step.script} {json.dumps(step_env)}\n")
            f.flush()
            args = [resolve(x, self.env) for x in step.args]
            argv = ([self.env["METAKD_PYTHON"], "-m", step.module, *args] if step.module
                    else ["bash", str(ROOT / step.script)])
            self.child = subprocess.Popen(argv, env={**self.env, **step_env, "PYTHONPATH": str(ROOT)}, cwd=ROOT,
                                          stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                rc = self.child.wait()
            except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (see main)
                self.stop_child()
                self._record_wall(step, time.perf_counter() - t0)  # the compute spent counts, resumed or not
                raise
            self.child = None
        wall = time.perf_counter() - t0
        self._record_wall(step, wall)
        if rc != 0 or not step.done:
            tail = "".join(log.read_text(encoding="utf-8", errors="replace").splitlines(True)[-15:])
            print(tail, file=sys.stderr)
            raise UserError(f"{step.command} failed (exit {rc}) for {what}; its output is in {log} (last lines above); "
                            "fix the cause and rerun to continue", step.out)
        print(f"[{time.strftime('%H:%M:%S')}] {what}: done in {wall:.1f} s", flush=True)

    def _record_wall(self, step: Step, seconds: float) -> None:
        with open(self.lay.walls, "a", encoding="utf-8") as f:
            f.write(f"{step.key or step.out.relative_to(self.lay.run)}\t{seconds:.1f}\n")

    def prepare_data(self) -> None:
        for step, what in zip(data_steps(self.lay), ("data", "prototype scores")):
            self.run(step, what)


def evaluate_cell(folder: Path, genre: str, data_dir: Path, proc, device) -> dict:
    """Dev and test metrics of one model on one genre, with every test review's prediction."""
    from metakd.evaluation import classification_metrics, predict_logits
    from metakd.meta_model import load_meta_checkpoint

    model, info = load_meta_checkpoint(folder, verbose=False)
    model = model.to(device)
    tok = cli.load_tokenizer(folder)
    compat = info.get("compat", "none")
    out = {"folder": str(folder)}
    for split, name in (("dev", cli.DEV_FILE), ("test", cli.TEST_FILE)):
        df = cli.read_standard(data_dir / name, proc, genre=genre)
        enc = cli.encode_split(df, tok, proc, int(info.get("max_seq_length", 128)), compat, False, data_dir / name)
        logits = predict_logits(model, enc, 64, device, compat=compat)
        out[split] = classification_metrics(enc.labels, logits, proc.labels)
        if split == "test":  # compact: one digit per review (labels < 10)
            out["test_labels"] = "".join(str(int(v)) for v in enc.labels)
            out["test_predictions"] = "".join(str(int(v)) for v in logits.argmax(axis=1))
    del model  # the next cell trains in another process, on the same device
    if getattr(device, "type", str(device)).startswith("cuda"):
        from metakd.runtime import flow
        flow.cuda.empty_cache()
    return out


# ---------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------

def cell_summary(m: Method, genre: str, seed: int, lay: Layout, walls: Dict[str, float]) -> dict:
    """What a cell's report needs besides its evaluation, from its chain's results.json files:
    epochs, the compute it took (shared steps in full), and its last stage's curves (the dev
    history; the training loss averaged over 50 windows), so that an evaluation file alone makes
    the cell's rows and plots (docs/compare/cells keeps them when the models are gone)."""
    chain = model_chain(m, genre, seed, lay)
    trained = [s for s in chain if s.done_file == "results.json"]
    results = [json.loads((s.out / "results.json").read_text(encoding="utf-8")) for s in trained]
    teacher = [r["epochs"] for r, s in zip(results, trained) if s.script.startswith("3_")]
    student = sum(r["epochs"] for r, s in zip(results, trained) if not s.script.startswith("3_"))
    last = results[-1]
    losses = np.asarray(last.get("train_loss", []), dtype=float)
    windows = [w.mean() for w in np.array_split(losses, min(50, len(losses)))] if len(losses) else []
    return {"teacher_epochs": teacher[0] if teacher else None, "student_epochs": student or None,
            "wall_s": round(sum(walls.get(str(s.out.relative_to(lay.run)), float("nan")) for s in chain), 1),
            "curve": {"total_steps": last.get("total_steps"), "epochs": last.get("epochs"),
                      "dev": [[h["step"], round(h["accuracy"], 6)] for h in last.get("history", [])],
                      "train_loss": [round(float(v), 5) for v in windows]}}


def predictions_of(ev: dict, key: str) -> np.ndarray:
    """Labels or predictions stored as a list or as a string of digits (the compact form)."""
    v = ev[key]
    return np.frombuffer(v.encode(), np.uint8) - ord("0") if isinstance(v, str) else np.asarray(v)


def read_walls(lay: Layout) -> Dict[str, float]:
    walls: Dict[str, float] = {}
    if lay.walls.exists():
        for line in lay.walls.read_text(encoding="utf-8").splitlines():
            parts = line.split("\t")
            if len(parts) == 2:
                walls[parts[0]] = walls.get(parts[0], 0.0) + float(parts[1])
    return walls


def collect(lay: Layout, proc) -> Tuple["pd.DataFrame", Dict[Tuple[str, str, int], dict]]:
    """Every finished cell in the run dir: the tidy table and the evaluations (with predictions)."""
    import pandas as pd

    walls = read_walls(lay)
    rows, evals = [], {}
    for seed_dir in sorted(lay.run.glob("seed*")):
        try:
            seed = int(seed_dir.name[4:])
        except ValueError:
            continue
        for genre in proc.domains:
            for path in sorted((seed_dir / genre / "eval").glob("*.json")):
                name = path.stem
                if name not in METHODS:
                    continue
                ev = json.loads(path.read_text(encoding="utf-8"))
                if "curve" not in ev:  # written by an earlier runner: completed once from the run dir
                    from metakd.infra.fileio import write_json

                    ev.update(cell_summary(METHODS[name], genre, seed, lay, walls))
                    write_json(path, ev)
                evals[(name, genre, seed)] = ev
                folder = Path(ev["folder"])
                rows.append({"method": name, "genre": genre, "seed": seed,
                             "dev_accuracy": ev["dev"]["accuracy"], "dev_macro_f1": ev["dev"]["macro_f1"],
                             "test_accuracy": ev["test"]["accuracy"], "test_macro_f1": ev["test"]["macro_f1"],
                             "n_test": ev["test"]["n"], "teacher_epochs": ev.get("teacher_epochs") or "",
                             "student_epochs": ev.get("student_epochs") or "", "wall_s": ev.get("wall_s"),
                             "folder": str(folder.relative_to(lay.run)) if folder.is_relative_to(lay.run) else str(folder)})
    cols = ["method", "genre", "seed", "dev_accuracy", "dev_macro_f1", "test_accuracy", "test_macro_f1", "n_test",
            "teacher_epochs", "student_epochs", "wall_s", "folder"]
    df = pd.DataFrame(rows, columns=cols)
    order = {m: i for i, m in enumerate(METHODS)}
    if len(df):
        df = df.sort_values(["method", "genre", "seed"], key=lambda s: s.map(order) if s.name == "method" else s)
    return df.reset_index(drop=True), evals


def _mean_std(v: np.ndarray) -> Tuple[float, float, int]:
    """(mean, sample std, n); NaN where there are too few values."""
    nan = float("nan")
    return (float(v.mean()) if len(v) else nan, float(v.std(ddof=1)) if len(v) > 1 else nan, len(v))


def summary_table(df, genres: Sequence[str], metric: str = "test_accuracy") -> List[dict]:
    """Per method: mean +- std over seeds per genre, and of the per-seed average over all genres."""
    rows = []
    for method, g in df.groupby("method", sort=False):
        row = {"method": method}
        for genre in genres:
            row[genre] = _mean_std(g[g.genre == genre][metric].to_numpy())
        per_seed = g.groupby("seed").filter(lambda s: set(genres) <= set(s.genre)).groupby("seed")[metric].mean().to_numpy()
        row["average"] = _mean_std(per_seed)
        rows.append(row)
    return rows


def paired_difference(evals: Dict[Tuple[str, str, int], dict], a: str, b: str, n_boot: int,
                      rng_seed: int = 0) -> Optional[dict]:
    """Accuracy of ``a`` minus ``b`` on the pooled test reviews of every (genre, seed) both have.

    ``d`` = correct_a - correct_b per review and seed. The estimate: the mean over the pooled
    reviews (so genres weigh by their number of test reviews, about equal here) of each review's
    ``d`` averaged over the seeds its genre shares. The interval: the 2.5/97.5 percentiles of that
    statistic over ``n_boot`` two-level resamples, within each genre the seeds with replacement and
    then the reviews with replacement, so that it holds the training (seed) variation as well as
    the test sample's. ``per_seed``: the pooled difference of each seed that every genre shares.
    ``agreement``: the share of those reviews on which ``a`` and ``b`` predict the same label, weighted
    as the estimate (near 1 with a difference near 0: the two methods make nearly the same model).
    """
    mats, agree, genres_used = [], [], []
    seeds_by_genre: Dict[str, List[int]] = {}
    for genre in sorted({g for (_, g, _) in evals}):
        seeds = sorted(s for (m, g, s) in evals if m == a and g == genre and (b, genre, s) in evals)
        if not seeds:
            continue
        rows, same = [], []
        for s in seeds:
            ea, eb = evals[(a, genre, s)], evals[(b, genre, s)]
            y = predictions_of(ea, "test_labels")
            if not np.array_equal(y, predictions_of(eb, "test_labels")):
                raise UserError(f"{a} and {b} were evaluated on different test rows for {genre}, seed {s}")
            pa, pb = predictions_of(ea, "test_predictions"), predictions_of(eb, "test_predictions")
            rows.append((pa == y).astype(float) - (pb == y))
            same.append((pa == pb).astype(float))
        mats.append(np.stack(rows))  # [seeds, reviews]
        agree.append(np.stack(same).mean(axis=0).sum())
        genres_used.append(genre)
        seeds_by_genre[genre] = seeds
    if not mats:
        return None
    n_total = sum(m.shape[1] for m in mats)
    estimate = sum(m.mean(axis=0).sum() for m in mats) / n_total
    rng = np.random.default_rng(rng_seed)
    boots = np.zeros(n_boot)
    for m in mats:
        n_seeds, n_rev = m.shape
        for lo in range(0, n_boot, 1000):  # in blocks: [block, seeds, reviews] stays small
            k = min(1000, n_boot - lo)
            per_review = m[rng.integers(0, n_seeds, size=(k, n_seeds))].mean(axis=1)  # [k, reviews]
            boots[lo:lo + k] += np.take_along_axis(per_review, rng.integers(0, n_rev, size=(k, n_rev)), axis=1).sum(axis=1)
    boots /= n_total
    ci_low, ci_high = np.percentile(boots, [2.5, 97.5])
    common = sorted(set.intersection(*(set(v) for v in seeds_by_genre.values())))
    per_seed = {int(s): float(sum(m[seeds_by_genre[g].index(s)].sum() for g, m in zip(genres_used, mats)) / n_total)
                for s in common}
    return {"a": a, "b": b, "difference": float(estimate), "ci_low": float(ci_low), "ci_high": float(ci_high),
            "agreement": float(sum(agree) / n_total), "n_reviews": int(n_total), "genres": genres_used,
            "seeds": sorted({s for v in seeds_by_genre.values() for s in v}),
            "seeds_by_genre": seeds_by_genre, "per_seed": per_seed}


def fmt(cell) -> str:
    mean, std, n = cell
    if n == 0 or not np.isfinite(mean):
        return ""
    return f"{100 * mean:.2f}" + (f" ± {100 * std:.2f}" if np.isfinite(std) else "") + f" ({n})"


def against_alone(df, evals, n_boot: int, done: Optional[Dict[Tuple[str, str], Optional[dict]]] = None
                  ) -> List[Tuple[str, Optional[dict], Optional[dict]]]:
    """Per distilled method in ``df``: its paired difference against student_alone, and against the
    same student alone (alone_of) where that is another method; methods with neither left out.
    ``done``: differences already computed, by (a, b); the new ones are added to it."""
    done = {} if done is None else done

    def pair(a: str, b: str) -> Optional[dict]:
        if (a, b) not in done:
            done[(a, b)] = paired_difference(evals, a, b, n_boot)
        return done[(a, b)]

    out = []
    for m in df.method.unique():
        if m not in METHODS or METHODS[m].kind != "kd":
            continue
        own = alone_of(METHODS[m])
        shared = pair(m, "student_alone")
        same = pair(m, own) if own not in (None, "student_alone") else None
        if shared is not None or same is not None:
            out.append((m, shared, same))
    return out


def budget_of(settings: Dict[str, str]) -> str:
    """The distillation budget of a run dir's settings, as every table and figure names it: '1/10/10'."""
    return "/".join(resolve(f"${k}", settings) for k in ("TEACHER_EPOCHS", "STAGE1_EPOCHS", "STAGE2_EPOCHS"))


def provenance(cfg: dict, evals: Dict[Tuple[str, str, int], dict]) -> str:
    """One line for a table or figure: its budget and the commits its cells ran at (the cells' own
    records, else the run dir's)."""
    commits = list(dict.fromkeys(ev["commit"] for ev in evals.values() if ev.get("commit")))
    commits = commits or [c.split()[0] for c in cfg.get("commits", [])]
    b = budget_of(cfg.get("settings", {}))
    s1, s2 = b.split("/")[1:]
    alone = f"{int(s1) + int(s2)}" if (s1 + s2).isdigit() else f"{s1}+{s2}"
    return (f"epochs {b} (teacher / stage 1 / stage 2; the student alone {alone}); "
            f"commits {', '.join(commits) or 'not recorded'}")


def write_report(lay: Layout, proc, reference: str, n_boot: int, quiet: bool = False,
                 out: Optional[Path] = None) -> Optional[Path]:
    """results.csv, results.md, paired.json and the three plots of ``lay``'s finished cells, into ``out``
    (the run dir unless given; its config.json, else the run dir's, gives the budget each names)."""
    from metakd.infra.fileio import atomic_open

    out = lay.run if out is None else out
    df, evals = collect(lay, proc)
    if not len(df):
        print("no finished cells yet: nothing to report")
        return None
    cfg_path = out / "config.json" if (out / "config.json").exists() else lay.run / "config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.exists() else {}
    note = provenance(cfg, evals)
    genres = [g for g in proc.domains if g in set(df.genre)]
    out.mkdir(parents=True, exist_ok=True)
    with atomic_open(out / "results.csv", "w") as f:
        df.to_csv(f, index=False)
    lines = ["# Comparison", "", f"Budget: {note}.", "",
             f"Test accuracy (%), mean ± std over seeds (number of seeds); average = the mean over the "
             f"{len(genres)} genres per seed, then over seeds. Selection by dev only.", "",
             "| method | " + " | ".join(genres) + " | average |", "|---|" + "---|" * (len(genres) + 1)]
    for row in summary_table(df, genres):
        lines.append(f"| {row['method']} | " + " | ".join(fmt(row[g]) for g in genres) + f" | {fmt(row['average'])} |")
    lines += ["", "Dev accuracy (%) of the same cells:", "",
              "| method | " + " | ".join(genres) + " | average |", "|---|" + "---|" * (len(genres) + 1)]
    for row in summary_table(df, genres, "dev_accuracy"):
        lines.append(f"| {row['method']} | " + " | ".join(fmt(row[g]) for g in genres) + f" | {fmt(row['average'])} |")
    done = {(reference, m): paired_difference(evals, reference, m, n_boot) for m in df.method.unique() if m != reference}
    diffs = [d for d in done.values() if d is not None]
    if diffs:
        lines += ["", f"Paired difference on the pooled test reviews: {reference} minus each method, accuracy points. "
                      "95% interval: a two-level bootstrap (within each genre the seeds, then the reviews, with "
                      "replacement; each review's difference averaged over the seeds both methods have). Per seed: "
                      "the pooled difference of each seed that every genre has. Same predictions: the share of those "
                      "reviews on which both predict the same label.", "",
                  "| method | difference | 95% interval | per seed | same predictions | reviews | genres |",
                  "|---|---|---|---|---|---|---|"]
        for d in diffs:
            per_seed = ", ".join(f"{s}: {100 * v:+.2f}" for s, v in d["per_seed"].items())
            lines.append(f"| {d['b']} | {100 * d['difference']:+.2f} | [{100 * d['ci_low']:+.2f}, {100 * d['ci_high']:+.2f}] "
                         f"| {per_seed} | {100 * d['agreement']:.1f}% | {d['n_reviews']} | {len(d['genres'])} |")
    students = against_alone(df, evals, n_boot, done)
    if students:
        lines += ["", "Each distilled student minus a student fine-tuned alone on the same reviews (the same "
                      "pairing and interval): the shared student alone (student_alone), and, for a distilled "
                      "student made otherwise, that same student alone.", "",
                  "| method | minus student_alone | 95% interval | minus the same student alone | 95% interval | seeds |",
                  "|---|---|---|---|---|---|"]
        for m, shared, own in students:
            cells = []
            for d, name in ((shared, ""), (own, f"{own['b']}: " if own else "")):
                cells += (["", ""] if d is None else [f"{name}{100 * d['difference']:+.2f}",
                                                      f"[{100 * d['ci_low']:+.2f}, {100 * d['ci_high']:+.2f}]"])
            seeds = (shared or own)["seeds"]
            lines.append(f"| {m} | " + " | ".join(cells) + f" | {', '.join(map(str, seeds))} |")
    with atomic_open(out / "results.md", "w") as f:
        f.write("\n".join(lines) + "\n")
    from metakd.infra.fileio import write_json
    write_json(out / "paired.json", [d for d in done.values() if d is not None])  # the reference's first
    plot_accuracy(df, genres, out / "accuracy.png", note)
    plot_curves(df, evals, out / "curves.png", note)
    plot_paired(students, out / "paired.png", note)
    if quiet:
        return out / "results.md"
    print("\n".join(lines))
    print(f"wrote {out / 'results.csv'}, results.md, paired.json, accuracy.png, curves.png, paired.png")
    return out / "results.md"


def _save(fig, path: Path, note: str, dpi: int) -> None:
    """Every figure names its budget and commits (``note``, bottom left) and is written whole or not at all."""
    from metakd.infra.fileio import atomic_open

    if note:
        fig.text(0.005, 0.003, note, fontsize=6, color="0.35", ha="left", va="bottom")
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=dpi)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_accuracy(df, genres: Sequence[str], path: Path, note: str = "") -> None:
    """Test accuracy per genre (and average) and method: bars of the mean, error bars of the std."""
    plt = _pyplot()
    rows = summary_table(df, genres)
    groups = list(genres) + ["average"]
    width = 0.8 / max(len(rows), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(groups) + 0.3 * len(rows)), 4.2))
    x = np.arange(len(groups))
    for i, row in enumerate(rows):
        means = [100 * row[g][0] for g in groups]
        stds = [100 * row[g][1] if np.isfinite(row[g][1]) else 0 for g in groups]
        ax.bar(x + (i - (len(rows) - 1) / 2) * width, means, width, yerr=stds, capsize=2, label=row["method"])
    ax.set_xticks(x, groups)
    ax.set_ylabel("test accuracy (%)")
    vals = [100 * row[g][0] for row in rows for g in groups if np.isfinite(row[g][0])]
    if vals:
        ax.set_ylim(max(0, min(vals) - 8), min(100, max(vals) + 4))
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    ax.set_title("Test accuracy, mean ± std over seeds")
    fig.tight_layout()
    _save(fig, path, note, 110)
    plt.close(fig)


def plot_paired(students: List[Tuple[str, Optional[dict], Optional[dict]]], path: Path, note: str = "") -> None:
    """Forest plot of against_alone: per distilled method, its paired difference against the shared student
    alone and against the same student alone (circle and square, 95% interval as a bar), each seed's
    pooled difference as a cross. Nothing is written when there is no pair."""
    if not students:
        return
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.45 * len(students)))
    for i, (m, shared, own) in enumerate(reversed(students)):
        for d, dy, marker, color, label in ((shared, 0.1, "o", "tab:blue", "minus student_alone"),
                                            (own, -0.1, "s", "tab:orange", "minus the same student alone")):
            if d is None:
                continue
            shown = ax.get_legend_handles_labels()[1]  # each legend entry once
            ax.errorbar(100 * d["difference"], i + dy, xerr=[[100 * (d["difference"] - d["ci_low"])],
                                                             [100 * (d["ci_high"] - d["difference"])]],
                        fmt=marker, color=color, capsize=3, ms=5, label=None if label in shown else label)
            ax.plot([100 * v for v in d["per_seed"].values()], [i + dy] * len(d["per_seed"]), "x", color="black",
                    ms=4, mew=0.8, label=None if "one seed" in shown else "one seed")
    ax.axvline(0, color="0.4", lw=0.8)
    seeds = [len((shared or own)["seeds"]) for _, shared, own in reversed(students)]
    ax.set_yticks(range(len(students)), [f"{m} ({n})" for (m, _, _), n in zip(reversed(students), seeds)], fontsize=8)
    ax.set_ylim(-0.6, len(students) - 0.4)
    ax.set_xlabel("test accuracy difference (points), 95% two-level bootstrap interval; (n): seeds")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)
    ax.set_title("Each distilled student minus a student fine-tuned alone")
    fig.tight_layout()
    _save(fig, path, note, 110)
    plt.close(fig)


def plot_curves(df, evals: dict, path: Path, note: str = "") -> None:
    """From each student cell's curve (cell_summary): training loss and dev accuracy against epochs, a line per
    seed (the teachers are left out: their history is dev accuracy over every genre)."""
    plt = _pyplot()
    df = df[[METHODS[m].kind != "teacher" for m in df.method]]
    if not len(df):
        return
    genres = [g for g in dict.fromkeys(df.genre)]
    methods = list(dict.fromkeys(df.method))
    colors = {m: plt.cm.tab10(i % 10) for i, m in enumerate(methods)}
    fig, axes = plt.subplots(2, len(genres), figsize=(3.6 * len(genres), 6), squeeze=False)
    for _, r in df.iterrows():
        curve = evals[(r.method, r.genre, r.seed)].get("curve") or {}
        per_epoch = max(curve.get("total_steps") or 1, 1) / max(curve.get("epochs") or 1, 1)
        col = genres.index(r.genre)
        label = r.method if r.seed == df[df.method == r.method].seed.min() and r.genre == genres[0] else None
        losses = curve.get("train_loss", [])
        if losses:  # window means, at the windows' centres
            x = (np.arange(len(losses)) + 0.5) * (curve.get("total_steps") or len(losses)) / len(losses) / per_epoch
            axes[0, col].plot(x, losses, color=colors[r.method], lw=0.8, alpha=0.8, label=label)
        dev = curve.get("dev", [])
        if dev:
            axes[1, col].plot([d[0] / per_epoch for d in dev], [100 * d[1] for d in dev],
                              color=colors[r.method], lw=0.8, alpha=0.8, marker=".", ms=3)
    for col, g in enumerate(genres):
        axes[0, col].set_title(g)
        axes[0, col].set_yscale("log")
        axes[0, col].set_xlabel("epoch")
        axes[1, col].set_xlabel("epoch")
    axes[0, 0].set_ylabel("training loss (each its own)")
    axes[1, 0].set_ylabel("dev accuracy (%)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=min(len(labels), 5))
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    _save(fig, path, note, 100)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------

def restore_cells(source: Path, lay: Layout) -> int:
    """Copy finished cells' evaluation files from ``source`` into the run dir where missing."""
    import shutil

    if not source.is_dir():
        raise UserError("no such folder of finished cells", source)
    n = 0
    for path in sorted(source.glob("seed*/*/eval/*.json")):
        dest = lay.run / path.relative_to(source)
        if path.stem in METHODS and not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest)
            n += 1
    return n


def merge_records(run: Path, dest: Path) -> None:
    """Publish ``run``'s wall times and commits into ``dest`` (docs/compare) without losing what
    ``dest`` already holds from an earlier run dir (a fresh machine reruns into a new run dir and
    takes the finished cells with ``--cells-from``, not their walls or commits).

    ``walls.tsv``: ``dest``'s lines for steps the run dir never ran, then every line of the run dir
    (a step the run dir ran again, e.g. a teacher retrained because its checkpoint was lost, is
    reported with the run dir's time only). ``config.json``: the settings must be the same; the
    commits are ``dest``'s, then the run dir's new ones; ``created`` is the earliest."""
    from metakd.infra.fileio import atomic_open, write_json

    new_walls = (run / "walls.tsv").read_text(encoding="utf-8").splitlines() if (run / "walls.tsv").exists() else []
    old_walls = (dest / "walls.tsv").read_text(encoding="utf-8").splitlines() if (dest / "walls.tsv").exists() else []
    ran = {line.split("\t")[0] for line in new_walls}
    merged = [line for line in old_walls if line.split("\t")[0] not in ran] + new_walls
    cfg = json.loads((run / "config.json").read_text(encoding="utf-8"))
    if (dest / "config.json").exists():
        old = json.loads((dest / "config.json").read_text(encoding="utf-8"))
        if settings_diff(old, cfg):
            raise UserError(f"the published cells were made with other settings ({', '.join(settings_diff(old, cfg))} "
                            "differ); publish this run dir elsewhere or rerun it with the published settings",
                            dest / "config.json")
        commits = list(old.get("commits", []))
        commits += [c for c in cfg.get("commits", []) if c not in commits]
        cfg = {**cfg, "created": min(old.get("created", cfg["created"]), cfg["created"]), "commits": commits}
    cfg["settings"] = portable(cfg.get("settings", {}))
    dest.mkdir(parents=True, exist_ok=True)
    with atomic_open(dest / "walls.tsv", "w") as f:
        f.write("".join(line + "\n" for line in merged))
    write_json(dest / "config.json", cfg)


def run_relative(folder: str, run: Path) -> str:
    """A cell's model folder as published: relative to its run dir (``seed42/books/metakd``)."""
    f = Path(folder)
    if f.is_absolute():
        if f.is_relative_to(run):
            return str(f.relative_to(run))
        parts = f.parts  # a run dir of another machine: from its seed folder on
        seeds = [i for i, p in enumerate(parts) if p.startswith("seed") and p[4:].isdigit()]
        if seeds:
            return str(Path(*parts[seeds[-1]:]))
    return folder


def publish(run: Path, dest: Path, proc, reference: str, n_boot: int) -> None:
    """Copy ``run``'s finished cells' evaluations into ``dest/cells`` (model folders made relative), merge its
    wall times and commits into ``dest`` (merge_records), then write the report into ``dest`` from the
    published cells alone: what docs/ holds is reproducible from docs/, the models being gone."""
    from metakd.infra.fileio import write_json

    merge_records(run, dest)
    for path in sorted(run.glob("seed*/*/eval/*.json")):
        if path.stem not in METHODS:
            continue
        ev = json.loads(path.read_text(encoding="utf-8"))
        if "folder" in ev:
            ev["folder"] = run_relative(ev["folder"], run)
        target = dest / "cells" / path.relative_to(run)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_json(target, ev)
    write_report(Layout(dest / "cells"), proc, reference, n_boot, quiet=True, out=dest)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _own_signals() -> None:
    """Ctrl-C, SIGTERM and SIGHUP stop the runner and its training cleanly. OneFlow, once it runs in this
    process (the evaluations), installs handlers that end the process at once: put ours back."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGHUP: the terminal went away
        signal.signal(sig, _interrupt)


@cli_main
def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    proc = cli.processor(a.task)
    methods = parse_list(a.methods, "methods")
    for m in methods + [a.reference]:
        if m not in METHODS:
            raise UserError(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
    genres = list(proc.domains) if a.genres == "all" else parse_list(a.genres, "genres")
    for g in genres:
        cli.check_genre(g, proc)
    try:
        seeds = [int(s) for s in parse_list(a.seeds, "seeds")]
    except ValueError:
        raise UserError(f"--seeds must be comma-separated integers, got {a.seeds!r}") from None
    if a.bootstrap < 100:
        raise UserError(f"--bootstrap must be >= 100, got {a.bootstrap}")
    lay = Layout(a.run_dir.resolve())
    if a.cells_from is not None:
        restored = restore_cells(a.cells_from, lay)
        if restored:
            print(f"{restored} finished cells taken from {a.cells_from}")
    if a.publish is not None:
        if not (lay.run / "config.json").is_file():
            raise UserError("no config.json: not a comparison run dir; run the comparison first", lay.run)
        publish(lay.run, a.publish.resolve(), proc, a.reference, a.bootstrap)
        print(f"published {lay.run} into {a.publish}")
        return 0
    if a.report_only:
        if not lay.run.is_dir():
            raise UserError("no such run dir; run the comparison first", lay.run)
        write_report(lay, proc, a.reference, a.bootstrap)
        return 0
    set_here = [k for k in PER_CELL if k in os.environ]
    if set_here:
        raise UserError(f"{', '.join(set_here)} set in the environment: the runner sets these per cell; unset them")

    env = dict(os.environ)
    env.setdefault("METAKD_PYTHON", sys.executable)
    for m in methods:  # a bad epoch count fails here, before any cell runs
        for _, value in METHODS[m].overrides:
            resolve(value, env)
    if not a.dry_run:
        record_settings(lay, env)
    runner = Runner(lay, env, a.dry_run)
    _own_signals()
    cells = [(seed, METHODS[m], g) for seed in seeds for m in methods for g in genres]
    print(f"comparison in {lay.run}: {len(methods)} methods x {len(genres)} genres x {len(seeds)} seeds = "
          f"{len(cells)} cells")
    device = None
    try:
        runner.prepare_data()
        for i, (seed, m, genre) in enumerate(cells, 1):
            ev_path = lay.evaluation(m.name, genre, seed)
            if ev_path.exists():
                continue
            what = f"cell {i}/{len(cells)} {m.name} {genre} seed {seed}"
            chain = model_chain(m, genre, seed, lay)
            for step in chain:
                runner.run(step, f"{what}: {step.out.name}")
            if a.dry_run:
                continue
            from metakd.infra.fileio import write_json
            from metakd.runtime import resolve_device

            device = device or resolve_device(env.get("DEVICE", "auto"))
            _own_signals()
            t0 = time.perf_counter()
            ev = evaluate_cell(chain[-1].out, genre, Path(chain[-1].env["DATA_DIR"]), proc, device)
            _own_signals()
            ev["folder"] = run_relative(ev["folder"], lay.run)
            ev.update(method=m.name, genre=genre, seed=seed, eval_seconds=round(time.perf_counter() - t0, 2),
                      commit=code_commit(), **cell_summary(m, genre, seed, lay, read_walls(lay)))
            write_json(ev_path, ev)
            print(f"[{time.strftime('%H:%M:%S')}] {what}: dev {ev['dev']['accuracy']:.4f} test {ev['test']['accuracy']:.4f}",
                  flush=True)
            write_report(lay, proc, a.reference, a.bootstrap, quiet=True)  # partial results as they arrive
    except KeyboardInterrupt:
        print("stopped; rerun the same command to continue (finished cells are kept)", file=sys.stderr)
        sys.exit(130)
    if not a.dry_run:
        write_report(lay, proc, a.reference, a.bootstrap)
    return 0


if __name__ == "__main__":
    main()
