"""AdamW with BERT's weight-decay groups and the linear warm-up / linear decay schedule."""
from __future__ import annotations

from typing import Callable, List

from metakd.runtime import flow

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
