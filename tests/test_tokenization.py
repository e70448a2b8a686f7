"""Tests for metakd.tokenization: exact parity with BertTokenizerFast, plus small handmade cases."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from metakd.infra.errors import UserError
from metakd.tokenization import BertTokenizer

FIXTURE = Path(__file__).parent / "fixtures" / "hf_tokenizer.json"
REF_MODEL = Path(__file__).resolve().parents[2] / "shared" / "models" / "all-MiniLM-L6-v2"
KEYS = ("input_ids", "attention_mask", "token_type_ids")

TINY_VOCAB = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
    "the", "quick", "brown", "fox", "jump", "##s", "##ed", "un", "##aff", "##able",
    "hello", "world", "cafe", "naive", "!", ",", ".", "a", "b", "c", "d", "e", "f", "g",
]
TID = {t: i for i, t in enumerate(TINY_VOCAB)}


def _fixture_cases() -> list:
    return json.loads(FIXTURE.read_text(encoding="utf-8"))["cases"]


@pytest.fixture(scope="module")
def ref_tok() -> BertTokenizer:
    if not (REF_MODEL / "vocab.txt").is_file():
        pytest.skip(f"reference vocab not found at {REF_MODEL} (needs ../shared/models beside the repo)")
    return BertTokenizer.from_pretrained(REF_MODEL)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tiny_tok")
    (d / "vocab.txt").write_text("".join(t + "\n" for t in TINY_VOCAB), encoding="utf-8")
    return d


@pytest.fixture(scope="module")
def tiny(tiny_dir) -> BertTokenizer:
    return BertTokenizer.from_pretrained(tiny_dir)


# ---------------------------------------------------------------- parity with transformers


@pytest.mark.parametrize(
    "idx", range(6), ids=[f"len{m}-{k}" for m in (8, 32, 128) for k in ("single", "pair")]
)
def test_matches_hf_fixture(ref_tok, idx):
    cases = _fixture_cases()
    assert len(cases) == 6
    case = cases[idx]
    out = ref_tok(case["text_a"], case["text_b"], max_length=case["max_length"])
    for k in KEYS:
        expected = np.asarray(case[k], dtype=np.int64)
        assert out[k].dtype == np.int64 and out[k].shape == expected.shape, k
        bad = np.flatnonzero((out[k] != expected).any(axis=1))
        assert bad.size == 0, f"{k} differs in rows {bad.tolist()}: {[case['text_a'][i][:40] for i in bad]}"
    lengths = ref_tok.count_tokens(case["text_a"], case["text_b"], max_length=case["max_length"])
    np.testing.assert_array_equal(lengths, out["attention_mask"].sum(axis=1))


def test_reference_ids(ref_tok):
    assert ref_tok.vocab_size == 30522
    assert (ref_tok.pad_token_id, ref_tok.cls_token_id, ref_tok.sep_token_id) == (0, 101, 102)
    assert ref_tok.model_max_length == 512


# ---------------------------------------------------------------- handmade vocabulary


def test_lowercase_accents_punctuation(tiny):
    assert tiny.tokenize("HELLO, Wörld!  Café naïve") == ["hello", ",", "world", "!", "cafe", "naive"]


def test_wordpieces_and_unknown(tiny):
    assert tiny.tokenize("unaffable jumps jumped") == ["un", "##aff", "##able", "jump", "##s", "jump", "##ed"]
    # No complete segmentation -> the whole word is [UNK], not a partial match.
    assert tiny.tokenize("jumpz zebra") == ["[UNK]", "[UNK]"]
    assert tiny.tokenize("a" * 101) == ["[UNK]"]  # over max_input_chars_per_word


def test_special_tokens_in_text_kept_whole(tiny):
    assert tiny.tokenize("[CLS] hello [SEP]") == ["[CLS]", "hello", "[SEP]"]


def test_single_padding_shapes_dtypes(tiny):
    out = tiny(["the quick fox", ""], max_length=6)
    assert set(out) == set(KEYS)
    for k in KEYS:
        assert out[k].dtype == np.int64 and out[k].shape == (2, 6)
    c, s, p = TID["[CLS]"], TID["[SEP]"], TID["[PAD]"]
    np.testing.assert_array_equal(out["input_ids"], [[c, TID["the"], TID["quick"], TID["fox"], s, p], [c, s, p, p, p, p]])
    np.testing.assert_array_equal(out["attention_mask"], [[1, 1, 1, 1, 1, 0], [1, 1, 0, 0, 0, 0]])
    np.testing.assert_array_equal(out["token_type_ids"], np.zeros((2, 6)))


def test_single_string_is_batch_of_one(tiny):
    out = tiny("hello", max_length=4)
    np.testing.assert_array_equal(out["input_ids"], [[TID["[CLS]"], TID["hello"], TID["[SEP]"], 0]])


def test_single_truncation(tiny):
    out = tiny(["a b c d e f g"], max_length=5)
    np.testing.assert_array_equal(out["input_ids"], [[TID["[CLS]"], TID["a"], TID["b"], TID["c"], TID["[SEP]"]]])


def test_pair_longest_first_truncation(tiny):
    # 6 + 2 tokens into 8 - 3 = 5 slots: the longer segment A loses tokens until it is 3 long.
    out = tiny(["a b c d e f"], ["hello world"], max_length=8)
    c, s = TID["[CLS]"], TID["[SEP]"]
    np.testing.assert_array_equal(
        out["input_ids"], [[c, TID["a"], TID["b"], TID["c"], s, TID["hello"], TID["world"], s]]
    )
    np.testing.assert_array_equal(out["token_type_ids"], [[0, 0, 0, 0, 0, 1, 1, 1]])
    np.testing.assert_array_equal(out["attention_mask"], np.ones((1, 8)))
    # Equal lengths: both shrink and the second segment keeps the odd slot (checked against
    # transformers' BertTokenizer and BertTokenizerFast: [CLS] a b [SEP] d e f [SEP]).
    out = tiny(["a b c d"], ["d e f g"], max_length=8)
    ids = out["input_ids"][0].tolist()
    assert ids == [c, TID["a"], TID["b"], s, TID["d"], TID["e"], TID["f"], s]


def test_mixed_pairs_and_singles(tiny):
    out = tiny(["hello", "hello", "hello"], [None, "", "world"], max_length=7)
    c, s, h, w = TID["[CLS]"], TID["[SEP]"], TID["hello"], TID["world"]
    np.testing.assert_array_equal(
        out["input_ids"], [[c, h, s, 0, 0, 0, 0], [c, h, s, s, 0, 0, 0], [c, h, s, w, s, 0, 0]]
    )
    np.testing.assert_array_equal(
        out["token_type_ids"], [[0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 1, 0, 0, 0], [0, 0, 0, 1, 1, 0, 0]]
    )
    np.testing.assert_array_equal(tiny.count_tokens(["hello"] * 3, [None, "", "world"], max_length=7), [3, 4, 5])


def test_count_tokens_without_truncation_and_tokenize_after_truncation(tiny):
    assert tiny.count_tokens(["a b c d e f g"], max_length=4).tolist() == [4]
    assert tiny.count_tokens(["a b c d e f g"], max_length=None).tolist() == [9]
    tiny(["a b c d e f g"], max_length=4)  # leaves truncation on inside the Rust tokenizer
    assert len(tiny.tokenize("a b c d e f g")) == 7


def test_vocab_helpers(tiny):
    assert tiny.vocab_size == len(TINY_VOCAB) and tiny.vocab["fox"] == TID["fox"]
    assert (tiny.pad_token_id, tiny.cls_token_id, tiny.sep_token_id) == (0, 2, 3)
    assert tiny.convert_tokens_to_ids(["fox", "nope"]) == [TID["fox"], TID["[UNK]"]]
    assert tiny.convert_tokens_to_ids("the") == TID["the"]
    assert tiny.decode(tiny("unaffable fox", max_length=8)["input_ids"][0]) == "unaffable fox"


def test_bad_arguments(tiny):
    with pytest.raises(ValueError, match="texts_a has 2 rows but texts_b has 1"):
        tiny(["a", "b"], ["c"])
    with pytest.raises(UserError, match="at least 3"):
        tiny(["a"], ["b"], max_length=2)


def test_config_options(tmp_path):
    (tmp_path / "vocab.txt").write_text("".join(t + "\n" for t in TINY_VOCAB + ["Hello", "café"]), encoding="utf-8")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False, "model_max_length": 64}))
    tok = BertTokenizer.from_pretrained(tmp_path)
    # Cased and, with strip_accents=None, accents kept (they follow lowercase).
    assert tok.tokenize("Hello hello café") == ["Hello", "hello", "café"]
    assert tok.model_max_length == 64


# ---------------------------------------------------------------- errors and persistence


def test_missing_folder(tmp_path):
    with pytest.raises(UserError, match="vocab.txt") as e:
        BertTokenizer.from_pretrained(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(e.value)


def test_missing_vocab_file(tmp_path):
    with pytest.raises(UserError, match="no vocab.txt") as e:
        BertTokenizer.from_pretrained(tmp_path)
    assert str(tmp_path) in str(e.value)


def test_bad_config_and_missing_specials(tmp_path):
    (tmp_path / "vocab.txt").write_text("hello\nworld\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"\[UNK\]"):
        BertTokenizer.from_pretrained(tmp_path)
    (tmp_path / "vocab.txt").write_text("".join(t + "\n" for t in TINY_VOCAB), encoding="utf-8")
    (tmp_path / "tokenizer_config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(UserError, match="tokenizer_config.json"):
        BertTokenizer.from_pretrained(tmp_path)


def test_save_load_round_trip(tiny, tmp_path):
    out_dir = tmp_path / "saved"
    tiny.save_pretrained(out_dir)
    assert sorted(p.name for p in out_dir.iterdir()) == ["tokenizer_config.json", "vocab.txt"]  # no temp files left
    again = BertTokenizer.from_pretrained(out_dir)
    assert again.vocab == tiny.vocab
    assert (again.do_lower_case, again.strip_accents, again.model_max_length) == (True, None, 512)
    texts_a, texts_b = ["The quick brown fox jumps!", "unaffable"], ["hello world", None]
    a, b = tiny(texts_a, texts_b, max_length=10), again(texts_a, texts_b, max_length=10)
    for k in KEYS:
        np.testing.assert_array_equal(a[k], b[k])


def test_save_round_trip_reference(ref_tok, tmp_path):
    ref_tok.save_pretrained(tmp_path)
    assert (tmp_path / "vocab.txt").read_bytes() == (REF_MODEL / "vocab.txt").read_bytes()
    assert BertTokenizer.from_pretrained(tmp_path).vocab == ref_tok.vocab
