"""The numpy kernels as OneFlow autograd Functions: tensors in, tensors out, gradients by hand.

Functions take tensors only, so constants (heads, scale, eps, the module a fused layer belongs to)
live in closures: one class per constant set (cached).
"""
from __future__ import annotations

import functools
from typing import Optional

import numpy as np

from metakd.cpu import kernels as K
from metakd.cpu.views import view, wrap
from metakd.runtime import flow


def linear_forward(x: np.ndarray, weight: flow.Tensor, bias: flow.Tensor) -> np.ndarray:
    """``kernels.affine`` with the layer's tensors."""
    return K.affine(x, view(weight), view(bias))


def _linear_backward(g: np.ndarray, x: np.ndarray, w: np.ndarray):
    return tuple(flow.from_numpy(a) for a in K.linear_grads(g, x, w))


class BlasLinear(flow.autograd.Function):
    """y = x W^T + b with numpy's matmul; x [..., in], W [out, in], b [out] -> [..., out]."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        y = linear_forward(view(x), weight, bias)
        return wrap(y.reshape(*x.shape[:-1], y.shape[-1]))

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        return _linear_backward(view(grad).reshape(-1, grad.shape[-1]), view(x), view(weight))


class BlasLinearGelu(flow.autograd.Function):
    """y = GELU(x W^T + b), the feed-forward's first half. It saves GELU's derivative rather than
    its input, so the backward is one product ahead of the dense layer's."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        y, dy = K.gelu(linear_forward(view(x), weight, bias))
        ctx.save_for_backward(x, weight, wrap(dy))
        return wrap(y.reshape(*x.shape[:-1], y.shape[-1]))

    @staticmethod
    def backward(ctx, grad):
        x, weight, dy = ctx.saved_tensors
        return _linear_backward(view(grad).reshape(-1, grad.shape[-1]) * view(dy), view(x), view(weight))


@functools.lru_cache(maxsize=None)
def layer_norm(eps: float):
    """LayerNorm over the last axis as an autograd Function; one class per eps."""

    class NumpyLayerNorm(flow.autograd.Function):
        """z [..., H], gamma [H], beta [H] -> LayerNorm(z) [..., H]."""

        @staticmethod
        def forward(ctx, z, gamma, beta):
            h = z.shape[-1]
            y, xhat, rstd = K.layer_norm_forward(view(z).reshape(-1, h), view(gamma), view(beta), eps)
            ctx.save_for_backward(gamma, wrap(xhat), wrap(rstd))
            return wrap(y.reshape(tuple(z.shape)))

        @staticmethod
        def backward(ctx, grad):
            gamma, xhat, rstd = (view(t) for t in ctx.saved_tensors)
            g = view(grad).reshape(xhat.shape)
            dz, dgamma, dbeta = K.layer_norm_backward(g, xhat, rstd, gamma)
            return flow.from_numpy(dz.reshape(tuple(grad.shape))), flow.from_numpy(dgamma), flow.from_numpy(dbeta)

    return NumpyLayerNorm


@functools.lru_cache(maxsize=None)
def attention(heads: int, scale: float):
    """The attention core for ``heads`` heads; one class per (heads, scale)."""
    s32 = np.float32(scale)

    class BlasAttention(flow.autograd.Function):
        """q [B,Lq,H], k, v [B,L,H], additive_mask [B,1,1,L], keep [B,A,Lq,L] dropout scale (or [0]: none)
        -> (context [B,Lq,H], scores [B,A,Lq,L] = q k^T * scale)."""

        @staticmethod
        def forward(ctx, q, k, v, additive_mask, keep):
            qs = view(q) * s32
            context, scores, sm = K.attention_forward(qs, view(k), view(v), view(additive_mask),
                                                      view(keep) if keep.numel() else None, heads)
            ctx.save_for_backward(wrap(qs), k, v, wrap(sm), keep)
            return wrap(context), wrap(scores)

        @staticmethod
        def backward(ctx, g_context, g_scores):
            qs, k, v, sm, keep = ctx.saved_tensors
            g_q, g_k, g_v = K.attention_backward(
                view(g_context), None if g_scores is None else view(g_scores), view(qs), view(k), view(v),
                view(sm), view(keep) if keep.numel() else None, heads)
            g_q *= s32
            return flow.from_numpy(g_q), flow.from_numpy(g_k), flow.from_numpy(g_v), None, None

    return BlasAttention


