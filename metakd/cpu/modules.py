"""Numpy siblings of BERT's modules for the CPU, and ``install``, which swaps them in.

Each sibling subclasses the module it replaces (same parameters, same state-dict names) and runs
its numpy kernels only where ``metakd.cpu.active(x)`` says so (a CPU tensor and the numpy
kernels chosen); anywhere else, on CUDA or with ``--cpu-kernels oneflow``, it is the plain module.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from metakd import bert
from metakd.cpu import functions as fn
from metakd.cpu import kernels as K
from metakd.cpu.state import active
from metakd.cpu.views import view, wrap
from metakd.runtime import flow

nn = flow.nn

# Below this many multiply-adds a product is cheaper in OneFlow than a host sync (tiny models).
BLAS_MIN_MACS = 1 << 22
# A whole BertLayer as one Function (training steps and inference; not when attention maps are
# asked for or the last layer runs for [CLS] alone). Module by module, a layer puts about ten
# OneFlow ops between its numpy pieces (residual adds, dropout products, pad/pack gathers, and in
# the backward gradient additions) and reads each incoming gradient through a host round trip; the
# fused layer reads one. False (tests) runs the same numpy pieces module by module.
FUSE_LAYERS = True


class NumpyRNG:
    """A numpy generator that the trainer re-seeds every step, like OneFlow's (``manual_seed``)."""

    _made = 0

    def __init__(self):
        NumpyRNG._made += 1  # fixed, distinct seeds until the first re-seed: reproducible in one process
        self.manual_seed(0x5EED + NumpyRNG._made)

    def manual_seed(self, seed: int) -> None:
        self._rng = np.random.Generator(np.random.SFC64(seed))

    def keep_scale(self, shape, p: float) -> np.ndarray:
        """float32 mask of ``shape``: 1/(1-p) where kept (probability 1-p), else 0."""
        keep = (self._rng.random(shape, dtype=np.float32) >= np.float32(p)).astype(np.float32)
        keep *= np.float32(1.0 / (1.0 - p))  # (not np.multiply(bool, scale, dtype=...): that cast is 20x slower)
        return keep


class NumpyLinear(nn.Linear):
    """Products in numpy's BLAS (OpenBLAS; OneFlow 0.9's CPU GEMM runs at about 40% of its
    one-thread speed on these shapes), at the cost of a host sync per layer. Under the launcher each
    process gets OMP_NUM_THREADS=1, which OpenBLAS follows; one process uses every core."""

    def uses_blas(self, x: flow.Tensor) -> bool:
        return active(x) and self.bias is not None and x.numel() * self.out_features >= BLAS_MIN_MACS

    def forward(self, x: flow.Tensor) -> flow.Tensor:
        if self.uses_blas(x):
            return fn.BlasLinear.apply(x, self.weight, self.bias)
        return super().forward(x)


class NumpyEmbedding(nn.Embedding):
    """Lookup and gradient in numpy for large tables (``functions.EmbeddingLookup``)."""

    def forward(self, ids: flow.Tensor) -> flow.Tensor:
        if (active(ids) and self.padding_idx is None
                and self.weight.shape[0] * self.weight.shape[1] >= BLAS_MIN_MACS):
            return fn.EmbeddingLookup.apply(self.weight, ids)
        return super().forward(ids)


class NumpyDropout(nn.Dropout):
    """Masks drawn by numpy (OneFlow 0.9's CPU dropout is about 4x slower); the same distribution,
    other draws. ``numpy_generator`` is re-seeded by the trainer every step."""

    def _installed(self) -> None:
        self.numpy_generator = NumpyRNG()

    def uses_numpy(self, x: flow.Tensor) -> bool:
        return self.training and self.p > 0 and active(x)

    def keep_array(self, shape) -> Optional[np.ndarray]:
        """The mask the numpy paths multiply by (None when dropout is off)."""
        return self.numpy_generator.keep_scale(tuple(shape), self.p) if self.p > 0 and self.training else None

    def keep_scale(self, shape) -> Optional[flow.Tensor]:
        """``keep_array`` as a tensor."""
        keep = self.keep_array(shape)
        return None if keep is None else wrap(keep)

    def forward(self, x: flow.Tensor) -> flow.Tensor:
        if self.uses_numpy(x):
            return x * self.keep_scale(x.shape)
        return super().forward(x)


class NumpyLayerNorm(bert.LayerNorm):
    """``functions.layer_norm``."""

    def forward(self, x: flow.Tensor) -> flow.Tensor:
        if active(x) and not bert.LayerNorm.native_on_cpu:
            return fn.layer_norm(self.eps).apply(x, self.weight, self.bias)
        return super().forward(x)


