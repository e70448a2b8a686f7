"""A tiny synthetic multi-domain sentiment dataset and tiny random BERTs.

They let the whole pipeline (data, prototypes, meta-teacher, two distillation stages,
evaluation) run in a couple of minutes on 2 CPU cores with nothing downloaded. The reviews mix
sentiment words shared by all domains, sentiment words specific to one domain, topic words and
neutral filler; some reviews are mixed and some carry the other label's words (label noise), so
a model must learn something, but accuracy well above chance is reachable.

The reviews are written in the real ``sorted_data_acl`` layout so that they go through the same
parser and split as the real data.
"""
from __future__ import annotations

import json
import os
import string
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd

from metakd.infra.fileio import atomic_dir

PathLike = Union[str, os.PathLike]

# Folder names of the real dataset; the domain label is the part before the first "_".
DOMAIN_DIRS: Dict[str, str] = {
    "books": "books", "dvd": "dvd", "electronics": "electronics",
    "kitchen": "kitchen_&_housewares",
}
SHARED_WORDS = {
    "positive": ["good", "great", "excellent", "wonderful", "love", "best", "perfect", "happy"],
    "negative": ["bad", "awful", "terrible", "poor", "worst", "boring", "disappointing", "waste"],
}
DOMAIN_WORDS = {
    "books": {"positive": ["gripping", "insightful", "inspiring"],
              "negative": ["dull", "predictable", "tedious"],
              "topic": ["novel", "author", "chapters", "plot", "characters", "story", "pages"]},
    "dvd": {"positive": ["hilarious", "moving", "captivating"],
            "negative": ["cheesy", "overacted", "unwatchable"],
            "topic": ["movie", "actors", "scenes", "director", "film", "sequel", "dvd"]},
    "electronics": {"positive": ["reliable", "crisp", "responsive"],
                    "negative": ["defective", "flimsy", "glitchy"],
                    "topic": ["battery", "screen", "headphones", "charger", "device", "sound"]},
    "kitchen": {"positive": ["sturdy", "durable", "spotless"],
                "negative": ["rusted", "leaky", "dented"],
                "topic": ["pan", "blender", "knife", "kettle", "pot", "dishwasher", "lid"]},
}
FILLER = ["the", "this", "it", "was", "and", "i", "a", "of", "to", "with", "for", "my", "very",
          "really", "is", "product", "bought", "use", "time", "after", "quite", "just", "we",
          "weeks", "ago", "gift", "again", "would", "say", "overall", "honestly", "not"]

LABEL_NOISE = 0.08   # share of reviews whose text comes from the other label
MIXED = 0.3          # share of reviews that also contain one word of the other label

TINY_TEACHER = dict(num_layers=4, hidden_size=64, num_heads=4, intermediate_size=128)
# A smaller hidden size than the teacher's so that fit_dense (student -> teacher) is exercised;
# same number of heads, and teacher layers a multiple of student layers (Meta-KD's mapping).
TINY_STUDENT = dict(num_layers=2, hidden_size=48, num_heads=4, intermediate_size=96)


def synthetic_vocabulary() -> List[str]:
    """Every word the synthetic reviews use, in a fixed order."""
    words: List[str] = []
    for w in (SHARED_WORDS["positive"] + SHARED_WORDS["negative"] + FILLER
              + [w for d in DOMAIN_WORDS.values() for k in ("positive", "negative", "topic")
                 for w in d[k]]):
        if w not in words:
            words.append(w)
    return words


def _sentence(rng: np.random.Generator, domain: str, words: Sequence[str]) -> str:
    """One sentence: the given sentiment words among topic words and filler, shuffled."""
    topic = DOMAIN_WORDS[domain]["topic"]
    body = list(words)
    body += list(rng.choice(topic, size=int(rng.integers(1, 3))))
    body += list(rng.choice(FILLER, size=int(rng.integers(3, 7))))
    rng.shuffle(body)
    sentence = " ".join(str(w) for w in body)
    if rng.random() < 0.2:
        sentence += f" {int(rng.integers(2, 10))} weeks ago"
    sentence = sentence[0].upper() + sentence[1:]
    return sentence + str(rng.choice([".", ".", ".", "!", "?"]))


