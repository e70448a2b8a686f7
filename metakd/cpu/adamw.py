"""The end of a training step in numpy on CPU: gradients averaged over the processes, clipped,
AdamW (PyTorch's formula, or Hugging Face's for ``COMPAT=easynlp``); ``metakd.optim.make_update``
picks it on CPU with the numpy kernels."""
from __future__ import annotations

import math
from typing import Dict, Optional

import numpy as np

from metakd.cpu.views import sync, view
from metakd.optim import _reached_anywhere, param_groups, warmup_linear
from metakd.runtime import flow, mean_grads_numpy

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
            w = view(p).reshape(-1)
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
