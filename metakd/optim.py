"""AdamW with BERT's weight-decay groups and the linear warm-up / linear decay schedule, and the
update that ends every training step (gradients averaged over the processes, clipped, AdamW)."""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional

import numpy as np

from metakd import modeling
from metakd.modeling import _view, sync
from metakd.runtime import all_reduce_mean_grads, flow, mean_grads_numpy

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
    ``METAKD_CPU_MATMUL=oneflow``): ``gradients()`` averages them over the processes and returns
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
        sync()  # the parameters' cached numpy views (modeling.parameter_views) are read next
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


_CHUNK = 1 << 16  # elements per block of the numpy update, so that its temporaries stay in cache


class NumpyUpdate:
    """The same update in numpy on CPU: OneFlow 0.9's CPU clip + AdamW took 146-150 ms of a step
    here (one thread, several passes per parameter; 27% of a stage-2 step). The same formulas
    as ``flow.optim.AdamW`` (bias correction, decoupled weight decay, eps outside the square
    root) and ``clip_grad_norm_`` (coefficient max_norm / (norm + 1e-6) when below 1), in
    float32. The parameters are written in place through their numpy views, which share
    OneFlow's memory; the moments live in numpy. With several processes the averaged gradient
    is read in one round trip (``runtime.mean_grads_numpy``)."""

    def __init__(self, model, lr: float, weight_decay: float, total_steps: int, warmup_proportion: float,
                 eps: float = 1e-6, max_grad_norm: float = 1.0, variant: str = "pytorch", betas=(0.9, 0.999)):
        """As ``FlowUpdate``; the same interface (lr, gradients, apply, state_dict, load_state_dict).
        ``variant="huggingface"``: the formula of ``HFAdamWState``."""
        self.params = [p for p in model.parameters() if p.requires_grad]
        decayed = {id(p) for p in param_groups(model, weight_decay)[0]["params"]}
        self.weight_decay = [weight_decay if id(p) in decayed else 0.0 for p in self.params]
        self.base_lr, self.eps, self.betas, self.max_grad_norm = lr, eps, betas, max_grad_norm
        self.schedule = warmup_linear(total_steps, int(warmup_proportion * total_steps))
        self.sizes = [int(p.numel()) for p in self.params]
        total = sum(self.sizes)
        self.exp_avg = np.zeros(total, np.float32)
        self.exp_avg_sq = np.zeros(total, np.float32)
        self.steps = 0
        self.hf = variant == "huggingface"
        self.param_steps = [0] * len(self.params)  # huggingface: each parameter's own step count
        self._grads: Optional[list] = None
        self._norm = 0.0

    @property
    def lr(self) -> float:
        """The learning rate of the next update."""
        return self.base_lr * self.schedule(self.steps)

    def gradients(self, row_ids: Optional[Dict[int, flow.Tensor]] = None) -> float:
        reached = _reached_anywhere(self.params) if self.hf else None
        grads = mean_grads_numpy(self.params, row_ids)
        if reached is not None:  # several processes: zeros where no process had a gradient
            grads = [g if r else None for g, r in zip(grads, reached)]
        self._grads = [None if g is None else g.reshape(-1) for g in grads]
        sq = sum(float(np.dot(g, g)) for g in self._grads if g is not None)
        self._norm = math.sqrt(sq)
        return self._norm

    def apply(self) -> None:
        if self._grads is None:
            raise RuntimeError("NumpyUpdate.apply() without gradients()")
        sync()  # nothing OneFlow queued may still read the parameters written below
        coef = self.max_grad_norm / (self._norm + 1e-6)
        coef = min(coef, 1.0) if math.isfinite(coef) else 1.0
        b1, b2 = self.betas
        lr = self.lr
        self.steps += 1
        bc1, bc2 = 1.0 - b1 ** self.steps, 1.0 - b2 ** self.steps
        f32 = np.float32
        c_m, c_v = f32((1.0 - b1) * coef), f32((1.0 - b2) * coef * coef)   # the clipping folded in
        inv_bc2, step_size, eps = f32(1.0 / math.sqrt(bc2)), f32(lr / bc1), f32(self.eps)
        tmp = np.empty(_CHUNK, np.float32)
        offset = 0
        for k, (p, g, wd, n) in enumerate(zip(self.params, self._grads, self.weight_decay, self.sizes)):
            w = _view(p).reshape(-1)
            keep = f32(1.0 - lr * wd)
            if self.hf:
                if g is not None:
                    self._hf_param(k, w, g, wd, lr, coef, offset, tmp)
                offset += n
                continue
            for i in range(0, n, _CHUNK):
                j = min(i + _CHUNK, n)
                m, v = self.exp_avg[offset + i:offset + j], self.exp_avg_sq[offset + i:offset + j]
                t = tmp[:j - i]
                m *= f32(b1)
                v *= f32(b2)
                if g is not None:  # a parameter the step did not reach has a zero gradient
                    gi = g[i:j]
                    np.multiply(gi, c_m, out=t)
                    m += t
                    np.multiply(gi, gi, out=t)
                    t *= c_v
                    v += t
                np.sqrt(v, out=t)
                t *= inv_bc2
                t += eps
                np.divide(m, t, out=t)
                t *= step_size
                wi = w[i:j]
                if wd:
                    wi *= keep
                wi -= t
            offset += n
        for p in self.params:
            p.grad = None
        self._grads = None

    def _hf_param(self, k: int, w: np.ndarray, g: np.ndarray, wd: float, lr: float, coef: float, offset: int,
                  tmp: np.ndarray) -> None:
        """One parameter's Hugging Face AdamW update (``HFAdamWState``'s formula), in blocks."""
        f32 = np.float32
        b1, b2 = self.betas
        self.param_steps[k] += 1
        t_k = self.param_steps[k]
        step_size = f32(lr * math.sqrt(1.0 - b2 ** t_k) / (1.0 - b1 ** t_k))
        c_m, c_v, eps, keep = f32((1.0 - b1) * coef), f32((1.0 - b2) * coef * coef), f32(self.eps), f32(1.0 - lr * wd)
        for i in range(0, len(w), _CHUNK):
            j = min(i + _CHUNK, len(w))
            m, v, t, gi, wi = (self.exp_avg[offset + i:offset + j], self.exp_avg_sq[offset + i:offset + j],
                               tmp[:j - i], g[i:j], w[i:j])
            m *= f32(b1)
            np.multiply(gi, c_m, out=t)
            m += t
            v *= f32(b2)
            np.multiply(gi, gi, out=t)
            t *= c_v
            v += t
            np.sqrt(v, out=t)
            t += eps
            np.divide(m, t, out=t)
            t *= step_size
            wi -= t
            if wd:
                wi *= keep  # after the update, on the new weights

    def state_dict(self) -> dict:
        return {"numpy_adamw": {"steps": self.steps, "sizes": list(self.sizes),
                                "param_steps": list(self.param_steps),
                                "exp_avg": flow.from_numpy(self.exp_avg.copy()),
                                "exp_avg_sq": flow.from_numpy(self.exp_avg_sq.copy())}}

    def load_state_dict(self, state: dict) -> None:
        st = state["numpy_adamw"]
        if list(st["sizes"]) != self.sizes:
            raise ValueError("the saved moments are for other parameters")
        self.exp_avg[:] = np.asarray(st["exp_avg"].numpy(), np.float32)
        self.exp_avg_sq[:] = np.asarray(st["exp_avg_sq"].numpy(), np.float32)
        self.steps = int(st["steps"])
        self.param_steps = [int(x) for x in st.get("param_steps", [self.steps] * len(self.params))]


def make_update(model, lr: float, weight_decay: float, total_steps: int, warmup_proportion: float,
                eps: float = 1e-6, max_grad_norm: float = 1.0, variant: str = "pytorch") -> "FlowUpdate | NumpyUpdate":
    """The step-ending update for ``model``: numpy on CPU (unless ``METAKD_CPU_MATMUL=oneflow``),
    OneFlow's kernels on CUDA; ``variant`` one of ADAMW_VARIANTS."""
    if variant not in ADAMW_VARIANTS:
        raise ValueError(f"unknown AdamW variant {variant!r}")
    on_cpu = not any(p.is_cuda for p in model.parameters())
    cls = NumpyUpdate if on_cpu and modeling._CPU_MATMUL == "blas" else FlowUpdate
    return cls(model, lr, weight_decay, total_steps, warmup_proportion, eps, max_grad_norm, variant)
