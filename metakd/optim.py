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


class FlowUpdate:
    """The end of a training step with OneFlow's own kernels (CUDA; CPU with
    ``METAKD_CPU_MATMUL=oneflow``): ``gradients()`` averages them over the processes and returns
    their norm, ``apply()`` clips, steps AdamW and the schedule and clears the gradients."""

    def __init__(self, model, lr: float, weight_decay: float, total_steps: int, warmup_proportion: float,
                 eps: float = 1e-6, max_grad_norm: float = 1.0):
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer, self.scheduler = make_optimizer(model, lr, weight_decay, total_steps, warmup_proportion, eps)
        self.max_grad_norm = max_grad_norm

    @property
    def lr(self) -> float:
        """The learning rate of the next update."""
        return self.optimizer.param_groups[0]["lr"]

    def gradients(self, row_ids: Optional[Dict[int, flow.Tensor]] = None) -> float:
        fill_missing_grads(self.params)
        all_reduce_mean_grads(self.params, row_ids)
        return float(flow.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm).numpy())

    def apply(self) -> None:
        self.optimizer.step()
        sync()  # the parameters' cached numpy views (modeling.parameter_views) are read next
        self.scheduler.step()
        # None rather than zeros: the next backward then writes the gradients instead of adding
        # them to a zeroed copy; fill_missing_grads keeps AdamW's treatment of a parameter that
        # gets no gradient (zeros, not a skipped step).
        self.optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


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
                 eps: float = 1e-6, max_grad_norm: float = 1.0, betas=(0.9, 0.999)):
        """As ``FlowUpdate``; the same interface (lr, gradients, apply, state_dict, load_state_dict)."""
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
        self._grads: Optional[list] = None
        self._norm = 0.0

    @property
    def lr(self) -> float:
        """The learning rate of the next update."""
        return self.base_lr * self.schedule(self.steps)

    def gradients(self, row_ids: Optional[Dict[int, flow.Tensor]] = None) -> float:
        grads = mean_grads_numpy(self.params, row_ids)
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
        for p, g, wd, n in zip(self.params, self._grads, self.weight_decay, self.sizes):
            w = _view(p).reshape(-1)
            keep = f32(1.0 - lr * wd)
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

    def state_dict(self) -> dict:
        return {"numpy_adamw": {"steps": self.steps, "sizes": list(self.sizes),
                                "exp_avg": flow.from_numpy(self.exp_avg.copy()),
                                "exp_avg_sq": flow.from_numpy(self.exp_avg_sq.copy())}}

    def load_state_dict(self, state: dict) -> None:
        st = state["numpy_adamw"]
        if list(st["sizes"]) != self.sizes:
            raise ValueError("the saved moments are for other parameters")
        self.exp_avg[:] = np.asarray(st["exp_avg"].numpy(), np.float32)
        self.exp_avg_sq[:] = np.asarray(st["exp_avg_sq"].numpy(), np.float32)
        self.steps = int(st["steps"])


def make_update(model, lr: float, weight_decay: float, total_steps: int, warmup_proportion: float,
                eps: float = 1e-6, max_grad_norm: float = 1.0) -> "FlowUpdate | NumpyUpdate":
    """The step-ending update for ``model``: numpy on CPU (unless ``METAKD_CPU_MATMUL=oneflow``),
    OneFlow's kernels on CUDA."""
    on_cpu = not any(p.is_cuda for p in model.parameters())
    cls = NumpyUpdate if on_cpu and modeling._CPU_MATMUL == "blas" else FlowUpdate
    return cls(model, lr, weight_decay, total_steps, warmup_proportion, eps, max_grad_norm)
