"""The shared training loop: resumption, determinism, divergence, the output lock, safe outputs.

Two kinds of test:
* end to end, as a user runs it: ``python -m metakd.train_teacher`` on the tiny synthetic data
  (tests/_tiny.py), killed with SIGKILL at a random step and rerun, or run twice;
* in-process, with the Trainer API and a toy model with dropout (fast, and able to inject a
  crash, a NaN loss or an infinite gradient at an exact step).
"""
from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from _tiny import ROOT, call_main, env, run_cli, teacher_args, tiny
from metakd.infra.errors import UserError
from metakd.features import Encoded
from metakd.infra.fileio import atomic_dir
from metakd.infra.locks import output_lock
from metakd.runtime import flow
from metakd.trainer import (BEST, RESUME_SUFFIX, STATE, TrainArgs, Trainer, TrainingDiverged, claim_output,
                            dropout_generators, seed_step)

TIMING_KEYS = ("train_seconds", "train_samples_per_second", "train_tokens_per_second")


def _results_without_timing(path: Path) -> dict:
    r = json.loads(path.read_text())
    for k in TIMING_KEYS:
        r.pop(k)
    return r


# ------------------------------------------------------------------------------ toy in-process setup

class Toy(flow.nn.Module):
    """Embedding -> dropout -> masked mean -> dropout -> linear: small, with two dropout RNGs."""

    def __init__(self):
        super().__init__()
        self.emb = flow.nn.Embedding(40, 16)
        self.drop1 = flow.nn.Dropout(0.3)
        self.drop2 = flow.nn.Dropout(0.2)
        self.out = flow.nn.Linear(16, 2)

    def forward(self, ids, mask):
        m = mask.to(flow.float32).unsqueeze(-1)
        x = (self.drop1(self.emb(ids)) * m).sum(dim=1) / m.sum(dim=1)
        return self.out(self.drop2(x))


def toy_data(n=40, length=8, seed=0) -> Encoded:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 40, size=(n, length)).astype(np.int64)
    lengths = rng.integers(2, length + 1, size=n)
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int64)
    ids = ids * mask
    labels = (ids[:, 0] % 2).astype(np.int64)
    return Encoded(ids, mask, np.zeros_like(ids), labels, np.zeros(n, np.int64), np.zeros(n, np.float32),
                   [f"g{i}" for i in range(n)])


def state_bytes(model) -> dict:
    return {k: v.numpy().tobytes() for k, v in model.state_dict().items()}


def save_toy(model):
    from safetensors.numpy import save_file

    from metakd.checkpoint import state_dict_numpy

    def save(folder, results):
        with atomic_dir(folder) as tmp:
            save_file(state_dict_numpy(model), str(tmp / "model.safetensors"))
            (tmp / "config.json").write_text(json.dumps({"metakd": {"role": "toy"}}))
    return save


def make_trainer(out: Path, nan_at=None, crash_at=None, inf_grad_at=None, evaluate=True, **kw):
    """A toy Trainer. ``nan_at``/``crash_at``/``inf_grad_at``: 0-based step at which the loss is
    NaN / the step raises (a simulated kill) / the loss is finite but its gradient is not."""
    flow.manual_seed(1)
    model = Toy()
    data, dev = toy_data(), toy_data(16, seed=1)
    args = dict(epochs=3, batch_size=8, lr=0.05, seed=7, log_every=100, eval_every=4, save_every=3)
    args.update(kw)

    def step_loss(batch, step):
        if crash_at is not None and step == crash_at:
            raise KeyboardInterrupt("simulated kill")
        logits = model(batch["input_ids"], batch["attention_mask"])
        loss = flow.nn.functional.cross_entropy(logits, batch["labels"])
        if nan_at is not None and step >= nan_at:
            loss = loss * float("nan")
        if inf_grad_at is not None and step >= inf_grad_at:
            loss = loss + flow.sqrt(model.out.weight.sum() * 0.0)  # value 0, gradient 0 * inf = nan
        return loss, {"ce": loss.detach()}

    def evaluate_fn():
        model.eval()
        with flow.no_grad():
            logits = model(flow.tensor(dev.input_ids), flow.tensor(dev.attention_mask))
            loss = float(flow.nn.functional.cross_entropy(logits, flow.tensor(dev.labels)).numpy())
        acc = float((logits.numpy().argmax(-1) == dev.labels).mean())
        return {"accuracy": acc, "loss": loss}

    trainer = Trainer(model, data, step_loss, TrainArgs(**args), flow.device("cpu"), out, save_toy(model),
                      evaluate=evaluate_fn if evaluate else None, stage="toy", progress=False)
    return trainer, model