def _review(rng: np.random.Generator, domain: str, sentiment: str) -> str:
    other = "negative" if sentiment == "positive" else "positive"
    pool = SHARED_WORDS[sentiment] + DOMAIN_WORDS[domain][sentiment] * 2  # domain words count
    n_sentences = int(rng.integers(2, 5))
    sentiment_words = [str(w) for w in rng.choice(pool, size=n_sentences)]
    if rng.random() < MIXED:
        opposite = SHARED_WORDS[other] + DOMAIN_WORDS[domain][other]
        sentiment_words[int(rng.integers(n_sentences))] = str(rng.choice(opposite))
    # A sentence or two without any sentiment word: not every sentence is informative.
    sentences = [_sentence(rng, domain, [w]) for w in sentiment_words]
    for _ in range(int(rng.integers(0, 2))):
        sentences.insert(int(rng.integers(len(sentences) + 1)), _sentence(rng, domain, []))
    return " ".join(sentences)


def make_synthetic_reviews(n_per_domain_label: int = 50, seed: int = 0) -> pd.DataFrame:
    """Synthetic reviews with columns review, domain, sentiment.

    Rows are in the order :func:`metakd.data.senti.load_sorted_data_acl` gives: domains books,
    dvd, electronics, kitchen; in each, ``n_per_domain_label`` positive then as many negative.
    About ``LABEL_NOISE`` of the reviews are written with the other label's words. The same
    seed gives the same frame.
    """
    rng = np.random.default_rng(seed)
    records = []
    for domain in DOMAIN_DIRS:
        for sentiment in ("positive", "negative"):
            for _ in range(n_per_domain_label):
                text_label = sentiment
                if rng.random() < LABEL_NOISE:
                    text_label = "negative" if sentiment == "positive" else "positive"
                records.append((_review(rng, domain, text_label), domain, sentiment))
    return pd.DataFrame.from_records(records, columns=["review", "domain", "sentiment"])


def _review_block(i: int, domain: str, sentiment: str, text: str) -> str:
    """One review in the pseudo-XML of sorted_data_acl, the text spread over several lines."""
    sentences = text.replace("! ", "!\n").replace("? ", "?\n").replace(". ", ".\n").split("\n")
    # Blank lines and a TAB-indented line as in the real files; the parser must not care.
    body = []
    for k, s in enumerate(sentences):
        body.append(("\t" + s) if k == 1 else s)
        if k % 2 == 0:
            body.append("")
    rating = "5.0" if sentiment == "positive" else "1.0"
    return "\n".join([
        "<review>",
        "<unique_id>", f"{domain}-{sentiment}-{i:05d}", "</unique_id>",
        "<product_name>", f"Synthetic {domain} item & co {i}", "</product_name>",
        "<product_type>", domain, "</product_type>",
        "<rating>", rating, "</rating>",
        "<title>", f"Review {i} <of> {domain}", "</title>",
        "<review_text>", *body, "</review_text>",
        "</review>",
    ]) + "\n"


def write_sorted_data_acl(df: pd.DataFrame, root: PathLike) -> Path:
    """Write a (review, domain, sentiment) frame in the sorted_data_acl layout under ``root``.

    Folder names follow :data:`DOMAIN_DIRS` (``kitchen`` -> ``kitchen_&_housewares``); other
    domains get a folder of their own name. Written atomically; returns ``root``.
    """
    root = Path(root)
    with atomic_dir(root) as tmp:
        for domain in dict.fromkeys(df["domain"]):
            folder = tmp / DOMAIN_DIRS.get(domain, domain)
            folder.mkdir()
            for sentiment in ("positive", "negative"):
                rows = df[(df["domain"] == domain) & (df["sentiment"] == sentiment)]
                blocks = [_review_block(i, domain, sentiment, t)
                          for i, t in enumerate(rows["review"])]
                with open(folder / f"{sentiment}.review", "w", encoding="utf-8",
                          newline="\n") as f:
                    f.write("<reviews>\n" + "".join(blocks) + "</reviews>\n")
    return root


