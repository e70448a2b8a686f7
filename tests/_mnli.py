"""A small MNLI in GLUE's exact file format, made here (real MNLI cannot be downloaded offline).

GLUE's ``MNLI/train.tsv`` has 12 TAB-separated columns, ``MNLI/dev_matched.tsv`` 16 (five
annotator labels), both with a header, never quoted (sentences keep their ``"``). Rows whose
annotators disagreed carry gold_label ``-``. The pairs are learnable from the hypothesis: an
entailed one repeats premise words with a "yes" cue, a contradiction negates, a neutral one
hedges with new words; topic words name the genre.

``write_mnli`` returns the rows it wrote (genre, sentence1, sentence2, gold_label), so tests
compare the reader with what was written, not with the reader's own output.
"""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Dict, List

import numpy as np

GENRES = ("fiction", "government", "slate", "telephone", "travel")
LABELS = ("entailment", "neutral", "contradiction")
TRAIN_HEADER = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
                "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "label1", "gold_label"]
DEV_HEADER = TRAIN_HEADER[:11] + ["label2", "label3", "label4", "label5", "gold_label"]
TOPIC = {"fiction": ["she", "door", "night", "river", "letter"],
         "government": ["agency", "rule", "report", "budget", "program"],
         "slate": ["critics", "column", "election", "magazine", "writer"],
         "telephone": ["yeah", "kids", "weekend", "car", "house"],
         "travel": ["museum", "island", "hotel", "temple", "beach"]}
CUES = {"entailment": ["yes", "indeed"], "neutral": ["maybe", "perhaps"], "contradiction": ["never", "not"]}
FILLER = ["the", "a", "was", "is", "of", "and", "there", "some", "very", "old", "new", "many"]


def vocabulary() -> List[str]:
    words = [w for ws in TOPIC.values() for w in ws] + [w for ws in CUES.values() for w in ws] + FILLER
    return list(dict.fromkeys(words + ["quiet", "said"]))


def _parse(sentence: str) -> str:
    return "( " + " ".join(f"( {w} )" for w in sentence.rstrip(".").split()) + " . )"


def make_pairs(n_per_genre: int, seed: int, no_label_every: int = 7) -> List[Dict[str, str]]:
    """Rows in file order; every ``no_label_every``-th row has gold_label '-'."""
    rng = np.random.default_rng(seed)
    rows = []
    for genre in GENRES:
        for i in range(n_per_genre):
            label = LABELS[i % 3]
            premise = [str(w) for w in rng.choice(TOPIC[genre], 3)] + [str(w) for w in rng.choice(FILLER, 3)]
            rng.shuffle(premise)
            cue = str(rng.choice(CUES[label]))
            if label == "neutral":
                hyp = [cue] + [str(w) for w in rng.choice(FILLER, 3)] + ["quiet"]
            else:
                hyp = [cue] + premise[:3]
            s1 = " ".join(premise).capitalize() + "."
            if i % 5 == 0:
                s1 = f'"{s1}" she said.'  # quotes stay: GLUE's files are never quoted
            gold = "-" if len(rows) % no_label_every == no_label_every - 1 else label
            rows.append({"genre": genre, "sentence1": s1, "sentence2": " ".join(hyp).capitalize() + ".",
                         "gold_label": gold, "label1": label})
    return rows


def _write(path: Path, header: List[str], rows: List[Dict[str, str]], start: int) -> None:
    lines = ["\t".join(header)]
    for k, r in enumerate(rows):
        prompt = 10000 + start + k
        values = {"index": str(start + k), "promptID": str(prompt), "pairID": f"{prompt}{r['label1'][0]}",
                  "genre": r["genre"], "sentence1_binary_parse": _parse(r["sentence1"]),
                  "sentence2_binary_parse": _parse(r["sentence2"]),
                  "sentence1_parse": "(ROOT (S " + _parse(r["sentence1"]) + "))",
                  "sentence2_parse": "(ROOT (S " + _parse(r["sentence2"]) + "))",
                  "sentence1": r["sentence1"], "sentence2": r["sentence2"], "gold_label": r["gold_label"]}
        for j in range(1, 6):
            values[f"label{j}"] = r["label1"]
        lines.append("\t".join(values[c] for c in header))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_mnli(folder: Path, n_train_per_genre: int = 40, n_dev_per_genre: int = 12, seed: int = 0) -> dict:
    """``folder/train.tsv`` and ``folder/dev_matched.tsv``; returns {"train": rows, "dev": rows}."""
    folder.mkdir(parents=True, exist_ok=True)
    train = make_pairs(n_train_per_genre, seed)
    dev = make_pairs(n_dev_per_genre, seed + 1)
    _write(folder / "train.tsv", TRAIN_HEADER, train, 0)
    _write(folder / "dev_matched.tsv", DEV_HEADER, dev, 0)
    return {"train": train, "dev": dev}


def zip_mnli(folder: Path, archive: Path) -> Path:
    """The folder's files under ``MNLI/`` in a zip, as GLUE's MNLI.zip."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive, "w") as z:
        for name in ("train.tsv", "dev_matched.tsv"):
            z.write(folder / name, f"MNLI/{name}")
    return archive
