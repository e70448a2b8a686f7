"""Run under ``python -m oneflow.distributed.launch --nproc_per_node 2``: each process computes
the gradient of its half of a batch and all-reduces it; the result must equal the gradient of
the whole batch computed by one process. Prints one JSON line per rank."""
import sys

import numpy as np

from metakd.meta_model import MetaBert
from metakd.bert import BertConfig
from metakd.runtime import all_reduce_mean_grads, broadcast_parameters, flow, mean_grads_numpy, rank, world_size
from metakd.losses import teacher_loss
from emit import emit  # noqa: E402  (tests/helpers/ is this script's folder)


def build():
    flow.manual_seed(1 + rank())  # different per process: broadcast_parameters must make them equal
    cfg = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=32,
                     max_position_embeddings=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return MetaBert(cfg, num_labels=2, num_domains=3)


def loss_of(model, ids, mask, labels, domains, weights):
    out = model(flow.tensor(ids), flow.tensor(mask), flow.zeros_like(flow.tensor(ids)))
    dl = model.domain_logits(out.content, flow.tensor(domains))
    return teacher_loss(out.logits, flow.tensor(labels), dl, flow.tensor(domains[::-1].copy()), flow.tensor(weights), 0.5)[0]


rng = np.random.default_rng(0)
B, L = 8, 12
ids = rng.integers(5, 40, size=(B, L)).astype(np.int64)
mask = (np.arange(L)[None] < rng.integers(3, L + 1, size=(B, 1))).astype(np.int64)
labels = rng.integers(0, 2, size=B).astype(np.int64)
domains = rng.integers(0, 3, size=B).astype(np.int64)
weights = rng.uniform(0.2, 1.0, size=B).astype(np.float32)

model = build()
broadcast_parameters(model)
r, n = rank(), world_size()
shard = np.array_split(np.arange(B), n)[r]
loss = loss_of(model, ids[shard], mask[shard], labels[shard], domains[shard], weights[shard])
loss.backward()
grads_before = {k: p.grad.numpy().copy() for k, p in model.named_parameters() if p.grad is not None}
word = model.backbone.embeddings.word_embeddings.weight
sparse = len(sys.argv) > 1 and sys.argv[1] == "sparse"
row_ids = {id(word): flow.tensor(ids[shard])} if sparse else None
# The CPU optimizer's read of the same mean (numpy, the gradients left as they are), then the write-back.
names = [k for k, p in model.named_parameters() if p.requires_grad]
got_numpy = dict(zip(names, mean_grads_numpy(model.parameters(), row_ids)))
all_reduce_mean_grads(model.parameters(), row_ids)
got = {k: p.grad.numpy() for k, p in model.named_parameters() if p.grad is not None}

# The same gradient from one process: the mean of the per-shard losses (equal shards).
ref = build()
ref.load_state_dict(model.state_dict())
total = sum(loss_of(ref, ids[s], mask[s], labels[s], domains[s], weights[s]) for s in np.array_split(np.arange(B), n)) / n
total.backward()
want = {k: p.grad.numpy() for k, p in ref.named_parameters() if p.grad is not None}
diff = max(float(np.abs(got[k] - want[k]).max()) for k in want)
numpy_diff = max(float(np.abs(got_numpy[k] - want[k]).max()) for k in want)
same_init = float(sum(np.abs(p.numpy()).sum() for p in model.parameters()))
# Rows no process looked up stay zero; this process's own rows were really averaged with the other's.
untouched = np.setdiff1d(np.arange(40), ids)
emit({"rank": r, "world_size": n, "max_grad_diff": diff, "numpy_max_grad_diff": numpy_diff, "n_grads": len(got), "param_abs_sum": same_init,
                  "sparse": sparse, "untouched_rows_zero": bool(not got["backbone.embeddings.word_embeddings.weight"][untouched].any()),
                  "word_grad_changed": float(np.abs(got["backbone.embeddings.word_embeddings.weight"]
                                                    - grads_before["backbone.embeddings.word_embeddings.weight"]).max())})
sys.stdout.flush()
