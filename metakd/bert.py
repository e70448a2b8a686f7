"""The BERT encoder in OneFlow, with Hugging Face's module and parameter names.

One ``BertConfig`` and one ``BertModel``, the same function as ``transformers.BertModel`` (eager
attention): a checkpoint's state dict maps 1:1 (``embeddings.word_embeddings.weight``,
``encoder.layer.0.attention.self.query.weight``, ``pooler.dense.weight``, ...). Beyond Hugging
Face, ``BertModel`` can return the pre-softmax attention scores that Meta-KD's stage-1
distillation compares (docs/design.md section 3), compute the last layer for [CLS] alone, and run
the dense layers on the real tokens only (``Unpadding``).

This file is plain OneFlow, what runs on CUDA. On CPU, ``metakd.cpu.install`` swaps numpy
siblings in for some of these modules (same parameters, same names): OneFlow 0.9's CPU kernels
are slow for a BERT step (docs/design.md section 8).

Shapes: B = batch, L = sequence length, T = real tokens of a batch, H = hidden size,
A = attention heads, d = H / A, I = feed-forward size, V = vocabulary.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from metakd.infra.errors import UserError
from metakd.infra.fileio import read_json_object
from metakd.runtime import flow

nn = flow.nn
F = flow.nn.functional

# Added to the scores of padded keys before the softmax. EasyNLP and the original BERT use -10000;
# exp(-10000) underflows to exactly 0 in float32, so this matches Hugging Face's finfo.min too.
MASK_VALUE = -10000.0


def gelu(x: flow.Tensor) -> flow.Tensor:
    return F.gelu(x)  # exact erf form, as Hugging Face's "gelu"


def gelu_new(x: flow.Tensor) -> flow.Tensor:
    return 0.5 * x * (1.0 + flow.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)))


ACTIVATIONS = {"gelu": gelu, "gelu_new": gelu_new, "gelu_pytorch_tanh": gelu_new, "relu": F.relu}


@dataclass
class BertConfig:
    """Hyper-parameters of a BERT encoder, as in a Hugging Face ``config.json``."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    # Keys of config.json that are not BERT hyper-parameters (labels, domains, ...) survive a
    # load/save round trip here.
    extra: Dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # a "64" or 64.0 in config.json would fail later, obscurely
            v = getattr(self, f.name)
            if v is None and f.name == "pad_token_id":
                continue
            if f.type in ("int", int) and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
                raise UserError(f"{f.name} must be a whole number >= 0, got {v!r}; fix config.json")
            if f.type in ("float", float) and (not isinstance(v, (int, float)) or isinstance(v, bool)
                                                or not math.isfinite(v) or v < 0):
                raise UserError(f"{f.name} must be a number >= 0, got {v!r}; fix config.json")
        if self.num_attention_heads < 1 or self.hidden_size < 1 or self.num_hidden_layers < 1:
            raise UserError("hidden_size, num_hidden_layers and num_attention_heads must be >= 1; fix config.json")
        if self.hidden_size % self.num_attention_heads:
            raise UserError(
                f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads "
                f"{self.num_attention_heads}; fix config.json"
            )
        if self.hidden_act not in ACTIVATIONS:
            raise UserError(f"hidden_act {self.hidden_act!r} is not supported; use one of {sorted(ACTIVATIONS)}")

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "BertConfig":
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in d.items() if k in names}
        extra = {k: v for k, v in d.items() if k not in names}
        return cls(**known, extra=extra)

    @classmethod
    def from_json_file(cls, path: "str | Path") -> "BertConfig":
        path = Path(path)
        d = read_json_object(path, missing="config.json not found; a model folder needs config.json, vocab.txt and weights",
                             damaged_fix="the file is damaged, copy it again",
                             expected="expected a JSON object of BERT hyper-parameters")
        try:
            return cls.from_dict(d)
        except TypeError as e:
            raise UserError(f"bad BERT config: {e}", path) from None

    def to_dict(self) -> Dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        d["model_type"] = "bert"
        return {**self.extra, **d}


