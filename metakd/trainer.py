"""The one training loop shared by the meta-teacher and both distillation stages.

It owns what every stage needs: AdamW + warm-up/decay, gradient clipping, a log line every N
steps, a progress bar, dev evaluation every N steps with the best checkpoint kept, a resumable
state every N steps, a stop on a non-finite loss, and ``results.json`` beside the model. A stage
supplies only ``step_loss(batch, step) -> (loss, logs)``, an ``evaluate() -> metrics`` (or
none), and ``save_model(folder, results)``.

Reproducibility and exact resumption: the batch order of an epoch is a function of (seed,
epoch) and OneFlow's RNG is re-seeded from (seed, step) before every step, so a run resumed
from a saved state repeats the uninterrupted run bit for bit on CPU.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
from tqdm.auto import tqdm

from metakd.errors import UserError
from metakd.features import Encoded, to_tensors, train_batches
from metakd.fileio import atomic_dir, write_json
from metakd.optim import make_optimizer
from metakd.runtime import flow

RESUME_SUFFIX = ".resume"


@dataclass
class TrainArgs:
    epochs: int = 1
    batch_size: int = 16
    lr: float = 3e-5
    weight_decay: float = 1e-4
    warmup_proportion: float = 0.1
    max_grad_norm: float = 1.0
    adam_eps: float = 1e-6
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
            (0 <= self.warmup_proportion < 1, f"warm-up proportion must be in [0, 1), got {self.warmup_proportion}"),
            (self.max_grad_norm > 0, f"max grad norm must be > 0, got {self.max_grad_norm}"),
            (self.weight_decay >= 0, f"weight decay must be >= 0, got {self.weight_decay}"),
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
    train_seconds: float = 0.0
    samples_seen: int = 0
    tokens_seen: int = 0


class TrainingDiverged(UserError):
    pass


@contextlib.contextmanager
def output_lock(out_dir: Path):
    """One run per output folder: a second run into the same folder stops with a clear message."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    lock_path = out_dir.parent / f".{out_dir.name}.lock"
    f = open(lock_path, "w")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise UserError("another metakd run is writing this output folder right now; wait for it or choose another output", out_dir) from None
    try:
        f.write(str(os.getpid()))
        f.flush()
        yield
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()
        with contextlib.suppress(FileNotFoundError):
            lock_path.unlink()


def _step_seed(seed: int, step: int) -> int:
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])


