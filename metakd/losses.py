"""Meta-KD's losses and weights (docs/design.md section 3; docs/reference.md section 5).

All functions take OneFlow tensors. ``compat="easynlp"`` reproduces EasyNLP's numerics, the
default is the algorithm as the paper and the original authors' code meant it:

* stage-1 weights: per example (each term reduced to one value per example, multiplied by
  ``(1 + prototype) * expertise``, then averaged) vs. whole-batch MSE times the batch mean of
  the weights;
* attention target: pre-softmax scores compared over real query/key pairs only vs.
  post-softmax probabilities over all positions;
* hidden states: compared over real tokens only vs. over all positions.

Shapes: B batch, L length, A heads, H/F hidden widths, K labels, D domains.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from metakd import cpu
from metakd.cpu.functions import MaskedSquaredError
from metakd.runtime import flow

F = flow.nn.functional


def cross_entropy_per_example(logits: flow.Tensor, labels: flow.Tensor) -> flow.Tensor:
    """[B,K], [B] -> [B]: -log softmax(logits)[label]."""
    logp = F.log_softmax(logits, dim=-1)
    return -(logp * F.one_hot(labels, logits.shape[-1]).to(logp.dtype)).sum(dim=-1)


def teacher_loss(
    logits: flow.Tensor,
    labels: flow.Tensor,
    domain_logits: Optional[flow.Tensor] = None,
    corrupted_domains: Optional[flow.Tensor] = None,
    sample_weights: Optional[flow.Tensor] = None,
    domain_loss_weight: float = 0.5,
) -> Tuple[flow.Tensor, Dict[str, flow.Tensor]]:
    """Meta-teacher loss: ``mean_i w_i * (CE_i + lambda * CE(domain_logits_i, shuffled_domain_i))``.

    ``corrupted_domains`` are the batch's domain ids under a random permutation (the
    domain-corruption objective); pass ``domain_logits=None`` to switch the term off and
    ``sample_weights=None`` for an unweighted mean. The weight is the prototype score itself
    (not 1 + score), as in the reference.
    """
    ce = cross_entropy_per_example(logits, labels)
    per_example = ce
    parts = {"ce": ce.mean()}
    if domain_logits is not None:
        dom = cross_entropy_per_example(domain_logits, corrupted_domains)
        per_example = per_example + domain_loss_weight * dom
        parts["domain_ce"] = dom.mean()
    if sample_weights is not None:
        per_example = per_example * sample_weights
    return per_example.mean(), parts


def expertise_weights(teacher_logits: flow.Tensor, labels: flow.Tensor) -> flow.Tensor:
    """Domain-expertise weight of each example, ``1 / (1 + exp((1 - p_y)^2))``: [B,K], [B] -> [B].

    Ranges from 0.5 (the teacher is sure of the right label) down to 1/(1+e) (sure of a wrong one).
    """
    p = F.softmax(teacher_logits, dim=-1)
    p_y = (p * F.one_hot(labels, teacher_logits.shape[-1]).to(p.dtype)).sum(dim=-1)
    return 1.0 / (1.0 + flow.exp((1.0 - p_y) ** 2))


def stage1_weights(prototype: flow.Tensor, teacher_logits: flow.Tensor, labels: flow.Tensor,
                   use_prototype: bool = True, use_expertise: bool = True) -> flow.Tensor:
    """Stage-1 weight of each example: ``(1 + prototype) * expertise`` -> [B].

    Either factor can be switched off (replaced by exactly 1): plain two-stage KD has both off.
    """
    w = (1.0 + prototype) if use_prototype else flow.ones_like(prototype)
    if use_expertise:
        w = w * expertise_weights(teacher_logits, labels)
    return w


def layer_map(teacher_layers: int, student_layers: int) -> int:
    """Teacher layers per student layer; the pair must be distillable."""
    from metakd.infra.errors import UserError

    if student_layers <= 0 or teacher_layers < student_layers or teacher_layers % student_layers:
        raise UserError(
            f"cannot distil a {teacher_layers}-layer teacher into a {student_layers}-layer student: the teacher's "
            "layer count must be a multiple of the student's (e.g. 12 -> 4, 6 -> 3); choose another student"
        )
    return teacher_layers // student_layers


def attention_pairs(teacher_layers: int, student_layers: int) -> List[Tuple[int, int]]:
    """(student layer j, teacher layer j*k + k - 1), 0-based: the last teacher layer of each block."""
    k = layer_map(teacher_layers, student_layers)
    return [(j, j * k + k - 1) for j in range(student_layers)]


def hidden_pairs(teacher_layers: int, student_layers: int) -> List[Tuple[int, int]]:
    """(student hidden index j, teacher hidden index j*k) for j = 0..S; index 0 = embeddings."""
    k = layer_map(teacher_layers, student_layers)
    return [(j, j * k) for j in range(student_layers + 1)]


def _masked_mean_per_example(sq_sum: flow.Tensor, mask: flow.Tensor, width: int) -> flow.Tensor:
    """Per-example mean over masked entries: ``sq_sum`` [B,...] already summed over ``width`` values
    per entry, ``mask`` of the same shape -> [B]. (Reducing first avoids OneFlow's slow broadcasts.)"""
    b = sq_sum.shape[0]
    total = (sq_sum * mask).reshape(b, -1).sum(dim=1)
    count = mask.reshape(b, -1).sum(dim=1) * width
    return total / count.clamp(min=1.0)


def attention_mse(student: flow.Tensor, teacher: flow.Tensor, attention_mask: flow.Tensor, compat: str) -> flow.Tensor:
    """One layer pair. Default: per-example MSE of pre-softmax scores over real (query, key) pairs -> [B].

    ``easynlp``: EasyNLP's batch MSE of post-softmax maps over every position (entries <= -100
    zeroed first, a no-op on probabilities) -> scalar.
    """
    if compat == "easynlp":
        s = flow.where(student <= -1e2, flow.zeros_like(student), student)
        t = flow.where(teacher <= -1e2, flow.zeros_like(teacher), teacher)
        return ((s - t) ** 2).mean()
    m = attention_mask.to(student.dtype)
    if cpu.active(student):  # stage 1's [B,A,L,L] maps in numpy (cpu.functions.MaskedSquaredError)
        mn = m.numpy()
        b, heads, lq, l = student.shape
        weight = flow.from_numpy(np.ascontiguousarray((mn[:, :lq, None] * mn[:, None, :])[:, None]))  # [B,1,Lq,L]
        count = flow.from_numpy(np.maximum(mn[:, :lq].sum(1) * mn.sum(1) * heads, 1.0).astype(np.float32))
        return MaskedSquaredError.apply(student, teacher, weight, count)
    pair_mask = flow.matmul(m.unsqueeze(2), m.unsqueeze(1))  # [B,L,L]: 1 where query and key are real
    return _masked_mean_per_example(((student - teacher) ** 2).sum(dim=1), pair_mask, student.shape[1])


def hidden_mse(student: flow.Tensor, teacher: flow.Tensor, attention_mask: flow.Tensor, compat: str) -> flow.Tensor:
    """One hidden-state pair ([B,L,F] each). Default: per-example MSE over real tokens -> [B];
    ``easynlp``: batch MSE over all positions -> scalar."""
    if compat == "easynlp":
        return ((student - teacher) ** 2).mean()
    if cpu.active(student):
        mn = attention_mask.to(student.dtype).numpy()
        count = flow.from_numpy(np.maximum(mn.sum(1) * student.shape[-1], 1.0).astype(np.float32))
        return MaskedSquaredError.apply(student, teacher, flow.from_numpy(np.ascontiguousarray(mn[:, :, None])), count)
    return _masked_mean_per_example(((student - teacher) ** 2).sum(dim=-1), attention_mask.to(student.dtype), student.shape[-1])


def domain_mse(student: flow.Tensor, teacher: flow.Tensor, compat: str) -> flow.Tensor:
    """Domain representations [B,F]: per-example MSE -> [B] (default) or batch MSE -> scalar."""
    sq = (student - teacher) ** 2
    return sq.mean() if compat == "easynlp" else sq.mean(dim=1)


@dataclass
class Stage1Inputs:
    """What stage 1 compares, for one batch. Lists are already paired (student j <-> teacher j)."""

    student_attn: Sequence[flow.Tensor]   # S x [B,A,L,L]: scores (default) or probabilities (easynlp)
    teacher_attn: Sequence[flow.Tensor]
    student_hidden: Sequence[flow.Tensor]  # (S+1) x [B,L,F], student side already through fit_dense
    teacher_hidden: Sequence[flow.Tensor]
    student_domain: Optional[flow.Tensor]  # [B,F]; None: no domain-representation term
    teacher_domain: Optional[flow.Tensor]  # [B,F]
    attention_mask: flow.Tensor            # [B,L]
    weights: flow.Tensor                   # [B] = (1 + prototype) * expertise


def stage1_loss(x: Stage1Inputs, domain_loss_weight: float = 0.5, compat: str = "none") -> Tuple[flow.Tensor, Dict[str, flow.Tensor]]:
    """Intermediate-layer distillation loss.

    Default: ``mean_i w_i * (att_i + rep_i + lambda * dom_i)`` with per-example terms.
    ``easynlp``: ``(att + rep + lambda * dom) * mean_i w_i`` with batch-mean terms.
    Without a domain representation (``student_domain=None``) the ``dom`` term is absent, and
    without attention pairs (empty lists) the ``att`` term.
    """
    rep = sum(hidden_mse(s, t, x.attention_mask, compat) for s, t in zip(x.student_hidden, x.teacher_hidden))
    terms, parts = rep, {"rep": rep}
    if x.student_attn:  # empty: no attention term (hidden states only)
        att = sum(attention_mse(s, t, x.attention_mask, compat) for s, t in zip(x.student_attn, x.teacher_attn))
        terms = att + terms
        parts = {"att": att, **parts}
    if x.student_domain is not None:
        dom = domain_mse(x.student_domain, x.teacher_domain, compat)
        terms = terms + domain_loss_weight * dom
        parts["domain"] = dom
    if compat == "easynlp":
        return terms * x.weights.mean(), parts
    return (x.weights * terms).mean(), {k: v.mean() for k, v in parts.items()}


def distillation_loss(student_logits: flow.Tensor, teacher_logits: flow.Tensor, labels: flow.Tensor,
                      temperature: float = 2.0, alpha: float = 0.0, t_squared: bool = False) -> flow.Tensor:
    """Stage-2 loss with the common KD recipe's two knobs: [B,K], [B,K], [B] -> scalar

        alpha * mean_i CE(z_S, y)_i + (1 - alpha) * s * soft_cross_entropy(z_S, z_T, T),  s = T^2 or 1.

    ``alpha=0, t_squared=False`` is the paper's stage 2 (soft labels only). The soft cross-entropy
    differs from KL(p_T || p_S) only by the teacher's entropy, a constant: the gradients are KL's.
    T^2 keeps the soft term's gradient scale independent of T (Hinton et al., 2015).
    """
    soft = soft_cross_entropy(student_logits, teacher_logits, temperature)
    if t_squared:
        soft = soft * (temperature ** 2)
    if alpha == 0:
        return soft
    return alpha * cross_entropy_per_example(student_logits, labels).mean() + (1.0 - alpha) * soft


def soft_cross_entropy(student_logits: flow.Tensor, teacher_logits: flow.Tensor, temperature: float = 2.0) -> flow.Tensor:
    """Stage-2 loss: ``mean_i sum_c -softmax(z_T/T)_c * log_softmax(z_S/T)_c`` (no T^2, no hard labels)."""
    target = F.softmax(teacher_logits / temperature, dim=-1)
    return -(target * F.log_softmax(student_logits / temperature, dim=-1)).sum(dim=-1).mean()