class EmbeddingLookup(flow.autograd.Function):
    """weight [V,H], ids [...] int64 -> weight[ids] [...,H]. The gradient is built in numpy from
    the rows looked up: OneFlow 0.9's CPU backward zero-fills and scatters into a dense [V,H]
    table (~40 ms for BERT's 30522 words), while a fresh ``np.zeros`` leaves untouched pages
    unwritten."""

    @staticmethod
    def forward(ctx, weight, ids):
        ctx.save_for_backward(weight, ids)
        return wrap(view(weight)[view(ids)])

    @staticmethod
    def backward(ctx, grad):
        weight, ids = ctx.saved_tensors
        flat = view(ids).reshape(-1)
        g = view(grad).reshape(flat.size, -1)
        order = np.argsort(flat, kind="stable")
        rows, starts = np.unique(flat[order], return_index=True)
        out = np.zeros(tuple(weight.shape), dtype=g.dtype)
        out[rows] = np.add.reduceat(g[order], starts, axis=0)
        return flow.from_numpy(out), None


def index_view(real: flow.Tensor) -> Optional[np.ndarray]:
    """A fused layer's ``real`` argument as an array; None for the empty tensor (no packing)."""
    return view(real) if real.numel() else None


@functools.lru_cache(maxsize=None)
def no_index() -> flow.Tensor:
    """The ``real`` argument of an unpacked layer (Functions take tensors only)."""
    return flow.zeros(0, dtype=flow.int64)


_N_PARAMS = len(K.LayerParams._fields)


def fused_layer(shape: K.LayerShape, owner: object):
    """The autograd Function of one BertLayer (``kernels.layer_forward``); ``shape`` holds its
    module's constants and dropout generators, so it is one class per layer (``owner``)."""

    class FusedBertLayer(flow.autograd.Function):
        """x [N,H] or [B,L,H], additive_mask [B,1,1,L], real [T] int64 (or [0]), the 16
        ``LayerParams`` -> (y like x, scores [B,A,L,L])."""

        owner = None  # set below: the module this class was made for

        @staticmethod
        def forward(ctx, x, additive_mask, real, *params):
            y, scores, saved = K.layer_forward(shape, view(x), view(additive_mask), index_view(real),
                                               K.LayerParams(*(view(p) for p in params)), save=True)
            empty = np.zeros(0, np.float32)  # stands for a dropout mask that was not drawn
            ctx.save_for_backward(x, real, *params, *(wrap(empty if t is None else t) for t in saved))
            return wrap(y.reshape(tuple(x.shape))), wrap(scores)

        @staticmethod
        def backward(ctx, gy, g_scores):
            tensors = ctx.saved_tensors
            x, real = tensors[0], tensors[1]
            params = K.LayerParams(*(view(t) for t in tensors[2:2 + _N_PARAMS]))
            saved = K.LayerSaved(*(None if a.size == 0 and a.ndim == 1 else a
                                   for a in (view(t) for t in tensors[2 + _N_PARAMS:])))
            grads = K.layer_backward(shape, view(gy), None if g_scores is None else view(g_scores),
                                     view(x).reshape(-1, x.shape[-1]), index_view(real), params, saved)
            gx = grads[0].reshape(tuple(x.shape))
            return (flow.from_numpy(gx), None, None, *(flow.from_numpy(g) for g in grads[1:]))

    FusedBertLayer.owner = owner
    return FusedBertLayer


class MaskedSquaredError(flow.autograd.Function):
    """Per-example masked mean squared error (stage 1's attention term): student [B,...],
    teacher (a constant) like it, weight [B,...] 0/1 broadcastable to it, count [B]
    -> sum(w (s - t)^2) / count, [B].

    Stage 1 compares [B,A,L,L] score maps; as OneFlow ops (difference, square, head sum, mask,
    reductions, and their gradients) that cost more than the student's own backward on CPU.
    """

    @staticmethod
    def forward(ctx, student, teacher, weight, count):
        d = view(student) - view(teacher)
        d *= view(weight)
        b = d.shape[0]
        flat = d.reshape(b, -1)
        inv = (1.0 / view(count)).astype(np.float32)
        ctx.save_for_backward(wrap(d), wrap(inv))
        return wrap((np.einsum("bi,bi->b", flat, flat) * inv).astype(np.float32))

    @staticmethod
    def backward(ctx, grad):
        d, inv = (view(t) for t in ctx.saved_tensors)
        scale = (2.0 * view(grad) * inv).astype(np.float32)
        return flow.from_numpy(d * scale.reshape((-1,) + (1,) * (d.ndim - 1))), None, None, None
