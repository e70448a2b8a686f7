"""Load a `python -m metakd.export` folder with Hugging Face transformers (PyTorch) and print its
class probabilities on three reviews, with the custom head (trust_remote_code) and the plain class.
Runs OUTSIDE the project environment (torch and transformers are not dependencies), e.g.

    python3 -m venv /tmp/hfenv && /tmp/hfenv/bin/pip install torch==2.13.0 transformers safetensors numpy
    /tmp/hfenv/bin/python tools/research/hf_export_check.py export/books-student

and compare with `python -m metakd.predict --model <the source folder>` on the same three texts.
"""
import sys
import json
import torch
import transformers
from transformers import AutoModelForSequenceClassification, BertForSequenceClassification, AutoTokenizer
folder = sys.argv[1]
tok = AutoTokenizer.from_pretrained(folder)
texts = ["A wonderful, moving book. I loved every page.", "Terrible. Broke after two days, waste of money.", "ok"]
enc = tok(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
torch.set_num_threads(1)
m = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()
plain = BertForSequenceClassification.from_pretrained(folder).eval()
with torch.no_grad():
    exact = m(**enc).logits.softmax(-1).numpy()
    p2 = plain(**enc).logits.softmax(-1).numpy()
print(type(m).__name__, transformers.__version__)
print(json.dumps({"exact": exact.round(6).tolist(), "plain": p2.round(6).tolist(), "ids": enc["input_ids"].tolist()}))
