"""WordPiece tokenization as in BERT: a basic word splitter, then greedy longest-match subwords.

:class:`WordPieceTokenizer` is the pure-Python tokenizer of every BERT-style family (a ``vocab.txt``
with one token per line, ``##`` continuation pieces); a family subclasses it once to set its special
tokens and input layout. :class:`ElectraTokenizer` is ELECTRA's.
"""

from __future__ import annotations

import logging
import os
import unicodedata
from functools import lru_cache
from typing import Dict, Iterable, List, Optional, Tuple

from .base import _atomic_write_text, _bert_style_inputs, _bert_style_token_types, _hub_files
from .slow import PreTrainedTokenizer

logger = logging.getLogger(__name__)


def load_vocab(vocab_file: str) -> Dict[str, int]:
    """Read a ``vocab.txt``: token on line ``i`` gets id ``i`` (a repeated token keeps its last line)."""
    vocab: Dict[str, int] = {}
    with open(vocab_file, "r", encoding="utf-8") as reader:
        for index, line in enumerate(reader.readlines()):
            vocab[line.rstrip("\n")] = index
    return vocab


def whitespace_tokenize(text: str) -> List[str]:
    """Split on whitespace, dropping empty pieces."""
    return text.split()


# Character classes as BERT's original code defines them; they differ from Unicode's own notions
# (ASCII symbols such as "$" and "^" count as punctuation, tab and newline as whitespace).


@lru_cache(maxsize=65536)
def _is_whitespace(char: str) -> bool:
    if char in " \t\n\r":
        return True
    return unicodedata.category(char) == "Zs"


@lru_cache(maxsize=65536)
def _is_control(char: str) -> bool:
    if char in "\t\n\r":
        return False
    return unicodedata.category(char).startswith("C")


@lru_cache(maxsize=65536)
def _is_punctuation(char: str) -> bool:
    cp = ord(char)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(char).startswith("P")


def _is_chinese_char(cp: int) -> bool:
    # The CJK Unified Ideographs blocks only: Japanese kana and Korean Hangul are written with spaces
    # or are split by WordPiece anyway.
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F
        or 0x2B820 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


class BasicTokenizer:
    """Splits text into words and punctuation: cleans control characters, normalizes whitespace, puts
    spaces around CJK ideographs, optionally lower-cases and strips accents, splits off punctuation.

    ``strip_accents=None`` strips accents exactly when ``do_lower_case`` is on. Tokens in
    ``never_split`` are left whole and untouched.
    """

    def __init__(
        self,
        do_lower_case: bool = True,
        never_split: Optional[Iterable[str]] = None,
        tokenize_chinese_chars: bool = True,
        strip_accents: Optional[bool] = None,
        do_split_on_punc: bool = True,
    ):
        self.do_lower_case = do_lower_case
        self.never_split = set(never_split) if never_split is not None else set()
        self.tokenize_chinese_chars = tokenize_chinese_chars
        self.strip_accents = strip_accents
        self.do_split_on_punc = do_split_on_punc

    def tokenize(self, text: str, never_split: Optional[Iterable[str]] = None) -> List[str]:
        """Split ``text`` into words and punctuation marks; ``never_split`` adds to the constructor's set."""
        never_split = self.never_split.union(never_split) if never_split else self.never_split
        text = self._clean_text(text)
        if self.tokenize_chinese_chars:
            text = self._tokenize_chinese_chars(text)
        # Composed form first, so that "e" + combining accent and "é" tokenize alike.
        text = unicodedata.normalize("NFC", text)
        pieces: List[str] = []
        for token in whitespace_tokenize(text):
            if token not in never_split:
                if self.do_lower_case:
                    token = token.lower()
                    if self.strip_accents is not False:
                        token = self._strip_accents(token)
                elif self.strip_accents:
                    token = self._strip_accents(token)
            pieces.extend(self._split_on_punc(token, never_split))
        return whitespace_tokenize(" ".join(pieces))

    @staticmethod
    def _strip_accents(text: str) -> str:
        return "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")

    def _split_on_punc(self, text: str, never_split: Optional[set] = None) -> List[str]:
        if not self.do_split_on_punc or (never_split and text in never_split):
            return [text]
        out: List[str] = []
        word: List[str] = []
        for char in text:
            if _is_punctuation(char):
                if word:
                    out.append("".join(word))
                    word = []
                out.append(char)
            else:
                word.append(char)
        if word:
            out.append("".join(word))
        return out

    @staticmethod
    def _tokenize_chinese_chars(text: str) -> str:
        out = []
        for char in text:
            if _is_chinese_char(ord(char)):
                out.extend((" ", char, " "))
            else:
                out.append(char)
        return "".join(out)

    @staticmethod
    def _clean_text(text: str) -> str:
        out = []
        for char in text:
            if char == "\x00" or char == "\ufffd" or _is_control(char):
                continue
            out.append(" " if _is_whitespace(char) else char)
        return "".join(out)


