"""The one switch of the CPU kernels, and the one test every numpy path asks."""
from __future__ import annotations

import os

from metakd.infra.errors import UserError

KERNELS = ("numpy", "oneflow")
# The environment is only the default of ``--cpu-kernels`` (benchmarks, tests); the entry points set it.
_kernels = "oneflow" if os.environ.get("METAKD_CPU_MATMUL") == "oneflow" else "numpy"


def set_kernels(name: str) -> None:
    """``numpy`` (the default: BLAS matmuls and numpy autograd Functions) or ``oneflow`` (OneFlow's
    own CPU kernels, the code that runs on CUDA). Every entry point's ``--cpu-kernels`` calls it."""
    global _kernels
    if name not in KERNELS:
        raise UserError(f"unknown CPU kernels {name!r}; choose numpy or oneflow")
    _kernels = name


def current_kernels() -> str:
    return _kernels


def active(t) -> bool:
    """Do the numpy kernels run for tensor ``t``? (On CPU, when chosen.)"""
    return _kernels == "numpy" and not t.is_cuda
