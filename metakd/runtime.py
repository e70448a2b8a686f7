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
from typing import Iterator

os.environ.setdefault("GLOG_minloglevel", "2")
os.environ.setdefault("ONEFLOW_DEBUG_MODE", "0")


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

DEVICES = ("auto", "cpu", "cuda")


def cuda_available() -> bool:
    try:
        return bool(flow.cuda.is_available()) and flow.cuda.device_count() > 0
    except Exception:  # a broken driver must not stop CPU work
        return False


def resolve_device(name: str = "auto") -> flow.device:
    """``auto`` -> CUDA when a GPU is usable, else CPU; ``cuda`` without a GPU is an error."""
    from metakd.errors import UserError

    if name not in DEVICES and not name.startswith("cuda:"):
        raise UserError(f"unknown device {name!r}; use one of auto, cpu, cuda, cuda:N")
    if name == "auto":
        return flow.device("cuda" if cuda_available() else "cpu")
    if name.startswith("cuda") and not cuda_available():
        raise UserError("--device cuda was asked for but OneFlow sees no usable GPU; use --device cpu or auto")
    return flow.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and OneFlow (CPU and CUDA): eager runs are then bit-identical."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    flow.manual_seed(seed)
    if cuda_available():
        flow.cuda.manual_seed_all(seed)