class LayerNorm(nn.Module):
    """LayerNorm over the last axis; parameters ``weight`` [H] and ``bias`` [H].

    On CUDA OneFlow's fused kernel. On CPU the row mean and variance are computed and broadcast
    back with matmuls against a ones vector, the same function: OneFlow 0.9's CPU last-axis
    broadcast is the slowest op of a BERT step there (~50x). ``native_on_cpu`` (benchmarks only)
    uses OneFlow's own kernel on CPU too, to measure what this saves.
    """

    native_on_cpu = False

    def __init__(self, hidden_size: int, eps: float = 1e-12):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(flow.ones(hidden_size))
        self.bias = nn.Parameter(flow.zeros(hidden_size))
        self._ones = None  # (column [H,1] / H, row [1,H]), cached per device

    def _stats_vectors(self, x: flow.Tensor) -> Tuple[flow.Tensor, flow.Tensor]:
        if self._ones is None or self._ones[0].device != x.device:
            h = x.shape[-1]
            col = flow.full((h, 1), 1.0 / h, dtype=x.dtype, device=x.device)
            row = flow.ones(1, h, dtype=x.dtype, device=x.device)
            self._ones = (col, row)
        return self._ones

    def forward(self, x: flow.Tensor) -> flow.Tensor:
        """x [..., H] -> [..., H]."""
        if x.is_cuda or LayerNorm.native_on_cpu:
            return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)
        col, row = self._stats_vectors(x)
        mean = flow.matmul(x, col)                      # [..., 1]
        xc = x - flow.matmul(mean, row)                 # [..., H]
        var = flow.matmul(xc * xc, col)                 # [..., 1], biased like LayerNorm
        rstd = flow.rsqrt(var + self.eps)
        return xc * flow.matmul(rstd, row) * self.weight + self.bias


class Unpadding:
    """Where the real tokens of a padded [B,L] batch sit when packed into [T,...] rows.

    Dense layers (Q/K/V, attention output, feed-forward, LayerNorm) act on each token alone, so
    running them on the T real tokens instead of all B*L positions gives the same real-token
    outputs for less work; only attention needs the padded [B,L] layout, and padded keys are
    masked out of it. Packing and unpacking are row gathers (``index_select``, whose backward is
    cheap in OneFlow; its ``scatter`` is not).
    """

    def __init__(self, attention_mask: flow.Tensor):
        b, l = attention_mask.shape
        flat = attention_mask.reshape(-1).to(flow.int64)
        self.batch, self.length = b, l
        self.real = flow.nonzero(flat).reshape(-1)                      # [T] flat positions of real tokens
        self.tokens = int(self.real.shape[0])
        row = flow.cumsum(flat, dim=0) - 1                               # packed row of each real position
        self.slot = flow.where(flat > 0, row, flow.full_like(row, self.tokens))  # [B*L]; T: the zero row
        self.first = flow.index_select(self.slot, 0, flow.arange(0, b * l, l, device=flat.device))  # [B] [CLS] rows

    @classmethod
    def of(cls, attention_mask: flow.Tensor) -> Optional["Unpadding"]:
        """None when the batch has no padding (packing would only add gathers)."""
        u = cls(attention_mask)
        return u if u.tokens < u.batch * u.length else None

    def pack(self, x: flow.Tensor) -> flow.Tensor:
        """[B,L,...] -> [T,...]."""
        return flow.index_select(x.reshape(self.batch * self.length, *x.shape[2:]), 0, self.real)

    def pad(self, x: flow.Tensor) -> flow.Tensor:
        """[T,...] -> [B,L,...], zeros at padded positions."""
        z = flow.cat([x, flow.zeros(1, *x.shape[1:], dtype=x.dtype, device=x.device)])
        return flow.index_select(z, 0, self.slot).reshape(self.batch, self.length, *x.shape[1:])


class BertEmbeddings(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: flow.Tensor, token_type_ids: flow.Tensor) -> flow.Tensor:
        """[B,L] ids -> [B,L,H]."""
        positions = flow.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions) + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(x))


class BertSelfAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_size = config.head_size
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)

    def _heads(self, x: flow.Tensor) -> flow.Tensor:
        b, l, _ = x.shape
        return x.view(b, l, self.num_heads, self.head_size).permute(0, 2, 1, 3)  # [B,A,L,d]

    def queries_of(self, x: flow.Tensor, queries: Optional[int], unpad: Optional[Unpadding]) -> flow.Tensor:
        """The rows that ask: all of x, or its first ``queries`` positions ([CLS] rows when packed)."""
        if queries is None:
            return x
        return x[:, :queries] if unpad is None else flow.index_select(x, 0, unpad.first)

    def forward(self, x: flow.Tensor, additive_mask: flow.Tensor, queries: Optional[int] = None,
                unpad: Optional[Unpadding] = None, need_probs: bool = True):
        """x [B,L,H], additive_mask [B,1,1,L] -> (context [B,Lq,H], scores [B,A,Lq,L], probs [B,A,Lq,L]).

        ``scores`` = QK^T/sqrt(d) before the mask; ``probs`` = softmax(scores + mask) after
        attention dropout (what Hugging Face returns as ``attentions``). ``queries``: only the
        first Lq positions ask (all L are keys and values); default all. With ``unpad``, x and
        context are packed real tokens [T,H] ([B,H] for ``queries=1``: the [CLS] rows).
        ``need_probs=False``: the caller does not read ``probs`` (a faster sibling may return None).
        """
        h = x.shape[-1]
        # Scaling q instead of the [L,L] scores is the same function and cheaper.
        q = self.query(self.queries_of(x, queries, unpad)) * (1.0 / math.sqrt(self.head_size))
        k, v = self.key(x), self.value(x)
        if unpad is not None:
            q = unpad.pad(q) if queries is None else q.unsqueeze(1)
            k, v = unpad.pad(k), unpad.pad(v)
        q, k, v = self._heads(q), self._heads(k), self._heads(v)
        scores = flow.matmul(q, k.transpose(-1, -2))
        probs = self.dropout(F.softmax(scores + additive_mask, dim=-1))
        b, lq = q.shape[0], q.shape[2]
        context = flow.matmul(probs, v).permute(0, 2, 1, 3).reshape(b, lq, h)
        if unpad is not None:
            context = unpad.pack(context) if queries is None else context.reshape(b, h)
        return context, scores, probs


class BertSelfOutput(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: flow.Tensor, residual: flow.Tensor) -> flow.Tensor:
        """[...,H], [...,H] -> LayerNorm(dropout(dense(x)) + residual) [...,H]."""
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class BertAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertSelfOutput(config)

    def forward(self, x: flow.Tensor, additive_mask: flow.Tensor, queries: Optional[int] = None,
                unpad: Optional[Unpadding] = None, need_probs: bool = True):
        """As ``BertSelfAttention``, with the output block: (y [B,Lq,H], scores, probs)."""
        context, scores, probs = self.self(x, additive_mask, queries, unpad, need_probs)
        return self.output(context, self.self.queries_of(x, queries, unpad)), scores, probs


