"""MPNet's tokenizers: BERT's WordPiece with RoBERTa-style special tokens.

Sequences are laid out as ``<s> A </s>`` and ``<s> A </s></s> B </s>``; MPNet has no token type
embeddings, so token type ids are all 0 and are not a model input. The mask token swallows the space
before it (``"a <mask>"`` masks a whole word, as in pretraining).
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional

from tokenizers import AddedToken, Tokenizer, normalizers, processors

from .base import PreTrainedTokenizerBase, _hub_files, _RobertaStyleLayout
from .convert import register_converter, slow_special_tokens, wordpiece_tokenizer
from .fast import TOKENIZER_FILE, PreTrainedTokenizerFast, _BasicTokenizerSteps
from .wordpiece import WordPieceTokenizer

__all__ = ["MPNetTokenizer", "MPNetTokenizerFast", "check_unique_vocab"]

_MPNET_CHECKPOINTS = {"microsoft/mpnet-base": 512}


def check_unique_vocab(vocab_file: str | os.PathLike) -> None:
    """Refuse a vocab.txt that lists a token twice: the token's first id would silently stop existing."""
    if not isinstance(vocab_file, (str, os.PathLike)) or not os.path.isfile(vocab_file):
        return  # the tokenizer reports a missing file itself
    first_line: Dict[str, int] = {}
    with open(vocab_file, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            token = line.rstrip("\n")
            if token in first_line:
                raise ValueError(
                    f"vocab_file: expected each token once, got {token!r} on lines {first_line[token]} and {number} "
                    f"of {os.fspath(vocab_file)!r}"
                )
            first_line[token] = number


def _special(token: Any, **flags: Any) -> Any:
    return AddedToken(token, **flags) if isinstance(token, str) else token


class MPNetTokenizer(_RobertaStyleLayout, WordPieceTokenizer):
    """MPNet's pure-Python tokenizer (WordPiece, as BERT's).

    Args:
        vocab_file: the vocabulary file, one token per line.
        do_lower_case: lower-case the input.
        do_basic_tokenize: split into words and punctuation before WordPiece.
        never_split: tokens the basic tokenizer must keep whole (only with ``do_basic_tokenize``).
        bos_token, eos_token: the pretraining sequence delimiters (encoding uses ``cls_token`` and ``sep_token``).
        sep_token, cls_token, unk_token, pad_token, mask_token: the special tokens.
        tokenize_chinese_chars: split CJK ideographs into single characters (turn off for Japanese).
        strip_accents: remove accents; ``None`` follows ``do_lower_case``.
    """

    vocab_files_names = {"vocab_file": "vocab.txt"}
    pretrained_vocab_files_map = _hub_files(_MPNET_CHECKPOINTS, vocab_file="vocab.txt")
    pretrained_init_configuration = {name: {"do_lower_case": True} for name in _MPNET_CHECKPOINTS}
    max_model_input_sizes = dict(_MPNET_CHECKPOINTS)
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(
        self,
        vocab_file,
        do_lower_case=True,
        do_basic_tokenize=True,
        never_split=None,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="[UNK]",
        pad_token="<pad>",
        mask_token="<mask>",
        tokenize_chinese_chars=True,
        strip_accents=None,
        **kwargs,
    ):
        check_unique_vocab(vocab_file)
        super().__init__(
            vocab_file,
            do_lower_case=do_lower_case,
            do_basic_tokenize=do_basic_tokenize,
            never_split=never_split,
            bos_token=_special(bos_token, special=True),
            eos_token=_special(eos_token, special=True),
            unk_token=_special(unk_token, special=True),
            sep_token=_special(sep_token, special=True),
            cls_token=_special(cls_token, special=True),
            pad_token=_special(pad_token, special=True),
            mask_token=_special(mask_token, lstrip=True, special=True),
            tokenize_chinese_chars=tokenize_chinese_chars,
            strip_accents=strip_accents,
            **kwargs,
        )

    def get_vocab(self) -> Dict[str, int]:
        # vocab.txt wins over added tokens of the same content
        return {**self.added_tokens_encoder, **self.vocab}


def mpnet_tokenizer(vocab: Any, *, cls_token: str, sep_token: str, **options: Any) -> Tokenizer:
    """A WordPiece backend with MPNet's ``<s> A </s></s> B </s>`` layout; options as for ``wordpiece_tokenizer``."""
    tokenizer = wordpiece_tokenizer(vocab, cls_token=cls_token, sep_token=sep_token, **options)
    vocab = tokenizer.get_vocab()
    unk_id = vocab[options.get("unk_token", "[UNK]")]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{cls_token}:0 $A:0 {sep_token}:0",
        pair=f"{cls_token}:0 $A:0 {sep_token}:0 {sep_token}:0 $B:1 {sep_token}:1",
        special_tokens=[(cls_token, vocab.get(cls_token, unk_id)), (sep_token, vocab.get(sep_token, unk_id))],
    )
    return tokenizer


