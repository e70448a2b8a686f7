"""BERT's pieces as plain numpy on float32 arrays: forward and backward, no OneFlow.

The autograd Functions of ``metakd.cpu.functions`` wrap these; tests check them against the
formulas written out. Shapes: N = rows (tokens), B = batch, L = length, H = hidden, A = heads,
d = H / A, I = feed-forward width.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional, Tuple

import numpy as np

# A dropout mask drawer: shape -> float32 array of 1/(1-p) where kept and 0 elsewhere, or None (no dropout).
KeepFn = Callable[[tuple], Optional[np.ndarray]]


def affine(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """x [..., in], W [out, in], b [out] -> x W^T + b as [N, out]."""
    y = x.reshape(-1, x.shape[-1]) @ w.T
    y += b
    return y


def linear_grads(g: np.ndarray, x: np.ndarray, w: np.ndarray):
    """Gradients of y = x W^T + b for g = dL/dy as [N,out]: (dx like x, dW, db)."""
    return (g @ w).reshape(x.shape), g.T @ x.reshape(-1, x.shape[-1]), g.sum(axis=0)


# erfc(z) = t exp(-z^2 + P(t)), t = 1/(1 + z/2), z >= 0: Numerical Recipes' erfcc, fractional
# error below 1.2e-7 everywhere (float32 rounds at 6e-8), so the GELU below is the erf form to
# float rounding (OneFlow's own kernel is as far from a float64 reference). P's coefficients
# from t^0 up.
ERFC_POLY = [np.float32(c) for c in (-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806, 0.27886807,
                                     -1.13520398, 1.48851587, -0.82215223, 0.17087277)]
GELU_CHUNK = 1 << 15  # elements per block, so that the temporaries stay in L2 (1 << 17 was 2x slower)


def _gelu_block(x: np.ndarray, y: np.ndarray, dy: Optional[np.ndarray]) -> None:
    """y = x Phi(x) and, unless ``dy`` is None, dy = Phi(x) + x phi(x), its derivative; float32,
    written in place. Written as (x + |x|)/2 - |x| Phi(-|x|), which needs no select between the
    two signs (np.where cost as much as a fifth of the rest); each pass is one ufunc on the block."""
    f32 = np.float32
    a = np.abs(x)
    t = a * f32(0.5 / math.sqrt(2.0))
    t += f32(1.0)
    np.reciprocal(t, out=t)                  # t = 1 / (1 + z/2), z = |x| / sqrt 2
    p = t * ERFC_POLY[-1]
    for c in ERFC_POLY[-2:0:-1]:
        p += c
        p *= t
    p += ERFC_POLY[0]
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


def gelu(x: np.ndarray, derivative: bool = True) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """GELU (erf form) of float32 x and its derivative (None unless ``derivative``)."""
    flat = x.reshape(-1)
    y = np.empty_like(flat)
    dy = np.empty_like(flat) if derivative else None
    for i in range(0, flat.size, GELU_CHUNK):
        _gelu_block(flat[i:i + GELU_CHUNK], y[i:i + GELU_CHUNK], None if dy is None else dy[i:i + GELU_CHUNK])
    return y.reshape(x.shape), None if dy is None else dy.reshape(x.shape)


def layer_norm_forward(z: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float):
    """z [N,H] -> (LayerNorm(z), xhat = (z - mean) / std, rstd [N,1])."""
    xhat = z - z.mean(axis=1, keepdims=True)
    rstd = np.square(xhat).mean(axis=1, keepdims=True)
    rstd += np.float32(eps)
    np.sqrt(rstd, out=rstd)
    np.reciprocal(rstd, out=rstd)
    xhat *= rstd
    return xhat * gamma + beta, xhat, rstd


def layer_norm_backward(g: np.ndarray, xhat: np.ndarray, rstd: np.ndarray, gamma: np.ndarray):
    """Gradients of LayerNorm for g = dL/dy [N,H]: (dz [N,H], dgamma [H], dbeta [H])."""
    dgamma, dbeta = np.einsum("nh,nh->h", g, xhat), g.sum(axis=0)
    dxh = g * gamma
    dz = dxh - dxh.mean(axis=1, keepdims=True)
    dz -= xhat * np.einsum("nh,nh->n", dxh, xhat)[:, None] * np.float32(1.0 / g.shape[1])
    dz *= rstd
    return dz, dgamma, dbeta


def split_heads(x: np.ndarray, heads: int) -> np.ndarray:
    """[B,L,H] -> [B,A,L,d], a view."""
    b, l, h = x.shape
    return x.reshape(b, l, heads, h // heads).transpose(0, 2, 1, 3)


def merge_heads(x: np.ndarray) -> np.ndarray:
    """[B,A,L,d] -> [B,L,H], a copy."""
    b, a, l, d = x.shape
    return np.ascontiguousarray(x.transpose(0, 2, 1, 3)).reshape(b, l, a * d)


def attention_forward(qs: np.ndarray, k: np.ndarray, v: np.ndarray, additive_mask: np.ndarray,
                      keep: Optional[np.ndarray], heads: int):
    """qs [B,Lq,H] (already scaled), k, v [B,L,H], additive_mask [B,1,1,L], keep [B,A,Lq,L] or
    None -> (context [B,Lq,H], scores [B,A,Lq,L] = qs k^T, softmax(scores + mask) [B,A,Lq,L])."""
    scores = split_heads(qs, heads) @ split_heads(k, heads).transpose(0, 1, 3, 2)
    sm = scores + additive_mask
    sm -= sm.max(axis=-1, keepdims=True)
    np.exp(sm, out=sm)
    sm /= sm.sum(axis=-1, keepdims=True)
    probs = sm * keep if keep is not None else sm
    return merge_heads(probs @ split_heads(v, heads)), scores, sm


def attention_backward(g_context: np.ndarray, g_scores: Optional[np.ndarray], qs: np.ndarray, k: np.ndarray,
                       v: np.ndarray, sm: np.ndarray, keep: Optional[np.ndarray], heads: int):
    """Gradients of ``attention_forward`` for dL/dcontext [B,Lq,H] and dL/dscores (or None):
    (d qs, dk, dv), each [B,*,H]."""
    qh, kh, vh = split_heads(qs, heads), split_heads(k, heads), split_heads(v, heads)
    gh = split_heads(g_context, heads)
    probs = sm * keep if keep is not None else sm
    g_v = merge_heads(probs.transpose(0, 1, 3, 2) @ gh)
    g_p = gh @ vh.transpose(0, 1, 3, 2)                      # d loss / d probs
    if keep is not None:
        g_p *= keep
    g_z = (g_p * sm).sum(axis=-1, keepdims=True)             # softmax backward
    np.subtract(g_p, g_z, out=g_p)
    g_p *= sm
    if g_scores is not None:
        g_p += g_scores
    return merge_heads(g_p @ kh), merge_heads(g_p.transpose(0, 1, 3, 2) @ qh), g_v


def pad_rows(t: np.ndarray, real: Optional[np.ndarray], b: int, l: int) -> np.ndarray:
    """[N,H] rows at flat positions ``real`` of [B,L] (all B*L when None) -> [B,L,H], zeros elsewhere."""
    if real is None:
        return t.reshape(b, l, -1)
    z = np.zeros((b * l, t.shape[-1]), t.dtype)
    z[real] = t
    return z.reshape(b, l, -1)


def pack_rows(t: np.ndarray, real: Optional[np.ndarray]) -> np.ndarray:
    """[B,L,H] -> the [N,H] rows at flat positions ``real`` (all when None)."""
    t = t.reshape(-1, t.shape[-1])
    return t if real is None else t[real]


def output_block_forward(inp: np.ndarray, w: np.ndarray, bias: np.ndarray, keep_fn: KeepFn, residual: np.ndarray,
                         gamma: np.ndarray, beta: np.ndarray, eps: float):
    """LayerNorm(dropout(inp W^T + b) + residual), BertSelfOutput's and BertOutput's shape:
    (y, dropout mask or None, xhat, rstd)."""
    d = affine(inp, w, bias)
    keep = keep_fn(d.shape)
    if keep is not None:
        d *= keep
    d += residual
    y, xhat, rstd = layer_norm_forward(d, gamma, beta, eps)
    return y, keep, xhat, rstd


def output_block_backward(gy: np.ndarray, inp: np.ndarray, w: np.ndarray, keep: Optional[np.ndarray],
                          xhat: np.ndarray, rstd: np.ndarray, gamma: np.ndarray):
    """Gradients of ``output_block_forward``: (d inp, dW, db, d residual, dgamma, dbeta)."""
    gd, ggamma, gbeta = layer_norm_backward(gy, xhat, rstd, gamma)
    ginp, gw, gb = linear_grads(gd * keep if keep is not None else gd, inp, w)
    return ginp, gw, gb, gd, ggamma, gbeta


class LayerParams(NamedTuple):
    """A BertLayer's 16 tensors (or their arrays), in the order the fused layer takes them."""

    query_w: object
    query_b: object
    key_w: object
    key_b: object
    value_w: object
    value_b: object
    attn_out_w: object
    attn_out_b: object
    attn_ln_g: object
    attn_ln_b: object
    inter_w: object
    inter_b: object
    out_w: object
    out_b: object
    out_ln_g: object
    out_ln_b: object


