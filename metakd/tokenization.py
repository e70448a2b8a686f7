"""BERT WordPiece tokenization, built on Hugging Face ``tokenizers`` (not ``transformers``).

The pipeline is the one ``transformers.BertTokenizerFast`` builds from a ``vocab.txt``:

  1. BertNormalizer: drop control characters and map whitespace to " " (clean_text), put
     spaces around CJK ideographs, strip accents (NFD, drop combining marks) and lower-case.
  2. BertPreTokenizer: split on whitespace and on every punctuation character.
  3. WordPiece: greedy longest-match-first against the vocabulary; words longer than 100
     characters, or with no complete segmentation, become [UNK].
  4. Post-processing: ``[CLS] A [SEP]`` or ``[CLS] A [SEP] B [SEP]`` with segment ids 0 / 1.

so ids agree exactly with the reference tokenizer (tests/fixtures/hf_tokenizer.json).

Pairs: ``texts_b=None`` encodes single sentences. With a list, every row whose entry is not
None is a pair; an empty string is an *empty second segment* (``[CLS] a [SEP] [SEP]``), which
is what ``BertTokenizerFast`` does when handed ``""`` as the pair. Rows whose entry is None are
single sentences, so one batch may mix both.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece

from metakd.infra.errors import UserError
from metakd.infra.fileio import atomic_open

PathLike = Union[str, os.PathLike]
TextsA = Union[str, Sequence[str]]
TextsB = Optional[Union[str, Sequence[Optional[str]]]]

VOCAB_FILE = "vocab.txt"
CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKEN_KEYS = ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
DEFAULT_SPECIAL_TOKENS = {
    "unk_token": "[UNK]",
    "sep_token": "[SEP]",
    "pad_token": "[PAD]",
    "cls_token": "[CLS]",
    "mask_token": "[MASK]",
}
# Same cap as BERT's original WordpieceTokenizer: longer "words" are almost always junk.
MAX_INPUT_CHARS_PER_WORD = 100


def load_vocab(vocab_file: PathLike) -> Dict[str, int]:
    """Loads a vocabulary file (one token per line, id = line number) into an ordered dict.

    Like ``transformers.load_vocab``, only the trailing newline is stripped (tokens may be
    whitespace-like), and a repeated token keeps its last line number.
    """
    vocab: Dict[str, int] = {}
    with open(vocab_file, "r", encoding="utf-8") as f:
        for index, token in enumerate(f):
            vocab[token.rstrip("\n")] = index
    return vocab


def _special_token(value: object, key: str, config_path: Path) -> str:
    # Newer transformers may store special tokens as AddedToken dicts ({"content": "[CLS]", ...}).
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    if isinstance(value, str):
        return value
    raise UserError(f"{key} must be a string, got {value!r}", path=config_path)


class BertTokenizer:
    """Runs end-to-end BERT tokenization: normalization, punctuation splitting and WordPiece.

    Attributes:
      vocab: token -> id.
      do_lower_case, strip_accents, tokenize_chinese_chars: the normalizer settings.
      model_max_length: the longest input the model accepts (from the config; 512 by default).
      unk_token, sep_token, pad_token, cls_token, mask_token: the special token strings.
    """

    def __init__(
        self,
        vocab: Dict[str, int],
        do_lower_case: bool = True,
        strip_accents: Optional[bool] = None,
        tokenize_chinese_chars: bool = True,
        model_max_length: int = 512,
        unk_token: str = "[UNK]",
        sep_token: str = "[SEP]",
        pad_token: str = "[PAD]",
        cls_token: str = "[CLS]",
        mask_token: str = "[MASK]",
    ):
        """Builds the tokenizer from an in-memory vocabulary.

        Args:
          vocab: token -> id; must contain every special token.
          do_lower_case: lower-case the input.
          strip_accents: remove accents; None follows ``do_lower_case`` (BERT's behaviour).
          tokenize_chinese_chars: split CJK ideographs into single-character words.
          model_max_length: the longest sequence the model accepts.
          unk_token, sep_token, pad_token, cls_token, mask_token: special tokens.

        Raises:
          UserError: a special token is missing from the vocabulary.
        """
        self.vocab: Dict[str, int] = dict(vocab)
        self.do_lower_case = bool(do_lower_case)
        self.strip_accents = strip_accents
        self.tokenize_chinese_chars = bool(tokenize_chinese_chars)
        self.model_max_length = int(model_max_length)
        self.unk_token, self.sep_token, self.pad_token = unk_token, sep_token, pad_token
        self.cls_token, self.mask_token = cls_token, mask_token

        missing = [t for t in (unk_token, sep_token, pad_token, cls_token) if t not in self.vocab]
        if missing:
            raise UserError(
                f"special token(s) {', '.join(missing)} not in the vocabulary "
                f"({len(self.vocab)} tokens); is this a BERT WordPiece vocab.txt?"
            )
        self.pad_token_id = self.vocab[pad_token]
        self.cls_token_id = self.vocab[cls_token]
        self.sep_token_id = self.vocab[sep_token]
        self.unk_token_id = self.vocab[unk_token]
        self.mask_token_id = self.vocab.get(mask_token)

        tok = Tokenizer(WordPiece(self.vocab, unk_token=unk_token, max_input_chars_per_word=MAX_INPUT_CHARS_PER_WORD))
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True,
            handle_chinese_chars=self.tokenize_chinese_chars,
            strip_accents=strip_accents,  # None -> follows lowercase inside the normalizer too
            lowercase=self.do_lower_case,
        )
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        cls, sep = cls_token, sep_token
        tok.post_processor = processors.TemplateProcessing(
            single=f"{cls}:0 $A:0 {sep}:0",
            pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
            special_tokens=[(cls, self.cls_token_id), (sep, self.sep_token_id)],
        )
        tok.decoder = decoders.WordPiece(prefix="##")
        # Registering the specials makes "[CLS]" etc. in raw text map to their ids instead of
        # being split into "[", "cl", "##s", "]" -- what BertTokenizerFast does as well.
        tok.add_special_tokens([t for t in (unk_token, sep_token, pad_token, cls_token, mask_token) if t in self.vocab])
        self._tokenizer = tok
        self._truncation: Optional[int] = None  # the max_length the Rust tokenizer truncates to now

    # ------------------------------------------------------------------ loading and saving

    @classmethod
    def from_pretrained(cls, path: PathLike) -> "BertTokenizer":
        """Loads ``<path>/vocab.txt`` and, when present, ``<path>/tokenizer_config.json``.

        Raises:
          UserError: the folder or its vocab.txt is missing, or the config is unreadable.
        """
        folder = Path(path)
        vocab_file = folder / VOCAB_FILE
        if not folder.is_dir():
            raise UserError(
                f"tokenizer folder not found; expected a folder holding {VOCAB_FILE} "
                f"(and optionally {CONFIG_FILE}), e.g. a BERT checkpoint folder",
                path=folder,
            )
        if not vocab_file.is_file():
            raise UserError(
                f"no {VOCAB_FILE} in this folder; expected a BERT WordPiece vocabulary "
                f"(one token per line) as {VOCAB_FILE}",
                path=folder,
            )
        config: dict = {}
        config_file = folder / CONFIG_FILE
        if config_file.is_file():
            try:
                config = json.loads(config_file.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise UserError(f"not valid JSON ({e}); fix or delete it", path=config_file) from e
            if not isinstance(config, dict):
                raise UserError("expected a JSON object", path=config_file)
        try:
            vocab = load_vocab(vocab_file)
        except UnicodeDecodeError as e:
            raise UserError(f"not UTF-8 text ({e})", path=vocab_file) from e
        if not vocab:
            raise UserError("empty vocabulary; expected one token per line", path=vocab_file)

        kwargs = {k: _special_token(config[k], k, config_file) for k in SPECIAL_TOKEN_KEYS if config.get(k) is not None}
        max_len = config.get("model_max_length")
        # transformers writes a huge sentinel (1e30) when the length is unknown; BERT's is 512.
        if not isinstance(max_len, int) or isinstance(max_len, bool) or not 0 < max_len <= 1_000_000:
            max_len = 512
        try:
            return cls(
                vocab,
                do_lower_case=config.get("do_lower_case", True),
                strip_accents=config.get("strip_accents"),
                tokenize_chinese_chars=config.get("tokenize_chinese_chars", True),
                model_max_length=max_len,
                **kwargs,
            )
        except UserError as e:
            raise UserError(str(e), path=vocab_file) from None

    def save_pretrained(self, folder: PathLike) -> None:
        """Writes ``vocab.txt`` and ``tokenizer_config.json`` into ``folder`` (created if needed).

        Each file is written to a temporary name in ``folder`` and renamed, so a crash never
        leaves a half-written vocabulary behind.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_open(folder / VOCAB_FILE) as f:
            for token, _ in sorted(self.vocab.items(), key=lambda kv: kv[1]):
                f.write(token + "\n")
        config = {
            "do_lower_case": self.do_lower_case,
            "strip_accents": self.strip_accents,
            "tokenize_chinese_chars": self.tokenize_chinese_chars,
            "model_max_length": self.model_max_length,
            **{k: getattr(self, k) for k in SPECIAL_TOKEN_KEYS},
            "tokenizer_class": "BertTokenizer",
        }
        with atomic_open(folder / CONFIG_FILE) as f:
            json.dump(config, f, indent=2, ensure_ascii=False)
            f.write("\n")

    # ------------------------------------------------------------------ vocabulary

    @property
    def vocab_size(self) -> int:
        """Number of entries in the vocabulary."""
        return len(self.vocab)

    def __len__(self) -> int:
        return len(self.vocab)

    def convert_tokens_to_ids(self, tokens: Union[str, Sequence[str]]) -> Union[int, List[int]]:
        """Maps token(s) to id(s); unknown tokens map to the [UNK] id."""
        if isinstance(tokens, str):
            return self.vocab.get(tokens, self.unk_token_id)
        return [self.vocab.get(t, self.unk_token_id) for t in tokens]

    def convert_ids_to_tokens(self, ids: Union[int, Sequence[int]]) -> Union[str, List[str]]:
        """Maps id(s) back to token string(s); ids outside the vocabulary give [UNK]."""
        if isinstance(ids, (int, np.integer)):
            return self._tokenizer.id_to_token(int(ids)) or self.unk_token
        return [self._tokenizer.id_to_token(int(i)) or self.unk_token for i in ids]

    def tokenize(self, text: str) -> List[str]:
        """Splits ``text`` into WordPiece tokens, without [CLS]/[SEP] and without truncation."""
        self._set_truncation(None)
        return self._tokenizer.encode(text, add_special_tokens=False).tokens

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Turns ids back into text (word pieces joined; lower-casing/accents are not undone)."""
        return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    # ------------------------------------------------------------------ batch encoding

    def __call__(self, texts_a: TextsA, texts_b: TextsB = None, max_length: int = 128) -> Dict[str, np.ndarray]:
        """Encodes a batch into fixed-length model inputs.

        Args:
          texts_a: first segments (a single string counts as a batch of one).
          texts_b: None for single sentences, or one entry per row: a string makes the row a
            pair ``[CLS] a [SEP] b [SEP]`` ("" is an empty second segment), None keeps it single.
          max_length: every row is truncated (longest segment first) and padded to this length.

        Returns:
          ``input_ids``, ``attention_mask`` and ``token_type_ids``: int64 arrays of shape
          [N, max_length]; padding uses the [PAD] id and 0 for mask and segment ids.
        """
        encodings = self._encode(texts_a, texts_b, max_length)
        n = len(encodings)
        input_ids = np.full((n, max_length), self.pad_token_id, dtype=np.int64)
        token_type_ids = np.zeros((n, max_length), dtype=np.int64)
        attention_mask = np.zeros((n, max_length), dtype=np.int64)
        for row, enc in enumerate(encodings):
            ids = enc.ids
            k = len(ids)
            input_ids[row, :k] = ids
            token_type_ids[row, :k] = enc.type_ids
            attention_mask[row, :k] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}

    def count_tokens(self, texts_a: TextsA, texts_b: TextsB = None, max_length: Optional[int] = 128) -> np.ndarray:
        """Number of real tokens (specials included) each row would have, for length bucketing.

        Same arguments as ``__call__``; ``max_length=None`` counts without truncation.

        Returns:
          int64 array of shape [N]: ``attention_mask.sum(1)`` of the matching ``__call__``.
        """
        encodings = self._encode(texts_a, texts_b, max_length)
        return np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))

    def _encode(self, texts_a: TextsA, texts_b: TextsB, max_length: Optional[int]) -> list:
        if isinstance(texts_a, str):
            texts_a = [texts_a]
            if isinstance(texts_b, str):
                texts_b = [texts_b]
        texts_a = list(texts_a)
        if texts_b is not None:
            texts_b = list(texts_b)
            if len(texts_b) != len(texts_a):
                raise ValueError(f"texts_a has {len(texts_a)} rows but texts_b has {len(texts_b)}")
        if max_length is not None:
            max_length = int(max_length)
            # [CLS] a [SEP] b [SEP] needs 3 slots before any text fits; the Rust side errors
            # (or silently drops a segment) below that, so refuse up front.
            need = 2 if texts_b is None or all(b is None for b in texts_b) else 3
            if max_length < need:
                raise UserError(f"max_length must be at least {need} for {'pairs' if need == 3 else 'single sentences'}, got {max_length}")
        if texts_b is None:
            inputs: list = texts_a
        else:
            inputs = [a if b is None else (a, b) for a, b in zip(texts_a, texts_b)]
        self._set_truncation(max_length)
        # Offsets are not needed; encode_batch_fast skips computing them.
        return self._tokenizer.encode_batch_fast(inputs, add_special_tokens=True)

    def _set_truncation(self, max_length: Optional[int]) -> None:
        # Truncation is state on the Rust tokenizer; only touch it when it changes.
        if max_length == self._truncation:
            return
        if max_length is None:
            self._tokenizer.no_truncation()
        else:
            self._tokenizer.enable_truncation(max_length, strategy="longest_first")
        self._truncation = max_length

    def __repr__(self) -> str:
        return (
            f"BertTokenizer(vocab_size={self.vocab_size}, do_lower_case={self.do_lower_case}, "
            f"strip_accents={self.strip_accents}, model_max_length={self.model_max_length})"
        )
