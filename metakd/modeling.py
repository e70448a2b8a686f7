"""The BERT encoder, in OneFlow, with Hugging Face parameter names.

One ``BertConfig`` and one ``BertModel``, the same function as ``transformers.BertModel`` (eager
attention): a checkpoint's state dict maps 1:1 (``embeddings.word_embeddings.weight``,
``encoder.layer.0.attention.self.query.weight``, ``pooler.dense.weight``, ...).

Shapes: B = batch, L = sequence length, H = hidden size, A = attention heads, I = FFN size.

Beyond Hugging Face, ``BertModel`` can return the pre-softmax attention scores that Meta-KD's
stage-1 distillation compares (docs/design.md section 3).

CPU note: OneFlow 0.9's CPU kernels run on one thread, and many are slow for a BERT step: GEMM at
~40% of OpenBLAS's speed, last-axis broadcasts ~50x slow (``nn.LayerNorm``), batched matmuls,
GELU, dropout masks, the embedding gradient (a dense [V,H] scatter). On CPU this file therefore
runs that work in numpy through autograd Functions (the parameters and their names stay
OneFlow's): the dense layers in BLAS (``_BlasLinear``, with GELU fused for the feed-forward),
the attention core (``_blas_attention``), LayerNorm, the word-embedding lookup and gradient, and
the dropout masks; a whole ``BertLayer`` in training and inference runs as one Function
(``_numpy_layer``) built from the same numpy pieces. The same function to float rounding; ``METAKD_CPU_MATMUL=oneflow`` switches
back to OneFlow's kernels (with LayerNorm's statistics broadcast by K=1 matmuls, exact to float
rounding). On CUDA everything is OneFlow's, with the fused LayerNorm kernel.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np

from metakd.errors import UserError
from metakd.fileio import read_json_object
from metakd.runtime import flow

nn = flow.nn
F = flow.nn.functional

# Added to the scores of padded keys before the softmax. EasyNLP and the original BERT use -10000;
# exp(-10000) underflows to exactly 0 in float32, so this matches Hugging Face's finfo.min too.
MASK_VALUE = -10000.0


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
        if self.hidden_act not in _ACTIVATIONS:
            raise UserError(f"hidden_act {self.hidden_act!r} is not supported; use one of {sorted(_ACTIVATIONS)}")

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


def _gelu(x: flow.Tensor) -> flow.Tensor:
    return F.gelu(x)  # exact erf form, as Hugging Face's "gelu"


def _gelu_new(x: flow.Tensor) -> flow.Tensor:
    return 0.5 * x * (1.0 + flow.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)))


_ACTIVATIONS = {"gelu": _gelu, "gelu_new": _gelu_new, "gelu_pytorch_tanh": _gelu_new, "relu": F.relu}


# Benchmarks only: METAKD_NATIVE_LAYERNORM=1 uses OneFlow's own (slow on CPU) LayerNorm, to
# measure what the rewrite saves.
_NATIVE_LAYERNORM = os.environ.get("METAKD_NATIVE_LAYERNORM", "0") == "1"


class LayerNorm(nn.Module):
    """LayerNorm over the last axis; state-dict keys ``weight`` [H] and ``bias`` [H].

    On CPU it runs in numpy (``_numpy_layer_norm``); with ``METAKD_CPU_MATMUL=oneflow`` the row
    mean and variance are computed and broadcast back with matmuls against a ones vector
    (OneFlow's last-axis broadcast is the slowest op of a BERT step there).
    """

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
        if x.is_cuda or _NATIVE_LAYERNORM:
            return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)
        if _CPU_MATMUL == "blas":
            return _numpy_layer_norm(self.eps).apply(x, self.weight, self.bias)
        col, row = self._stats_vectors(x)
        mean = flow.matmul(x, col)                      # [..., 1]
        xc = x - flow.matmul(mean, row)                 # [..., H]
        var = flow.matmul(xc * xc, col)                 # [..., 1], biased like LayerNorm
        rstd = flow.rsqrt(var + self.eps)
        return xc * flow.matmul(rstd, row) * self.weight + self.bias


# On CPU, BERT's dense layers multiply in numpy's BLAS (OpenBLAS): OneFlow 0.9's CPU GEMM runs at
# about 40% of OpenBLAS's one-thread speed on these shapes. The same function up to float
# rounding, at the cost of a host sync per layer (numpy reads the tensors). Under the launcher
# each process gets OMP_NUM_THREADS=1, which OpenBLAS follows; one process uses every core.
# METAKD_CPU_MATMUL=oneflow (benchmarks) keeps OneFlow's own matmul.
_CPU_MATMUL = os.environ.get("METAKD_CPU_MATMUL", "blas")
CPU_KERNELS = ("numpy", "oneflow")


def set_cpu_kernels(name: str) -> None:
    """The one switch of the CPU kernels, for every module that reads it (layers, losses, the update):
    ``numpy`` (the default: BLAS matmuls and the numpy autograd Functions) or ``oneflow`` (OneFlow's
    own CPU kernels, the code that runs on CUDA). The entry points' ``--cpu-kernels`` calls it."""
    global _CPU_MATMUL
    if name not in CPU_KERNELS:
        raise UserError(f"unknown CPU kernels {name!r}; choose numpy or oneflow")
    _CPU_MATMUL = "blas" if name == "numpy" else "oneflow"


def cpu_kernels() -> str:
    return "numpy" if _CPU_MATMUL == "blas" else "oneflow"
# Below this many multiply-adds a product is cheaper in OneFlow than a host sync (tiny models).
_BLAS_MIN_MACS = 1 << 22


# Every Tensor.numpy() is a round trip through OneFlow's VM thread: ~20 us on an idle CPU, but
# 0.2-1.5 ms when the processes of a multi-process run share the cores (measured here), and a
# BERT step asks hundreds of times. Within ``numpy_scope()`` (one training step's forward and
# backward; not inference, where it would keep every layer's outputs alive to the end of the
# batch) each tensor is read once, and the tensors the Functions below
# make from arrays (outputs, what they save for the backward) are known without asking: _view,
# _wrap (ctx.saved_tensors gives back the very objects saved; attributes set on a ctx are not
# reliable in OneFlow 0.9). Safe because nothing writes those tensors in place inside a scope:
# activations are never updated in place, and parameters change only in the optimizer step,
# after the scope (gradients the Functions return are not registered: OneFlow may add into them).
_SCOPE: Optional[Dict[int, Tuple[flow.Tensor, np.ndarray]]] = None


@contextlib.contextmanager
def numpy_scope() -> Iterator[None]:
    """Within: tensors read by the CPU numpy paths are read once (see _view)."""
    global _SCOPE
    if _SCOPE is not None:  # nested: the outer scope decides
        yield
        return
    _SCOPE = {}
    try:
        yield
    finally:
        _SCOPE = None


# Parameters' views held across steps by ``parameter_views`` (the trainer's loop): id -> (tensor, array).
_PARAMS: Dict[int, Tuple[flow.Tensor, np.ndarray]] = {}


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


def _view(t: flow.Tensor) -> np.ndarray:
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


def _wrap(a: np.ndarray) -> flow.Tensor:
    """flow.from_numpy(a) for a Function's forward output, remembered as its own array."""
    t = flow.from_numpy(a)
    if _SCOPE is not None:
        _SCOPE[id(t)] = (t, a)
    return t


def _affine(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """x [..., in], W [out, in], b [out] -> x W^T + b as [N, out]."""
    y = x.reshape(-1, x.shape[-1]) @ w.T
    y += b
    return y


def _linear_forward(x: np.ndarray, weight: flow.Tensor, bias: flow.Tensor) -> np.ndarray:
    """``_affine`` with the layer's tensors."""
    return _affine(x, _view(weight), _view(bias))


def _linear_grads(g: np.ndarray, x: np.ndarray, w: np.ndarray):
    """Gradients of y = x W^T + b for g = dL/dy as [N,out]: (dx like x, dW, db), numpy."""
    return (g @ w).reshape(x.shape), g.T @ x.reshape(-1, x.shape[-1]), g.sum(axis=0)


def _linear_backward(g: np.ndarray, x: np.ndarray, w: np.ndarray):
    """``_linear_grads`` as tensors."""
    return tuple(flow.from_numpy(a) for a in _linear_grads(g, x, w))


class _BlasLinear(flow.autograd.Function):
    """y = x W^T + b with numpy's matmul; x [..., in], W [out, in], b [out] -> [..., out]."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        y = _linear_forward(_view(x), weight, bias)
        return _wrap(y.reshape(*x.shape[:-1], y.shape[-1]))

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        return _linear_backward(_view(grad).reshape(-1, grad.shape[-1]), _view(x), _view(weight))


# erfc(z) = t exp(-z^2 + P(t)), t = 1/(1 + z/2), z >= 0: Numerical Recipes' erfcc, fractional
# error below 1.2e-7 everywhere (float32 rounds at 6e-8), so the GELU below is the erf form to
# float rounding (OneFlow's own kernel is as far from a float64 reference). P's coefficients
# from t^0 up.
_ERFC_POLY = [np.float32(c) for c in (-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806, 0.27886807,
                                      -1.13520398, 1.48851587, -0.82215223, 0.17087277)]
_GELU_CHUNK = 1 << 15  # elements per block, so that the temporaries stay in L2 (1 << 17 was 2x slower)


def _gelu_block(x: np.ndarray, y: np.ndarray, dy: Optional[np.ndarray]) -> None:
    """y = x Phi(x) and, unless ``dy`` is None, dy = Phi(x) + x phi(x), its derivative; float32,
    written in place. Written as (x + |x|)/2 - |x| Phi(-|x|), which needs no select between the
    two signs (np.where cost as much as a fifth of the rest); each pass is one ufunc on the block."""
    f32 = np.float32
    a = np.abs(x)
    t = a * f32(0.5 / math.sqrt(2.0))
    t += f32(1.0)
    np.reciprocal(t, out=t)                  # t = 1 / (1 + z/2), z = |x| / sqrt 2
    p = t * _ERFC_POLY[-1]
    for c in _ERFC_POLY[-2:0:-1]:
        p += c
        p *= t
    p += _ERFC_POLY[0]
    e = np.square(a)
    e *= f32(-0.5)                           # -x^2 / 2
    p += e
    np.exp(p, out=p)
    p *= t                                   # erfc(z) = 2 Phi(-|x|)
    if dy is not None:
        cdf = p * f32(-0.5)
        cdf += f32(0.5)
        np.copysign(cdf, x, out=cdf)
        cdf += f32(0.5)                      # Phi(x) = 1/2 + sign(x) (1/2 - Phi(-|x|))
    p *= a
    np.add(x, a, out=y)
    y -= p
    y *= f32(0.5)
    if dy is None:
        return
    np.exp(e, out=e)
    e *= f32(1.0 / math.sqrt(2.0 * math.pi))  # phi(x)
    e *= x
    np.add(cdf, e, out=dy)


def _gelu_numpy(x: np.ndarray, derivative: bool = True) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """GELU (erf form) of float32 x and its derivative (None unless ``derivative``)."""
    flat = x.reshape(-1)
    y = np.empty_like(flat)
    dy = np.empty_like(flat) if derivative else None
    for i in range(0, flat.size, _GELU_CHUNK):
        _gelu_block(flat[i:i + _GELU_CHUNK], y[i:i + _GELU_CHUNK], None if dy is None else dy[i:i + _GELU_CHUNK])
    return y.reshape(x.shape), None if dy is None else dy.reshape(x.shape)


class _BlasLinearGelu(flow.autograd.Function):
    """y = GELU(x W^T + b), the feed-forward's first half, in numpy. It saves GELU's derivative
    rather than its input, so the backward is one product ahead of the dense layer's."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        y, dy = _gelu_numpy(_linear_forward(_view(x), weight, bias))
        ctx.save_for_backward(x, weight, _wrap(dy))
        return _wrap(y.reshape(*x.shape[:-1], y.shape[-1]))

    @staticmethod
    def backward(ctx, grad):
        x, weight, dy = ctx.saved_tensors
        return _linear_backward(_view(grad).reshape(-1, grad.shape[-1]) * _view(dy), _view(x), _view(weight))


def _layer_norm_forward(z: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float):
    """z [N,H] -> (LayerNorm(z), xhat = (z - mean) / std, rstd [N,1]); float32."""
    xhat = z - z.mean(axis=1, keepdims=True)
    rstd = np.square(xhat).mean(axis=1, keepdims=True)
    rstd += np.float32(eps)
    np.sqrt(rstd, out=rstd)
    np.reciprocal(rstd, out=rstd)
    xhat *= rstd
    return xhat * gamma + beta, xhat, rstd


def _layer_norm_backward(g: np.ndarray, xhat: np.ndarray, rstd: np.ndarray, gamma: np.ndarray):
    """Gradients of LayerNorm for g = dL/dy [N,H]: (dz [N,H], dgamma [H], dbeta [H])."""
    dgamma, dbeta = np.einsum("nh,nh->h", g, xhat), g.sum(axis=0)
    dxh = g * gamma
    dz = dxh - dxh.mean(axis=1, keepdims=True)
    dz -= xhat * np.einsum("nh,nh->n", dxh, xhat)[:, None] * np.float32(1.0 / g.shape[1])
    dz *= rstd
    return dz, dgamma, dbeta


@functools.lru_cache(maxsize=None)
def _numpy_layer_norm(eps: float):
    """LayerNorm over the last axis as an autograd Function in numpy; one class per eps."""

    class _NumpyLayerNorm(flow.autograd.Function):
        """z [..., H], gamma [H], beta [H] -> LayerNorm(z) [..., H]."""

        @staticmethod
        def forward(ctx, z, gamma, beta):
            h = z.shape[-1]
            y, xhat, rstd = _layer_norm_forward(_view(z).reshape(-1, h), _view(gamma), _view(beta), eps)
            ctx.save_for_backward(gamma, _wrap(xhat), _wrap(rstd))
            return _wrap(y.reshape(tuple(z.shape)))

        @staticmethod
        def backward(ctx, grad):
            gamma, xhat, rstd = (_view(t) for t in ctx.saved_tensors)
            g = _view(grad).reshape(xhat.shape)
            dz, dgamma, dbeta = _layer_norm_backward(g, xhat, rstd, gamma)
            return flow.from_numpy(dz.reshape(tuple(grad.shape))), flow.from_numpy(dgamma), flow.from_numpy(dbeta)

    return _NumpyLayerNorm


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and names) whose products run in numpy's BLAS on CPU
    (``_BlasLinear``), unless ``METAKD_CPU_MATMUL=oneflow``."""

    def uses_blas(self, x: flow.Tensor) -> bool:
        return (_CPU_MATMUL == "blas" and not x.is_cuda and self.bias is not None
                and x.numel() * self.out_features >= _BLAS_MIN_MACS)

    def forward(self, x: flow.Tensor) -> flow.Tensor:
        if self.uses_blas(x):
            return _BlasLinear.apply(x, self.weight, self.bias)
        return super().forward(x)


class _NumpyRNG:
    """A numpy generator that the trainer re-seeds every step, like OneFlow's (``manual_seed``)."""

    _made = 0

    def __init__(self):
        _NumpyRNG._made += 1  # fixed, distinct seeds until the first re-seed: reproducible in one process
        self.manual_seed(0x5EED + _NumpyRNG._made)

    def manual_seed(self, seed: int) -> None:
        self._rng = np.random.Generator(np.random.SFC64(seed))

    def keep_scale(self, shape, p: float) -> np.ndarray:
        """float32 mask of ``shape``: 1/(1-p) where kept (probability 1-p), else 0."""
        keep = (self._rng.random(shape, dtype=np.float32) >= np.float32(p)).astype(np.float32)
        keep *= np.float32(1.0 / (1.0 - p))  # (not np.multiply(bool, scale, dtype=...): that cast is 20x slower)
        return keep


class Dropout(nn.Dropout):
    """``nn.Dropout`` whose masks are drawn by numpy on CPU (OneFlow 0.9's CPU dropout is about 4x
    slower); the same distribution, other draws. ``numpy_generator`` is re-seeded by the trainer."""

    def __init__(self, p: float = 0.5):
        super().__init__(p)
        self.numpy_generator = _NumpyRNG()

    def uses_numpy(self, x: flow.Tensor) -> bool:
        return self.training and self.p > 0 and not x.is_cuda and _CPU_MATMUL == "blas"

    def keep_array(self, shape) -> Optional[np.ndarray]:
        """The mask the numpy paths multiply by, as an array (None when dropout is off)."""
        return self.numpy_generator.keep_scale(tuple(shape), self.p) if self.p > 0 and self.training else None

    def keep_scale(self, shape) -> Optional[flow.Tensor]:
        """``keep_array`` as a tensor."""
        keep = self.keep_array(shape)
        return None if keep is None else _wrap(keep)

    def forward(self, x: flow.Tensor) -> flow.Tensor:
        if self.uses_numpy(x):
            return x * self.keep_scale(x.shape)
        return super().forward(x)


def _split_heads(x: np.ndarray, heads: int) -> np.ndarray:
    """[B,L,H] -> [B,A,L,d], a view."""
    b, l, h = x.shape
    return x.reshape(b, l, heads, h // heads).transpose(0, 2, 1, 3)


def _merge_heads(x: np.ndarray) -> np.ndarray:
    """[B,A,L,d] -> [B,L,H], a copy."""
    b, a, l, d = x.shape
    return np.ascontiguousarray(x.transpose(0, 2, 1, 3)).reshape(b, l, a * d)


def _attention_forward(qs: np.ndarray, k: np.ndarray, v: np.ndarray, additive_mask: np.ndarray,
                       keep: Optional[np.ndarray], heads: int):
    """qs [B,Lq,H] (already scaled), k, v [B,L,H], additive_mask [B,1,1,L], keep [B,A,Lq,L] or
    None -> (context [B,Lq,H], scores [B,A,Lq,L] = qs k^T, softmax(scores + mask) [B,A,Lq,L])."""
    scores = _split_heads(qs, heads) @ _split_heads(k, heads).transpose(0, 1, 3, 2)
    sm = scores + additive_mask
    sm -= sm.max(axis=-1, keepdims=True)
    np.exp(sm, out=sm)
    sm /= sm.sum(axis=-1, keepdims=True)
    probs = sm * keep if keep is not None else sm
    return _merge_heads(probs @ _split_heads(v, heads)), scores, sm


def _attention_backward(g_context: np.ndarray, g_scores: Optional[np.ndarray], qs: np.ndarray, k: np.ndarray,
                        v: np.ndarray, sm: np.ndarray, keep: Optional[np.ndarray], heads: int):
    """Gradients of ``_attention_forward`` for dL/dcontext [B,Lq,H] and dL/dscores (or None):
    (d qs, dk, dv), each [B,*,H]."""
    qh, kh, vh = _split_heads(qs, heads), _split_heads(k, heads), _split_heads(v, heads)
    gh = _split_heads(g_context, heads)
    probs = sm * keep if keep is not None else sm
    g_v = _merge_heads(probs.transpose(0, 1, 3, 2) @ gh)
    g_p = gh @ vh.transpose(0, 1, 3, 2)                      # d loss / d probs
    if keep is not None:
        g_p *= keep
    g_z = (g_p * sm).sum(axis=-1, keepdims=True)             # softmax backward
    np.subtract(g_p, g_z, out=g_p)
    g_p *= sm
    if g_scores is not None:
        g_p += g_scores
    return _merge_heads(g_p @ kh), _merge_heads(g_p.transpose(0, 1, 3, 2) @ qh), g_v


@functools.lru_cache(maxsize=None)
def _blas_attention(heads: int, scale: float):
    """The attention core for ``heads`` heads as one autograd Function in numpy's BLAS (Functions
    take tensors only, so the constants live in the closure); one class per (heads, scale)."""
    s32 = np.float32(scale)

    class _BlasAttention(flow.autograd.Function):
        """q [B,Lq,H], k, v [B,L,H], additive_mask [B,1,1,L], keep [B,A,Lq,L] dropout scale (or [0]: none)
        -> (context [B,Lq,H], scores [B,A,Lq,L] = q k^T * scale)."""

        @staticmethod
        def forward(ctx, q, k, v, additive_mask, keep):
            qs = _view(q) * s32
            context, scores, sm = _attention_forward(qs, _view(k), _view(v), _view(additive_mask),
                                                     _view(keep) if keep.numel() else None, heads)
            ctx.save_for_backward(_wrap(qs), k, v, _wrap(sm), keep)
            return _wrap(context), _wrap(scores)

        @staticmethod
        def backward(ctx, g_context, g_scores):
            qs, k, v, sm, keep = ctx.saved_tensors
            g_q, g_k, g_v = _attention_backward(
                _view(g_context), None if g_scores is None else _view(g_scores), _view(qs), _view(k), _view(v),
                _view(sm), _view(keep) if keep.numel() else None, heads)
            g_q *= s32
            return flow.from_numpy(g_q), flow.from_numpy(g_k), flow.from_numpy(g_v), None, None

    return _BlasAttention


class _NumpyEmbedding(flow.autograd.Function):
    """weight [V,H], ids [...] int64 -> weight[ids] [...,H]. The gradient is built in numpy from
    the rows looked up: OneFlow 0.9's CPU backward zero-fills and scatters into a dense [V,H]
    table (~40 ms for BERT's 30522 words), while a fresh ``np.zeros`` leaves untouched pages
    unwritten."""

    @staticmethod
    def forward(ctx, weight, ids):
        ctx.save_for_backward(weight, ids)
        return _wrap(_view(weight)[_view(ids)])

    @staticmethod
    def backward(ctx, grad):
        weight, ids = ctx.saved_tensors
        flat = _view(ids).reshape(-1)
        g = _view(grad).reshape(flat.size, -1)
        order = np.argsort(flat, kind="stable")
        rows, starts = np.unique(flat[order], return_index=True)
        out = np.zeros(tuple(weight.shape), dtype=g.dtype)
        out[rows] = np.add.reduceat(g[order], starts, axis=0)
        return flow.from_numpy(out), None


class Embedding(nn.Embedding):
    """``nn.Embedding`` (same parameter) whose lookup and gradient run in numpy on CPU for large
    tables (``_NumpyEmbedding``), unless ``METAKD_CPU_MATMUL=oneflow``."""

    def forward(self, ids: flow.Tensor) -> flow.Tensor:
        if (_CPU_MATMUL == "blas" and not ids.is_cuda and self.padding_idx is None
                and self.weight.shape[0] * self.weight.shape[1] >= _BLAS_MIN_MACS):
            return _NumpyEmbedding.apply(self.weight, ids)
        return super().forward(ids)


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
        self.word_embeddings = Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

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
        self.query = Linear(config.hidden_size, config.hidden_size)
        self.key = Linear(config.hidden_size, config.hidden_size)
        self.value = Linear(config.hidden_size, config.hidden_size)
        self.dropout = Dropout(config.attention_probs_dropout_prob)

    def _heads(self, x: flow.Tensor) -> flow.Tensor:
        b, l, _ = x.shape
        return x.view(b, l, self.num_heads, self.head_size).permute(0, 2, 1, 3)  # [B,A,L,d]

    def forward(self, x: flow.Tensor, additive_mask: flow.Tensor, queries: Optional[int] = None,
                unpad: Optional[Unpadding] = None, need_probs: bool = True):
        """x [B,L,H], additive_mask [B,1,1,L] -> (context [B,Lq,H], scores [B,A,Lq,L], probs [B,A,Lq,L]).

        ``scores`` = QK^T/sqrt(d) before the mask; ``probs`` = softmax(scores + mask) after
        attention dropout (what Hugging Face returns as ``attentions``). ``queries``: only the
        first Lq positions ask (all L are keys and values); default all. With ``unpad``, x and
        context are packed real tokens [T,H] ([B,H] for ``queries=1``: the [CLS] rows).
        ``need_probs=False``: ``probs`` may be None (on CPU the core then runs in numpy's BLAS).
        """
        h = x.shape[-1]
        if unpad is None:
            xq = x if queries is None else x[:, :queries]
        else:
            xq = x if queries is None else flow.index_select(x, 0, unpad.first)
        blas = not need_probs and not x.is_cuda and _CPU_MATMUL == "blas"
        scale = 1.0 / math.sqrt(self.head_size)
        # Scaling q instead of the [L,L] scores is the same function and cheaper.
        q = self.query(xq) if blas else self.query(xq) * scale
        k, v = self.key(x), self.value(x)
        if unpad is not None:
            q = unpad.pad(q) if queries is None else q.unsqueeze(1)
            k, v = unpad.pad(k), unpad.pad(v)
        if blas:
            keep = self.dropout.keep_scale((q.shape[0], self.num_heads, q.shape[1], k.shape[1]))
            keep = keep if keep is not None else flow.zeros(0)
            context, scores = _blas_attention(self.num_heads, scale).apply(q, k, v, additive_mask, keep)
            probs = None
            b, lq = q.shape[0], q.shape[1]
        else:
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
        self.dense = Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, x: flow.Tensor, residual: flow.Tensor) -> flow.Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class BertAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertSelfOutput(config)

    def forward(self, x: flow.Tensor, additive_mask: flow.Tensor, queries: Optional[int] = None,
                unpad: Optional[Unpadding] = None, need_probs: bool = True):
        context, scores, probs = self.self(x, additive_mask, queries, unpad, need_probs)
        if queries is None:
            residual = x
        else:
            residual = x[:, :queries] if unpad is None else flow.index_select(x, 0, unpad.first)
        return self.output(context, residual), scores, probs


class BertIntermediate(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = Linear(config.hidden_size, config.intermediate_size)
        self.act = _ACTIVATIONS[config.hidden_act]

    def forward(self, x: flow.Tensor) -> flow.Tensor:
        if self.act is _gelu and self.dense.uses_blas(x):
            if not flow.is_grad_enabled():  # inference: no derivative to keep
                y, _ = _gelu_numpy(_linear_forward(_view(x), self.dense.weight, self.dense.bias), derivative=False)
                return _wrap(y.reshape(*x.shape[:-1], y.shape[-1]))
            return _BlasLinearGelu.apply(x, self.dense.weight, self.dense.bias)
        return self.act(self.dense(x))


class BertOutput(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, x: flow.Tensor, residual: flow.Tensor) -> flow.Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class BertLayer(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def numpy_parameters(self) -> List[flow.Tensor]:
        """The 16 tensors ``_numpy_layer`` takes, in its order."""
        att, so, out = self.attention.self, self.attention.output, self.output
        mods = (att.query, att.key, att.value, so.dense, so.LayerNorm, self.intermediate.dense, out.dense, out.LayerNorm)
        return [t for m in mods for t in (m.weight, m.bias)]

    def forward(self, x: flow.Tensor, additive_mask: flow.Tensor, queries: Optional[int] = None,
                unpad: Optional[Unpadding] = None, need_probs: bool = True):
        """x [B,L,H] -> (y [B,Lq,H], scores [B,A,Lq,L], probs [B,A,Lq,L]); Lq = ``queries`` or L.
        With ``unpad``: x [T,H] -> y [T,H] ([B,H] for ``queries=1``). ``need_probs=False``: probs may be None."""
        if (_FUSE_LAYERS and queries is None and not need_probs and not x.is_cuda and _CPU_MATMUL == "blas"
                and self.intermediate.act is _gelu and self.intermediate.dense.uses_blas(x)):
            real = unpad.real if unpad is not None else _no_index()
            if not flow.is_grad_enabled():  # inference: nothing to keep for a backward
                y, scores, _ = _numpy_layer_forward(self, _view(x), _view(additive_mask), _index_view(real),
                                                    [_view(t) for t in self.numpy_parameters()], save=False)
                return _wrap(y.reshape(tuple(x.shape))), _wrap(scores), None
            fn = self.__dict__.get("_numpy_fn")
            if fn is None or fn.layer is not self:  # (a copied module must not run its original's closure)
                fn = self.__dict__["_numpy_fn"] = _numpy_layer(self)
            y, scores = fn.apply(x, additive_mask, real, *self.numpy_parameters())
            return y, scores, None
        a, scores, probs = self.attention(x, additive_mask, queries, unpad, need_probs)
        return self.output(self.intermediate(a), a), scores, probs


# A whole BertLayer as one numpy autograd Function on CPU (training steps and inference; not
# when attention maps are asked for or the last layer runs for [CLS] alone). Run module by module,
# a layer puts about ten OneFlow ops between its numpy pieces (residual adds, dropout products,
# pad/pack gathers, and in the backward gradient additions) and reads each incoming gradient
# through a host round trip; here the layer's backward reads one. ``_FUSE_LAYERS = False``
# (tests) runs the same numpy pieces module by module.
_FUSE_LAYERS = True


@functools.lru_cache(maxsize=None)
def _no_index() -> flow.Tensor:
    """The ``real`` argument of an unpacked layer (Functions take tensors only)."""
    return flow.zeros(0, dtype=flow.int64)


def _index_view(real: flow.Tensor) -> Optional[np.ndarray]:
    return _view(real) if real.numel() else None


def _pad_rows(t: np.ndarray, real: Optional[np.ndarray], b: int, l: int) -> np.ndarray:
    """[N,H] rows at flat positions ``real`` of [B,L] (all B*L when None) -> [B,L,H], zeros elsewhere."""
    if real is None:
        return t.reshape(b, l, -1)
    z = np.zeros((b * l, t.shape[-1]), t.dtype)
    z[real] = t
    return z.reshape(b, l, -1)


def _pack_rows(t: np.ndarray, real: Optional[np.ndarray]) -> np.ndarray:
    """[B,L,H] -> the [N,H] rows at flat positions ``real`` (all when None)."""
    t = t.reshape(-1, t.shape[-1])
    return t if real is None else t[real]


def _output_block_forward(inp: np.ndarray, w: np.ndarray, bias: np.ndarray, dropout: "Dropout", residual: np.ndarray,
                          norm: "LayerNorm", gamma: np.ndarray, beta: np.ndarray):
    """LayerNorm(dropout(inp W^T + b) + residual), BertSelfOutput's and BertOutput's shape:
    (y, dropout mask or None, xhat, rstd)."""
    d = _affine(inp, w, bias)
    keep = dropout.keep_array(d.shape)
    if keep is not None:
        d *= keep
    d += residual
    y, xhat, rstd = _layer_norm_forward(d, gamma, beta, norm.eps)
    return y, keep, xhat, rstd


def _output_block_backward(gy: np.ndarray, inp: np.ndarray, w: np.ndarray, keep: Optional[np.ndarray],
                           xhat: np.ndarray, rstd: np.ndarray, gamma: np.ndarray):
    """Gradients of ``_output_block_forward``: (d inp, dW, db, d residual, dgamma, dbeta)."""
    gd, ggamma, gbeta = _layer_norm_backward(gy, xhat, rstd, gamma)
    ginp, gw, gb = _linear_grads(gd * keep if keep is not None else gd, inp, w)
    return ginp, gw, gb, gd, ggamma, gbeta


def _numpy_layer_forward(layer: "BertLayer", x: np.ndarray, additive_mask: np.ndarray, real: Optional[np.ndarray],
                         params: List[np.ndarray], save: bool):
    """The layer in numpy: x [N,H] real tokens (packed at flat positions ``real`` of [B,L], or all
    B*L of them when ``real`` is None), additive_mask [B,1,1,L] -> (y like x, scores [B,A,L,L],
    what the backward needs, when ``save``). Dropout masks are drawn in the module-by-module
    path's order from the same generators, so both paths draw the same masks."""
    att, so, out = layer.attention.self, layer.attention.output, layer.output
    wq, bq, wk, bk, wv, bv, wo1, bo1, g1, be1, wi, bi, wo2, bo2, g2, be2 = params
    shape, h = x.shape, x.shape[-1]
    x = x.reshape(-1, h)
    b, l, heads = additive_mask.shape[0], additive_mask.shape[-1], att.num_heads
    q = _affine(x, wq, bq)
    q *= np.float32(1.0 / math.sqrt(att.head_size))
    qp, kp, vp = (_pad_rows(t, real, b, l) for t in (q, _affine(x, wk, bk), _affine(x, wv, bv)))
    k_att = att.dropout.keep_array((b, heads, l, l))
    context, scores, sm = _attention_forward(qp, kp, vp, additive_mask, k_att, heads)
    c = _pack_rows(context, real)
    a, k1, xh1, rs1 = _output_block_forward(c, wo1, bo1, so.dropout, x, so.LayerNorm, g1, be1)
    hg, dg = _gelu_numpy(_affine(a, wi, bi), derivative=save)
    y, k2, xh2, rs2 = _output_block_forward(hg, wo2, bo2, out.dropout, a, out.LayerNorm, g2, be2)
    saved = (qp, kp, vp, sm, k_att, c, k1, xh1, rs1, a, dg, hg, k2, xh2, rs2) if save else None
    return y.reshape(shape), scores, saved


def _numpy_layer_backward(layer: "BertLayer", gy: np.ndarray, g_scores: Optional[np.ndarray], x: np.ndarray,
                          real: Optional[np.ndarray], params: List[np.ndarray], saved) -> list:
    """Gradients of ``_numpy_layer_forward`` at x [N,H] for dL/dy and dL/dscores (or None): [dx, then one per parameter]."""
    att = layer.attention.self
    wq, bq, wk, bk, wv, bv, wo1, bo1, g1, be1, wi, bi, wo2, bo2, g2, be2 = params
    qp, kp, vp, sm, k_att, c, k1, xh1, rs1, a, dg, hg, k2, xh2, rs2 = saved
    b, l, h = qp.shape
    ghg, gwo2, gbo2, ga_res, gg2, gbe2 = _output_block_backward(gy.reshape(-1, h), hg, wo2, k2, xh2, rs2, g2)
    ghg *= dg
    ga, gwi, gbi = _linear_grads(ghg, a, wi)
    ga += ga_res                                                # the residual around the feed-forward
    gc, gwo1, gbo1, gx, gg1, gbe1 = _output_block_backward(ga, c, wo1, k1, xh1, rs1, g1)
    gq, gk, gv = (_pack_rows(t, real) for t in _attention_backward(_pad_rows(gc, real, b, l), g_scores, qp, kp, vp,
                                                                   sm, k_att, att.num_heads))
    gq *= np.float32(1.0 / math.sqrt(att.head_size))
    # gx: the residual around attention, then what flows back through Q, K and V
    gx += gq @ wq
    gx += gk @ wk
    gx += gv @ wv
    grads = [gx]
    for g in (gq, gk, gv):
        grads += [g.T @ x, g.sum(axis=0)]
    return grads + [gwo1, gbo1, gg1, gbe1, gwi, gbi, gwo2, gbo2, gg2, gbe2]


def _numpy_layer(layer: "BertLayer"):
    """The autograd Function for ``layer`` (one class per layer: the closure holds the module,
    whose dropout generators and constants the numpy code reads)."""

    class _NumpyBertLayer(flow.autograd.Function):
        """x [N,H] or [B,L,H], additive_mask [B,1,1,L], real [T] int64 (or [0]), 16 parameters
        -> (y like x, scores [B,A,L,L])."""

        layer = None  # set below: the module this class was made for

        @staticmethod
        def forward(ctx, x, additive_mask, real, *params):
            y, scores, saved = _numpy_layer_forward(layer, _view(x), _view(additive_mask), _index_view(real),
                                                    [_view(p) for p in params], save=True)
            empty = np.zeros(0, np.float32)  # stands for a dropout mask that was not drawn
            ctx.save_for_backward(x, real, *params, *(_wrap(empty if t is None else t) for t in saved))
            return _wrap(y.reshape(tuple(x.shape))), _wrap(scores)

        @staticmethod
        def backward(ctx, gy, g_scores):
            tensors = ctx.saved_tensors
            x, real, params, rest = tensors[0], tensors[1], tensors[2:18], tensors[18:]
            saved = [None if a.size == 0 and a.ndim == 1 else a for a in (_view(t) for t in rest)]
            grads = _numpy_layer_backward(layer, _view(gy), None if g_scores is None else _view(g_scores),
                                          _view(x).reshape(-1, x.shape[-1]), _index_view(real),
                                          [_view(p) for p in params], saved)
            gx = grads[0].reshape(tuple(x.shape))
            return (flow.from_numpy(gx), None, None, *(flow.from_numpy(g) for g in grads[1:]))

    _NumpyBertLayer.layer = layer
    return _NumpyBertLayer


class BertEncoder(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList([BertLayer(config) for _ in range(config.num_hidden_layers)])


class BertPooler(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = Linear(config.hidden_size, config.hidden_size)

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
