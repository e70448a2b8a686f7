"""What each training stage minimises, as an object: the entry points and the benchmark call these.

* ``TeacherObjective`` (3_train_teacher.sh): the meta-teacher's weighted cross-entropy plus the
  domain-corruption term, ``mean_i w_i (CE(y_i) + lambda CE(domain head, shuffled domain_i))``.
* ``Stage1Objective`` (4_student_first.sh): the frozen teacher's attention scores, hidden states
  and domain representation matched by the student, each example weighted by
  ``(1 + prototype score) x expertise`` (``losses.stage1_loss``); the teacher's targets computed
  every step or read from a cache built once (``build_cache``).
* ``Stage2Objective`` (5_student_second.sh): the soft cross-entropy against the teacher's logits at
  temperature T, optionally with hard labels and T^2 (``losses.distillation_loss``); the teacher's
  logits computed every step or looked up from an array computed once.

Each is the Trainer's ``step_loss``: ``objective(batch, step) -> (loss, logs)``, with ``batch`` a
dict of [B]/[B,L] tensors from ``features.to_tensors``. ``mark`` (the benchmark's phase timer; a
no-op by default) is called with a name after each part of a step.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, List, NamedTuple, Optional, Tuple

import numpy as np

from metakd.losses import (Stage1Inputs, attention_pairs, distillation_loss, hidden_pairs, stage1_loss, stage1_weights,
                           teacher_loss)
from metakd.runtime import flow


def _no_mark(name: str) -> None:
    pass


class TeacherObjective:
    """The meta-teacher's loss (``losses.teacher_loss``). The domain-corruption target is the
    batch's domain ids under a permutation drawn from (seed, step) alone, so a resumed run draws
    the same ones."""

    def __init__(self, model, device, seed: int, sample_weights: bool = True, domain_loss: bool = True,
                 domain_loss_weight: float = 0.5, compat: str = "none"):
        self.model, self.device, self.seed = model, device, seed
        self.sample_weights, self.domain_loss, self.domain_loss_weight = sample_weights, domain_loss, domain_loss_weight
        self.compat = compat
        self.mark: Callable[[str], None] = _no_mark

    def corrupted_domains(self, domains: flow.Tensor, step: int) -> flow.Tensor:
        """[B] domain ids -> the same ids permuted."""
        perm = np.random.default_rng([self.seed, step, 7]).permutation(len(domains))
        return domains[flow.tensor(perm, device=self.device)]

    def __call__(self, batch, step: int):
        out = self.model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], compat=self.compat)
        domain_logits = corrupted = None
        if self.domain_loss:
            corrupted = self.corrupted_domains(batch["domains"], step)
            domain_logits = self.model.domain_logits(out.content, batch["domains"])
        r = teacher_loss(out.logits, batch["labels"], domain_logits, corrupted,
                         batch["weights"] if self.sample_weights else None, self.domain_loss_weight)
        self.mark("forward + loss")
        return r


class Stage1Targets(NamedTuple):
    """The frozen teacher's side of stage 1 for a batch: its mapped attention maps (layers x
    [B,A,L,L]), mapped hidden states (layers+1 x [B,L,H_t]), domain representation [B,H_t], logits [B,K]."""

    attention: List[flow.Tensor]
    hidden: List[flow.Tensor]
    domain: flow.Tensor
    logits: flow.Tensor


class Stage1Objective:
    """Stage 1 (intermediate layers). Meta-KD's ingredients can be switched off one by one
    (``prototype_weights``, ``expertise_weights``, ``domain_term``, ``attention_term``); all off is
    plain two-stage KD. ``compat="easynlp"``: post-softmax maps and EasyNLP's batch means, and
    ``teacher_fit``, the random projection EasyNLP's teacher passes its domain representation through."""

    def __init__(self, teacher, student, device, domain_loss_weight: float = 0.5, compat: str = "none",
                 prototype_weights: bool = True, expertise_weights: bool = True, domain_term: bool = True,
                 attention_term: bool = True, teacher_fit=None):
        self.teacher, self.student, self.device, self.compat = teacher, student, device, compat
        self.domain_loss_weight = domain_loss_weight
        self.prototype_weights, self.expertise_weights = prototype_weights, expertise_weights
        self.domain_term, self.attention_term = domain_term, attention_term
        self.teacher_fit = teacher_fit
        tl, sl = teacher.config.num_hidden_layers, student.config.num_hidden_layers
        self.att_pairs, self.hid_pairs = attention_pairs(tl, sl), hidden_pairs(tl, sl)
        self.use_scores = compat != "easynlp"  # pre-softmax scores (default) or EasyNLP's maps
        self.cache = None
        self.mark: Callable[[str], None] = _no_mark

    def teacher_targets(self, batch) -> Stage1Targets:
        ids, mask, types, doms = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], batch["domains"]
        t = self.teacher(ids, mask, types, compat=self.compat, output_hidden_states=True,
                         output_attentions=not self.use_scores, output_attention_scores=self.use_scores)
        t_att = t.backbone.attention_scores if self.use_scores else t.backbone.attentions
        t_dom = self.teacher.domain_representation(t.content, doms)
        if self.teacher_fit is not None:
            t_dom = self.teacher_fit(t_dom)
        return Stage1Targets([t_att[i] for _, i in self.att_pairs], [t.backbone.hidden_states[i] for _, i in self.hid_pairs],
                             t_dom, t.logits)

    def build_cache(self, data, budget_bytes: int, spill_dir: Optional[Path], progress: bool = True):
        """Compute the teacher's targets for every row of ``data`` once (``teacher_cache``): the
        frozen teacher gives the same ones every epoch. Returns the cache (also kept as
        ``self.cache``), or None when it fits neither ``budget_bytes`` of memory nor the disk."""
        from metakd.cpu import parameter_views
        from metakd.teacher_cache import Stage1TeacherCache

        tc = self.teacher.config
        params = list(self.teacher.parameters()) + (list(self.teacher_fit.parameters()) if self.teacher_fit else [])
        with parameter_views(params):
            self.cache = Stage1TeacherCache.build(self.teacher_targets, data, len(self.att_pairs), tc.num_attention_heads,
                                                  len(self.hid_pairs), tc.hidden_size, self.teacher.num_labels,
                                                  self.device, budget_bytes=budget_bytes, spill_dir=spill_dir,
                                                  progress=progress)
        return self.cache

    def __call__(self, batch, step: int):
        ids, mask, types, doms = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], batch["domains"]
        s = self.student(ids, mask, types, compat=self.compat, output_hidden_states=True,
                         output_attentions=self.attention_term and not self.use_scores,
                         output_attention_scores=self.attention_term and self.use_scores)
        self.mark("student forward")
        with flow.no_grad():
            if self.cache is not None:
                t = Stage1Targets(*self.cache.batch(batch["row_index"].numpy(), ids.shape[1], self.device))
            else:
                t = self.teacher_targets(batch)
            weights = stage1_weights(batch["weights"], t.logits, batch["labels"], self.prototype_weights,
                                     self.expertise_weights)
        self.mark("cached targets + weights" if self.cache is not None else "teacher forward (no grad) + weights")
        s_att = s.backbone.attention_scores if self.use_scores else s.backbone.attentions
        x = Stage1Inputs(
            student_attn=[s_att[j] for j, _ in self.att_pairs] if self.attention_term else [],
            teacher_attn=list(t.attention) if self.attention_term else [],
            student_hidden=[self.student.fit(s.backbone.hidden_states[j]) for j, _ in self.hid_pairs],
            teacher_hidden=t.hidden,
            student_domain=self.student.fit(self.student.domain_representation(s.content, doms)) if self.domain_term else None,
            teacher_domain=t.domain if self.domain_term else None,
            attention_mask=mask, weights=weights)
        r = stage1_loss(x, self.domain_loss_weight, self.compat)
        self.mark("fit_dense + stage1_loss")
        return r


