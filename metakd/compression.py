"""What compression bought: the teacher and the student side by side, measured in one sitting.

    python -m metakd.compression --model teacher=out/meta_teacher --model student=out/books/meta_student_finetune \
        --paper-shapes --onnx --json docs/compression.json

For each model: parameters (the classifier's: backbone + classifier, not Meta-KD's training-only
heads), the weights' size in float32, throughput (reviews/s at ``--batch``, every review
``--seq`` tokens long) and latency at batch 1 (p50/p95 over ``--latency-iters`` calls), each with
one thread and with all cores (``--threads``), in OneFlow eager (metakd's own inference path) and,
with ``--onnx``, in onnxruntime on the exported graphs (fixed shapes, see metakd/onnx_export.py:
one at ``--batch`` and one at batch 1, each exported once per model in a process of its own);
and the test accuracy from the folder's ``eval_test.json`` when 6_eval.sh wrote one.
``--paper-shapes`` adds bert-base (12 layers, 768 wide) and TinyBERT General 4L-312D with random
weights: the paper's pair, for its speed only. Every measurement runs in its own process, so the
thread settings (OpenBLAS, OpenMP, onnxruntime) take effect.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional

import numpy as np

from metakd import cli
from metakd.infra.entry import cli_main
from metakd.infra.errors import UserError

PAPER = {"bert-base (paper's teacher)": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                             intermediate_size=3072),
         "TinyBERT 4L-312D (paper's student)": dict(hidden_size=312, num_hidden_layers=4, num_attention_heads=12,
                                                    intermediate_size=1200)}


def build_parser():
    p = cli.parser("python -m metakd.compression", __doc__)
    p.add_argument("--model", action="append", default=[], metavar="NAME=FOLDER",
                   help="a model folder to measure (metakd checkpoint or Hugging Face BERT); repeatable")
    p.add_argument("--paper-shapes", action="store_true", help="also bert-base and TinyBERT 4L-312D, random weights")
    p.add_argument("--batch", type=int, default=64, help="batch of the throughput measurement")
    p.add_argument("--seq", type=int, default=128, help="tokens per review")
    p.add_argument("--iters", type=int, default=5, help="timed batches for throughput (after one warm-up)")
    p.add_argument("--latency-iters", type=int, default=50, help="timed single-review calls for latency")
    p.add_argument("--threads", default="1,all", help="comma-separated thread counts; 'all' = every core")
    p.add_argument("--onnx", action="store_true", help="also onnxruntime on the exported graph")
    p.add_argument("--json", type=Path, default=None, help="write the results here too")
    p.add_argument("--worker", default=None, help=argparse_suppress())
    return p


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS


def _build_model(spec: dict):
    """A MetaBert for a measurement: a folder's weights, or random weights of a paper shape."""
    from metakd.meta_model import MetaBert, build_from_pretrained, load_meta_checkpoint
    from metakd.bert import BertConfig
    from metakd.runtime import flow

    flow.manual_seed(0)
    if spec.get("folder"):
        from metakd.checkpoint import detect_layout

        folder = Path(spec["folder"])
        if detect_layout(folder) == "metakd":
            return load_meta_checkpoint(folder, verbose=False)[0].eval()
        return build_from_pretrained(folder, 2, 4, verbose=False)[0].eval()
    return MetaBert(BertConfig(**spec["shape"]), 2, 4).eval()


def count_parameters(model) -> int:
    """The deployed classifier's parameters: backbone + classifier."""
    return sum(int(p.numel()) for n, p in model.named_parameters() if n.startswith(("backbone.", "classifier.")))


def _export(spec: dict) -> dict:
    """The model's logits graph at one batch size, for the measurements to load.

    Its own process, once per model and batch: exporting bert-base peaks at ~6 GB, which a
    measurement should neither carry nor repeat for every thread count (see metakd/onnx_export.py).
    """
    from metakd.onnx_export import export_logits

    export_logits(_build_model(spec), Path(spec["export_to"]), spec["export_batch"], spec["seq"])
    return {"exported": spec["export_to"]}


def _worker(spec: dict) -> dict:
    """One model at one thread setting: eager (and onnxruntime) throughput and latency."""
    from metakd.runtime import flow

    if "export_to" in spec:
        return _export(spec)

    model = _build_model(spec)
    b, l = spec["batch"], spec["seq"]
    vocab = model.config.vocab_size
    rng = np.random.default_rng(0)

    def inputs(n):
        ids = rng.integers(1000 if vocab > 2000 else 5, vocab, size=(n, l)).astype(np.int64)
        return ids, np.ones((n, l), np.int64), np.zeros((n, l), np.int64)

    out = {"parameters": count_parameters(model)}
    big, one = inputs(b), inputs(1)
    from metakd.cpu import parameter_views

    def eager(batch):
        with flow.no_grad(), parameter_views(model.parameters()):
            return model(*(flow.tensor(x) for x in batch), logits_only=True).logits.numpy()

    eager(big)
    t0 = time.perf_counter()
    for _ in range(spec["iters"]):
        eager(big)
    out["eager_reviews_per_s"] = round(b * spec["iters"] / (time.perf_counter() - t0), 1)
    out.update(_latency(lambda: eager(one), spec["latency_iters"], "eager"))
    if spec.get("onnx"):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = spec["threads"]
        opts.inter_op_num_threads = 1
        sessions = {name: ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
                    for name, path in spec["onnx"].items()}
        feeds = lambda batch: dict(zip(("input_ids", "attention_mask", "token_type_ids"), batch))
        run = lambda name, batch: sessions[name].run(["logits"], feeds(batch))[0]
        want, got = eager(one), run("one", one)
        out["onnx_max_logit_diff"] = float(np.abs(want - got).max())
        if not out["onnx_max_logit_diff"] <= 1e-4:  # (timing a graph that computes something else means nothing)
            raise UserError(f"onnxruntime's logits are {out['onnx_max_logit_diff']:.3g} from eager's (more than 1e-4): "
                            "the exported graph is not this model; report it with the command line")
        run("big", big)
        t0 = time.perf_counter()
        for _ in range(spec["iters"]):
            run("big", big)
        out["onnx_reviews_per_s"] = round(b * spec["iters"] / (time.perf_counter() - t0), 1)
        out.update(_latency(lambda: run("one", one), spec["latency_iters"], "onnx"))
    return out


