"""BERT with the Meta-KD heads: the meta-teacher and the student share one class.

Shapes: B batch, L length, H this model's hidden size, K labels, D domains, F the teacher's
hidden size (``fit_size``, the space in which the student is compared with the teacher).

Parameter names follow EasyNLP's checkpoints (``backbone.*``, ``classifier``,
``domain_embedding``, ``corrupt_dense``, ``domain_classifier``, ``fit_dense``), so weights map 1:1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from metakd.checkpoint import LoadReport, assign_state_dict, load_backbone, read_config, read_metakd_info, read_state_dict
from metakd.infra.errors import UserError
from metakd import cpu
from metakd.bert import BertConfig, BertModel, BertModelOutput, init_bert_weights
from metakd.runtime import flow

nn = flow.nn
F = flow.nn.functional

COMPAT_CHOICES = ("none", "easynlp")


def content_vector(last_hidden: flow.Tensor, attention_mask: flow.Tensor, compat: str = "none") -> flow.Tensor:
    """The "content" of each example: a mean of its token states, [B,L,H] -> [B,H].

    Default: mean over real tokens, [CLS] excluded. ``easynlp``: mean over positions 1..L-1,
    padding included (the reference's numerics; depends on the padded length).
    """
    if compat == "easynlp":
        return last_hidden[:, 1:].mean(dim=1)
    mask = attention_mask.to(last_hidden.dtype).clone()
    mask[:, 0] = 0.0
    # A one-token input ([CLS] only) has no content; clamp keeps it at zero instead of NaN.
    weights = mask / mask.sum(dim=1, keepdim=True).clamp(min=1.0)  # [B,L]
    return flow.matmul(weights.unsqueeze(1), last_hidden).squeeze(1)


def init_framework_default(module: nn.Module) -> None:
    """PyTorch's default init (what EasyNLP's heads get): Linear U(+-1/sqrt(in)), Embedding N(0,1)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            bound = 1.0 / math.sqrt(m.weight.shape[1])
            nn.init.uniform_(m.weight, -bound, bound)
            if m.bias is not None:
                nn.init.uniform_(m.bias, -bound, bound)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, 1.0)


@dataclass
class MetaOutput:
    logits: flow.Tensor                          # [B,K]
    backbone: BertModelOutput
    content: Optional[flow.Tensor]               # [B,H]; None for logits_only

    @property
    def probabilities(self) -> flow.Tensor:
        return F.softmax(self.logits, dim=-1)


