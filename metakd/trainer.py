"""The one training loop shared by the meta-teacher and both distillation stages.

It owns what every stage needs: AdamW + warm-up/decay and gradient clipping (``optim.make_update``:
numpy on CPU, OneFlow's kernels on CUDA), a log line every N
steps, a progress bar, dev evaluation every N steps with the best checkpoint kept, a resumable
state every N steps, a stop on a non-finite loss, and ``results.json`` beside the model. A stage
supplies only ``step_loss(batch, step) -> (loss, logs)``, an ``evaluate() -> metrics`` (or
none), and ``save_model(folder, results)``.

Files. While a run is going, everything it writes lives in ``<out>.resume/``:
``state/`` (the resumable state: model, optimizer and scheduler, progress with the data
position, written atomically every ``save_every`` steps) and ``best/`` (the best checkpoint so
far). Only when the run finishes is ``best/`` (with ``results.json``) swapped into ``<out>`` in one
rename, and ``<out>.resume`` removed; so an existing ``<out>`` is never touched by a run that
fails, diverges or is killed. ``.<out>.lock`` beside it keeps a second run out of the folder.

Reproducibility and exact resumption: the batch order of an epoch is a function of (seed,
epoch); before every step OneFlow's global RNG and every dropout module's own generator are
re-seeded from (seed, rank, step), so no RNG state has to be carried over: a run resumed from a
saved state repeats the uninterrupted run bit for bit on CPU. A saved state is used only by the
same command (a fingerprint of the settings and of the encoded data must match).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from tqdm.auto import tqdm

from metakd.infra.errors import UserError
from metakd.features import Encoded, to_tensors, train_batches
from metakd.infra.fileio import atomic_dir, remove_stale, replace_dir, write_json
from metakd.infra.locks import claim, output_lock
from metakd.cpu import current_kernels as cpu_kernels
from metakd.cpu import numpy_scope, parameter_views
from metakd.optim import make_update
from metakd.runtime import TF32, barrier, broadcast_parameters, flow
from metakd.runtime import rank as rank_of_process
from metakd.runtime import world_size as processes

RESUME_SUFFIX = ".resume"
STATE = "state"
BEST = "best"


@dataclass
class TrainArgs:
    epochs: int = 1
    batch_size: int = 16
    lr: float = 3e-5
    weight_decay: float = 1e-4
    warmup_proportion: float = 0.1
    max_grad_norm: float = 1.0
    adam_eps: float = 1e-6
    adamw: str = "pytorch"       # or "huggingface": EasyNLP's AdamW (COMPAT=easynlp), optim.HFAdamWState
    seed: int = 42
    log_every: int = 20
    eval_every: int = 50         # steps; 0 = only at the end of each epoch
    save_every: int = 50         # steps between resumable states; 0 = never
    max_steps: int = 0           # 0 = epochs decide; >0 stops early (smoke tests, benchmarks)
    resume: bool = True          # continue from <out>.resume when its configuration matches

    def validate(self) -> None:
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}"),
            (0 < self.lr < 1, f"learning rate must be in (0, 1), got {self.lr}"),
            (0 <= self.seed < 2**32, f"seed must be in [0, 2^32), got {self.seed}"),
            (0 <= self.warmup_proportion < 1, f"warm-up proportion must be in [0, 1), got {self.warmup_proportion}"),
            (0 < self.max_grad_norm < math.inf, f"max grad norm must be > 0 and finite, got {self.max_grad_norm}"),
            (0 <= self.weight_decay < math.inf, f"weight decay must be >= 0 and finite, got {self.weight_decay}"),
            (self.log_every >= 1, f"log interval must be >= 1, got {self.log_every}"),
            (self.eval_every >= 0 and self.save_every >= 0 and self.max_steps >= 0, "step intervals must be >= 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise UserError(msg)


@dataclass
class Progress:
    global_step: int = 0
    best_metric: float = -math.inf
    best_step: int = -1
    best_eval: Dict[str, float] = field(default_factory=dict)
    history: List[dict] = field(default_factory=list)
    train_loss: List[float] = field(default_factory=list)  # every step's loss (exact across resumes)
    train_seconds: float = 0.0
    samples_seen: int = 0
    tokens_seen: int = 0


class TrainingDiverged(UserError):
    """The loss or the gradient became NaN/inf; nothing was written to the output folder."""


def check_output_dir(out_dir: Path) -> None:
    """``out_dir`` may be (re)written: it is absent, empty, or a model folder metakd wrote."""
    out_dir = Path(out_dir)
    if out_dir.is_symlink() and not out_dir.exists():
        raise UserError("the output is a broken symbolic link; remove it or choose another output folder", out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError("the output exists and is a file, not a folder; choose another output folder", out_dir)
    if out_dir.is_dir() and any(out_dir.iterdir()):
        config = out_dir / "config.json"
        try:
            ours = "metakd" in json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError, TypeError):
            ours = False
        if not ours:
            raise UserError("the output folder exists and holds files that metakd did not write (no config.json with a "
                            "'metakd' section); it would be replaced, so choose a new or empty folder", out_dir)
    parent = out_dir.parent if out_dir.parent != Path("") else Path(".")
    blocker = next((p for p in [parent, *parent.parents] if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise UserError("a file is in the way of the output folder; move it or choose another output folder", blocker)
    if parent.exists() and not os.access(parent, os.W_OK | os.X_OK):
        raise UserError("no permission to write here; choose another output folder", parent)


def claim_output(out_dir: Path, inputs: Sequence[Path] = ()) -> None:
    """For an entry point, before any work: check ``out_dir`` (not one of the ``inputs``, which it
    would replace) and lock it until the entry point returns (``cli_main`` releases it) or the
    process ends."""
    out_dir = Path(out_dir)
    for src in inputs:
        if src is not None and Path(src).exists() and out_dir.exists() and out_dir.resolve() == Path(src).resolve():
            raise UserError(f"the output folder is also an input ({src}); the run would replace it: choose another "
                            "output folder", out_dir)
    if rank_of_process() != 0:
        return  # under the launcher, the first process owns the output folder
    check_output_dir(out_dir)
    claim(out_dir)


def _step_seed(seed: int, step: int) -> int:
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])


def dropout_generators(modules: Sequence) -> List:
    """The private RNGs of the dropout modules in ``modules`` (OneFlow gives every ``nn.Dropout``
    its own generator, all with the same fixed seed; metakd's ``Dropout`` adds a numpy one for its
    CPU masks), each once, in module order."""
    gens, seen = [], set()
    for module in modules:
        if module is None:
            continue
        for m in module.modules():
            for attr in ("generator", "numpy_generator"):  # OneFlow's; metakd's numpy masks on CPU
                g = getattr(m, attr, None)
                if g is not None and hasattr(g, "manual_seed") and id(g) not in seen:
                    seen.add(id(g))
                    gens.append(g)
    return gens


def seed_step(seed: int, rank: int, step: int, generators: Sequence) -> None:
    """Re-seed every RNG a training step uses from (seed, rank, step) alone."""
    flow.manual_seed(_step_seed(seed * 1000 + rank, step))
    if generators:
        seeds = np.random.SeedSequence([seed, rank, step, 1]).generate_state(len(generators), dtype=np.uint64)
        for g, value in zip(generators, seeds):
            g.manual_seed(int(value >> np.uint64(1)))


def _tree_sha256(path: Path) -> str:
    """One SHA-256 over the files under ``path`` (OneFlow saves a state as a folder), names included."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in files:
        h.update(str(p.relative_to(path) if path.is_dir() else p.name).encode())
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def data_fingerprint(data: Encoded) -> str:
    """A hash of the encoded training data: a saved state is resumed only on the same data."""
    h = hashlib.sha256()
    for a in (data.input_ids, data.attention_mask, data.token_type_ids, data.labels, data.domains, data.weights):
        arr = np.ascontiguousarray(a)
        h.update(str((arr.dtype.str, arr.shape)).encode())
        h.update(arr.tobytes())
    return h.hexdigest()[:16]