class WordpieceTokenizer:
    """Greedy longest-match-first split of a word into vocabulary pieces (``##`` marks continuations).

    A word longer than ``max_input_chars_per_word`` characters, or one with any part not in the
    vocabulary, becomes ``unk_token``.
    """

    def __init__(self, vocab: Dict[str, int], unk_token: str, max_input_chars_per_word: int = 100):
        self.vocab = vocab
        self.unk_token = unk_token
        self.max_input_chars_per_word = max_input_chars_per_word

    def tokenize(self, text: str) -> List[str]:
        out: List[str] = []
        vocab = self.vocab
        for word in whitespace_tokenize(text):
            if len(word) > self.max_input_chars_per_word:
                out.append(self.unk_token)
                continue
            pieces: List[str] = []
            start = 0
            while start < len(word):
                end = len(word)
                piece = None
                while start < end:
                    candidate = word[start:end] if start == 0 else "##" + word[start:end]
                    if candidate in vocab:
                        piece = candidate
                        break
                    end -= 1
                if piece is None:
                    pieces = [self.unk_token]
                    break
                pieces.append(piece)
                start = end
            out.extend(pieces)
        return out


class WordPieceTokenizer(PreTrainedTokenizer):
    """Pure-Python tokenizer over a BERT-style ``vocab.txt``: :class:`BasicTokenizer` then
    :class:`WordpieceTokenizer`. Subclasses fix the special tokens and the model's input layout.

    The default layout is BERT's: ``[CLS] A [SEP]`` and ``[CLS] A [SEP] B [SEP]``, with token type 0
    for the first part and 1 for the second.
    """

    vocab_files_names = {"vocab_file": "vocab.txt"}

    def __init__(
        self,
        vocab_file: str,
        do_lower_case: bool = True,
        do_basic_tokenize: bool = True,
        never_split: Optional[Iterable[str]] = None,
        unk_token="[UNK]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        mask_token="[MASK]",
        tokenize_chinese_chars: bool = True,
        strip_accents: Optional[bool] = None,
        **kwargs,
    ):
        if vocab_file is None or not os.path.isfile(vocab_file):
            raise ValueError(
                f"vocab_file: expected the path of an existing vocabulary file (vocab.txt), got {vocab_file!r}. "
                f"To load a checkpoint folder or Hub id use {type(self).__name__}.from_pretrained(...)"
            )
        self.vocab = load_vocab(vocab_file)
        self.ids_to_tokens = {index: token for token, index in self.vocab.items()}
        self._max_vocab_id = max(self.ids_to_tokens, default=-1)
        self.do_basic_tokenize = do_basic_tokenize
        if do_basic_tokenize:
            self.basic_tokenizer = BasicTokenizer(
                do_lower_case=do_lower_case,
                never_split=never_split,
                tokenize_chinese_chars=tokenize_chinese_chars,
                strip_accents=strip_accents,
            )
        self.wordpiece_tokenizer = WordpieceTokenizer(vocab=self.vocab, unk_token=str(unk_token))
        super().__init__(
            do_lower_case=do_lower_case,
            do_basic_tokenize=do_basic_tokenize,
            never_split=never_split,
            unk_token=unk_token,
            sep_token=sep_token,
            pad_token=pad_token,
            cls_token=cls_token,
            mask_token=mask_token,
            tokenize_chinese_chars=tokenize_chinese_chars,
            strip_accents=strip_accents,
            **kwargs,
        )

    @property
    def do_lower_case(self) -> bool:
        # Lower-casing is the basic tokenizer's job: without it (do_basic_tokenize=False) the text keeps
        # its case, so this attribute deliberately does not exist then (as in the reference).
        if not self.do_basic_tokenize:
            raise AttributeError("do_lower_case only applies with do_basic_tokenize=True")
        return self.basic_tokenizer.do_lower_case

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def get_vocab(self) -> Dict[str, int]:
        return {**self.vocab, **self.added_tokens_encoder}

    def _tokenize(self, text: str, split_special_tokens: bool = False) -> List[str]:
        if not self.do_basic_tokenize:
            return self.wordpiece_tokenizer.tokenize(text)
        keep = self.basic_tokenizer.never_split
        tokens: List[str] = []
        for word in self.basic_tokenizer.tokenize(
            text, never_split=self.all_special_tokens if not split_special_tokens else None
        ):
            if word in keep:
                tokens.append(word)
            else:
                tokens.extend(self.wordpiece_tokenizer.tokenize(word))
        return tokens

    def _convert_token_to_id(self, token: str) -> int:
        index = self.vocab.get(token)
        return index if index is not None else self.vocab.get(self.unk_token)

    def _in_base_vocab(self, index: int) -> bool:
        return 0 <= index <= self._max_vocab_id

    def _convert_id_to_token(self, index: int) -> str:
        # Ids skipped by a vocabulary with repeated lines map to the unknown token.
        return self.ids_to_tokens.get(index, self.unk_token)

    def convert_tokens_to_string(self, tokens: List[str]) -> str:
        """Join WordPiece tokens into text: spaces between words, continuation pieces glued back on."""
        return " ".join(tokens).replace(" ##", "").strip()

    def build_inputs_with_special_tokens(
        self, token_ids_0: List[int], token_ids_1: Optional[List[int]] = None
    ) -> List[int]:
        """``[CLS] A [SEP]`` or ``[CLS] A [SEP] B [SEP]``."""
        return _bert_style_inputs(self.cls_token_id, self.sep_token_id, token_ids_0, token_ids_1)

    def create_token_type_ids_from_sequences(
        self, token_ids_0: List[int], token_ids_1: Optional[List[int]] = None
    ) -> List[int]:
        """0 for ``[CLS] A [SEP]``, then 1 for ``B [SEP]``."""
        return _bert_style_token_types(token_ids_0, token_ids_1)

    def save_vocabulary(self, save_directory: str, filename_prefix: Optional[str] = None) -> Tuple[str]:
        """Write ``vocab.txt`` (one token per line, in id order) and return its path."""
        name = (filename_prefix + "-" if filename_prefix else "") + self.vocab_files_names["vocab_file"]
        if os.path.isdir(save_directory):
            path = os.path.join(save_directory, name)
        else:
            path = (filename_prefix + "-" if filename_prefix else "") + save_directory
        lines = []
        expected = 0
        for token, index in sorted(self.vocab.items(), key=lambda item: item[1]):
            if index != expected:
                logger.warning(
                    "Saving vocabulary to %s: ids are not consecutive (%d follows %d); check that the "
                    "vocabulary is not corrupted",
                    path,
                    index,
                    expected - 1,
                )
                expected = index
            lines.append(token + "\n")
            expected += 1
        _atomic_write_text(path, "".join(lines))
        return (path,)