def _latency(call, iters: int, prefix: str) -> dict:
    call()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        call()
        times.append((time.perf_counter() - t0) * 1000)
    q = np.percentile(times, [50, 95])
    return {f"{prefix}_p50_ms": round(float(q[0]), 2), f"{prefix}_p95_ms": round(float(q[1]), 2)}


def _measure(spec: dict, threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads), PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    p = subprocess.run([sys.executable, "-m", "metakd.compression", "--worker", json.dumps({**spec, "threads": threads})],
                       env=env, capture_output=True, text=True, timeout=3600)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        # OneFlow's C++ logging (lines starting with E/W/I and a date) is not the reason
        said = [ln for ln in p.stderr.strip().splitlines() if ln.strip() and ln[:1] not in "EWI"]
        why = said[-1] if said else "no message"
        if p.returncode < 0:
            why = f"killed by signal {-p.returncode}" + (" (out of memory?)" if p.returncode == -9 else "")
        if "export_to" in spec:
            raise UserError(f"the ONNX export of {spec['name']} at batch {spec['export_batch']} failed: {why}")
        raise UserError(f"the measurement of {spec['name']} with {threads} thread(s) failed: {why}")
    return json.loads(lines[-1])


def _accuracy(folder: Optional[str]) -> Optional[float]:
    if not folder or not (Path(folder) / "eval_test.json").exists():
        return None
    return json.loads((Path(folder) / "eval_test.json").read_text(encoding="utf-8")).get("accuracy")


@cli_main
def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    if a.worker is not None:
        print(json.dumps(_worker(json.loads(a.worker))))
        return 0
    specs: List[dict] = []
    for item in a.model:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            raise UserError(f"--model takes NAME=FOLDER, got {item!r}")
        from metakd.checkpoint import check_model_folder

        check_model_folder(Path(folder))
        specs.append({"name": name, "folder": folder})
    if a.paper_shapes:
        specs += [{"name": n, "shape": shape} for n, shape in PAPER.items()]
    if not specs:
        raise UserError("nothing to measure: give --model NAME=FOLDER and/or --paper-shapes")
    if a.batch < 1 or a.iters < 1 or a.latency_iters < 5 or not 3 <= a.seq <= 512:
        raise UserError("--batch and --iters must be >= 1, --latency-iters >= 5, --seq in [3, 512]")
    cores = os.cpu_count() or 1
    try:
        threads = sorted({cores if t == "all" else int(t) for t in a.threads.split(",")})
    except ValueError:
        raise UserError(f"--threads takes whole numbers or 'all', got {a.threads!r}") from None
    if a.json is not None and a.json.is_dir():
        raise UserError("is a folder; give a file name for the results", a.json)
    rows = []
    with tempfile.TemporaryDirectory(prefix="metakd-compression-") as tmp:
        for i, spec in enumerate(specs):
            graphs = None
            if a.onnx:
                graphs = {"big": str(Path(tmp) / f"{i}-batch{a.batch}.onnx"), "one": str(Path(tmp) / f"{i}-batch1.onnx")}
                if a.batch == 1:
                    graphs["one"] = graphs["big"]
                for n, path in {a.batch: graphs["big"], 1: graphs["one"]}.items():
                    _measure({**spec, "seq": a.seq, "export_to": path, "export_batch": n}, cores)
            for t in threads:
                r = _measure({**spec, "batch": a.batch, "seq": a.seq, "iters": a.iters,
                              "latency_iters": a.latency_iters, "onnx": graphs}, t)
                size_mb = round(r["parameters"] * 4 / 2**20, 1)
                rows.append({"model": spec["name"], "threads": t, "parameters_M": round(r["parameters"] / 1e6, 2),
                             "float32_MB": size_mb, "test_accuracy": _accuracy(spec.get("folder")), **r})
                print(f"{spec['name']}, {t} thread(s): {r}", flush=True)
            for path in set((graphs or {}).values()):  # (bert-base's pair of graphs: 0.8 GB of disk)
                Path(path).unlink()
    cols = ["model", "threads", "parameters_M", "float32_MB", "eager_reviews_per_s", "eager_p50_ms", "eager_p95_ms"]
    if a.onnx:
        cols += ["onnx_reviews_per_s", "onnx_p50_ms", "onnx_p95_ms"]
    cols.append("test_accuracy")
    cli.print_table(rows, cols)
    if a.json is not None:
        from metakd.infra.fileio import write_json

        write_json(a.json, {"batch": a.batch, "seq": a.seq, "iters": a.iters, "latency_iters": a.latency_iters,
                            "cores": cores, "rows": rows})
    return 0


if __name__ == "__main__":
    main()
