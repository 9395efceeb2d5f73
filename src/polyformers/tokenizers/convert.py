"""Building a `tokenizers.Tokenizer` (the fast backend) from the files or objects of a slow tokenizer.

The pipelines built here must tokenize exactly like the slow tokenizers they replace, so every step
(normalizer, pre-tokenizer, model, post-processor, decoder) mirrors one step of the slow algorithm.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

__all__ = [
    "load_wordpiece_vocab",
    "wordpiece_tokenizer",
    "bert_normalizer",
    "convert_slow_tokenizer",
    "register_converter",
    "SLOW_TO_FAST_CONVERTERS",
]


def load_wordpiece_vocab(vocab_file: str | os.PathLike) -> dict[str, int]:
    """Read a vocab.txt the way the slow WordPiece tokenizers do: one token a line, id = line number.

    Only the newline is removed, so tokens made of other whitespace survive; a repeated token keeps
    its last line number, as the slow tokenizer's dict assignment does.
    """
    if not isinstance(vocab_file, (str, os.PathLike)):
        raise TypeError(f"vocab_file: expected a path (str or os.PathLike), got {type(vocab_file).__name__}")
    if not os.path.isfile(vocab_file):
        raise ValueError(f"vocab_file: expected an existing vocabulary file, got {os.fspath(vocab_file)!r}")
    vocab: dict[str, int] = {}
    with open(vocab_file, encoding="utf-8") as handle:
        for index, line in enumerate(handle):
            vocab[line.rstrip("\n")] = index
    return vocab


def bert_normalizer(
    *,
    do_lower_case: bool = True,
    strip_accents: bool | None = None,
    tokenize_chinese_chars: bool = True,
    clean_text: bool = True,
) -> normalizers.Normalizer:
    """The BasicTokenizer's text cleanup as a backend normalizer (strip_accents=None follows lowercasing)."""
    return normalizers.BertNormalizer(
        clean_text=bool(clean_text),
        handle_chinese_chars=bool(tokenize_chinese_chars),
        strip_accents=None if strip_accents is None else bool(strip_accents),
        lowercase=bool(do_lower_case),
    )


def wordpiece_tokenizer(
    vocab: Mapping[str, int] | str | os.PathLike,
    *,
    unk_token: str = "[UNK]",
    cls_token: str = "[CLS]",
    sep_token: str = "[SEP]",
    do_lower_case: bool = True,
    strip_accents: bool | None = None,
    tokenize_chinese_chars: bool = True,
    clean_text: bool = True,
    wordpieces_prefix: str = "##",
    max_input_chars_per_word: int = 100,
) -> Tokenizer:
    """A BERT/ELECTRA-style WordPiece pipeline: `[CLS] A [SEP]` and `[CLS] A [SEP] B [SEP]`.

    `vocab` is a token -> id mapping or the path of a vocab.txt.
    """
    if not isinstance(vocab, Mapping):
        vocab = load_wordpiece_vocab(vocab)
    vocab = dict(vocab)
    unk_token, cls_token, sep_token = str(unk_token), str(cls_token), str(sep_token)
    if unk_token not in vocab:
        raise ValueError(f"unk_token: expected a token of the vocabulary, got {unk_token!r}")

    tokenizer = Tokenizer(
        models.WordPiece(
            vocab,
            unk_token=unk_token,
            max_input_chars_per_word=max_input_chars_per_word,
            continuing_subword_prefix=wordpieces_prefix,
        )
    )
    tokenizer.normalizer = bert_normalizer(
        do_lower_case=do_lower_case,
        strip_accents=strip_accents,
        tokenize_chinese_chars=tokenize_chinese_chars,
        clean_text=clean_text,
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    # The slow tokenizer maps a special token missing from the vocabulary to the unknown id; so do we.
    cls_id = vocab.get(cls_token, vocab[unk_token])
    sep_id = vocab.get(sep_token, vocab[unk_token])
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{cls_token}:0 $A:0 {sep_token}:0",
        pair=f"{cls_token}:0 $A:0 {sep_token}:0 $B:1 {sep_token}:1",
        special_tokens=[(cls_token, cls_id), (sep_token, sep_id)],
    )
    tokenizer.decoder = decoders.WordPiece(prefix=wordpieces_prefix)
    return tokenizer


def slow_special_tokens(slow: Any) -> dict[str, str]:
    """The unknown, classifier and separator tokens of a slow tokenizer, as strings for a backend builder."""
    return {name: str(getattr(slow, name)) for name in ("unk_token", "cls_token", "sep_token")}


def _convert_wordpiece(slow: Any) -> Tokenizer:
    # Slow WordPiece tokenizers keep their text options on a BasicTokenizer when they have one, and
    # on themselves otherwise; the first place that has the attribute wins.
    basic = getattr(slow, "basic_tokenizer", None)

    def option(name: str, default: Any) -> Any:
        for holder in (basic, slow):
            if holder is not None and hasattr(holder, name):
                return getattr(holder, name)
        return default

    wordpiece = getattr(slow, "wordpiece_tokenizer", None)
    return wordpiece_tokenizer(
        slow.vocab,
        **slow_special_tokens(slow),
        do_lower_case=option("do_lower_case", True),
        strip_accents=option("strip_accents", None),
        tokenize_chinese_chars=option("tokenize_chinese_chars", True),
        clean_text=option("clean_text", True),
        wordpieces_prefix=option("wordpieces_prefix", "##"),
        max_input_chars_per_word=getattr(wordpiece, "max_input_chars_per_word", 100),
    )


# slow class name -> function building its backend; other tokenizer families register theirs here
SLOW_TO_FAST_CONVERTERS: dict[str, Callable[[Any], Tokenizer]] = {
    "ElectraTokenizer": _convert_wordpiece,
    "BertTokenizer": _convert_wordpiece,
}


def register_converter(slow_class_name: str, converter: Callable[[Any], Tokenizer]) -> None:
    """Declare how to build the fast backend of the slow class named `slow_class_name`."""
    SLOW_TO_FAST_CONVERTERS[slow_class_name] = converter


def convert_slow_tokenizer(slow: Any) -> Tokenizer:
    """Build the `tokenizers.Tokenizer` equivalent of the slow tokenizer instance `slow`."""
    name = type(slow).__name__
    converter = SLOW_TO_FAST_CONVERTERS.get(name)
    if converter is None:
        raise ValueError(
            f"slow tokenizer: expected an instance of one of {sorted(SLOW_TO_FAST_CONVERTERS)}, got {name}"
        )
    return converter(slow)