_ELECTRA_CHECKPOINTS = tuple(
    f"google/electra-{size}-{kind}" for kind in ("generator", "discriminator") for size in ("small", "base", "large")
)


class ElectraTokenizer(WordPieceTokenizer):
    """ELECTRA's tokenizer (WordPiece, same as BERT's).

    Args:
        vocab_file: the vocabulary file, one token per line.
        do_lower_case: lower-case the input.
        do_basic_tokenize: split into words and punctuation before WordPiece.
        never_split: tokens the basic tokenizer must keep whole (only with ``do_basic_tokenize``).
        unk_token, sep_token, pad_token, cls_token, mask_token: the special tokens.
        tokenize_chinese_chars: split CJK ideographs into single characters (turn off for Japanese).
        strip_accents: remove accents; ``None`` follows ``do_lower_case``.
    """

    vocab_files_names = {"vocab_file": "vocab.txt"}
    pretrained_vocab_files_map = _hub_files(_ELECTRA_CHECKPOINTS, vocab_file="vocab.txt")
    max_model_input_sizes = {name: 512 for name in _ELECTRA_CHECKPOINTS}
    pretrained_init_configuration = {name: {"do_lower_case": True} for name in _ELECTRA_CHECKPOINTS}
    model_input_names = ["input_ids", "token_type_ids", "attention_mask"]
    # The constructor is WordPieceTokenizer's: ELECTRA's arguments and their defaults are BERT's.