def make_synthetic_sorted_data_acl(root: PathLike, n_per_domain_label: int = 50,
                                   seed: int = 0) -> Path:
    """Write :func:`make_synthetic_reviews` in the sorted_data_acl layout; returns ``root``.

    Parsing it back with ``load_sorted_data_acl(root)`` gives the same frame.
    """
    return write_sorted_data_acl(make_synthetic_reviews(n_per_domain_label, seed), root)


# ------------------------------------------------------------------------------ tiny BERTs

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tiny_vocab(words: Optional[Iterable[str]] = None) -> List[str]:
    """WordPiece vocabulary: special tokens ([PAD] = 0), single characters and their ``##``
    forms (so any lower-case word of letters and digits can be tokenised without [UNK]),
    punctuation, then ``words`` (default: the synthetic vocabulary). No duplicates."""
    chars = list(string.ascii_lowercase + string.digits)
    vocab = list(SPECIAL_TOKENS) + chars + ["##" + c for c in chars] + list(string.punctuation)
    vocab += list(words if words is not None else synthetic_vocabulary())
    return list(dict.fromkeys(vocab))


def tiny_bert_config(vocab_size: int, num_layers: int, hidden_size: int, num_heads: int,
                     intermediate_size: int, max_position_embeddings: int = 128) -> dict:
    """A Hugging Face BertConfig dictionary."""
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size {hidden_size} is not a multiple of num_heads {num_heads}")
    return {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "intermediate_size": intermediate_size,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": max_position_embeddings,
        "type_vocab_size": 2,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-12,
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
    }


def bert_parameter_shapes(config: dict) -> Dict[str, Tuple[int, ...]]:
    """Hugging Face ``BertModel`` parameter names (no ``bert.`` prefix) -> shapes.

    Linear weights are [out, in], as in PyTorch.
    """
    V, H = config["vocab_size"], config["hidden_size"]
    P, T = config["max_position_embeddings"], config["type_vocab_size"]
    I = config["intermediate_size"]
    shapes: Dict[str, Tuple[int, ...]] = {
        "embeddings.word_embeddings.weight": (V, H),
        "embeddings.position_embeddings.weight": (P, H),
        "embeddings.token_type_embeddings.weight": (T, H),
        "embeddings.LayerNorm.weight": (H,),
        "embeddings.LayerNorm.bias": (H,),
    }
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        for name in ("query", "key", "value"):
            shapes[p + f"attention.self.{name}.weight"] = (H, H)
            shapes[p + f"attention.self.{name}.bias"] = (H,)
        shapes[p + "attention.output.dense.weight"] = (H, H)
        shapes[p + "attention.output.dense.bias"] = (H,)
        shapes[p + "attention.output.LayerNorm.weight"] = (H,)
        shapes[p + "attention.output.LayerNorm.bias"] = (H,)
        shapes[p + "intermediate.dense.weight"] = (I, H)
        shapes[p + "intermediate.dense.bias"] = (I,)
        shapes[p + "output.dense.weight"] = (H, I)
        shapes[p + "output.dense.bias"] = (H,)
        shapes[p + "output.LayerNorm.weight"] = (H,)
        shapes[p + "output.LayerNorm.bias"] = (H,)
    shapes["pooler.dense.weight"] = (H, H)
    shapes["pooler.dense.bias"] = (H,)
    return shapes


def _random_weights(config: dict, seed: int) -> Dict[str, np.ndarray]:
    """BERT's initialisation: N(0, initializer_range) for matrices, zero biases, LayerNorm 1/0."""
    rng = np.random.default_rng(seed)
    std = config["initializer_range"]
    weights = {}
    for name, shape in bert_parameter_shapes(config).items():
        if "LayerNorm.weight" in name:
            w = np.ones(shape, np.float32)
        elif name.endswith("bias"):
            w = np.zeros(shape, np.float32)
        else:
            w = rng.normal(0.0, std, size=shape).astype(np.float32)
        weights[name] = w
    # Hugging Face zeroes the padding_idx row of the word embeddings.
    weights["embeddings.word_embeddings.weight"][config["pad_token_id"]] = 0.0
    return weights