class NumpyBertSelfAttention(bert.BertSelfAttention):
    """The attention core in numpy (``functions.attention``) when the caller does not need the
    post-softmax maps (the Function returns scores, not probabilities)."""

    def forward(self, x, additive_mask, queries=None, unpad=None, need_probs=True):
        if need_probs or not active(x):
            return super().forward(x, additive_mask, queries, unpad, need_probs)
        h = x.shape[-1]
        q = self.query(self.queries_of(x, queries, unpad))  # the Function scales it
        k, v = self.key(x), self.value(x)
        if unpad is not None:
            q = unpad.pad(q) if queries is None else q.unsqueeze(1)
            k, v = unpad.pad(k), unpad.pad(v)
        keep = self.dropout.keep_scale((q.shape[0], self.num_heads, q.shape[1], k.shape[1]))
        keep = keep if keep is not None else flow.zeros(0)
        context, scores = fn.attention(self.num_heads, 1.0 / math.sqrt(self.head_size)).apply(q, k, v, additive_mask, keep)
        b = q.shape[0]
        if unpad is not None:
            context = unpad.pack(context) if queries is None else context.reshape(b, h)
        return context, scores, None


class NumpyBertIntermediate(bert.BertIntermediate):
    """Dense layer and GELU as one Function (``functions.BlasLinearGelu``)."""

    def forward(self, x: flow.Tensor) -> flow.Tensor:
        if self.act is bert.gelu and self.dense.uses_blas(x):
            if not flow.is_grad_enabled():  # inference: no derivative to keep
                y, _ = K.gelu(fn.linear_forward(view(x), self.dense.weight, self.dense.bias), derivative=False)
                return wrap(y.reshape(*x.shape[:-1], y.shape[-1]))
            return fn.BlasLinearGelu.apply(x, self.dense.weight, self.dense.bias)
        return super().forward(x)


class NumpyBertLayer(bert.BertLayer):
    """The whole layer as one Function (``functions.fused_layer``) where it can be."""

    def layer_params(self) -> K.LayerParams:
        """The 16 tensors the fused layer takes."""
        att, so, out = self.attention.self, self.attention.output, self.output
        mods = (att.query, att.key, att.value, so.dense, so.LayerNorm, self.intermediate.dense, out.dense, out.LayerNorm)
        return K.LayerParams(*(t for m in mods for t in (m.weight, m.bias)))

    def layer_shape(self) -> K.LayerShape:
        att = self.attention.self
        return K.LayerShape(att.num_heads, att.head_size, self.attention.output.LayerNorm.eps, self.output.LayerNorm.eps,
                            att.dropout.keep_array, self.attention.output.dropout.keep_array,
                            self.output.dropout.keep_array)

    def fusable(self, x: flow.Tensor, queries: Optional[int], need_probs: bool) -> bool:
        """Every position asks, nobody reads the post-softmax maps, and the feed-forward is the
        erf GELU on a product large enough for BLAS (on CPU with the numpy kernels)."""
        return (FUSE_LAYERS and queries is None and not need_probs and self.intermediate.act is bert.gelu
                and self.intermediate.dense.uses_blas(x))

    def forward(self, x, additive_mask, queries=None, unpad=None, need_probs=True):
        if not self.fusable(x, queries, need_probs):
            return super().forward(x, additive_mask, queries, unpad, need_probs)
        real = unpad.real if unpad is not None else fn.no_index()
        if not flow.is_grad_enabled():  # inference: nothing to keep for a backward
            y, scores, _ = K.layer_forward(self.layer_shape(), view(x), view(additive_mask), fn.index_view(real),
                                           K.LayerParams(*(view(t) for t in self.layer_params())), save=False)
            return wrap(y.reshape(tuple(x.shape))), wrap(scores), None
        f = self.__dict__.get("_fused")
        if f is None or f.owner is not self:  # a copied module must not run its original's closure
            f = self.__dict__["_fused"] = fn.fused_layer(self.layer_shape(), self)
        y, scores = f.apply(x, additive_mask, real, *self.layer_params())
        return y, scores, None


SIBLINGS = {
    nn.Linear: NumpyLinear,
    nn.Embedding: NumpyEmbedding,
    nn.Dropout: NumpyDropout,
    bert.LayerNorm: NumpyLayerNorm,
    bert.BertSelfAttention: NumpyBertSelfAttention,
    bert.BertIntermediate: NumpyBertIntermediate,
    bert.BertLayer: NumpyBertLayer,
}
_PLAIN = {v: k for k, v in SIBLINGS.items()}


def install(model: nn.Module) -> nn.Module:
    """Swap the numpy siblings in for ``model``'s modules, in place (module order); returns it.

    Parameters, buffers and state-dict names do not change, and nothing is drawn from OneFlow's
    random generator, so a model gives the same numbers with or without it wherever the numpy
    kernels are off. Idempotent."""
    for m in model.modules():
        sibling = SIBLINGS.get(type(m))
        if sibling is not None:
            m.__class__ = sibling
            hook = getattr(m, "_installed", None)
            if hook is not None:
                hook()
    return model


def uninstall(model: nn.Module) -> nn.Module:
    """The plain modules back (what tracing for export needs); returns ``model``."""
    for m in model.modules():
        plain = _PLAIN.get(type(m))
        if plain is not None:
            m.__class__ = plain
    return model



def plain_class(module: nn.Module) -> type:
    """The class ``install`` swapped out (the module's own class if none): names for reports."""
    return _PLAIN.get(type(module), type(module))
