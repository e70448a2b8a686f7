"""The benchmark command runs every stage and writes its JSON. Speed itself is never asserted."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _run(args, cwd, timeout=240):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("GLOG_minloglevel", "2")
    return subprocess.run([sys.executable, "-m", "metakd.bench", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_help():
    proc = _run(["--help"], ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for word in ("--pair", "--iters", "--warmup", "--json", "--profile", "--seq-length", "stage1_step"):
        assert word in proc.stdout


def test_tiny_pair_every_stage(tmp_path):
    from metakd.bench import STAGES

    proc = _run(["--pair", "tiny", "--iters", "1", "--warmup", "0", "--json", "tmp.json"], tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((tmp_path / "tmp.json").read_text())
    assert data["meta"]["pair"] == "tiny" and data["meta"]["seq_length"] == 128 and data["meta"]["batch_size"] == 16
    assert set(data["stages"]) == set(STAGES)
    for name, r in data["stages"].items():
        assert "error" not in r, (name, r)
        assert r["samples_per_s"] > 0 and r["real_tokens_per_s"] > 0 and r["ms_per_step"] > 0, (name, r)
        assert r["padded_tokens_per_s"] >= r["real_tokens_per_s"]
        assert r["padded_tokens_per_step"] == r["batch_size"] * r["padded_length"]
        assert r["peak_rss_mib"] > 0 and r["iters"] == 1
    for name in STAGES:  # the table names every stage
        assert name in proc.stdout


def test_profile_runs(tmp_path):
    proc = _run(["--pair", "tiny", "--profile", "eval", "--warmup", "0"], tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "self time" in proc.stdout and "student Linear" in proc.stdout


def test_synthetic_batch_shapes():
    from metakd.bench import synthetic_batch

    enc = synthetic_batch(vocab_size=30522, batch_size=16, seq_length=128, lengths="reviews", seed=0)
    lens = enc.attention_mask.sum(axis=1)
    assert enc.input_ids.shape == (16, 128) and lens[0] == 128 and lens.min() >= 3
    assert (enc.input_ids[:, 0] == 101).all() and (enc.input_ids[np.arange(16), lens - 1] == 102).all()
    assert (enc.input_ids[enc.attention_mask == 0] == 0).all()
    full = synthetic_batch(vocab_size=200, batch_size=4, seq_length=16, lengths="full", seed=0)
    assert full.attention_mask.all() and full.input_ids.max() < 200
