"""Byte-level BPE, GPT-2's tokenizer: pure-Python ``GPT2Tokenizer`` and ``RobertaTokenizer``.

Text is cut into words by GPT-2's pattern, each word's UTF-8 bytes are spelled with 256 printable
characters (so that any byte sequence is a string of known symbols), and the merges of ``merges.txt``
are applied to each word, lowest rank first, until none applies. The pieces are looked up in
``vocab.json``. Decoding joins the pieces and maps the characters back to bytes.
"""

from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Tuple

import regex

from tokenizers import AddedToken

from .base import CONCAT_EOS_TEMPLATE, _atomic_write_text, _hub_files, _RobertaStyleLayout, collector_paused
from .slow import PreTrainedTokenizer

__all__ = [
    "bytes_to_unicode",
    "read_bpe_files",
    "ByteLevelBPETokenizer",
    "GPT2Tokenizer",
    "RobertaTokenizer",
]

VOCAB_FILES_NAMES = {"vocab_file": "vocab.json", "merges_file": "merges.txt"}

# Contractions, then runs of letters, of digits, of other symbols (each with at most one leading space),
# then whitespace: a whitespace run before a word leaves its last space to that word.
GPT2_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def _byte_alphabet() -> Dict[int, str]:
    # Printable Latin-1 bytes stand for themselves; the other 68 (controls, space, NBSP, soft hyphen)
    # take the code points from 256 up, in byte order, so that no symbol is whitespace or invisible.
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    alphabet = {byte: chr(byte) for byte in printable}
    extra = 256
    for byte in range(256):
        if byte not in alphabet:
            alphabet[byte] = chr(extra)
            extra += 1
    return alphabet


_BYTE_TO_CHAR = _byte_alphabet()
_CHAR_TO_BYTE = {char: byte for byte, char in _BYTE_TO_CHAR.items()}


def bytes_to_unicode() -> Dict[int, str]:
    """The byte -> character table of byte-level BPE (a new dict each call)."""
    return dict(_BYTE_TO_CHAR)


def _spell_bytes(text: str) -> str:
    return "".join(_BYTE_TO_CHAR[byte] for byte in text.encode("utf-8"))


def _unspell_bytes(text: str) -> bytes:
    # A character outside the byte alphabet can only come from a token that was never produced by
    # byte-level BPE (a special token written with such characters); it stands for its own UTF-8 bytes.
    out = bytearray()
    for char in text:
        byte = _CHAR_TO_BYTE.get(char)
        if byte is None:
            out += char.encode("utf-8")
        else:
            out.append(byte)
    return bytes(out)


def read_bpe_files(vocab_file, merges_file) -> Tuple[Dict[str, int], List[Tuple[str, str]]]:
    """Read and cross-check ``vocab.json`` (token -> id) and ``merges.txt`` (one ``a b`` merge a line,
    in rank order, after an optional ``#version`` line).

    Every merge must join two vocabulary tokens into a vocabulary token; a merges file that belongs to
    another vocabulary fails here, naming both files, instead of tokenizing into unknown tokens.
    """
    for name, path in (("vocab_file", vocab_file), ("merges_file", merges_file)):
        if path is None or not isinstance(path, (str, os.PathLike)) or not os.path.isfile(path):
            expected = VOCAB_FILES_NAMES[name]
            raise ValueError(f"{name}: expected the path of an existing {expected}, got {path!r}")
    with collector_paused():
        return _read_checked_bpe_files(vocab_file, merges_file)