class MetaBert(nn.Module):
    """BERT + classifier + domain branch (+ ``fit_dense`` for a student).

    * ``logits = classifier(ReLU(pooler_output))`` (as in the reference);
    * teacher training: ``domain_logits = domain_classifier(dropout(tanh(corrupt_dense(E_d + content))))``;
    * distillation: ``domain_representation = corrupt_dense(E_d + content)``, projected by
      ``fit_dense`` to the teacher's width on the student side.
    """

    def __init__(self, config: BertConfig, num_labels: int, num_domains: int, fit_size: Optional[int] = None,
                 head_init: str = "bert"):
        super().__init__()
        h = config.hidden_size
        self.config = config
        self.num_labels = num_labels
        self.num_domains = num_domains
        self.fit_size = fit_size
        self.backbone = BertModel(config)
        self.classifier = nn.Linear(h, num_labels)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.domain_embedding = nn.Embedding(num_domains, h)
        self.corrupt_dense = nn.Linear(h, h)
        self.domain_classifier = nn.Linear(h, num_domains)
        if fit_size is not None:
            self.fit_dense = nn.Linear(h, fit_size)
        self.init_heads(head_init)
        cpu.install(self)  # numpy kernels on CPU (metakd.cpu); plain OneFlow elsewhere

    def heads(self) -> List[nn.Module]:
        mods = [self.classifier, self.domain_embedding, self.corrupt_dense, self.domain_classifier]
        return mods + ([self.fit_dense] if self.fit_size is not None else [])

    def init_heads(self, how: str = "bert") -> None:
        for m in self.heads():
            if how == "bert":
                init_bert_weights(m, self.config.initializer_range)
            elif how == "framework":
                init_framework_default(m)
            else:
                raise ValueError(f"unknown head init {how!r}")

    # -- forward pieces -----------------------------------------------------------------------
    def forward(self, input_ids: flow.Tensor, attention_mask: flow.Tensor, token_type_ids: flow.Tensor,
                compat: str = "none", output_hidden_states: bool = False, output_attentions: bool = False,
                output_attention_scores: bool = False, logits_only: bool = False) -> MetaOutput:
        """``logits_only``: skip what only the domain branch and distillation use (the content
        vector, the last layer's non-[CLS] positions; see ``BertModel``); ``content`` is then None.
        Default numerics run the dense layers on real tokens only (``BertModel(unpad=True)``);
        ``easynlp`` keeps every position, since its content vector and losses read the padding."""
        out = self.backbone(input_ids, attention_mask, token_type_ids, output_hidden_states=output_hidden_states,
                            output_attentions=output_attentions, output_attention_scores=output_attention_scores,
                            cls_only=logits_only, unpad=compat != "easynlp")
        logits = self.classifier(F.relu(out.pooler_output))
        content = None if logits_only else content_vector(out.last_hidden_state, attention_mask, compat)
        return MetaOutput(logits=logits, backbone=out, content=content)

    def domain_logits(self, content: flow.Tensor, domain_ids: flow.Tensor) -> flow.Tensor:
        """Teacher training's domain branch: [B,H], [B] -> [B,D]."""
        x = flow.tanh(self.corrupt_dense(self.domain_embedding(domain_ids) + content))
        return self.domain_classifier(self.dropout(x))

    def domain_representation(self, content: flow.Tensor, domain_ids: flow.Tensor) -> flow.Tensor:
        """Distillation's domain representation: [B,H] -> [B,H] (no tanh, no dropout, as the reference)."""
        return self.corrupt_dense(self.domain_embedding(domain_ids) + content)

    def fit(self, x: flow.Tensor) -> flow.Tensor:
        """Project to the teacher's width: [...,H] -> [...,F]."""
        if self.fit_size is None:
            raise RuntimeError("this model has no fit_dense (it is not a student)")
        return self.fit_dense(x)

    # -- checkpoints ---------------------------------------------------------------------------
    def metakd_info(self, role: str, labels: Sequence[str], domains: Sequence[str], task: str) -> dict:
        return {"role": role, "task": task, "labels": list(labels), "domains": list(domains),
                "num_labels": self.num_labels, "num_domains": self.num_domains, "fit_size": self.fit_size}


def build_from_pretrained(path: "str | Path", num_labels: int, num_domains: int, fit_size: Optional[int] = None,
                          head_init: str = "bert", verbose: bool = True) -> Tuple[MetaBert, LoadReport]:
    """A MetaBert whose backbone comes from a pretrained BERT folder and whose heads are fresh."""
    backbone, report = load_backbone(path, verbose=verbose)
    model = MetaBert(backbone.config, num_labels, num_domains, fit_size, head_init=head_init)
    model.backbone = backbone
    return model, report


def load_meta_checkpoint(path: "str | Path", fit_size: Optional[int] = "keep", verbose: bool = True) -> Tuple[MetaBert, dict]:
    """A MetaBert written by metakd (heads included). Returns (model, the config's metakd section).

    ``fit_size="keep"`` rebuilds ``fit_dense`` only if the checkpoint has one; an int creates a
    fresh one of that size when the checkpoint has none (a student initialised from a teacher).
    """
    folder = Path(path)
    info = read_metakd_info(folder)
    config = read_config(folder)
    arrays, layout = read_state_dict(folder)
    saved_fit = info.get("fit_size")
    want_fit = saved_fit if fit_size == "keep" else fit_size
    try:
        model = MetaBert(config, int(info["num_labels"]), int(info["num_domains"]), want_fit)
    except KeyError as e:
        raise UserError(f"config.json's metakd section lacks {e}; the checkpoint is damaged", folder / "config.json") from None
    report = assign_state_dict(model, arrays, folder, layout)
    fresh_fit = [k for k in report.missing if k.startswith("fit_dense.")]
    missing = [k for k in report.missing if not k.startswith("fit_dense.")]
    if missing:
        raise UserError(f"the checkpoint lacks {len(missing)} tensors ({', '.join(missing[:4])}); it is incomplete", folder)
    if fresh_fit and verbose:
        print(f"{folder}: fit_dense freshly initialised ({want_fit} wide)")
    return model, info
