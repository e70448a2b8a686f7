"""AdamW with BERT's weight-decay groups and the linear warm-up / linear decay schedule, and the
update that ends every training step (gradients averaged over the processes, clipped, AdamW)."""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional

import numpy as np

from metakd.cpu.state import current_kernels
from metakd.cpu.views import sync
from metakd.runtime import all_reduce_mean_grads, flow

NO_DECAY = ("bias", "LayerNorm.weight", "LayerNorm.bias")


def param_groups(model: flow.nn.Module, weight_decay: float) -> List[dict]:
    """Two groups: no weight decay on biases and LayerNorm parameters (substring match, as BERT)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if any(nd in name for nd in NO_DECAY) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_linear(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """LR multiplier for update ``s`` (0-based): ``(s+1)/W`` while warming up, then ``(T-s)/(T-W)``.

    Unlike the reference's LambdaLR (whose first update has lr 0), every update has lr > 0;
    the peak is reached at the end of warm-up and the last update has lr = base/(T-W).
    """
    total_steps = max(1, total_steps)
    warmup_steps = min(max(0, warmup_steps), total_steps)

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return multiplier


def make_optimizer(model: flow.nn.Module, lr: float, weight_decay: float, total_steps: int, warmup_proportion: float,
                   eps: float = 1e-6):
    """(AdamW, LambdaLR) as the reference configures them: eps 1e-6, betas (0.9, 0.999)."""
    opt = flow.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.999), eps=eps)
    sched = flow.optim.lr_scheduler.LambdaLR(opt, warmup_linear(total_steps, int(warmup_proportion * total_steps)))
    return opt, sched


def fill_missing_grads(parameters) -> None:
    """A zero gradient for every trainable parameter the step did not reach, as if gradients had
    been zeroed before it (AdamW still decays such a parameter and its moments)."""
    for p in parameters:
        if p.requires_grad and p.grad is None:
            p.grad = flow.zeros_like(p)


ADAMW_VARIANTS = ("pytorch", "huggingface")


def _reached_anywhere(params) -> List[bool]:
    """Per parameter: did any process's step give it a gradient? (The averaged gradients are
    zeros where none did; EasyNLP's AdamW skips those parameters, as with one process.)"""
    from metakd.runtime import all_reduce_sum_numpy, world_size

    local = np.array([p.grad is not None for p in params], np.float32)
    if world_size() <= 1:
        return [bool(v) for v in local]
    return [bool(v > 0) for v in all_reduce_sum_numpy(local)]


class FlowUpdate:
    """The end of a training step with OneFlow's own kernels (CUDA; CPU with
    ``--cpu-kernels oneflow``): ``gradients()`` averages them over the processes and returns
    their norm, ``apply()`` clips, steps AdamW and the schedule and clears the gradients.

    ``variant="huggingface"``: the AdamW of transformers/EasyNLP (``HFAdamWState``) instead of
    OneFlow's (PyTorch's formula), for ``COMPAT=easynlp``."""

    def __init__(self, model, lr: float, weight_decay: float, total_steps: int, warmup_proportion: float,
                 eps: float = 1e-6, max_grad_norm: float = 1.0, variant: str = "pytorch"):
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer, self.scheduler = make_optimizer(model, lr, weight_decay, total_steps, warmup_proportion, eps)
        self.max_grad_norm = max_grad_norm
        self.hf = HFAdamWState(model, weight_decay, eps) if variant == "huggingface" else None

    @property
    def lr(self) -> float:
        """The learning rate of the next update."""
        return self.optimizer.param_groups[0]["lr"]

    def gradients(self, row_ids: Optional[Dict[int, flow.Tensor]] = None) -> float:
        reached = _reached_anywhere(self.params) if self.hf is not None else None
        if self.hf is None:
            fill_missing_grads(self.params)  # OneFlow's AdamW: zeros (decay and moments still move)
        all_reduce_mean_grads(self.params, row_ids)
        if reached is not None:
            for p, r in zip(self.params, reached):
                if not r:
                    p.grad = None
        with_grad = [p for p in self.params if p.grad is not None]
        return float(flow.nn.utils.clip_grad_norm_(with_grad, self.max_grad_norm).numpy()) if with_grad else 0.0

    def apply(self) -> None:
        if self.hf is not None:
            self.hf.step(self.lr)
            sync()
            self.scheduler.step()  # only its learning rate is used
            self.optimizer.zero_grad(set_to_none=True)
            return
        self.optimizer.step()
        sync()  # the parameters' cached numpy views (metakd.cpu.parameter_views) are read next
        self.scheduler.step()
        # None rather than zeros: the next backward then writes the gradients instead of adding
        # them to a zeroed copy; fill_missing_grads keeps AdamW's treatment of a parameter that
        # gets no gradient (zeros, not a skipped step).
        self.optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        st = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}
        if self.hf is not None:
            st["huggingface_adamw"] = self.hf.state_dict()
        return st

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.hf is not None:
            self.hf.load_state_dict(state["huggingface_adamw"])


