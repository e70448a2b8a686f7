"""An independent numpy BERT forward (eval mode), written from the paper's formulas, for tests that
check a model computed by metakd or a file it wrote: embeddings, post-LN layers, GELU (erf form),
the tanh pooler. Reads a flat name -> array dict with Hugging Face names under ``prefix``."""
from __future__ import annotations

import math

import numpy as np


def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def gelu(x):
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def forward(sd: dict, cfg: dict, ids, mask, types, prefix: str = ""):
    """-> (hidden states: embeddings and each layer's output, [B,L,H] each; pooler output [B,H])."""
    ids, mask, types = (np.asarray(a) for a in (ids, mask, types))
    b, l = ids.shape
    heads = cfg["num_attention_heads"]
    d = cfg["hidden_size"] // heads
    eps = cfg.get("layer_norm_eps", 1e-12)
    w = lambda name: sd[prefix + name].astype(np.float64)
    lin = lambda x, p: x @ w(p + ".weight").T + w(p + ".bias")
    ln = lambda x, p: layer_norm(x, w(p + ".weight"), w(p + ".bias"), eps)
    x = w("embeddings.word_embeddings.weight")[ids] + w("embeddings.position_embeddings.weight")[np.arange(l)] \
        + w("embeddings.token_type_embeddings.weight")[types]
    x = ln(x, "embeddings.LayerNorm")
    hidden = [x]
    split = lambda t: t.reshape(b, l, heads, d).transpose(0, 2, 1, 3)
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        q, k, v = (split(lin(x, p + "attention.self." + n)) for n in ("query", "key", "value"))
        s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d) + (1 - mask[:, None, None, :]) * -10000.0
        prob = np.exp(s - s.max(-1, keepdims=True))
        prob /= prob.sum(-1, keepdims=True)
        ctx = (prob @ v).transpose(0, 2, 1, 3).reshape(b, l, -1)
        a = ln(lin(ctx, p + "attention.output.dense") + x, p + "attention.output.LayerNorm")
        x = ln(lin(gelu(lin(a, p + "intermediate.dense")), p + "output.dense") + a, p + "output.LayerNorm")
        hidden.append(x)
    pooled = np.tanh(lin(x[:, 0], "pooler.dense"))
    return hidden, pooled
