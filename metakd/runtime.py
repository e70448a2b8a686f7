"""Importing OneFlow quietly, choosing a device, and seeding.

OneFlow 0.9.0 prints "libibverbs not available" straight to fd 2 and a CUDA-driver warning via
glog when imported on a machine without a GPU. Every module that needs OneFlow imports it from
here (``from metakd.runtime import flow``) so the noise is silenced once, in one place.
"""
from __future__ import annotations

import contextlib
import os
import random
import sys
from typing import Dict, Iterator, Optional

os.environ.setdefault("GLOG_minloglevel", "2")
os.environ.setdefault("ONEFLOW_DEBUG_MODE", "0")
# OneFlow 0.9 multiplies float32 matrices in TF32 on CUDA unless told otherwise (read when a CUDA
# stream is created): off, so that CUDA computes what the CPU does; METAKD_TF32=1 turns it on.
if "METAKD_TF32" in os.environ or "ONEFLOW_EP_CUDA_ENABLE_TF32_EXECUTION" not in os.environ:
    os.environ["ONEFLOW_EP_CUDA_ENABLE_TF32_EXECUTION"] = "1" if os.environ.get("METAKD_TF32") == "1" else "0"
TF32 = os.environ["ONEFLOW_EP_CUDA_ENABLE_TF32_EXECUTION"] not in ("0", "false", "False")


@contextlib.contextmanager
def _fd2_silenced() -> Iterator[None]:
    """Redirect the process-level stderr (fd 2), which C++ code writes to directly."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2 (some embedded interpreters)
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


with _fd2_silenced():
    import oneflow as flow  # noqa: E402

import numpy as np  # noqa: E402


def restore_ctrl_c() -> None:
    """OneFlow's import installs a SIGINT handler that ends the process at once with exit 255 (no
    message, no release of the output lock's waiters). Put Python's back, so that Ctrl-C raises
    KeyboardInterrupt and the entry points stop as documented (``interrupted; ...``, exit 130).
    (metakd/infra/entry.py already put it back as soon as OneFlow's extension loaded; here the policy
    is chosen, and a OneFlow imported before metakd is covered.)"""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        # Under the launcher a KeyboardInterrupt on one process could leave another blocked in a
        # collective for ever: every process ends at once instead (the first one says so); the
        # resumable state and the locks are safe (flock is released at exit, rerun resumes).
        def _stop_now(signum, frame):
            if os.environ.get("RANK", "0") == "0":
                sys.stderr.write("interrupted; rerun the same command to continue a training stage from its last "
                                 "saved state\n")
                sys.stderr.flush()
            os._exit(130)

        signal.signal(signal.SIGINT, _stop_now)
        from metakd.infra import entry

        entry.starting = False  # cli_main keeps this handler
    else:
        from metakd.infra import entry

        # While an entry point is still importing, Ctrl-C keeps ending it with the message (metakd/infra/entry.py)
        signal.signal(signal.SIGINT, entry._interrupted_while_starting if entry.starting
                      else signal.default_int_handler)


restore_ctrl_c()

DEVICES = ("auto", "cpu", "cuda")


def cuda_available() -> bool:
    try:
        return bool(flow.cuda.is_available()) and flow.cuda.device_count() > 0
    except Exception:  # a broken driver must not stop CPU work
        return False


def resolve_device(name: str = "auto") -> flow.device:
    """``auto`` -> CUDA when a GPU is usable, else CPU; ``cuda`` without a GPU is an error."""
    from metakd.infra.errors import UserError

    if name not in DEVICES and not name.startswith(("cuda:", "cpu:")):
        raise UserError(f"unknown device {name!r}; use one of auto, cpu, cuda, cuda:N")
    if name.startswith("cpu:") and name != "cpu:0":
        raise UserError(f"unknown device {name!r}: there is one CPU device (cpu or cpu:0); NPROC sets the processes")
    if name.startswith("cuda") and not cuda_available():
        raise UserError("--device cuda was asked for but OneFlow sees no usable GPU; use --device cpu or auto")
    if name.startswith("cuda:"):
        index = name[5:]
        if not index.isdigit() or int(index) >= flow.cuda.device_count():
            raise UserError(f"unknown device {name!r}; OneFlow sees GPUs 0..{flow.cuda.device_count() - 1}")
    if name == "auto":
        name = "cuda" if cuda_available() else "cpu"
    if name == "cuda" and world_size() > 1:
        name = f"cuda:{local_rank()}"  # one GPU per process under the launcher
    return flow.device(name)


def world_size() -> int:
    """Processes in this run (set by ``oneflow.distributed.launch``; 1 otherwise)."""
    return int(flow.env.get_world_size())


def rank() -> int:
    # Not os.environ["RANK"]: importing OneFlow outside the launcher sets it to -1.
    return int(flow.env.get_rank()) if world_size() > 1 else 0


def local_rank() -> int:
    return int(flow.env.get_local_rank()) if world_size() > 1 else 0


def single_node() -> bool:
    """All processes of the run share this machine (and so its files and page cache)."""
    return world_size() <= 1 or int(flow.env.get_node_size()) == 1


def shard(items: list) -> list:
    """This process's share of a list of work items (every ``world_size``-th, from ``rank``)."""
    n = world_size()
    return items[rank()::n] if n > 1 else items