# ------------------------------------------------------------------------------ resumption, in-process

@pytest.mark.parametrize("crash_at, evaluate", [(4, True), (7, True), (11, True), (7, False)])
def test_crash_then_rerun_is_bit_exact(tmp_path, crash_at, evaluate):
    ref_trainer, ref_model = make_trainer(tmp_path / "ref", evaluate=evaluate)
    ref = ref_trainer.fit()
    out = tmp_path / "run"
    trainer, _ = make_trainer(out, crash_at=crash_at, evaluate=evaluate)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert not out.exists(), "nothing may be published before the run finishes"
    saved = json.loads((tmp_path / f"run{RESUME_SUFFIX}" / STATE / "progress.json").read_text())
    assert saved["progress"]["global_step"] == crash_at // 3 * 3  # the last multiple of save_every
    trainer, model = make_trainer(out, evaluate=evaluate)
    res = trainer.fit()
    assert state_bytes(model) == state_bytes(ref_model)
    for k in TIMING_KEYS:
        ref.pop(k), res.pop(k)
    assert res == ref
    assert (out / "model.safetensors").read_bytes() == (tmp_path / "ref" / "model.safetensors").read_bytes()
    assert _results_without_timing(out / "results.json") == _results_without_timing(tmp_path / "ref" / "results.json")
    assert not (tmp_path / f"run{RESUME_SUFFIX}").exists()


def test_resume_with_other_settings_is_refused_and_restart_starts_over(tmp_path):
    out = tmp_path / "run"
    trainer, _ = make_trainer(out, crash_at=5)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    trainer, _ = make_trainer(out, lr=0.01)
    with pytest.raises(UserError, match="other settings or data.*--restart") as e:
        trainer.fit()
    assert "\n" not in str(e.value)
    trainer, model = make_trainer(out, lr=0.01, resume=False)  # --restart
    trainer.fit()
    ref_trainer, ref_model = make_trainer(tmp_path / "ref", lr=0.01)
    ref_trainer.fit()
    assert state_bytes(model) == state_bytes(ref_model)


def _interrupted_run(tmp_path: Path) -> Path:
    """A toy run stopped at step 5, its resumable state (saved at step 3) left in place."""
    out = tmp_path / "run"
    trainer, _ = make_trainer(out, crash_at=5)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    return out


def test_damaged_resume_state_is_a_clear_error(tmp_path):
    out = _interrupted_run(tmp_path)
    weights = tmp_path / f"run{RESUME_SUFFIX}" / STATE / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    trainer, _ = make_trainer(out)
    with pytest.raises(UserError, match="truncated or corrupted.*--restart"):
        trainer.fit()


