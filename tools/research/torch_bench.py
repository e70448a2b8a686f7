"""The naive path in PyTorch eager, the yardstick of docs/results.md ("faster than the same algorithm in
PyTorch eager on the same machine"): per-step cost of each stage with Hugging Face BERT, every
batch padded to 128, the teacher run live at every distillation step; PyTorch uses all cores
(its default threads) and its default attention (SDPA; eager where stage 1 needs the maps).

Needs PyTorch and transformers, which metakd does not (a separate environment, e.g. Python 3.11):

    python -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch==2.13.0 'transformers<5'
    /tmp/torchenv/bin/python tools/research/torch_bench.py --json out/speed/torch.json
    python tools/before_after.py --run out/real2 --data data/SENTI --before out/speed/torch.json

The JSON has metakd.bench's layout (``stages.<name>.ms_per_step``), so ``before_after.py``
prices the after-run's work at PyTorch's cost per step. The heads and losses are Meta-KD's
(classifier, domain branch, attention/hidden/domain MSE, soft cross-entropy) written plainly.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import BertModel

HERE = Path(__file__).resolve().parent


def timed(fn, iters: int, warmup: int = 1) -> list:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


class Meta(torch.nn.Module):
    """Backbone + Meta-KD heads (classifier, domain embedding, corrupt_dense, domain classifier, fit_dense)."""

    def __init__(self, path: Path, attn: str, num_labels: int = 2, num_domains: int = 4, fit: int = 384):
        super().__init__()
        self.bert = BertModel.from_pretrained(str(path), attn_implementation=attn)
        h = self.bert.config.hidden_size
        self.classifier = torch.nn.Linear(h, num_labels)
        self.domain_embedding = torch.nn.Embedding(num_domains, h)
        self.corrupt_dense = torch.nn.Linear(h, h)
        self.domain_classifier = torch.nn.Linear(h, num_domains)
        self.fit_dense = torch.nn.Linear(h, fit)

    def forward(self, ids, mask, doms, **kw):
        out = self.bert(input_ids=ids, attention_mask=mask, **kw)
        logits = self.classifier(F.relu(out.pooler_output))
        m = mask.float().clone()
        m[:, 0] = 0
        content = (out.last_hidden_state * m.unsqueeze(-1)).sum(1) / m.sum(1, keepdim=True).clamp(min=1)
        return out, logits, self.corrupt_dense(self.domain_embedding(doms) + content)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", type=Path, default=HERE.parent.parent / "shared/models/all-MiniLM-L6-v2")
    p.add_argument("--student", type=Path, default=HERE.parent.parent / "shared/models/paraphrase-MiniLM-L3-v2")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--infer-batch-size", type=int, default=64)
    p.add_argument("--seq-length", type=int, default=128)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--json", type=Path, help="write the results here (metakd.bench's layout)")
    a = p.parse_args()
    torch.manual_seed(0)
    L, B, IB = a.seq_length, a.batch_size, a.infer_batch_size

    def batch(n):
        ids = torch.randint(1000, 30000, (n, L))
        ids[:, 0] = 101
        return ids, torch.ones(n, L, dtype=torch.long), torch.randint(0, 4, (n,)), torch.randint(0, 2, (n,))

    teacher = Meta(a.teacher, "sdpa")
    student = Meta(a.student, "sdpa")
    t_opt = torch.optim.AdamW(teacher.parameters(), lr=3e-5, eps=1e-6)
    s_opt = torch.optim.AdamW(student.parameters(), lr=3e-5, eps=1e-6)

    def update(model, opt, loss):  # backward, clip, AdamW: the tail of every train step
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()

    def embed():
        teacher.eval()
        ids, mask, doms, _ = batch(IB)
        with torch.no_grad():
            teacher(ids, mask, doms)

    def teacher_step():
        teacher.train()
        ids, mask, doms, labels = batch(B)
        _, logits, rep = teacher(ids, mask, doms)
        dom_logits = teacher.domain_classifier(F.dropout(torch.tanh(rep), 0.1, training=True))
        loss = F.cross_entropy(logits, labels) + 0.5 * F.cross_entropy(dom_logits, doms[torch.randperm(B)])
        update(teacher, t_opt, loss)

    def stage1_step():
        teacher.eval()
        student.train()
        ids, mask, doms, labels = batch(B)
        with torch.no_grad():
            t_out, t_logits, t_dom = teacher(ids, mask, doms, output_hidden_states=True, output_attentions=True)
            w = 1.0 / (1.0 + torch.exp((1.0 - F.softmax(t_logits, -1).gather(1, labels[:, None])[:, 0]) ** 2))
        s_out, _, s_dom = student(ids, mask, doms, output_hidden_states=True, output_attentions=True)
        att = sum(F.mse_loss(s_out.attentions[j], t_out.attentions[2 * j + 1]) for j in range(3))
        rep = sum(F.mse_loss(student.fit_dense(s_out.hidden_states[j]), t_out.hidden_states[2 * j]) for j in range(4))
        loss = (att + rep + 0.5 * F.mse_loss(student.fit_dense(s_dom), t_dom)) * w.mean()
        update(student, s_opt, loss)

    def stage2_step():
        teacher.eval()
        student.train()
        ids, mask, doms, _ = batch(B)
        with torch.no_grad():
            _, t_logits, _ = teacher(ids, mask, doms)
        _, s_logits, _ = student(ids, mask, doms)
        loss = -(F.softmax(t_logits / 2, -1) * F.log_softmax(s_logits / 2, -1)).sum(-1).mean()
        update(student, s_opt, loss)

    def evaluate():
        student.eval()
        ids, mask, doms, _ = batch(IB)
        with torch.no_grad():
            student(ids, mask, doms)

    stages = {"embed": (embed, IB), "teacher_step": (teacher_step, B), "stage1_step": (stage1_step, B),
              "stage2_step": (stage2_step, B), "eval": (evaluate, IB)}
    results = {}
    print(f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads, SDPA attention (eager where maps are returned), padded to {L}")
    print(f"{'stage':14s} {'batch':>5s} {'ms/step':>9s} {'samples/s':>10s}")
    for name, (fn, n) in stages.items():
        secs = timed(fn, a.iters)
        ms = 1000.0 * sum(secs) / len(secs)
        results[name] = {"stage": name, "batch_size": n, "ms_per_step": round(ms, 2), "samples_per_s": round(n / ms * 1000, 3),
                         "step_seconds": [round(s, 5) for s in secs], "padded_length": L}
        print(f"{name:14s} {n:5d} {ms:9.1f} {n / ms * 1000:10.2f}")
    if a.json:
        meta = {"framework": f"torch {torch.__version__}", "threads": torch.get_num_threads(), "python": platform.python_version(),
                "iters": a.iters, "warmup": 1, "seq_length": L, "batch_size": B, "infer_batch_size": IB,
                "teacher": str(a.teacher), "student": str(a.student), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({"meta": meta, "stages": results}, indent=2))
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