class Trainer:
    """Runs ``args.epochs`` epochs of ``step_loss`` over ``data`` and keeps the best model."""

    def __init__(self, model, data: Encoded, step_loss: Callable[[dict, int], Tuple[flow.Tensor, Dict[str, flow.Tensor]]],
                 args: TrainArgs, device, out_dir: Path, save_model: Callable[[Path, dict], None],
                 evaluate: Optional[Callable[[], Dict[str, float]]] = None, select_metric: str = "accuracy",
                 trim: bool = True, stage: str = "train", fingerprint: Optional[dict] = None,
                 rank: int = 0, world_size: int = 1, train_module=None, progress: bool = True):
        args.validate()
        self.model = model
        self.train_module = train_module or model  # a DDP wrapper when distributed
        self.data = data
        self.step_loss = step_loss
        self.args = args
        self.device = device
        self.out_dir = Path(out_dir)
        self.resume_dir = self.out_dir.parent / (self.out_dir.name + RESUME_SUFFIX)
        self.save_model = save_model
        self.evaluate = evaluate
        self.select_metric = select_metric
        self.trim = trim
        self.stage = stage
        self.rank = rank
        self.world_size = world_size
        self.progress_bar = progress
        self.steps_per_epoch = len(train_batches(len(data), args.batch_size, args.seed, 0, rank, world_size))
        total = args.epochs * self.steps_per_epoch
        self.total_steps = min(total, args.max_steps) if args.max_steps else total
        self.optimizer, self.scheduler = make_optimizer(model, args.lr, args.weight_decay, self.total_steps,
                                                        args.warmup_proportion, eps=args.adam_eps)
        fp = {"stage": stage, "n_train": len(data), "world_size": world_size, **asdict(args), **(fingerprint or {})}
        fp.pop("resume", None)
        self.fingerprint = hashlib.sha256(json.dumps(fp, sort_keys=True, default=str).encode()).hexdigest()[:16]
        self.progress = Progress()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- resumable state ---------------------------------------------------------------------------
    def _save_resume_state(self) -> None:
        from safetensors.numpy import save_file

        from metakd.checkpoint import state_dict_numpy

        if not self.is_main:
            return
        with atomic_dir(self.resume_dir) as tmp:
            save_file(state_dict_numpy(self.model), str(tmp / "model.safetensors"))
            flow.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}, str(tmp / "optim"))
            write_json(tmp / "progress.json", {"fingerprint": self.fingerprint, **asdict(self.progress)})

    def _try_resume(self) -> bool:
        from metakd.checkpoint import assign_state_dict, read_safetensors

        d = self.resume_dir
        if not (d / "progress.json").exists():
            return False
        try:
            saved = json.loads((d / "progress.json").read_text())
        except (json.JSONDecodeError, OSError):
            raise UserError("the saved training state is damaged; delete the folder to start over", d) from None
        if saved.get("fingerprint") != self.fingerprint:
            raise UserError("a saved training state of a run with other settings or data is here; delete it (or pass "
                            "--restart) to start this run from scratch", d)
        report = assign_state_dict(self.model, read_safetensors(d / "model.safetensors"), d, "resume")
        if report.missing or report.unexpected:
            raise UserError("the saved training state does not match the model; delete it to start over", d)
        try:
            st = flow.load(str(d / "optim"))
        except Exception:
            raise UserError("the saved optimizer state is damaged; delete the folder to start over", d) from None
        self.optimizer.load_state_dict(st["optimizer"])
        self.scheduler.load_state_dict(st["scheduler"])
        saved.pop("fingerprint")
        self.progress = Progress(**saved)
        return True

    # -- the loop ----------------------------------------------------------------------------------
    def _log(self, msg: str) -> None:
        if self.is_main:
            tqdm.write(msg)

    def _evaluate_and_select(self, epoch: int) -> None:
        if self.evaluate is None:
            return
        metrics = self.evaluate()
        p = self.progress
        entry = {"step": p.global_step, "epoch": epoch, **metrics}
        p.history.append(entry)
        value = metrics[self.select_metric]
        better = value > p.best_metric
        if better:
            p.best_metric, p.best_step, p.best_eval = value, p.global_step, dict(metrics)
            if self.is_main:
                self.save_model(self.out_dir, self.results())
        self._log(f"[{self.stage}] eval step {p.global_step}: " + " ".join(
            f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)) + (" (best, saved)" if better else ""))

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
            "train_seconds": round(p.train_seconds, 3),
            "train_samples_per_second": round(p.samples_seen / secs, 3),
            "train_tokens_per_second": round(p.tokens_seen / secs, 1),
            "world_size": self.world_size,
            "args": asdict(self.args),
        }

    def fit(self) -> dict:
        """Train; returns the results (also written to ``<out>/results.json``)."""
        args, p = self.args, self.progress
        with (output_lock(self.out_dir) if self.is_main else contextlib.nullcontext()):
            if args.resume and self._try_resume():
                self._log(f"[{self.stage}] resuming from {self.resume_dir} at step {self.progress.global_step}")
                p = self.progress
            elif self.resume_dir.exists() and self.is_main:
                import shutil

                shutil.rmtree(self.resume_dir)
            self.train_module.train()
            bar = tqdm(total=self.total_steps, initial=p.global_step, desc=self.stage, disable=None if (self.is_main and self.progress_bar) else True,
                       dynamic_ncols=True, leave=False)
            running: Dict[str, float] = {}
            n_running = 0
            t_log = time.perf_counter()
            samples_since_log = 0
            done = p.global_step >= self.total_steps
            for epoch in range(args.epochs):
                if done:
                    break
                batches = train_batches(len(self.data), args.batch_size, args.seed, epoch, self.rank, self.world_size)
                first = epoch * self.steps_per_epoch
                for i, idx in enumerate(batches):
                    step = first + i
                    if step < p.global_step:
                        continue  # already done before the resume
                    t0 = time.perf_counter()
                    flow.manual_seed(_step_seed(args.seed * 1000 + self.rank, step))
                    batch = to_tensors(self.data, idx, self.device, trim=self.trim)
                    loss, logs = self.step_loss(batch, step)
                    loss_value = float(loss.numpy())
                    if not math.isfinite(loss_value):
                        raise TrainingDiverged(
                            f"[{self.stage}] the loss became {loss_value} at step {step}; training stopped. The last good "
                            f"model is in {self.out_dir if p.best_step >= 0 else self.resume_dir}; lower the learning rate "
                            "or check the data")
                    loss.backward()
                    flow.nn.utils.clip_grad_norm_(self.model.parameters(), args.max_grad_norm)
                    self.optimizer.step()
                    self.scheduler.step()
                    self.optimizer.zero_grad()
                    p.global_step = step + 1
                    p.train_seconds += time.perf_counter() - t0
                    p.samples_seen += len(idx) * self.world_size
                    p.tokens_seen += int(self.data.attention_mask[idx].sum()) * self.world_size
                    samples_since_log += len(idx) * self.world_size
                    running["loss"] = running.get("loss", 0.0) + loss_value
                    for k, v in logs.items():
                        running[k] = running.get(k, 0.0) + float(v.numpy())
                    n_running += 1
                    bar.update(1)
                    if p.global_step % args.log_every == 0 or p.global_step == self.total_steps:
                        dt = time.perf_counter() - t_log
                        lr = self.optimizer.param_groups[0]["lr"]
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
            if self.evaluate is None and self.is_main:
                self.save_model(self.out_dir, self.results())
            results = self.results()
            if self.is_main:
                if self.out_dir.exists():
                    write_json(self.out_dir / "results.json", results)
                if self.resume_dir.exists():
                    import shutil

                    shutil.rmtree(self.resume_dir)
        return results