def all_reduce_sum_numpy(array: np.ndarray, device=None) -> np.ndarray:
    """The element-wise sum of ``array`` over the processes (itself with one process).

    Sharded inference fills its own rows and leaves the others zero, so the sum is the whole
    result on every process, exactly (each element has one non-zero term). Collective: every
    process must call it with the same shape.
    """
    if world_size() <= 1:
        return array
    t = flow.tensor(np.ascontiguousarray(array), device=device or flow.device("cpu"))
    flow.comm.all_reduce(t)
    return t.numpy().astype(array.dtype, copy=False)


def barrier() -> None:
    if world_size() > 1:
        flow.comm.barrier()


def all_reduce_mean_grads(parameters, row_ids: Optional[Dict[int, flow.Tensor]] = None) -> None:
    """Data parallelism: replace each gradient by its mean over the processes.

    One flat all-reduce per step. Every process must pass the same parameters in the same
    order; a parameter unused on this process (no gradient) contributes zeros, so the collective
    never waits on a missing tensor. With equal shards this is the gradient of the whole global
    batch, up to summation order.

    ``row_ids`` maps ``id(parameter)`` of an embedding table to the ids this process looked up
    (e.g. the word embeddings and the batch's token ids). Only rows some process looked up can
    have a non-zero gradient, so only the union of those rows is sent: for BERT's 30522-row word
    table that is a few thousand rows instead of half the model. The other rows are zero on every
    process, so their mean is the zero they already hold.
    """
    if world_size() <= 1:
        return
    params = [p for p in parameters if p.requires_grad]
    flat, sent, rows_of = _flat_mean_grads(params, row_ids or {})
    with flow.no_grad():
        for p, chunk in zip(params, _unflatten(flat, sent)):
            if id(p) in rows_of:
                if p.grad is None:
                    p.grad = flow.zeros_like(p)
                p.grad[rows_of[id(p)]] = chunk
            elif p.grad is None:
                p.grad = chunk
            else:
                p.grad.copy_(chunk)


def _flat_mean_grads(params, row_ids: Dict[int, flow.Tensor]):
    """all_reduce_mean_grads' collective: (flat mean gradient, the shape each parameter sent,
    {id(table): the rows sent}). Absent gradients count as zeros."""
    n = world_size()
    chunks, rows_of = [], {}
    for p in params:
        g = p.grad if p.grad is not None else flow.zeros_like(p)
        if id(p) in row_ids:
            seen = flow.zeros(p.shape[0], device=g.device)
            seen[row_ids[id(p)].reshape(-1).to(g.device)] = 1.0
            flow.comm.all_reduce(seen)
            rows = flow.nonzero(seen).reshape(-1)
            rows_of[id(p)] = rows
            g = flow.index_select(g, 0, rows)
        chunks.append(g)
    flat = flow.cat([g.reshape(-1) for g in chunks])
    flow.comm.all_reduce(flat)
    return flat / n, [tuple(g.shape) for g in chunks], rows_of


def _unflatten(flat, shapes):
    """Consecutive pieces of a flat tensor or array, in ``shapes``."""
    offset = 0
    for shape in shapes:
        k = int(np.prod(shape))
        yield flat[offset:offset + k].reshape(shape)
        offset += k


def mean_grads_numpy(parameters, row_ids: Optional[Dict[int, flow.Tensor]] = None) -> list:
    """The gradients of ``parameters`` (those that require one) as numpy arrays, averaged over
    the processes like ``all_reduce_mean_grads``, without writing them back: with several
    processes the flat mean is read in one round trip (``Tensor.numpy()`` is one each), a
    table's rows are scattered into zeros. One process: each ``.grad`` read as is, None where
    the step gave none."""
    params = [p for p in parameters if p.requires_grad]
    if world_size() <= 1:
        return [None if p.grad is None else p.grad.numpy() for p in params]
    flat, sent, rows_of = _flat_mean_grads(params, row_ids or {})
    flat = flat.numpy()
    out = []
    for p, chunk in zip(params, _unflatten(flat, sent)):
        if id(p) in rows_of:
            dense = np.zeros(tuple(p.shape), dtype=flat.dtype)
            dense[rows_of[id(p)].numpy()] = chunk
            chunk = dense
        out.append(chunk)
    return out


def broadcast_parameters(module) -> None:
    """Start every process from rank 0's weights (heads are random-initialised per process)."""
    if world_size() <= 1:
        return
    with flow.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            flow.comm.broadcast(t, 0)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and OneFlow (CPU and CUDA): eager runs are then bit-identical."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    flow.manual_seed(seed)
    if cuda_available():
        flow.cuda.manual_seed_all(seed)