def _convert_mpnet(slow: MPNetTokenizer) -> Tokenizer:
    # Without a basic tokenizer the slow tokenizer neither lower-cases nor strips accents nor splits
    # CJK characters, and neither does the converted pipeline.
    basic = getattr(slow, "basic_tokenizer", None)
    return mpnet_tokenizer(
        slow.vocab,
        **slow_special_tokens(slow),
        do_lower_case=basic.do_lower_case if basic else False,
        strip_accents=basic.strip_accents if basic else False,
        tokenize_chinese_chars=basic.tokenize_chinese_chars if basic else False,
    )


register_converter("MPNetTokenizer", _convert_mpnet)


class MPNetTokenizerFast(_RobertaStyleLayout, _BasicTokenizerSteps, PreTrainedTokenizerFast):
    """A fast MPNet tokenizer (WordPiece, backed by the `tokenizers` library).

    Args:
        vocab_file: the vocabulary, one token a line.
        tokenizer_file: a tokenizer.json; used instead of `vocab_file` when given.
        do_lower_case: lowercase the input.
        bos_token, eos_token, sep_token, cls_token, unk_token, pad_token, mask_token: the special tokens.
        tokenize_chinese_chars: split around every CJK ideograph (when building from `vocab_file`).
        strip_accents: remove accents; `None` follows `do_lower_case`.
        never_split: words kept whole and untouched, as the slow tokenizer keeps them.

    `do_lower_case` and `strip_accents` given here override a tokenizer.json's normalizer.
    """

    vocab_files_names = {"vocab_file": "vocab.txt", "tokenizer_file": TOKENIZER_FILE}
    pretrained_vocab_files_map = _hub_files(_MPNET_CHECKPOINTS, vocab_file="vocab.txt", tokenizer_file=TOKENIZER_FILE)
    pretrained_init_configuration = dict(MPNetTokenizer.pretrained_init_configuration)
    max_model_input_sizes = dict(_MPNET_CHECKPOINTS)
    slow_tokenizer_class = MPNetTokenizer
    _layout_token_ids = ("bos_token_id", "eos_token_id")
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(
        self,
        vocab_file=None,
        tokenizer_file=None,
        do_lower_case=True,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="[UNK]",
        pad_token="<pad>",
        mask_token="<mask>",
        tokenize_chinese_chars=True,
        strip_accents=None,
        **kwargs,
    ):
        # Special tokens are matched in the raw text: with current `tokenizers`, a normalized one would be
        # stored lower-cased by a lower-casing normalizer and then decoded (and not skipped) as "[unk]".
        plain = {"lstrip": False, "rstrip": False, "normalized": False}
        super().__init__(
            vocab_file,
            tokenizer_file=tokenizer_file,
            do_lower_case=do_lower_case,
            bos_token=_special(bos_token, **plain),
            eos_token=_special(eos_token, **plain),
            sep_token=_special(sep_token, **plain),
            cls_token=_special(cls_token, **plain),
            unk_token=_special(unk_token, **plain),
            pad_token=_special(pad_token, **plain),
            mask_token=_special(mask_token, lstrip=True, rstrip=False, normalized=False),
            tokenize_chinese_chars=tokenize_chinese_chars,
            strip_accents=strip_accents,
            **kwargs,
        )
        self._align_normalizer(do_lower_case, strip_accents)
        self.do_lower_case = do_lower_case
        self._never_split = frozenset(kwargs.get("never_split") or ())

    def _align_normalizer(self, do_lower_case: bool, strip_accents: Optional[bool]) -> None:
        # Only case and accents follow the arguments; a tokenizer.json keeps its other text options.
        normalizer = self._tokenizer.normalizer
        if normalizer is None:
            return
        state = json.loads(normalizer.__getstate__())
        if state.get("type") != "BertNormalizer":
            return
        if state.get("lowercase") == do_lower_case and state.get("strip_accents") == strip_accents:
            return
        self._tokenizer.normalizer = normalizers.BertNormalizer(
            clean_text=state.get("clean_text", True),
            handle_chinese_chars=state.get("handle_chinese_chars", True),
            strip_accents=strip_accents,
            lowercase=do_lower_case,
        )

    @property
    def mask_token(self) -> Optional[str]:
        """The mask token; it takes the space before it, so a string set here becomes an ``lstrip`` AddedToken."""
        return PreTrainedTokenizerBase.mask_token.fget(self)

    @mask_token.setter
    def mask_token(self, value: Any) -> None:
        PreTrainedTokenizerBase.mask_token.fset(self, _special(value, lstrip=True, rstrip=False, normalized=False))