class BertIntermediate(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACTIVATIONS[config.hidden_act]

    def forward(self, x: flow.Tensor) -> flow.Tensor:
        """[...,H] -> act(dense(x)) [...,I]."""
        return self.act(self.dense(x))


class BertOutput(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: flow.Tensor, residual: flow.Tensor) -> flow.Tensor:
        """[...,I], [...,H] -> LayerNorm(dropout(dense(x)) + residual) [...,H]."""
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class BertLayer(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(self, x: flow.Tensor, additive_mask: flow.Tensor, queries: Optional[int] = None,
                unpad: Optional[Unpadding] = None, need_probs: bool = True):
        """x [B,L,H] -> (y [B,Lq,H], scores [B,A,Lq,L], probs [B,A,Lq,L]); Lq = ``queries`` or L.
        With ``unpad``: x [T,H] -> y [T,H] ([B,H] for ``queries=1``). ``need_probs=False``: probs may be None."""
        a, scores, probs = self.attention(x, additive_mask, queries, unpad, need_probs)
        return self.output(self.intermediate(a), a), scores, probs


class BertEncoder(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList([BertLayer(config) for _ in range(config.num_hidden_layers)])


class BertPooler(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: flow.Tensor) -> flow.Tensor:
        """[B,L,H] -> tanh(W h_[CLS] + b) [B,H]."""
        return flow.tanh(self.dense(hidden[:, 0]))


@dataclass
class BertModelOutput:
    last_hidden_state: flow.Tensor                            # [B,L,H]
    pooler_output: flow.Tensor                                # [B,H]
    hidden_states: Optional[Tuple[flow.Tensor, ...]] = None   # L+1 x [B,L,H], embeddings first
    attentions: Optional[Tuple[flow.Tensor, ...]] = None      # layers x [B,A,L,L], post-softmax
    attention_scores: Optional[Tuple[flow.Tensor, ...]] = None  # layers x [B,A,L,L], pre-softmax, unmasked


def init_bert_weights(module: nn.Module, std: float) -> None:
    """BERT's initialisation: N(0, std) for Linear/Embedding weights, zero biases, LayerNorm 1/0."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=std)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class BertModel(nn.Module):
    """The BERT encoder with a pooler; the same function as ``transformers.BertModel``."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config)
        init_bert_weights(self, config.initializer_range)

    def forward(
        self,
        input_ids: flow.Tensor,
        attention_mask: Optional[flow.Tensor] = None,
        token_type_ids: Optional[flow.Tensor] = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        output_attention_scores: bool = False,
        cls_only: bool = False,
        unpad: bool = False,
    ) -> BertModelOutput:
        """input_ids, attention_mask (1 = real token), token_type_ids: [B,L] int64.

        ``cls_only``: for callers that need only the pooler output (logits). The last layer then
        computes its query, attention output and feed-forward for [CLS] alone (keys and values
        still for every token), which is the same pooler output for about 10/12 of one layer's
        work less; ``last_hidden_state`` is then [B,1,H] and no per-layer outputs are returned.

        ``unpad``: the dense layers run on the real tokens only (``Unpadding``). Real positions
        and the pooler output are the same as without it; padded positions of the hidden states
        are zero (instead of values nothing should read), and so are the padded query rows of
        the attention scores and maps.
        """
        if cls_only and (output_hidden_states or output_attentions or output_attention_scores):
            raise ValueError("cls_only computes the last layer for [CLS] alone; it cannot return per-layer outputs")
        if attention_mask is None:
            attention_mask = flow.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = flow.zeros_like(input_ids)
        additive_mask = (1.0 - attention_mask.to(flow.float32)).view(input_ids.shape[0], 1, 1, -1) * MASK_VALUE

        packing = Unpadding.of(attention_mask) if unpad else None
        x = self.embeddings(input_ids, token_type_ids)
        if packing is not None:
            x = packing.pack(x)
        hidden: List[flow.Tensor] = [x]
        scores_all: List[flow.Tensor] = []
        probs_all: List[flow.Tensor] = []
        last = len(self.encoder.layer) - 1
        for i, layer in enumerate(self.encoder.layer):
            x, scores, probs = layer(x, additive_mask, 1 if cls_only and i == last else None, packing, output_attentions)
            hidden.append(x)
            scores_all.append(scores)
            probs_all.append(probs)
        if packing is not None:
            x = x.unsqueeze(1) if cls_only else packing.pad(x)
            if output_hidden_states:
                hidden = [packing.pad(t) for t in hidden]
        return BertModelOutput(
            last_hidden_state=x,
            pooler_output=self.pooler(x),
            hidden_states=tuple(hidden) if output_hidden_states else None,
            attentions=tuple(probs_all) if output_attentions else None,
            attention_scores=tuple(scores_all) if output_attention_scores else None,
        )

    @classmethod
    def from_pretrained(cls, path: "str | Path", device: str = "cpu", verbose: bool = True) -> "BertModel":
        """A BERT folder (Hugging Face, older OneFlow port, or metakd) -> model in eval mode."""
        from metakd.checkpoint import load_backbone

        model, _report = load_backbone(path, verbose=verbose)
        return model.to(device).eval()