def _read_checked_bpe_files(vocab_file, merges_file) -> Tuple[Dict[str, int], List[Tuple[str, str]]]:
    try:
        with open(vocab_file, encoding="utf-8") as handle:
            vocab = json.load(handle)
    except json.JSONDecodeError as error:
        raise ValueError(f"vocab_file: expected a JSON object (token -> id) in {os.fspath(vocab_file)!r}, "
                         f"got invalid JSON: {error}") from None
    if not isinstance(vocab, dict):
        raise ValueError(f"vocab_file: expected a JSON object (token -> id) in {os.fspath(vocab_file)!r}, "
                         f"got a JSON {type(vocab).__name__}")
    for token, index in vocab.items():
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise ValueError(f"vocab_file: expected non-negative integer ids in {os.fspath(vocab_file)!r}, "
                             f"got {index!r} for the token {token!r}")

    with open(merges_file, encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    numbered = [(number, line.split()) for number, line in enumerate(lines, start=1)
                if line.strip() and not (number == 1 and line.startswith("#version"))]
    for number, parts in numbered:
        if len(parts) != 2:
            raise ValueError(f"merges_file: expected two space-separated tokens a line in "
                             f"{os.fspath(merges_file)!r}, got {lines[number - 1]!r} on line {number}")
    merges = [(first, second) for _, (first, second) in numbered]
    # one pass over all merges in C, then a slow look only when something is missing
    if not all(a in vocab and b in vocab and a + b in vocab for a, b in merges):
        for (number, _), (first, second) in zip(numbered, merges):
            for token in (first, second, first + second):
                if token not in vocab:
                    raise ValueError(
                        f"merges_file {os.fspath(merges_file)!r} does not belong to vocab_file "
                        f"{os.fspath(vocab_file)!r}: line {number} merges {first!r} + {second!r}, but {token!r} "
                        "is not in the vocabulary"
                    )
    return vocab, merges


class ByteLevelBPETokenizer(PreTrainedTokenizer):
    """Base of the pure-Python byte-level BPE tokenizers: the vocabulary and merges, BPE, decoding and
    saving. Subclasses choose the special tokens and where they go.

    Args:
        vocab_file: ``vocab.json``, token -> id.
        merges_file: ``merges.txt``, the merges in rank order.
        errors: how to decode byte sequences that are not UTF-8 (an ``errors`` value of ``bytes.decode``).
        add_prefix_space: put a space before the text, so that its first word is tokenized like any other.
    """

    vocab_files_names = VOCAB_FILES_NAMES
    model_input_names = ["input_ids", "attention_mask"]

    _CACHE_LIMIT = 100_000

    def __init__(self, vocab_file, merges_file, errors: str = "replace", add_prefix_space: bool = False, **kwargs):
        self.encoder, merges = read_bpe_files(vocab_file, merges_file)
        self.decoder = {index: token for token, index in self.encoder.items()}
        self.bpe_ranks: Dict[Tuple[str, str], int] = {merge: rank for rank, merge in enumerate(merges)}
        self.errors = errors
        self.add_prefix_space = add_prefix_space
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {char: byte for byte, char in self.byte_encoder.items()}
        self.pat = regex.compile(GPT2_SPLIT_PATTERN)
        self.cache: Dict[str, Tuple[str, ...]] = {}
        super().__init__(errors=errors, add_prefix_space=add_prefix_space, **kwargs)

    # -- vocabulary ----------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    def get_vocab(self) -> Dict[str, int]:
        return {**self.encoder, **self.added_tokens_encoder}

    def _in_base_vocab(self, index: int) -> bool:
        return index in self.decoder

    def _convert_token_to_id(self, token: str) -> Optional[int]:
        index = self.encoder.get(token)
        if index is not None:
            return index
        return self._convert_token_to_id_with_added_voc(self.unk_token) if token != self.unk_token else None

    def _convert_id_to_token(self, index: int) -> Optional[str]:
        return self.decoder.get(index)

    # -- tokenizing ------------------------------------------------------------------------------------

    def _merge(self, word: str) -> Tuple[str, ...]:
        """The BPE pieces of one byte-spelled word: apply the best-ranked merge everywhere, repeat."""
        cached = self.cache.get(word)
        if cached is not None:
            return cached
        ranks = self.bpe_ranks
        parts = list(word)
        while len(parts) > 1:
            best = None
            best_rank = len(ranks)
            for pair in zip(parts, parts[1:]):
                rank = ranks.get(pair)
                if rank is not None and rank < best_rank:
                    best, best_rank = pair, rank
            if best is None:
                break
            first, second = best
            merged: List[str] = []
            i = 0
            while i < len(parts):
                if i + 1 < len(parts) and parts[i] == first and parts[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        result = tuple(parts)
        if len(self.cache) >= self._CACHE_LIMIT:
            self.cache.clear()
        self.cache[word] = result
        return result

    def bpe(self, token: str) -> str:
        """The BPE pieces of a byte-spelled word, separated by spaces."""
        return " ".join(self._merge(token))

    def _tokenize(self, text: str) -> List[str]:
        tokens: List[str] = []
        for word in self.pat.findall(text):
            tokens.extend(self._merge(_spell_bytes(word)))
        return tokens

    def prepare_for_tokenization(self, text: str, is_split_into_words: bool = False, **kwargs):
        add_prefix_space = kwargs.pop("add_prefix_space", self.add_prefix_space)
        if is_split_into_words or add_prefix_space:
            text = " " + text
        return text, kwargs

    # -- decoding --------------------------------------------------------------------------------------

    def convert_tokens_to_string(self, tokens: List[str]) -> str:
        """Join byte-level tokens and decode their bytes (invalid UTF-8 handled by ``errors``)."""
        return _unspell_bytes("".join(tokens)).decode("utf-8", errors=self.errors)

    # -- saving ----------------------------------------------------------------------------------------

    def save_vocabulary(self, save_directory: str, filename_prefix: Optional[str] = None) -> Tuple[str, str]:
        """Write ``vocab.json`` and ``merges.txt`` into ``save_directory``; return their paths."""
        if not os.path.isdir(save_directory):
            raise ValueError(f"save_directory: expected an existing directory, got {save_directory!r}")
        prefix = filename_prefix + "-" if filename_prefix else ""
        vocab_path = os.path.join(save_directory, prefix + VOCAB_FILES_NAMES["vocab_file"])
        merges_path = os.path.join(save_directory, prefix + VOCAB_FILES_NAMES["merges_file"])
        _atomic_write_text(vocab_path, json.dumps(self.encoder, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
        merges = sorted(self.bpe_ranks.items(), key=lambda item: item[1])
        _atomic_write_text(merges_path, "#version: 0.2\n" + "".join(f"{a} {b}\n" for (a, b), _ in merges))
        return vocab_path, merges_path


_GPT2_CHECKPOINTS = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "distilgpt2")
_ROBERTA_CHECKPOINTS = (
    "roberta-base",
    "roberta-large",
    "roberta-large-mnli",
    "distilroberta-base",
    "roberta-base-openai-detector",
    "roberta-large-openai-detector",
)


def _plain_token(token):
    """A special token given as a string becomes an AddedToken that matches only itself, exactly."""
    return AddedToken(token, lstrip=False, rstrip=False) if isinstance(token, str) else token


class GPT2Tokenizer(ByteLevelBPETokenizer):
    """GPT-2's byte-level BPE tokenizer (also GPT-J's, whose checkpoints add 143 ``<|extratoken_N|>``).

    A space belongs to the word after it, so a word is tokenized differently at the start of the text;
    ``add_prefix_space=True`` (or passing it to a call) removes that difference, and is implied by
    ``is_split_into_words=True``.

    Args:
        vocab_file: ``vocab.json``, token -> id.
        merges_file: ``merges.txt``, the merges in rank order.
        errors: how to decode byte sequences that are not UTF-8 (an ``errors`` value of ``bytes.decode``).
        unk_token, bos_token, eos_token: the special tokens, all ``<|endoftext|>`` by default.
        pad_token: the padding token; GPT-2 has none.
        add_prefix_space: put a space before the text.
        add_bos_token: start every sequence with ``bos_token``.
    """

    _class_chat_template = CONCAT_EOS_TEMPLATE

    pretrained_vocab_files_map = _hub_files(_GPT2_CHECKPOINTS, vocab_file="vocab.json", merges_file="merges.txt")
    max_model_input_sizes = {name: 1024 for name in _GPT2_CHECKPOINTS}

    def __init__(
        self,
        vocab_file,
        merges_file,
        errors="replace",
        unk_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token=None,
        add_prefix_space=False,
        add_bos_token=False,
        **kwargs,
    ):
        self.add_bos_token = add_bos_token
        super().__init__(
            vocab_file,
            merges_file,
            errors=errors,
            unk_token=_plain_token(unk_token),
            bos_token=_plain_token(bos_token),
            eos_token=_plain_token(eos_token),
            pad_token=_plain_token(pad_token),
            add_prefix_space=add_prefix_space,
            add_bos_token=add_bos_token,
            **kwargs,
        )

    def build_inputs_with_special_tokens(
        self, token_ids_0: List[int], token_ids_1: Optional[List[int]] = None
    ) -> List[int]:
        """The ids as they are, each sequence preceded by ``bos_token`` when ``add_bos_token``."""
        bos = [self.bos_token_id] if self.add_bos_token else []
        output = bos + list(token_ids_0)
        if token_ids_1 is not None:
            output += bos + list(token_ids_1)
        return output


class RobertaTokenizer(_RobertaStyleLayout, ByteLevelBPETokenizer):
    """RoBERTa's tokenizer: GPT-2's byte-level BPE with BERT-like special tokens.

    One sequence is ``<s> A </s>``, a pair ``<s> A </s></s> B </s>``; token type ids are all 0.
    ``<mask>`` takes the space before it (``lstrip``), so ``"a <mask>"`` masks the word ``" b"``.

    Args:
        vocab_file: ``vocab.json``, token -> id.
        merges_file: ``merges.txt``, the merges in rank order.
        errors: how to decode byte sequences that are not UTF-8 (an ``errors`` value of ``bytes.decode``).
        bos_token, eos_token, sep_token, cls_token, unk_token, pad_token, mask_token: the special tokens.
        add_prefix_space: put a space before a text that does not start with whitespace.
    """

    pretrained_vocab_files_map = _hub_files(_ROBERTA_CHECKPOINTS, vocab_file="vocab.json", merges_file="merges.txt")
    max_model_input_sizes = {name: 512 for name in _ROBERTA_CHECKPOINTS}

    def __init__(
        self,
        vocab_file,
        merges_file,
        errors="replace",
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        add_prefix_space=False,
        **kwargs,
    ):
        if isinstance(mask_token, str):
            mask_token = AddedToken(mask_token, lstrip=True, rstrip=False, normalized=False)
        super().__init__(
            vocab_file,
            merges_file,
            errors=errors,
            bos_token=_plain_token(bos_token),
            eos_token=_plain_token(eos_token),
            sep_token=_plain_token(sep_token),
            cls_token=_plain_token(cls_token),
            unk_token=_plain_token(unk_token),
            pad_token=_plain_token(pad_token),
            mask_token=mask_token,
            add_prefix_space=add_prefix_space,
            **kwargs,
        )

    def prepare_for_tokenization(self, text: str, is_split_into_words: bool = False, **kwargs):
        add_prefix_space = kwargs.pop("add_prefix_space", self.add_prefix_space)
        if (is_split_into_words or add_prefix_space) and text and not text[0].isspace():
            text = " " + text
        return text, kwargs
