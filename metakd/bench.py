"""Speed of every Meta-KD stage on real shapes: ms/step, samples/s, tokens/s, peak RSS.

    python -m metakd.bench                               # shared pair: MiniLM-L6 -> MiniLM-L3 (../shared/models)
    python -m metakd.bench --pair paper --iters 1        # bert-base -> TinyBERT-4L sizes, random weights
    python -m metakd.bench --stages teacher_fwd,student_fwd --json bench.json
    python -m metakd.bench --profile stage1_step         # where the time of one step goes

Each stage runs the same code path as the pipeline on one synthetic batch (random token ids,
lengths like the Amazon reviews at the chosen sequence length, see --lengths): to_tensors with
trimming, the models, the losses, backward, gradient clipping, AdamW and the LR schedule.
Timing: --warmup untimed steps, then --iters timed steps; OneFlow eager is asynchronous, so the
clock stops only after a full sync of its virtual machine (and of the GPU on CUDA).

Memory: by default every stage runs in its own subprocess, so "peak RSS" is the peak of a
process that loaded only what that stage needs (OneFlow itself is ~0.4 GB of it); "step +RSS" is
how far the steps pushed the resident set above the state after loading the models (Linux
VmHWM, reset once the models are built). On CUDA, "CUDA MiB" is the GPU memory nvidia-smi shows
for the process after the steps (OneFlow's caching allocator keeps its peak).

Numbers from a shared 2-core CPU are noisy: compare runs from the same machine and moment only.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

# -- knobs: the defaults of the options below ------------------------------------------------------
PAIR = "shared"           # shared | paper | tiny
BATCH_SIZE = 16           # training batch (the pipeline's default, per process)
SEQ_LENGTH = 128          # --max-seq-length of the pipeline
WARMUP = 1                # untimed steps per stage
ITERS = 3                 # timed steps per stage
DEVICE = "auto"           # auto | cpu | cuda | cuda:N
LENGTHS = "reviews"       # reviews: real lengths as the Amazon reviews; full: every row at SEQ_LENGTH
SEED = 42
NUM_LABELS = 2            # senti: positive / negative
NUM_DOMAINS = 4           # books, dvd, electronics, kitchen
LR, WEIGHT_DECAY, MAX_GRAD_NORM, WARMUP_PROPORTION = 3e-5, 1e-4, 1.0, 0.1
TEMPERATURE = 2.0
DOMAIN_LOSS_WEIGHT = 0.5
PROFILE_TOP = 20          # rows of the --profile module table
# The Amazon reviews tokenised at 128 (measured on sorted_data_acl, 8000 reviews): 44.5% are
# truncated to the full length, the rest spread over shorter lengths (mean 95 of 128 real tokens);
# every batch of 16 holds a full-length review, so trimming never shortens a training batch.
REVIEW_FULL_FRACTION = 0.445

ROOT = Path(__file__).resolve().parents[1]
SHARED_MODELS = ROOT.parent / "shared" / "models"
SHARED_TEACHER = SHARED_MODELS / "all-MiniLM-L6-v2"
SHARED_STUDENT = SHARED_MODELS / "paraphrase-MiniLM-L3-v2"

# The paper's pair (bert-base-uncased -> TinyBERT General 4L-312D), as sizes only: random weights.
PAPER_TEACHER = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
PAPER_STUDENT = dict(hidden_size=312, num_hidden_layers=4, num_attention_heads=12, intermediate_size=1200)
# Tiny random sizes for the tests (teacher layers a multiple of the student's, equal heads).
TINY_TEACHER = dict(vocab_size=200, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64)
TINY_STUDENT = dict(vocab_size=200, hidden_size=24, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48)

STAGES: Dict[str, str] = {
    "embed": "embedding extraction (2_process_data): teacher BertModel no-grad forward + masked mean",
    "teacher_step": "meta-teacher train step (3_train_teacher): MetaBert fwd + domain loss + bwd + clip + AdamW",
    "stage1_step": "stage-1 step (4_student_first): teacher no-grad fwd (scores, hidden) + student fwd + stage1_loss + bwd + AdamW",
    "stage2_step": "stage-2 step, teacher run live (5_student_second as --compat easynlp runs it): teacher logits + student + soft CE + AdamW",
    "stage1_cached": "stage-1 step with the teacher's targets cached (4_student_first default): cache read + student fwd + stage1_loss + bwd + AdamW",
    "stage2_cached": "stage-2 step with cached teacher logits (5_student_second default): student only + soft CE + AdamW",
    "eval": "evaluation (6_eval): student MetaBert no-grad forward, logits to numpy",
    "teacher_fwd": "plain teacher BertModel forward, no grad, eval mode",
    "teacher_fwdbwd": "plain teacher BertModel forward + backward (train mode, loss = mean of outputs, no optimizer)",
    "student_fwd": "plain student BertModel forward, no grad, eval mode",
    "student_fwdbwd": "plain student BertModel forward + backward (train mode, loss = mean of outputs, no optimizer)",
}

# What the *self* time of each module type (its time minus its sub-modules') is, for --profile.
MODULE_SELF = {
    "Linear": "dense layer: x W^T + b",
    "LayerNorm": "LayerNorm (on CPU metakd's matmul-broadcast version, on CUDA the fused kernel)",
    "Embedding": "embedding lookup",
    "Dropout": "dropout",
    "BertSelfAttention": "attention core: head reshapes, QK^T, + mask, softmax, probs x V",
    "BertIntermediate": "activation (GELU)",
    "BertSelfOutput": "residual add",
    "BertOutput": "residual add",
    "BertEmbeddings": "positions + sum of the three embeddings",
    "BertPooler": "[CLS] slice + tanh",
    "BertModel": "additive mask, collecting outputs",
    "MetaBert": "ReLU before the classifier, content vector (masked mean)",
}


# -- shapes and models ------------------------------------------------------------------------------
@dataclass
class ModelSpec:
    role: str                  # teacher | student
    config: "object"           # BertConfig
    path: Optional[Path]       # a pretrained folder, or None for random weights

    def describe(self) -> str:
        c = self.config
        src = str(self.path) if self.path else "random weights"
        return (f"{self.role}: {c.num_hidden_layers}L/{c.hidden_size}H/{c.num_attention_heads}A/FFN {c.intermediate_size}, "
                f"{bert_params(c) / 1e6:.1f}M params ({src})")


def bert_params(c) -> int:
    """Parameters of a BertModel with pooler, counted from its config."""
    h, i = c.hidden_size, c.intermediate_size
    emb = (c.vocab_size + c.max_position_embeddings + c.type_vocab_size) * h + 2 * h
    layer = 4 * (h * h + h) + 2 * 2 * h + (h * i + i) + (i * h + h)
    return emb + c.num_hidden_layers * layer + h * h + h


def model_specs(pair: str, teacher: Path, student: Path):
    from metakd.checkpoint import read_config
    from metakd.infra.errors import UserError
    from metakd.bert import BertConfig

    if pair == "shared":
        for p in (teacher, student):
            if not (p / "config.json").exists():
                raise UserError("model folder not found (it comes with ../shared); pass --teacher/--student or use "
                                "--pair paper (random weights, no files)", p)
        return ModelSpec("teacher", read_config(teacher), teacher), ModelSpec("student", read_config(student), student)
    t, s = (PAPER_TEACHER, PAPER_STUDENT) if pair == "paper" else (TINY_TEACHER, TINY_STUDENT)
    return ModelSpec("teacher", BertConfig(**t), None), ModelSpec("student", BertConfig(**s), None)


def meta_model(spec: ModelSpec, fit_size: Optional[int] = None):
    from metakd.meta_model import MetaBert, build_from_pretrained

    if spec.path is not None:
        return build_from_pretrained(spec.path, NUM_LABELS, NUM_DOMAINS, fit_size, verbose=False)[0]
    return MetaBert(spec.config, NUM_LABELS, NUM_DOMAINS, fit_size)


def plain_model(spec: ModelSpec):
    from metakd import cpu
    from metakd.bert import BertModel
    from metakd.checkpoint import load_backbone

    if spec.path is not None:
        return load_backbone(spec.path, verbose=False)[0]
    return cpu.install(BertModel(spec.config))


def synthetic_batch(vocab_size: int, batch_size: int, seq_length: int, lengths: str, seed: int):
    """One batch as a metakd ``Encoded``: [CLS] random ids [SEP], padded to ``seq_length``; row 0 full."""
    from metakd.features import Encoded

    rng = np.random.default_rng(seed)
    if lengths == "full":
        lens = np.full(batch_size, seq_length)
    else:
        lens = np.where(rng.random(batch_size) < REVIEW_FULL_FRACTION, seq_length,
                        rng.integers(min(3, seq_length), seq_length + 1, batch_size))
    lens[0] = seq_length
    cls_id, sep_id, low = (101, 102, 1000) if vocab_size > 2000 else (1, 2, 3)
    ids = rng.integers(low, vocab_size, (batch_size, seq_length))
    mask = (np.arange(seq_length)[None, :] < lens[:, None]).astype(np.int64)
    ids[:, 0] = cls_id
    ids[np.arange(batch_size), lens - 1] = sep_id
    ids = ids * mask
    return Encoded(input_ids=ids.astype(np.int64), attention_mask=mask, token_type_ids=np.zeros_like(mask),
                   labels=rng.integers(0, NUM_LABELS, batch_size).astype(np.int64),
                   domains=rng.integers(0, NUM_DOMAINS, batch_size).astype(np.int64),
                   weights=rng.uniform(0.3, 0.9, batch_size).astype(np.float32),  # prototype scores
                   guids=[str(i) for i in range(batch_size)])


# -- synchronisation, memory ------------------------------------------------------------------------
def sync(device) -> None:
    """Wait until every queued OneFlow instruction (and, on CUDA, every kernel) has finished."""
    from metakd.runtime import flow

    if device.type == "cuda":
        flow.cuda.synchronize()  # calls the eager VM sync first
    else:
        flow._oneflow_internal.eager.Sync()


def _status_kib(field: str) -> Optional[int]:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_mib() -> Optional[float]:
    kib = _status_kib("VmRSS")
    return None if kib is None else kib / 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float:
    """Peak RSS since the last reset (VmHWM), else since the process started (ru_maxrss)."""
    kib = _status_kib("VmHWM")
    if kib is None:
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        kib = kib / 1024 if sys.platform == "darwin" else kib
    return kib / 1024


def process_peak_rss_mib() -> float:
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (kib / 1024 if sys.platform == "darwin" else kib) / 1024


def cuda_memory_mib(device) -> Dict[str, object]:
    """GPU memory of this process: OneFlow's counter if it has one, else nvidia-smi's per-process view."""
    from metakd.runtime import flow

    if device.type != "cuda":
        return {}
    for name in ("max_memory_reserved", "max_memory_allocated"):
        fn = getattr(flow.cuda, name, None)
        if fn is not None:
            try:
                return {"cuda_mib": round(fn() / 2**20, 1), "cuda_mem_method": f"flow.cuda.{name}"}
            except Exception:
                pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20).stdout
        for line in out.splitlines():
            pid, used = [x.strip() for x in line.split(",")[:2]]
            if pid == str(os.getpid()):
                return {"cuda_mib": float(used), "cuda_mem_method": "nvidia-smi, this process, after the steps"}
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20).stdout
        return {"cuda_mib": float(out.split()[device.index or 0]),
                "cuda_mem_method": "nvidia-smi, whole GPU (process not visible), after the steps"}
    except Exception as e:  # no nvidia-smi: say so rather than guess
        return {"cuda_mib": None, "cuda_mem_method": f"unavailable ({type(e).__name__})"}


# -- profiling helpers ------------------------------------------------------------------------------
class Phases:
    """Marks inside a step. Off (the timed runs): does nothing. On (--profile): each mark syncs and
    charges the time since the previous mark to its name."""

    def __init__(self, device, enabled: bool = False):
        self.device, self.enabled = device, enabled
        self.times: Dict[str, float] = defaultdict(float)
        self._t = 0.0

    def start(self) -> None:
        if self.enabled:
            sync(self.device)
            self._t = time.perf_counter()

    def mark(self, name: str) -> None:
        if self.enabled:
            sync(self.device)
            now = time.perf_counter()
            self.times[name] += now - self._t
            self._t = now


class ModuleTimer:
    """Forward hooks on every sub-module: sync before and after each call, charge its self time
    (its time minus that of the sub-modules it called) to "<model> <module type>"."""

    def __init__(self, device):
        self.device = device
        self.enabled = False
        self.self_time: Dict[str, float] = defaultdict(float)
        self.calls: Dict[str, int] = defaultdict(int)
        self._stack: List[list] = []

    def attach(self, label: str, model) -> None:
        from metakd.cpu import plain_class

        for m in model.modules():
            key = f"{label} {plain_class(m).__name__}"
            m.register_forward_pre_hook(self._pre)
            m.register_forward_hook(self._post_for(key))

    def _pre(self, module, inputs):
        if self.enabled:
            sync(self.device)
            self._stack.append([time.perf_counter(), 0.0])

    def _post_for(self, key: str):
        def post(module, inputs, output):
            if self.enabled and self._stack:
                sync(self.device)
                start, children = self._stack.pop()
                total = time.perf_counter() - start
                self.self_time[key] += total - children
                self.calls[key] += 1
                if self._stack:
                    self._stack[-1][1] += total
        return post


# -- the stages -------------------------------------------------------------------------------------
@dataclass
class Ctx:
    teacher: ModelSpec
    student: ModelSpec
    device: object
    batch_size: int
    infer_batch_size: int
    seq_length: int
    lengths: str
    seed: int
    phases: Phases
    models: Dict[str, object]  # label -> module, for the profiler's hooks


def _update(model, total_steps: int):
    from metakd.optim import make_update

    return make_update(model, LR, WEIGHT_DECAY, total_steps, WARMUP_PROPORTION, max_grad_norm=MAX_GRAD_NORM)


def _trainer_step(update, step_loss: Callable[[], tuple], ph: Phases) -> None:
    """The body of Trainer.fit for one step (loss read before backward, gradients, clip, AdamW, schedule)."""
    from metakd.cpu import numpy_scope

    with numpy_scope():  # as the trainer
        loss, logs = step_loss()
        float(loss.numpy())  # the trainer's non-finite check reads the loss here
        ph.mark("loss to host")
        loss.backward()
    ph.mark("backward")
    update.gradients()
    update.apply()
    ph.mark("clip + AdamW + schedule")
    for v in logs.values():
        float(v.numpy())
    ph.mark("logs to host")


def build_stage(name: str, ctx: Ctx, total_steps: int):
    """(step function, batch Encoded) for stage ``name``; models are built here, not timed."""
    from metakd.features import to_tensors
    from metakd.runtime import flow

    ph, device = ctx.phases, ctx.device
    bs = ctx.infer_batch_size if name in ("embed", "eval", "teacher_fwd", "student_fwd") else ctx.batch_size
    vocab = min(ctx.teacher.config.vocab_size, ctx.student.config.vocab_size)
    enc = synthetic_batch(vocab, bs, ctx.seq_length, ctx.lengths, ctx.seed)
    idx = np.arange(bs)

    def batch():
        b = to_tensors(enc, idx, device, trim=True)
        ph.mark("batch to tensors")
        return b

    if name == "embed":
        from metakd.meta_model import content_vector

        backbone = plain_model(ctx.teacher).to(device).eval()
        ctx.models["teacher"] = backbone

        def step():
            b = batch()
            with flow.no_grad():
                h = backbone(b["input_ids"], b["attention_mask"], b["token_type_ids"]).last_hidden_state
                ph.mark("teacher forward")
                content_vector(h, b["attention_mask"]).numpy()
                ph.mark("masked mean + to host")
        return step, enc

    if name in ("teacher_fwd", "student_fwd", "teacher_fwdbwd", "student_fwdbwd"):
        role = name.split("_")[0]
        model = plain_model(ctx.teacher if role == "teacher" else ctx.student).to(device)
        ctx.models[role] = model
        if name.endswith("_fwd"):
            model.eval()

            def step():
                b = batch()
                with flow.no_grad():
                    model(b["input_ids"], b["attention_mask"], b["token_type_ids"])
                ph.mark("forward")
        else:
            model.train()

            def step():
                b = batch()
                out = model(b["input_ids"], b["attention_mask"], b["token_type_ids"])
                loss = out.last_hidden_state.mean() + out.pooler_output.mean()
                ph.mark("forward")
                loss.backward()
                ph.mark("backward")
                model.zero_grad(set_to_none=True)
        return step, enc

    if name == "teacher_step":
        from metakd.objectives import TeacherObjective

        model = meta_model(ctx.teacher).to(device).train()
        ctx.models["teacher"] = model
        update = _update(model, total_steps)
        objective = TeacherObjective(model, device, ctx.seed, domain_loss_weight=DOMAIN_LOSS_WEIGHT)
        objective.mark = ph.mark
        counter = [0]

        def step_loss():
            counter[0] += 1
            return objective(batch(), counter[0] - 1)

        return (lambda: _trainer_step(update, step_loss, ph)), enc

    # Evaluation loads the student alone; distillation adds a frozen teacher (eval mode, no grad).
    student = meta_model(ctx.student, fit_size=ctx.teacher.config.hidden_size).to(device)
    ctx.models["student"] = student
    if name == "eval":
        student.eval()

        def step():
            b = batch()
            with flow.no_grad():
                student(b["input_ids"], b["attention_mask"], b["token_type_ids"], logits_only=True).logits.numpy()
            ph.mark("student forward + logits to host")
        return step, enc

    teacher = meta_model(ctx.teacher).to(device).eval()
    for p in teacher.parameters():
        p.requires_grad = False
    ctx.models["teacher"] = teacher  # also keeps it alive, as distill.py does, for stage2_cached

    student.train()
    update = _update(student, total_steps)

    if name in ("stage1_step", "stage1_cached"):
        from metakd.objectives import Stage1Objective

        objective = Stage1Objective(teacher, student, device, DOMAIN_LOSS_WEIGHT)
        if name == "stage1_cached":  # as distill.py: the targets computed once (not timed), then read
            with flow.no_grad():
                objective.build_cache(enc, 4 << 30, None, progress=False)
    elif name in ("stage2_step", "stage2_cached"):
        from metakd.objectives import Stage2Objective

        objective = Stage2Objective(teacher, student, device, TEMPERATURE)
        if name == "stage2_cached":  # as distill.py: the teacher's logits computed once (not timed), then looked up
            objective.precompute_teacher_logits(enc, ctx.infer_batch_size, progress=False)
    else:
        raise ValueError(f"unknown stage {name!r}")
    objective.mark = ph.mark

    def step_loss():
        return objective(batch(), 0)

    return (lambda: _trainer_step(update, step_loss, ph)), enc


def run_stage(name: str, a: argparse.Namespace) -> dict:
    """Build, warm up and time one stage in this process."""
    from metakd.cpu import parameter_views
    from metakd.runtime import flow, resolve_device, seed_everything

    device = resolve_device(a.device)
    teacher, student = model_specs(a.pair, a.teacher, a.student)
    seed_everything(a.seed)
    ctx = Ctx(teacher, student, device, a.batch_size, a.infer_batch_size or a.batch_size, a.seq_length, a.lengths,
              a.seed, Phases(device), {})
    t0 = time.perf_counter()
    step, enc = build_stage(name, ctx, total_steps=a.warmup + a.iters + 1)
    sync(device)  # random initialisation is queued asynchronously too
    setup_s = time.perf_counter() - t0
    rss_setup = rss_mib()
    peak_reset = reset_peak_rss()
    times = []
    with parameter_views(p for m in ctx.models.values() for p in m.parameters()):  # as the trainer
        for i in range(a.warmup):
            flow.manual_seed(a.seed + i)
            step()
        sync(device)
        for i in range(a.iters):
            flow.manual_seed(a.seed + a.warmup + i)
            t = time.perf_counter()
            step()
            sync(device)
            times.append(time.perf_counter() - t)
    step_peak = peak_rss_mib()
    bs = len(enc)
    width = int(enc.attention_mask.sum(axis=1).max())  # what to_tensors trims to
    real = int(enc.attention_mask.sum())
    mean = float(np.mean(times))
    res = {
        "stage": name, "description": STAGES[name], "device": str(device), "batch_size": bs, "padded_length": width,
        "real_tokens_per_step": real, "padded_tokens_per_step": bs * width, "warmup": a.warmup, "iters": a.iters,
        "ms_per_step": round(mean * 1e3, 2), "ms_per_step_min": round(min(times) * 1e3, 2),
        "ms_per_step_median": round(float(np.median(times)) * 1e3, 2), "step_seconds": [round(t, 5) for t in times],
        "samples_per_s": round(bs / mean, 3), "real_tokens_per_s": round(real / mean, 1),
        "padded_tokens_per_s": round(bs * width / mean, 1), "setup_s": round(setup_s, 2),
        "rss_after_setup_mib": None if rss_setup is None else round(rss_setup, 1),
        "peak_rss_mib": round(process_peak_rss_mib(), 1),
        "step_peak_rss_mib": round(step_peak, 1) if peak_reset else None,
        "step_rss_delta_mib": round(step_peak - rss_setup, 1) if peak_reset and rss_setup is not None else None,
    }
    res.update(cuda_memory_mib(device))
    return res


def profile_stage(name: str, a: argparse.Namespace) -> None:
    """Time one step of ``name`` by phase and by module type, with a sync around every piece."""
    from metakd.cpu import parameter_views
    from metakd.runtime import resolve_device, seed_everything

    device = resolve_device(a.device)
    teacher, student = model_specs(a.pair, a.teacher, a.student)
    seed_everything(a.seed)
    ph = Phases(device)
    ctx = Ctx(teacher, student, device, a.batch_size, a.infer_batch_size or a.batch_size, a.seq_length, a.lengths,
              a.seed, ph, {})
    step, enc = build_stage(name, ctx, total_steps=a.warmup + 3)
    with parameter_views(p for m in ctx.models.values() for p in m.parameters()):  # as the trainer
        for _ in range(max(1, a.warmup)):
            step()
        sync(device)
        t = time.perf_counter()
        step()
        sync(device)
        plain_ms = (time.perf_counter() - t) * 1e3
        timer = ModuleTimer(device)
        for label, model in ctx.models.items():
            timer.attach(label, model)
        ph.enabled = timer.enabled = True
        t = time.perf_counter()
        ph.start()
        step()
        sync(device)
        prof_ms = (time.perf_counter() - t) * 1e3
        ph.enabled = timer.enabled = False

    width = int(enc.attention_mask.sum(axis=1).max())
    print(f"\nprofile of one {name} step: {STAGES[name]}")
    print(f"{ctx.teacher.describe()}\n{ctx.student.describe()}")
    print(f"batch {len(enc)} x {width} tokens, device {device}; step {plain_ms:.1f} ms unprofiled, {prof_ms:.1f} ms "
          "with the profiler's syncs")
    print("\nWhat this measures: wall time with a full OneFlow sync at every phase boundary and before and after every "
          "module's forward (forward hooks; OneFlow 0.9's own profiler aborts on a machine without CUDA). Module rows "
          "are *self* times (a module minus the sub-modules it calls), summed over the step by model and module type; "
          "the backward pass and the optimizer are timed as phases only. Syncing after every module serialises "
          "Python dispatch with the kernels, so the rows add a little to what the plain step costs.\n")
    total = sum(ph.times.values())
    from metakd.cli import print_table

    print_table([{"phase": k, "ms": f"{v * 1e3:.1f}", "%": f"{100 * v / total:.1f}"} for k, v in ph.times.items()],
                ["phase", "ms", "%"])
    fwd = sum(timer.self_time.values())
    rows = sorted(timer.self_time.items(), key=lambda kv: -kv[1])
    print(f"\nforward time inside modules: {fwd * 1e3:.1f} ms ({100 * fwd / total:.1f}% of the profiled step); "
          f"top {min(PROFILE_TOP, len(rows))} by self time:")
    print_table([{"model module": k, "calls": timer.calls[k], "ms": f"{v * 1e3:.1f}", "% of step": f"{100 * v / total:.1f}",
                  "self time is": MODULE_SELF.get(k.split(" ", 1)[1], "(glue: calls its sub-modules)")}
                 for k, v in rows[:PROFILE_TOP]],
                ["model module", "calls", "ms", "% of step", "self time is"])
    print("\nForward time outside the modules (losses, domain branch arithmetic, weights) is the phase time minus "
          "the module rows.")


# -- the command ------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from metakd import cli

    p = cli.parser("python -m metakd.bench", __doc__ + "\nStages:\n" + "\n".join(f"  {k:15s} {v}" for k, v in STAGES.items()))
    p.add_argument("--pair", default=PAIR, choices=["shared", "paper", "tiny"],
                   help="shared: the two real MiniLM folders (--teacher/--student); paper: bert-base -> TinyBERT-4L "
                        "sizes, random weights; tiny: tiny random sizes (tests)")
    p.add_argument("--teacher", type=Path, default=SHARED_TEACHER, help="teacher BERT folder for --pair shared")
    p.add_argument("--student", type=Path, default=SHARED_STUDENT, help="student BERT folder for --pair shared")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="examples per training step")
    p.add_argument("--infer-batch-size", type=int, default=None,
                   help="examples per no-grad step (embed, eval, *_fwd); default: --batch-size (the pipeline uses 64)")
    p.add_argument("--seq-length", type=int, default=SEQ_LENGTH, help="padded length, [CLS]/[SEP] included")
    p.add_argument("--lengths", default=LENGTHS, choices=["reviews", "full"],
                   help="real lengths per row: like the Amazon reviews (mean ~74%% of the length, one row full), or all full")
    p.add_argument("--warmup", type=int, default=WARMUP, help="untimed steps per stage")
    p.add_argument("--iters", type=int, default=ITERS, help="timed steps per stage")
    p.add_argument("--device", default=DEVICE, help="auto (CUDA when available), cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--stages", default=",".join(STAGES), help="comma-separated stages to run")
    p.add_argument("--no-isolate", dest="isolate", action="store_false",
                   help="run all stages in this process (faster start; peak RSS then accumulates across stages)")
    p.add_argument("--only", choices=list(STAGES), metavar="STAGE",
                   help="run just this stage in this process (what each isolated subprocess does)")
    p.add_argument("--result-file", type=Path, help=argparse.SUPPRESS)  # subprocess -> parent
    p.add_argument("--profile", choices=list(STAGES), metavar="STAGE",
                   help="instead of timing, profile one step of STAGE by phase and module type")
    p.add_argument("--json", type=Path, help="also write the results to this JSON file")
    p.add_argument("--cpu-kernels", choices=["numpy", "oneflow"],
                   default="oneflow" if os.environ.get("METAKD_CPU_MATMUL") == "oneflow" else "numpy",
                   help="on CPU: numpy (the pipeline's default) or OneFlow's own kernels (as on CUDA)")
    p.add_argument("--native-layernorm", action="store_true", default=os.environ.get("METAKD_NATIVE_LAYERNORM") == "1",
                   help="on CPU: OneFlow's own LayerNorm kernel instead of metakd's (to measure what that saves)")
    return p


def _child_argv(a: argparse.Namespace, stage: str, device: str, result: Path) -> List[str]:
    argv = [sys.executable, "-m", "metakd.bench", "--pair", a.pair, "--teacher", str(a.teacher), "--student",
            str(a.student), "--batch-size", str(a.batch_size), "--seq-length", str(a.seq_length), "--lengths",
            a.lengths, "--warmup", str(a.warmup), "--iters", str(a.iters), "--device", device, "--seed", str(a.seed),
            "--only", stage, "--result-file", str(result), "--cpu-kernels", a.cpu_kernels]
    if a.native_layernorm:
        argv.append("--native-layernorm")
    if a.infer_batch_size:
        argv += ["--infer-batch-size", str(a.infer_batch_size)]
    return argv


def run_isolated(stage: str, a: argparse.Namespace, device: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    with tempfile.TemporaryDirectory(prefix="metakd-bench-") as d:
        result = Path(d) / "result.json"
        proc = subprocess.run(_child_argv(a, stage, device, result), env=env)
        if proc.returncode != 0 or not result.exists():
            return {"stage": stage, "description": STAGES[stage], "error": f"subprocess exited with {proc.returncode}"}
        return json.loads(result.read_text())


def device_arg(device) -> str:
    """A flow.device as a --device value (``str`` gives "cpu:0", which resolve_device refuses)."""
    return "cpu" if device.type == "cpu" else f"cuda:{device.index or 0}"


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_results(results: List[dict]) -> None:
    from metakd.cli import print_table

    rows = []
    for r in results:
        if "error" in r:
            rows.append({"stage": r["stage"], "ms/step": "FAILED"})
            continue
        rows.append({
            "stage": r["stage"], "ms/step": _fmt(r["ms_per_step"], ".1f"), "min ms": _fmt(r["ms_per_step_min"], ".1f"),
            "samples/s": _fmt(r["samples_per_s"], ".2f"),
            "real tok/s": _fmt(r["real_tokens_per_s"], ".0f"), "padded tok/s": _fmt(r["padded_tokens_per_s"], ".0f"),
            "batch": f"{r['batch_size']}x{r['padded_length']}", "peak RSS MiB": _fmt(r["peak_rss_mib"], ".0f"),
            "step +RSS MiB": _fmt(r.get("step_rss_delta_mib"), ".0f"),
            "CUDA MiB": _fmt(r.get("cuda_mib"), ".0f") if "cuda_mib" in r else "-", "device": r["device"]})
    print_table(rows, ["stage", "ms/step", "min ms", "samples/s", "real tok/s", "padded tok/s", "batch", "peak RSS MiB",
                       "step +RSS MiB", "CUDA MiB", "device"])
    for r in results:
        if "error" in r:
            print(f"{r['stage']} failed: {r['error']} (its output is above)")


def _main(argv=None) -> int:
    from metakd.infra.errors import UserError

    a = build_parser().parse_args(argv)  # (applies --cpu-kernels)
    if a.native_layernorm:
        from metakd.bert import LayerNorm

        LayerNorm.native_on_cpu = True
    if a.iters < 1 or a.warmup < 0:
        raise UserError(f"--iters must be >= 1 and --warmup >= 0, got {a.iters} and {a.warmup}")
    if a.batch_size < 1 or (a.infer_batch_size is not None and a.infer_batch_size < 1) or a.seq_length < 3:
        raise UserError("--batch-size and --infer-batch-size must be >= 1 and --seq-length >= 3")
    for out in (a.json, getattr(a, "result_file", None)):  # before the benchmark runs, not after
        if out and Path(out).is_dir():
            raise UserError("is a folder; give a file name for the results", out)
        if out:
            from metakd.infra.fileio import check_writable

            check_writable(out)
    a.teacher, a.student = a.teacher.resolve(), a.student.resolve()
    from metakd.runtime import flow, resolve_device

    device = resolve_device(a.device)
    teacher, student = model_specs(a.pair, a.teacher, a.student)
    for spec in (teacher, student):
        if a.seq_length > spec.config.max_position_embeddings:
            raise UserError(f"--seq-length {a.seq_length} exceeds the {spec.role}'s max_position_embeddings "
                            f"{spec.config.max_position_embeddings}")

    if a.only:
        res = run_stage(a.only, a)
        print(f"  {a.only}: {res['ms_per_step']:.1f} ms/step, {res['samples_per_s']:.2f} samples/s", flush=True)
        if a.result_file:
            from metakd.infra.fileio import write_json

            write_json(a.result_file, res)
        return 0
    if a.profile:
        profile_stage(a.profile, a)
        return 0

    stages = [s.strip() for s in a.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise UserError(f"unknown stage {unknown[0]!r}; choose from {', '.join(STAGES)}")
    from metakd import bert, cpu

    meta = {
        "pair": a.pair, "teacher": teacher.describe(), "student": student.describe(), "device": str(device),
        "batch_size": a.batch_size, "infer_batch_size": a.infer_batch_size or a.batch_size, "seq_length": a.seq_length,
        "lengths": a.lengths, "warmup": a.warmup, "iters": a.iters, "isolated": a.isolate,
        "oneflow": flow.__version__, "python": platform.python_version(), "host": platform.node(),
        "cpu_kernels": cpu.current_kernels(), "layernorm": "oneflow" if bert.LayerNorm.native_on_cpu else "matmul",
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "timing": "mean wall time per step after a full OneFlow sync; synthetic token ids",
        "memory": "peak_rss_mib: peak RSS of the process (one stage per process when isolated); step_rss_delta_mib: "
                  "peak during the steps minus RSS after building the models",
    }
    print(f"metakd bench: pair {a.pair}, device {device}, batch {a.batch_size}, seq {a.seq_length} ({a.lengths} lengths), "
          f"warmup {a.warmup}, iters {a.iters}, OneFlow {flow.__version__}, {meta['cpus_usable']} usable CPUs")
    print(f"  {teacher.describe()}\n  {student.describe()}", flush=True)
    results = []
    for s in stages:
        if a.isolate:
            results.append(run_isolated(s, a, device_arg(device)))
        else:
            r = run_stage(s, a)
            print(f"  {s}: {r['ms_per_step']:.1f} ms/step", flush=True)
            results.append(r)
    print()
    print_results(results)
    print("\nms/step: mean over the timed steps (min ms: the fastest one); samples/s and tok/s from the mean. Real "
          "tokens = attention-mask sum, padded = batch x padded length. peak RSS: the stage's process"
          + (" (one per stage)" if a.isolate else " (all stages so far: --no-isolate)")
          + "; step +RSS: peak during the steps minus RSS once the models were built.")
    if a.json:
        from metakd.infra.fileio import write_json

        write_json(a.json, {"meta": meta, "stages": {r["stage"]: r for r in results}})
        print(f"wrote {a.json}")
    return 1 if any("error" in r for r in results) else 0


def main(argv=None) -> int:
    from metakd.infra.entry import cli_main

    return cli_main(_main)(argv)


if __name__ == "__main__":
    sys.exit(main())
