"""Does OneFlow's nn.Graph pay for a training step here? One stage-2 student step (MiniLM-L3,
soft cross-entropy against fixed teacher logits, AdamW), eager vs nn.Graph, on one batch of the
real reviews' shape (8 x 128, about 80% real tokens).

    python tools/research/graph_probe.py [--student ../shared/models/paraphrase-MiniLM-L3-v2] [--iters 5]

Prints: eager padded, eager unpadded (what the pipeline runs), graph compile time, graph step,
and peak RSS. nn.Graph compiles for one static shape, so in the pipeline every new batch width
(trimmed) or real-token count (unpadded) would need its own compiled graph.
"""
import argparse
import resource
import time

import numpy as np

from metakd.losses import soft_cross_entropy
from metakd.meta_model import build_from_pretrained
from metakd.runtime import flow


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--student", default="../shared/models/paraphrase-MiniLM-L3-v2")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=8)
    a = p.parse_args()
    flow.manual_seed(0)
    model, _ = build_from_pretrained(a.student, 2, 4, verbose=False)
    model.train()
    rng = np.random.default_rng(0)
    B, L = a.batch_size, 128
    lengths = np.where(rng.random(B) < 0.45, L, rng.integers(20, L, B))
    mask_np = (np.arange(L)[None] < lengths[:, None]).astype(np.int64)
    ids = flow.tensor(rng.integers(1000, 20000, (B, L)) * mask_np)
    mask, types = flow.tensor(mask_np), flow.zeros(B, L, dtype=flow.int64)
    t_logits = flow.tensor(rng.normal(size=(B, 2)).astype(np.float32))
    opt = flow.optim.AdamW(model.parameters(), lr=1e-5)
    print(f"batch {B}x{L}, real tokens {mask_np.mean():.0%}; rss after load {rss_mib():.0f} MiB")

    def eager(compat):
        def step():
            out = model(ids, mask, types, compat=compat, logits_only=True)
            loss = soft_cross_entropy(out.logits, t_logits, 2.0)
            loss.backward()
            opt.step()
            opt.zero_grad()
            return loss
        return step

    class Step(flow.nn.Graph):
        def __init__(self):
            super().__init__()
            self.model = model
            self.add_optimizer(opt)

        def build(self, ids, mask, types, t_logits):
            # The padded path (compat easynlp keeps every position): static shapes throughout.
            out = self.model(ids, mask, types, compat="easynlp", logits_only=True)
            loss = soft_cross_entropy(out.logits, t_logits, 2.0)
            loss.backward()
            return loss

    def timed(step, n):
        step().numpy()
        t = time.perf_counter()
        for _ in range(n):
            loss = step()
        loss.numpy()
        return (time.perf_counter() - t) / n * 1000

    print(f"eager, padded (all 128 positions): {timed(eager('easynlp'), a.iters):8.0f} ms/step")
    print(f"eager, unpadded (the pipeline):    {timed(eager('none'), a.iters):8.0f} ms/step")
    g = Step()
    t = time.perf_counter()
    g(ids, mask, types, t_logits).numpy()
    print(f"nn.Graph compile + first step:     {(time.perf_counter() - t) * 1000:8.0f} ms")
    print(f"nn.Graph, padded:                  {timed(lambda: g(ids, mask, types, t_logits), a.iters):8.0f} ms/step")
    print(f"peak RSS {rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
