"""Shared test helpers: where ../shared is, tiny random BERT folders, quiet OneFlow."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
MODELS = SHARED / "models"
TEACHER_DIR = MODELS / "all-MiniLM-L6-v2"
STUDENT_DIR = MODELS / "paraphrase-MiniLM-L3-v2"
SORTED_DATA = SHARED / "data" / "amazon_multidomain" / "sorted_data_acl"

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("GLOG_minloglevel", "2")

needs_models = pytest.mark.skipif(
    not (TEACHER_DIR / "model.safetensors").exists() or not (STUDENT_DIR / "model.safetensors").exists(),
    reason=f"real pretrained BERTs not found under {MODELS} (they come with ../shared, not with the project)",
)
needs_data = pytest.mark.skipif(
    not SORTED_DATA.exists(), reason=f"real review data not found at {SORTED_DATA} (comes with ../shared)"
)


def tiny_config(**kw):
    from metakd.bert import BertConfig

    d = dict(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=32,
             max_position_embeddings=24, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    d.update(kw)
    return BertConfig(**d)