class HFAdamWState:
    """The AdamW of Hugging Face transformers (``transformers.AdamW``, correct_bias=True), which
    EasyNLP uses, as OneFlow ops; per parameter with a gradient, step t of that parameter:

        m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
        p = p - lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)
        p = p - lr wd p                       (decay after the update, with the new p)

    PyTorch's AdamW (the default) instead decays first and adds eps to the bias-corrected
    sqrt(v): the effective eps here is eps / sqrt(1 - b2^t) (1e-6 -> 3.2e-5 at t = 1). A parameter
    without a gradient is skipped: no moment decay, no weight decay, its t unchanged."""

    def __init__(self, model, weight_decay: float, eps: float = 1e-6, betas=(0.9, 0.999)):
        self.params = [p for p in model.parameters() if p.requires_grad]
        decayed = {id(p) for p in param_groups(model, weight_decay)[0]["params"]}
        self.weight_decay = [weight_decay if id(p) in decayed else 0.0 for p in self.params]
        self.eps, self.betas = eps, betas
        self.m = [flow.zeros_like(p) for p in self.params]
        self.v = [flow.zeros_like(p) for p in self.params]
        self.t = [0] * len(self.params)

    def step(self, lr: float) -> None:
        b1, b2 = self.betas
        with flow.no_grad():
            for i, (p, wd) in enumerate(zip(self.params, self.weight_decay)):
                if p.grad is None:
                    continue
                g = p.grad
                self.t[i] += 1
                self.m[i] = self.m[i] * b1 + g * (1.0 - b1)
                self.v[i] = self.v[i] * b2 + g * g * (1.0 - b2)
                step_size = lr * math.sqrt(1.0 - b2 ** self.t[i]) / (1.0 - b1 ** self.t[i])
                new = p - step_size * self.m[i] / (flow.sqrt(self.v[i]) + self.eps)
                if wd:
                    new = new - (lr * wd) * new
                p.copy_(new)

    def state_dict(self) -> dict:
        return {"t": list(self.t), "m": [x.clone() for x in self.m], "v": [x.clone() for x in self.v]}

    def load_state_dict(self, state: dict) -> None:
        self.t = [int(x) for x in state["t"]]
        self.m = [x.to(p.device) for x, p in zip(state["m"], self.params)]
        self.v = [x.to(p.device) for x, p in zip(state["v"], self.params)]


def make_update(model, lr: float, weight_decay: float, total_steps: int, warmup_proportion: float,
                eps: float = 1e-6, max_grad_norm: float = 1.0, variant: str = "pytorch"):
    """The step-ending update for ``model``: ``metakd.cpu.adamw.NumpyUpdate`` on CPU with the numpy
    kernels, else ``FlowUpdate`` (OneFlow's kernels); ``variant`` one of ADAMW_VARIANTS."""
    if variant not in ADAMW_VARIANTS:
        raise ValueError(f"unknown AdamW variant {variant!r}")
    on_cpu = not any(p.is_cuda for p in model.parameters())
    if on_cpu and current_kernels() == "numpy":
        from metakd.cpu.adamw import NumpyUpdate

        return NumpyUpdate(model, lr, weight_decay, total_steps, warmup_proportion, eps, max_grad_norm, variant)
    return FlowUpdate(model, lr, weight_decay, total_steps, warmup_proportion, eps, max_grad_norm, variant)