class Trainer:
    """Runs ``args.epochs`` epochs of ``step_loss`` over ``data`` and keeps the best model.

    ``rng_modules``: other modules whose dropout runs during a step (a teacher left in training
    mode); their generators are re-seeded every step like the model's.
    """

    def __init__(self, model, data: Encoded, step_loss: Callable[[dict, int], Tuple[flow.Tensor, Dict[str, flow.Tensor]]],
                 args: TrainArgs, device, out_dir: Path, save_model: Callable[[Path, dict], None],
                 evaluate: Optional[Callable[[], Dict[str, float]]] = None, select_metric: str = "accuracy",
                 trim: bool = True, stage: str = "train", fingerprint: Optional[dict] = None,
                 rank: Optional[int] = None, world_size: Optional[int] = None, train_module=None, progress: bool = True,
                 rng_modules: Sequence = ()):
        args.validate()
        if len(data) == 0:
            raise UserError(f"[{stage}] no training examples")
        self.model = model
        self.train_module = train_module or model  # a DDP wrapper when distributed
        self.data = data
        self.step_loss = step_loss
        self.args = args
        self.device = device
        self.out_dir = Path(out_dir)
        self.resume_dir = self.out_dir.parent / (self.out_dir.name + RESUME_SUFFIX)
        self.state_dir = self.resume_dir / STATE
        self.best_dir = self.resume_dir / BEST
        self.save_model = save_model
        self.evaluate = evaluate
        self.select_metric = select_metric
        self.trim = trim
        self.stage = stage
        # Under oneflow.distributed.launch: this process's shard of every global batch.
        self.rank = rank_of_process() if rank is None else rank
        self.world_size = processes() if world_size is None else world_size
        self.progress_bar = progress
        self.generators = dropout_generators([model, *rng_modules])
        # Token-embedding tables get a gradient only in the rows of the batch's token ids: the
        # all-reduce sends just those rows (see all_reduce_mean_grads).
        self.token_tables = [m.weight for name, m in model.named_modules()
                             if name.split(".")[-1] == "word_embeddings" and m.weight.requires_grad]
        broadcast_parameters(model)
        # Each global batch is split across the processes by real tokens (train_batches).
        self.lengths = data.lengths if self.world_size > 1 else None
        self.steps_per_epoch = len(train_batches(len(data), args.batch_size, args.seed, 0, self.rank, self.world_size,
                                                 self.lengths))
        total = args.epochs * self.steps_per_epoch
        self.total_steps = min(total, args.max_steps) if args.max_steps else total
        self.update = make_update(model, args.lr, args.weight_decay, self.total_steps, args.warmup_proportion,
                                  eps=args.adam_eps, max_grad_norm=args.max_grad_norm, variant=args.adamw)
        fp = {"stage": stage, "n_train": len(data), "data": data_fingerprint(data), "world_size": self.world_size,
              "update": type(self.update).__name__,  # its saved state has this one's layout
              # (the default AdamW is left out: states saved before the choice existed still resume)
              **{k: v for k, v in asdict(args).items() if not (k == "adamw" and v == "pytorch")},
              # on CUDA the matmul precision changes the trajectory (CPU runs are unaffected)
              **({"tf32": TF32} if str(device).startswith("cuda") else {}),
              **(fingerprint or {})}
        fp.pop("resume", None)
        self.fingerprint = hashlib.sha256(json.dumps(fp, sort_keys=True, default=str).encode()).hexdigest()[:16]
        self.progress = Progress()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- resumable state ---------------------------------------------------------------------------
    def _save_resume_state(self) -> None:
        """model + optimizer + scheduler + progress (the data position is ``global_step``), atomically."""
        from metakd.infra.fileio import save_safetensors as save_file  # a full disk: an OSError naming the file

        from metakd.checkpoint import sha256_file, state_dict_numpy

        if not self.is_main:
            return
        with atomic_dir(self.state_dir) as tmp:
            save_file(state_dict_numpy(self.model), str(tmp / "model.safetensors"), metadata={"format": "metakd-resume"})
            flow.save(self.update.state_dict(), str(tmp / "optim"))
            write_json(tmp / "progress.json", {
                "fingerprint": self.fingerprint, "weights_sha256": sha256_file(tmp / "model.safetensors"),
                "optim_sha256": _tree_sha256(tmp / "optim"),
                "rng": "re-seeded every step from (seed, rank, step)", "progress": asdict(self.progress)})

    def _check_fingerprint(self, saved: dict) -> None:
        if saved.get("fingerprint") != self.fingerprint:
            raise UserError("a saved training state of a run with other settings or data is here; pass --restart (or "
                            f"delete {self.resume_dir}) to start this run from scratch, or rerun the original command "
                            "to continue it", self.resume_dir)

    def check_saved_state(self) -> None:
        """Before costly preparation (stage 1's teacher cache): a saved state this run would refuse
        to resume is an error now, not after the preparation."""
        path = self.state_dir / "progress.json"
        if not self.args.resume or not path.exists():
            return
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, OSError):
            raise self._damaged("progress.json unreadable") from None
        self._check_fingerprint(saved)

    def _damaged(self, what: str) -> UserError:
        return UserError(f"the saved training state is damaged ({what}); delete {self.resume_dir} or pass --restart to "
                         "start this run from scratch", self.state_dir)

    def _try_resume(self) -> bool:
        from metakd.checkpoint import assign_state_dict, load_flow_state, read_safetensors

        d = self.state_dir
        if not (d / "progress.json").exists():
            return False
        try:
            saved = json.loads((d / "progress.json").read_text(encoding="utf-8"))
            progress = Progress(**saved["progress"])
        except (ValueError, OSError, KeyError, TypeError):
            raise self._damaged("progress.json unreadable") from None
        self._check_fingerprint(saved)
        fix = f"delete {self.resume_dir} or pass --restart to start over"
        if "optim_sha256" in saved and _tree_sha256(d / "optim") != saved["optim_sha256"]:
            raise self._damaged("the optimizer state's checksum does not match")
        arrays = read_safetensors(d / "model.safetensors", saved.get("weights_sha256"), fix=fix)
        report = assign_state_dict(self.model, arrays, d, "resume")
        if report.missing or report.unexpected:
            raise self._damaged("the weights do not match the model")
        st = load_flow_state(d / "optim", "the saved optimizer state", fix)
        try:
            self.update.load_state_dict(st)
        except (KeyError, ValueError, TypeError):
            raise self._damaged("optimizer state does not fit the model") from None
        self.progress = progress
        return True

    # -- the loop ----------------------------------------------------------------------------------
    def _log(self, msg: str) -> None:
        if self.is_main:
            tqdm.write(msg)

    def _evaluate_and_select(self, epoch: int) -> None:
        if self.evaluate is None:
            return
        # Every process evaluates (inference shares the dev batches between them) and so keeps the
        # same history; only the first one saves.
        metrics = self.evaluate()
        p = self.progress
        entry = {"step": p.global_step, "epoch": epoch, **metrics}
        p.history.append(entry)
        value = metrics[self.select_metric]
        better = value > p.best_metric
        if better:
            p.best_metric, p.best_step, p.best_eval = value, p.global_step, dict(metrics)
            if self.is_main:
                self.save_model(self.best_dir, self.results())
        self._log(f"[{self.stage}] eval step {p.global_step}: " + " ".join(
            f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)) + (" (best so far)" if better else ""))

    def results(self) -> dict:
        p = self.progress
        secs = max(p.train_seconds, 1e-9)
        return {
            "stage": self.stage,
            "steps": p.global_step,
            "total_steps": self.total_steps,
            "epochs": self.args.epochs,
            "best_step": p.best_step if self.evaluate is not None else p.global_step,
            "selected_by": f"dev {self.select_metric}" if self.evaluate is not None else "final step (no dev selection)",
            "dev": p.best_eval,
            "history": p.history,
            "train_loss": p.train_loss,
            "train_seconds": round(p.train_seconds, 3),
            "train_samples_per_second": round(p.samples_seen / secs, 3),
            "train_tokens_per_second": round(p.tokens_seen / secs, 1),
            "world_size": self.world_size,
            "kernels": ("cuda-tf32" if TF32 else "cuda") if self.device.type == "cuda" else f"cpu-{cpu_kernels()}",
            "args": asdict(self.args),
        }

    def _diverged(self, what: str, value: float, step: int) -> TrainingDiverged:
        p = self.progress
        kept = []
        if self.best_dir.exists() and p.best_step >= 0:
            kept.append(f"the best model so far (step {p.best_step}) is in {self.best_dir}")
        if self.state_dir.exists():
            kept.append(f"the last resumable state is in {self.state_dir}")
        kept.append(f"{self.out_dir} was not changed")
        return TrainingDiverged(
            f"[{self.stage}] the {what} became {value} at step {step + 1}; training stopped. " + "; ".join(kept)
            + f". Lower the learning rate (--lr, now {self.args.lr:g}) or check the data, then run again with --restart")

    def _start(self) -> None:
        """Under the lock: resume or start clean, removing what a killed run left half-written."""
        if self.is_main:
            for path in (self.out_dir, self.resume_dir, self.state_dir, self.best_dir):
                remove_stale(path)
        barrier()  # the others read the state only after rank 0 has cleaned up
        resumed = self.args.resume and self._try_resume()
        barrier()  # ... and rank 0 removes it only after everyone has read it
        if resumed:
            self._log(f"[{self.stage}] resuming from {self.state_dir} at step {self.progress.global_step}/{self.total_steps}")
        elif self.resume_dir.exists() and self.is_main:
            shutil.rmtree(self.resume_dir)

    def _finish(self, results: dict) -> None:
        """Publish: ``best/`` + results.json replaces ``out_dir`` in one rename; the resume folder goes."""
        if not self.is_main:
            return
        if self.evaluate is None or not self.best_dir.exists():
            self.save_model(self.best_dir, results)
        write_json(self.best_dir / "results.json", results)
        # Retire the resumable state first (one rename): if the process dies from here on, a rerun
        # starts over instead of resuming into a folder that may already hold the published model.
        if self.state_dir.exists():
            os.replace(self.state_dir, self.resume_dir / f".{STATE}.done.tmp")
        replace_dir(self.best_dir, self.out_dir)
        shutil.rmtree(self.resume_dir, ignore_errors=True)

    def fit(self) -> dict:
        """Train; returns the results (also written to ``<out>/results.json``)."""
        args = self.args
        with (output_lock(self.out_dir) if self.is_main else contextlib.nullcontext()):
            if self.is_main:
                check_output_dir(self.out_dir)
            self._start()
            p = self.progress
            self.train_module.train()
            bar = tqdm(total=self.total_steps, initial=p.global_step, desc=self.stage, disable=None if (self.is_main and self.progress_bar) else True,
                       dynamic_ncols=True, leave=False)
            running: Dict[str, float] = {}
            n_running = 0
            t_log = time.perf_counter()
            samples_since_log = 0
            done = p.global_step >= self.total_steps
            # Parameters are read through numpy views taken once (metakd.cpu.parameter_views); each
            # update's apply() leaves them current (OneFlow's AdamW writes asynchronously: it syncs).
            with parameter_views(self.model.parameters()):
                for epoch in range(args.epochs):
                    if done:
                        break
                    if (epoch + 1) * self.steps_per_epoch <= p.global_step:
                        continue  # the whole epoch was done before the resume
                    batches = train_batches(len(self.data), args.batch_size, args.seed, epoch, self.rank, self.world_size,
                                            self.lengths)
                    first = epoch * self.steps_per_epoch
                    for i, idx in enumerate(batches):
                        step = first + i
                        if step < p.global_step:
                            continue  # already done before the resume
                        t0 = time.perf_counter()
                        seed_step(args.seed, self.rank, step, self.generators)
                        batch = to_tensors(self.data, idx, self.device, trim=self.trim)
                        with numpy_scope():  # the forward and backward of one step (metakd.cpu.views)
                            loss, logs = self.step_loss(batch, step)
                            loss_value = float(loss.numpy())
                            if not math.isfinite(loss_value) and self.world_size == 1:
                                raise self._diverged("loss", loss_value, step)
                            loss.backward()
                        # Averaged over the processes (a non-finite loss on one of them makes the mean
                        # non-finite on all, so all stop below), then clipped and applied.
                        grad_norm = self.update.gradients({id(w): batch["input_ids"] for w in self.token_tables})
                        if not math.isfinite(loss_value):
                            raise self._diverged("loss", loss_value, step)
                        if not math.isfinite(grad_norm):
                            raise self._diverged("gradient norm", grad_norm, step)
                        self.update.apply()
                        p.global_step = step + 1
                        p.train_seconds += time.perf_counter() - t0
                        p.samples_seen += len(idx) * self.world_size
                        p.tokens_seen += int(self.data.attention_mask[idx].sum()) * self.world_size
                        samples_since_log += len(idx) * self.world_size
                        running["loss"] = running.get("loss", 0.0) + loss_value
                        p.train_loss.append(round(loss_value, 6))
                        for k, v in logs.items():
                            running[k] = running.get(k, 0.0) + float(v.numpy())
                        n_running += 1
                        bar.update(1)
                        if p.global_step % args.log_every == 0 or p.global_step == self.total_steps:
                            dt = time.perf_counter() - t_log
                            lr = self.update.lr
                            self._log(f"[{self.stage}] epoch {epoch + 1}/{args.epochs} step {p.global_step}/{self.total_steps} "
                                      + " ".join(f"{k} {v / n_running:.4f}" for k, v in running.items())
                                      + f" lr {lr:.3g} | {samples_since_log / max(dt, 1e-9):.1f} samples/s")
                            running, n_running, samples_since_log, t_log = {}, 0, 0, time.perf_counter()
                        end_of_epoch = i == len(batches) - 1
                        finished = p.global_step >= self.total_steps
                        if (args.eval_every and p.global_step % args.eval_every == 0) or ((end_of_epoch or finished) and not args.eval_every):
                            self._evaluate_and_select(epoch + 1)
                            self.train_module.train()
                        if args.save_every and p.global_step % args.save_every == 0 and not finished:
                            self._save_resume_state()
                        if finished:
                            done = True
                            break
            bar.close()
            # The last steps since the previous evaluation must be judged too.
            if self.evaluate is not None and (not p.history or p.history[-1]["step"] != p.global_step):
                self._evaluate_and_select(args.epochs)
            results = self.results()
            self._finish(results)
        return results