def make_tiny_bert(folder: PathLike, num_layers: int, hidden_size: int = 64, num_heads: int = 4,
                   intermediate_size: int = 128, vocab_words: Optional[Iterable[str]] = None,
                   seed: int = 0, max_position_embeddings: int = 128) -> Path:
    """Write a random BERT in the Hugging Face folder layout and return the folder.

    Files: ``config.json``, ``vocab.txt``, ``tokenizer_config.json`` (lower-casing) and
    ``model.safetensors`` (float32, ``BertModel`` names without prefix). The folder appears
    complete or not at all.
    """
    from metakd.infra.fileio import save_safetensors as save_file  # a full disk: an OSError naming the file

    vocab = tiny_vocab(vocab_words)
    config = tiny_bert_config(len(vocab), num_layers, hidden_size, num_heads, intermediate_size,
                              max_position_embeddings)
    weights = _random_weights(config, seed)
    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        with open(tmp / "config.json", "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2)
            f.write("\n")
        with open(tmp / "vocab.txt", "w", encoding="utf-8", newline="\n") as f:
            f.write("".join(token + "\n" for token in vocab))
        with open(tmp / "tokenizer_config.json", "w", encoding="utf-8") as f:
            json.dump({"do_lower_case": True, "tokenizer_class": "BertTokenizer",
                       "model_max_length": max_position_embeddings,
                       "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
                       "cls_token": "[CLS]", "mask_token": "[MASK]"}, f, indent=2)
            f.write("\n")
        # "format": "pt" lets Hugging Face transformers open the file too.
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    return folder


def make_tiny_bert_pair(models_dir: PathLike, seed: int = 0,
                        teacher: Optional[dict] = None,
                        student: Optional[dict] = None) -> Tuple[Path, Path]:
    """``<models_dir>/tiny-teacher`` and ``<models_dir>/tiny-student`` (see TINY_TEACHER/STUDENT).

    Both share the same vocabulary, as bert-base-uncased and TinyBERT do.
    """
    models_dir = Path(models_dir)
    t = make_tiny_bert(models_dir / "tiny-teacher", seed=seed, **(teacher or TINY_TEACHER))
    s = make_tiny_bert(models_dir / "tiny-student", seed=seed + 1, **(student or TINY_STUDENT))
    return t, s


# ------------------------------------------------------------------ a table for TASK=tsv

# Support messages about three products (the domains), of three kinds (the labels): what a
# user's own multi-domain data might look like. Words shared by all products carry the kind,
# product words carry it more strongly in their product, topic words name the product.
TABLE_LABELS = ("complaint", "question", "praise")
TABLE_SHARED = {
    "complaint": ["broken", "refund", "annoyed", "failed", "stopped", "unacceptable"],
    "question": ["how", "where", "can", "does", "which", "when"],
    "praise": ["thanks", "great", "love", "excellent", "impressed", "smooth"],
}
TABLE_DOMAINS = {
    "phone": {"complaint": ["overheats", "cracked"], "question": ["unlock", "esim"], "praise": ["snappy", "gorgeous"],
              "topic": ["phone", "camera", "screen", "battery", "sim", "call"]},
    "laptop": {"complaint": ["hinge", "bluescreen"], "question": ["drivers", "bios"], "praise": ["light", "silent"],
               "topic": ["laptop", "keyboard", "trackpad", "fan", "charger", "display"]},
    "router": {"complaint": ["dropouts", "reboots"], "question": ["firmware", "ssid"], "praise": ["coverage", "stable"],
               "topic": ["router", "wifi", "signal", "cable", "modem", "network"]},
}
TABLE_FILLER = ["the", "my", "it", "is", "a", "since", "i", "we", "this", "and", "to", "with", "after",
                "update", "yesterday", "order", "please", "really", "now", "still", "again", "you"]
TABLE_COLUMNS = ("id", "product", "message", "category")


def table_vocabulary() -> List[str]:
    """Every word the synthetic table uses, in a fixed order."""
    words = [w for label in TABLE_LABELS for w in TABLE_SHARED[label]] + TABLE_FILLER
    words += [w for d in TABLE_DOMAINS.values() for k in (*TABLE_LABELS, "topic") for w in d[k]]
    return list(dict.fromkeys(words))


def make_synthetic_table(rows_per_class: int = 40, seed: int = 0) -> pd.DataFrame:
    """A 3-domain (product), 3-label (category) table with columns id, product, message, category.

    Each message has 2-4 words of its category (shared or product-specific), 1-2 topic words of
    its product and filler; ``LABEL_NOISE`` of them are written with another category's words.
    Some messages hold a comma or a quoted word (CSV quoting). The same seed gives the same table.
    """
    rng = np.random.default_rng(seed)
    records = []
    for domain, words in TABLE_DOMAINS.items():
        for label in TABLE_LABELS:
            for _ in range(rows_per_class):
                kind = label
                if rng.random() < LABEL_NOISE:
                    kind = str(rng.choice([k for k in TABLE_LABELS if k != label]))
                pool = TABLE_SHARED[kind] + words[kind] * 2
                body = [str(w) for w in rng.choice(pool, size=int(rng.integers(2, 5)))]
                body += [str(w) for w in rng.choice(words["topic"], size=int(rng.integers(1, 3)))]
                body += [str(w) for w in rng.choice(TABLE_FILLER, size=int(rng.integers(2, 7)))]
                rng.shuffle(body)
                if rng.random() < 0.2:
                    body[0] = f'"{body[0]}"'
                if rng.random() < 0.2:
                    body[-1] += ","
                    body.append(str(rng.choice(TABLE_FILLER)))
                text = " ".join(body)
                records.append((f"m{len(records):05d}", domain, text[0].upper() + text[1:] + ".", label))
    return pd.DataFrame.from_records(records, columns=list(TABLE_COLUMNS))


def write_synthetic_table(path: PathLike, rows_per_class: int = 40, seed: int = 0) -> Path:
    """:func:`make_synthetic_table` as a CSV file (``.csv``: quoted where needed) or TSV, atomically."""
    from metakd.infra.fileio import atomic_open

    path = Path(path)
    df = make_synthetic_table(rows_per_class, seed)
    with atomic_open(path) as f:
        df.to_csv(f, sep="," if path.suffix.lower() == ".csv" else "\t", index=False, lineterminator="\n")
    return path


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m metakd.data.synthetic --table FILE``: the generated table of TASK=tsv's worked
    example, and tiny random BERTs whose vocabulary holds its words."""
    from metakd.infra.entry import cli_main

    return cli_main(_main)(argv)


def _main(argv: Optional[Sequence[str]]) -> int:
    import argparse

    from metakd.cli import Parser
    from metakd.infra.errors import UserError

    p = Parser(prog="python -m metakd.data.synthetic", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
               description="Write a synthetic multi-domain table for TASK=tsv (3 products x 3 categories of "
                           "support messages; columns id, product, message, category) and tiny random "
                           "teacher/student BERTs for it.")
    p.add_argument("--table", required=True, help="the file to write (.csv: comma-separated, else TSV)")
    p.add_argument("--rows-per-class", type=int, default=40, help="rows per product and category")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--models-out", default=None, help="also write tiny-teacher and tiny-student here")
    a = p.parse_args(argv)
    if a.rows_per_class < 1:
        raise UserError(f"--rows-per-class must be >= 1, got {a.rows_per_class}")
    if not 0 <= a.seed < 2 ** 32:
        raise UserError(f"--seed must be in [0, 2^32), got {a.seed}")
    path = write_synthetic_table(a.table, a.rows_per_class, a.seed)
    print(f"wrote {path} ({3 * 3 * a.rows_per_class} rows)")
    if a.models_out:
        words = table_vocabulary()
        t, s = make_tiny_bert_pair(a.models_out, seed=a.seed, teacher={**TINY_TEACHER, "vocab_words": words},
                                   student={**TINY_STUDENT, "vocab_words": words})
        print(f"wrote tiny BERTs: teacher {t}, student {s}")
    return 0


if __name__ == "__main__":
    main()