class LayerShape(NamedTuple):
    """What the fused layer needs from its module besides tensors: heads, LayerNorm eps, and the
    dropout mask drawers of attention, the attention output and the layer output."""

    heads: int
    head_size: int
    attn_eps: float
    out_eps: float
    attn_keep: KeepFn
    attn_out_keep: KeepFn
    out_keep: KeepFn


class LayerSaved(NamedTuple):
    """What the fused layer's backward reads (masks None where dropout was off)."""

    qp: np.ndarray
    kp: np.ndarray
    vp: np.ndarray
    sm: np.ndarray
    attn_keep: Optional[np.ndarray]
    context: np.ndarray
    attn_out_keep: Optional[np.ndarray]
    xhat1: np.ndarray
    rstd1: np.ndarray
    a: np.ndarray
    gelu_grad: Optional[np.ndarray]
    h: np.ndarray
    out_keep: Optional[np.ndarray]
    xhat2: np.ndarray
    rstd2: np.ndarray


def layer_forward(s: LayerShape, x: np.ndarray, additive_mask: np.ndarray, real: Optional[np.ndarray],
                  p: LayerParams, save: bool):
    """A whole BertLayer: x [N,H] real tokens (packed at flat positions ``real`` of [B,L], or all
    B*L of them when ``real`` is None), additive_mask [B,1,1,L] -> (y like x, scores [B,A,L,L],
    a ``LayerSaved`` when ``save``). Dropout masks are drawn in the module-by-module path's order,
    each from its module's own generator, so both paths draw the same masks."""
    shape, h = x.shape, x.shape[-1]
    x = x.reshape(-1, h)
    b, l = additive_mask.shape[0], additive_mask.shape[-1]
    q = affine(x, p.query_w, p.query_b)
    q *= np.float32(1.0 / math.sqrt(s.head_size))
    qp, kp, vp = (pad_rows(t, real, b, l) for t in (q, affine(x, p.key_w, p.key_b), affine(x, p.value_w, p.value_b)))
    k_att = s.attn_keep((b, s.heads, l, l))
    context, scores, sm = attention_forward(qp, kp, vp, additive_mask, k_att, s.heads)
    c = pack_rows(context, real)
    a, k1, xh1, rs1 = output_block_forward(c, p.attn_out_w, p.attn_out_b, s.attn_out_keep, x, p.attn_ln_g, p.attn_ln_b,
                                           s.attn_eps)
    hg, dg = gelu(affine(a, p.inter_w, p.inter_b), derivative=save)
    y, k2, xh2, rs2 = output_block_forward(hg, p.out_w, p.out_b, s.out_keep, a, p.out_ln_g, p.out_ln_b, s.out_eps)
    saved = LayerSaved(qp, kp, vp, sm, k_att, c, k1, xh1, rs1, a, dg, hg, k2, xh2, rs2) if save else None
    return y.reshape(shape), scores, saved