class Stage2Objective:
    """Stage 2 (prediction layer): ``alpha CE(y) + (1 - alpha) [T^2] CE(softmax(t/T), softmax(s/T))``;
    the paper's recipe is alpha = 0 without T^2. ``teacher_logits`` [N,K] for the training rows
    (``row_index``) replaces the teacher's forward at every step."""

    def __init__(self, teacher, student, device, temperature: float = 2.0, alpha: float = 0.0, t_squared: bool = False,
                 compat: str = "none", teacher_logits: Optional[np.ndarray] = None):
        self.teacher, self.student, self.device, self.compat = teacher, student, device, compat
        self.temperature, self.alpha, self.t_squared = temperature, alpha, t_squared
        self.teacher_logits = teacher_logits
        self.mark: Callable[[str], None] = _no_mark

    def precompute_teacher_logits(self, data, batch_size: int = 64, progress: bool = True) -> Tuple[np.ndarray, float]:
        """The frozen teacher's logits for every row of ``data``, once (eval mode gives the same
        ones every epoch): (logits [N,K], seconds)."""
        from metakd.evaluation import predict_logits

        t0 = time.perf_counter()
        self.teacher_logits = predict_logits(self.teacher, data, batch_size, self.device, progress=progress,
                                             desc="teacher logits")
        return self.teacher_logits, time.perf_counter() - t0

    def __call__(self, batch, step: int):
        ids, mask, types = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
        s = self.student(ids, mask, types, compat=self.compat, logits_only=True)
        self.mark("student forward")
        if self.teacher_logits is not None:
            t_logits = flow.tensor(self.teacher_logits[batch["row_index"].numpy()], device=self.device)
        else:
            with flow.no_grad():
                t_logits = self.teacher(ids, mask, types, compat=self.compat, logits_only=True).logits
        self.mark("cached logits" if self.teacher_logits is not None else "teacher forward (no grad)")
        r = distillation_loss(s.logits, t_logits, batch["labels"], self.temperature, self.alpha, self.t_squared), {}
        self.mark("distillation loss")
        return r
