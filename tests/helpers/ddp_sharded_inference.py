"""Run under ``python -m oneflow.distributed.launch --nproc_per_node 2`` with a spill folder as
argv[1]: sharded inference (logits, mean embeddings) and the shared stage-1 teacher cache must
give every process exactly what one process computes alone. Prints one JSON line per rank."""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for _tiny
from _tiny import random_encoded  # noqa: E402

from metakd.evaluation import predict_logits
from metakd.features import to_tensors
from metakd.meta_model import MetaBert
from metakd.bert import BertConfig
from metakd.prototypes import mean_embeddings
from metakd.runtime import flow, rank, world_size
from metakd.teacher_cache import Stage1TeacherCache
from emit import emit  # noqa: E402  (tests/helpers/ is this script's folder)

flow.manual_seed(3)  # the same weights in every process
cfg = BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=3, num_attention_heads=4, intermediate_size=32,
                 max_position_embeddings=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
model = MetaBert(cfg, num_labels=2, num_domains=3)
model.eval()
n, L = 23, 12
enc = random_encoded(n, L, vocab=60)
lengths = enc.lengths
cpu = flow.device("cpu")


def compute(b):
    t = model(b["input_ids"], b["attention_mask"], b["token_type_ids"], output_hidden_states=True,
              output_attention_scores=True)
    return ([t.backbone.attention_scores[2]], [t.backbone.hidden_states[1], t.backbone.hidden_states[3]],
            model.domain_representation(t.content, b["domains"]), t.logits)


# One example at a time, all rows, no sharding: what a single process computes.
want_logits, want_emb, want_att, want_hid, want_dom = [], [], [], [], []
with flow.no_grad():
    for i in range(n):
        b = to_tensors(enc, np.array([i]), cpu, trim=True)
        atts, hids, dom, lg = compute(b)
        want_logits.append(lg.numpy()[0])
        h = model.backbone(b["input_ids"], b["attention_mask"], b["token_type_ids"]).last_hidden_state.numpy()[0]
        want_emb.append(h[1:lengths[i]].mean(0))  # mean over real tokens without [CLS]
        want_att.append(atts[0].numpy()[0])
        want_hid.append([x.numpy()[0] for x in hids])
        want_dom.append(dom.numpy()[0])

logits = predict_logits(model, enc, 4, cpu)
emb = mean_embeddings(model.backbone, enc, 4, cpu, progress=False)
cache = Stage1TeacherCache.build(compute, enc, 1, 4, 2, 16, 2, cpu, batch_size=4, budget_bytes=1 << 30,
                                 spill_dir=Path(sys.argv[1]), progress=False)
got_att, got_hid, got_dom, got_logits = cache.batch(np.arange(n), L, cpu)
cache_diff = 0.0
for i in range(n):
    k = lengths[i]
    cache_diff = max(cache_diff, float(np.abs(got_att[0].numpy()[i, :, :k, :k] - want_att[i]).max()),
                     *(float(np.abs(got_hid[q].numpy()[i, :k] - want_hid[i][q]).max()) for q in range(2)))
emit({
    "rank": rank(), "world_size": world_size(), "where": cache.where,
    "logits_diff": float(np.abs(logits - np.array(want_logits)).max()),
    "emb_diff": float(np.abs(emb - np.array(want_emb)).max()),
    "cache_diff": cache_diff,
    "cache_logits_diff": float(np.abs(got_logits.numpy() - np.array(want_logits)).max()),
    "cache_domain_diff": float(np.abs(got_dom.numpy() - np.array(want_dom)).max()),
    "logits_sum": float(logits.sum()),
})
sys.stdout.flush()
cache.close()