def layer_backward(s: LayerShape, gy: np.ndarray, g_scores: Optional[np.ndarray], x: np.ndarray,
                   real: Optional[np.ndarray], p: LayerParams, sv: LayerSaved) -> list:
    """Gradients of ``layer_forward`` at x [N,H] for dL/dy and dL/dscores (or None):
    [dx, then one per parameter in ``LayerParams`` order]."""
    b, l, h = sv.qp.shape
    ghg, gwo2, gbo2, ga_res, gg2, gbe2 = output_block_backward(gy.reshape(-1, h), sv.h, p.out_w, sv.out_keep,
                                                               sv.xhat2, sv.rstd2, p.out_ln_g)
    ghg *= sv.gelu_grad
    ga, gwi, gbi = linear_grads(ghg, sv.a, p.inter_w)
    ga += ga_res                                                # the residual around the feed-forward
    gc, gwo1, gbo1, gx, gg1, gbe1 = output_block_backward(ga, sv.context, p.attn_out_w, sv.attn_out_keep, sv.xhat1,
                                                          sv.rstd1, p.attn_ln_g)
    gq, gk, gv = (pack_rows(t, real) for t in attention_backward(pad_rows(gc, real, b, l), g_scores, sv.qp, sv.kp,
                                                                 sv.vp, sv.sm, sv.attn_keep, s.heads))
    gq *= np.float32(1.0 / math.sqrt(s.head_size))
    # gx: the residual around attention, then what flows back through Q, K and V
    gx += gq @ p.query_w
    gx += gk @ p.key_w
    gx += gv @ p.value_w
    grads = [gx]
    for g in (gq, gk, gv):
        grads += [g.T @ x, g.sum(axis=0)]
    return grads + [gwo1, gbo1, gg1, gbe1, gwi, gbi, gwo2, gbo2, gg2, gbe2]