def test_damaged_optimizer_state_is_a_clear_error(tmp_path):
    out = _interrupted_run(tmp_path)
    optim = tmp_path / f"run{RESUME_SUFFIX}" / STATE / "optim"
    victim = max((p for p in optim.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit pattern in the moments: it would resume silently without a checksum
    victim.write_bytes(bytes(data))
    trainer, _ = make_trainer(out)
    with pytest.raises(UserError, match="optimizer state's checksum does not match.*--restart"):
        trainer.fit()


def test_check_saved_state_refuses_other_settings_before_work(tmp_path):
    out = _interrupted_run(tmp_path)
    make_trainer(out)[0].check_saved_state()  # the same settings: fine
    with pytest.raises(UserError, match="other settings or data"):
        make_trainer(out, lr=0.01)[0].check_saved_state()
    make_trainer(out, lr=0.01, resume=False)[0].check_saved_state()  # --restart: nothing to check


def test_dropout_generators_are_reseeded_per_step():
    """OneFlow gives every Dropout its own generator with one fixed seed: without re-seeding, a resumed
    run would replay the masks of step 0, and every layer would share one mask stream."""
    model = Toy()
    gens = dropout_generators([model])
    assert len(gens) == 2
    seed_step(7, 0, 3, gens)
    a = [g.initial_seed() for g in gens]
    seed_step(7, 0, 3, gens)
    assert [g.initial_seed() for g in gens] == a and a[0] != a[1]
    seed_step(7, 0, 4, gens)
    assert [g.initial_seed() for g in gens] != a


# ------------------------------------------------------------------------------ divergence

def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    out = tmp_path / "run"
    old_trainer, _ = make_trainer(out)  # a finished earlier run: its output must survive
    old_trainer.fit()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    trainer, _ = make_trainer(out, nan_at=9, lr=0.02)
    with pytest.raises(TrainingDiverged) as e:
        trainer.fit()
    msg = str(e.value)
    assert "\n" not in msg and "loss became nan at step 10" in msg and "--lr" in msg and "--restart" in msg
    best = tmp_path / f"run{RESUME_SUFFIX}" / BEST
    assert str(best) in msg and f"{out} was not changed" in msg
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    from safetensors.numpy import load_file

    kept = load_file(str(best / "model.safetensors"))  # the best model of the evaluations at steps 4 and 8
    assert all(np.isfinite(v).all() for v in kept.values())
    assert trainer.progress.best_step in (4, 8) and f"(step {trainer.progress.best_step})" in msg
    state = json.loads((tmp_path / f"run{RESUME_SUFFIX}" / STATE / "progress.json").read_text())
    assert state["progress"]["global_step"] == 9  # the last resumable state before the NaN


def test_infinite_gradient_stops_training(tmp_path):
    trainer, model = make_trainer(tmp_path / "run", inf_grad_at=2, evaluate=False)
    with pytest.raises(TrainingDiverged, match="gradient norm became nan at step 3"):
        trainer.fit()
    assert all(np.isfinite(v.numpy()).all() for v in model.state_dict().values()), "no update with a NaN gradient"
    assert not (tmp_path / "run").exists()


def test_nan_loss_through_the_cli_exits_2(tmp_path, monkeypatch):
    """train_teacher with a loss that turns NaN at step 3: exit code 2, one line, nothing published."""
    import metakd.objectives

    real = metakd.objectives.teacher_loss
    calls = []

    def poisoned(*a, **k):
        loss, logs = real(*a, **k)
        calls.append(1)
        return (loss * float("nan") if len(calls) >= 3 else loss), logs

    monkeypatch.setattr(metakd.objectives, "teacher_loss", poisoned)  # (the name the teacher's objective calls)
    out = tmp_path / "t"
    code, stdout, stderr = call_main("metakd.train_teacher", teacher_args(out, "--epochs", "1", "--save-every", "2",
                                                                         "--eval-every", "2"))
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: [meta_teacher] the loss became nan at step 3"), stderr
    assert not out.exists()
    assert (tmp_path / f"t{RESUME_SUFFIX}" / BEST / "model.safetensors").exists()


# ------------------------------------------------------------------------------ outputs and the lock

def test_failed_run_never_damages_existing_output(tmp_path):
    out = tmp_path / "run"
    trainer, _ = make_trainer(out)
    trainer.fit()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    trainer, _ = make_trainer(out, crash_at=9, lr=0.03)  # evaluations and saves happen before the crash
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_stale_temporaries_of_a_killed_run_are_removed(tmp_path):
    out = tmp_path / "run"
    junk = [tmp_path / ".run.x1y2z3w4.tmp", tmp_path / f".run{RESUME_SUFFIX}.a_b_c_d_.tmp"]
    neighbour = tmp_path / ".run.v2.abcdefgh.tmp"  # a temporary of another output, "run.v2": not ours
    for j in junk + [neighbour]:
        j.mkdir()
        (j / "half.bin").write_bytes(b"\0" * 10)
    trainer, _ = make_trainer(out, epochs=1)
    trainer.fit()
    assert not any(j.exists() for j in junk) and neighbour.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".run.lock", ".run.v2.abcdefgh.tmp", "run"]
    assert oct(out.stat().st_mode & 0o777) == oct(0o777 & ~_umask()), "outputs get ordinary permissions"


def _umask() -> int:
    m = os.umask(0o022)
    os.umask(m)
    return m


def test_output_folder_that_metakd_did_not_write_is_refused(tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    trainer, _ = make_trainer(out, epochs=1)
    with pytest.raises(UserError, match="did not write.*choose a new or empty folder"):
        trainer.fit()
    assert (out / "thesis.tex").read_text() == "years of work"
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        claim_output(tmp_path / "afile")


def test_output_lock_is_reentrant_in_one_process(tmp_path):
    with output_lock(tmp_path / "o"):
        with output_lock(tmp_path / "o"):
            pass
        trainer, _ = make_trainer(tmp_path / "o", epochs=1)  # fit() takes the same lock again
        trainer.fit()


def test_second_run_into_the_same_folder_exits_2(tmp_path):
    """While this process holds the folder's lock, a CLI run into it stops at once with exit code 2."""
    tiny()
    out = tmp_path / "t"
    with output_lock(out):
        t0 = time.monotonic()
        r = run_cli("metakd.train_teacher", teacher_args(out, "--epochs", "1"))
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(out) in lines[0] and "another metakd run" in lines[0], r.stderr
    assert f"(process {os.getpid()})" in lines[0]
    assert "meta-teacher:" not in r.stdout, "no work may start"
    assert not out.exists()
    # And once the lock is free, the same command works (SIGKILLed holders release it too: see below).
    assert time.monotonic() - t0 < 120


# ------------------------------------------------------------------------------ end to end: SIGKILL and rerun

KILL_ARGS = ("--epochs", "2", "--lr", "1e-3", "--save-every", "2", "--eval-every", "5", "--log-every", "1")


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """One uninterrupted train_teacher run: (out folder, weights bytes, results without timing)."""
    tiny()
    out = tmp_path_factory.mktemp("ref") / "t"
    r = run_cli("metakd.train_teacher", teacher_args(out, *KILL_ARGS))
    assert r.returncode == 0, r.stderr
    return out, (out / "model.safetensors").read_bytes(), _results_without_timing(out / "results.json")


def test_same_seed_same_command_twice_is_identical(reference_run):
    out, weights, results = reference_run
    config = (out / "config.json").read_text()
    r = run_cli("metakd.train_teacher", teacher_args(out, *KILL_ARGS))  # the very same command again
    assert r.returncode == 0, r.stderr
    assert (out / "model.safetensors").read_bytes() == weights
    assert (out / "config.json").read_text() == config  # includes the weights' sha256
    assert _results_without_timing(out / "results.json") == results


def test_sigkill_at_a_random_step_then_rerun_is_bit_exact(reference_run, tmp_path):
    _, ref_weights, ref_results = reference_run
    out = tmp_path / "t"
    state = tmp_path / f"t{RESUME_SUFFIX}" / STATE / "progress.json"
    # After the first resumable state (step 2), before the first dev evaluation (step 5), so that
    # everything published afterwards is computed by the resumed process.
    kill_step = random.randint(2, 4)
    proc = subprocess.Popen([sys.executable, "-m", "metakd.train_teacher", *map(str, teacher_args(out, *KILL_ARGS))],
                            cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            m = re.search(r"\bstep (\d+)/\d+", line)
            if m and int(m.group(1)) >= kill_step and state.exists():
                os.kill(proc.pid, signal.SIGKILL)
                break
    finally:
        proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL, f"kill step {kill_step}; output: {''.join(seen)[-2000:]}"
    assert not out.exists(), "a killed run publishes nothing"
    resumed_from = json.loads(state.read_text())["progress"]["global_step"]
    assert resumed_from >= 2

    r = run_cli("metakd.train_teacher", teacher_args(out, *KILL_ARGS))  # the same command again
    assert r.returncode == 0, r.stderr
    assert f"resuming from {state.parent} at step {resumed_from}/" in r.stdout, r.stdout
    assert (out / "model.safetensors").read_bytes() == ref_weights, f"kill step {kill_step}"
    assert _results_without_timing(out / "results.json") == ref_results
    assert not (tmp_path / f"t{RESUME_SUFFIX}").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".t.lock", "t"]


def test_missing_gradients_are_zeros_so_adamw_still_decays():
    """The trainer sets gradients to None between steps (the next backward writes them instead of
    adding to zeros); a parameter a step does not reach gets a zero gradient, so AdamW treats it as
    with zeroed gradients (weight decay applies) rather than skipping it."""
    from metakd.optim import fill_missing_grads

    used, unused = flow.nn.Linear(2, 1), flow.nn.Linear(2, 1)
    before = unused.weight.numpy().copy()
    opt = flow.optim.AdamW(list(used.parameters()) + list(unused.parameters()), lr=0.1, weight_decay=0.5)
    opt.zero_grad(set_to_none=True)
    used(flow.ones(3, 2)).sum().backward()
    assert unused.weight.grad is None
    fill_missing_grads(list(used.parameters()) + list(unused.parameters()))
    np.testing.assert_array_equal(unused.weight.grad.numpy(), np.zeros((1, 2), np.float32))
    opt.step()
    np.testing.assert_allclose(unused.weight.numpy(), before * (1 - 0.1 * 0.5), rtol=1e-6)
