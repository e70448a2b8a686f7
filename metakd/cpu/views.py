"""Reading OneFlow tensors as numpy arrays cheaply: the plumbing every CPU kernel shares.

Every ``Tensor.numpy()`` is a round trip through OneFlow's VM thread: ~20 us on an idle CPU, but
0.2-1.5 ms when the processes of a multi-process run share the cores (measured here), and a BERT
step asks hundreds of times. Within ``numpy_scope()`` (one training step's forward and backward;
not inference, where it would keep every layer's outputs alive to the end of the batch) each
tensor is read once, and the tensors the kernels make from arrays (outputs, what they save for
the backward) are known without asking: ``view``, ``wrap`` (``ctx.saved_tensors`` gives back the
very objects saved; attributes set on a ctx are not reliable in OneFlow 0.9). Safe because
nothing writes those tensors in place inside a scope: activations are never updated in place,
and parameters change only in the optimizer step, after the scope (gradients the Functions
return are not registered: OneFlow may add into them).
"""
from __future__ import annotations

import contextlib
from typing import Dict, Iterator, Optional, Tuple

import numpy as np

from metakd.runtime import flow

_SCOPE: Optional[Dict[int, Tuple[flow.Tensor, np.ndarray]]] = None
# Parameters' views held across steps by ``parameter_views`` (the trainer's loop): id -> (tensor, array).
_PARAMS: Dict[int, Tuple[flow.Tensor, np.ndarray]] = {}


@contextlib.contextmanager
def numpy_scope() -> Iterator[None]:
    """Within: tensors read by the CPU numpy paths are read once (see ``view``)."""
    global _SCOPE
    if _SCOPE is not None:  # nested: the outer scope decides
        yield
        return
    _SCOPE = {}
    try:
        yield
    finally:
        _SCOPE = None


@contextlib.contextmanager
def parameter_views(parameters) -> Iterator[None]:
    """Within: the numpy views of ``parameters`` are taken once, not at every step or batch. The
    caller must call ``sync()`` after any in-place update of them (the optimizer step) before
    they are read again: OneFlow writes them asynchronously. Inference on a frozen model needs
    nothing more."""
    sync()
    added = []
    for p in parameters:
        if not p.is_cuda and id(p) not in _PARAMS:
            _PARAMS[id(p)] = (p, p.numpy())
            added.append(id(p))
    try:
        yield
    finally:
        for key in added:  # nested use (evaluation inside the training loop) keeps the outer views
            _PARAMS.pop(key, None)


def sync() -> None:
    """Wait until OneFlow has run everything queued (one round trip)."""
    flow._oneflow_internal.eager.Sync()


def view(t: flow.Tensor) -> np.ndarray:
    """t.numpy(), asked once per scope (parameters: once per ``parameter_views``)."""
    hit = _PARAMS.get(id(t))
    if hit is not None and hit[0] is t:
        return hit[1]
    if _SCOPE is None:
        return t.numpy()
    hit = _SCOPE.get(id(t))
    if hit is not None and hit[0] is t:
        return hit[1]
    a = t.numpy()
    _SCOPE[id(t)] = (t, a)
    return a


def wrap(a: np.ndarray) -> flow.Tensor:
    """flow.from_numpy(a) for a Function's forward output, remembered as its own array."""
    t = flow.from_numpy(a)
    if _SCOPE is not None:
        _SCOPE[id(t)] = (t, a)
    return t
