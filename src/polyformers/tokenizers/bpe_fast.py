"""Fast byte-level BPE tokenizers: ``GPT2TokenizerFast``, ``RobertaTokenizerFast`` and ``GPTNeoXTokenizerFast``.

The backend pipeline is the slow tokenizers' algorithm step for step: a byte-level pre-tokenizer (GPT-2's
word pattern and the byte alphabet), a BPE model over the same vocabulary and merges, and a byte-level
decoder; the post-processor places the family's special tokens.
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any, Mapping, Sequence

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from .base import CONCAT_EOS_TEMPLATE, BatchEncoding, _atomic_write_text, _hub_files, _RobertaStyleLayout
from .bpe import GPT2Tokenizer, RobertaTokenizer, read_bpe_files
from .convert import register_converter
from .fast import TOKENIZER_FILE, PreTrainedTokenizerFast, _EncodingView

__all__ = [
    "byte_level_bpe_tokenizer",
    "GPT2TokenizerFast",
    "RobertaTokenizerFast",
    "GPTNeoXTokenizerFast",
]

_FILES = {"vocab_file": "vocab.json", "merges_file": "merges.txt", "tokenizer_file": TOKENIZER_FILE}


def byte_level_bpe_tokenizer(
    vocab: Mapping[str, int],
    merges: Sequence[tuple[str, str]],
    *,
    add_prefix_space: bool = False,
    post_processor: Any = None,
    normalizer: Any = None,
) -> Tokenizer:
    """A byte-level BPE backend; without a `post_processor` it adds no special tokens and keeps the
    offsets of the pieces untrimmed (a piece's leading space is part of its span), as GPT-2's does."""
    tokenizer = Tokenizer(
        models.BPE(
            vocab=dict(vocab),
            merges=list(merges),
            dropout=None,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
        )
    )
    if normalizer is not None:
        tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = post_processor if post_processor is not None else processors.ByteLevel(
        trim_offsets=False
    )
    return tokenizer


def _ranked_merges(slow: Any) -> list[tuple[str, str]]:
    return [merge for merge, _ in sorted(slow.bpe_ranks.items(), key=lambda item: item[1])]


def _convert_gpt2(slow: GPT2Tokenizer) -> Tokenizer:
    post_processor = None
    if slow.add_bos_token:
        bos = slow.bos_token
        post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 $B:1", special_tokens=[(bos, slow.bos_token_id)]
        )
    return byte_level_bpe_tokenizer(
        slow.encoder, _ranked_merges(slow), add_prefix_space=slow.add_prefix_space, post_processor=post_processor
    )


def _convert_roberta(slow: RobertaTokenizer) -> Tokenizer:
    post_processor = processors.RobertaProcessing(
        (slow.sep_token, slow.sep_token_id),
        (slow.cls_token, slow.cls_token_id),
        trim_offsets=True,
        add_prefix_space=slow.add_prefix_space,
    )
    return byte_level_bpe_tokenizer(
        slow.encoder, _ranked_merges(slow), add_prefix_space=slow.add_prefix_space, post_processor=post_processor
    )


register_converter("GPT2Tokenizer", _convert_gpt2)
register_converter("RobertaTokenizer", _convert_roberta)


def _with_options(state: dict, kinds: tuple[str, ...], options: dict[str, Any]) -> tuple[dict, bool]:
    """`state` (a pipeline component as JSON) with `options` set on every component of one of `kinds`,
    looking inside Sequence components too; and whether anything changed."""
    changed = False
    if state.get("type") in kinds:
        for key, value in options.items():
            if key in state and state[key] != value:
                state[key] = value
                changed = True
    for key in ("pretokenizers", "processors"):
        for item in state.get(key) or []:
            changed |= _with_options(item, kinds, options)[1]
    return state, changed


class _ByteLevelTokenizerFast(PreTrainedTokenizerFast):
    """What the fast byte-level tokenizers share: the files, and `add_prefix_space` imposed on the
    pre-tokenizer of a loaded tokenizer.json (RoBERTa also imposes it, with `trim_offsets`, on the
    post-processor)."""

    vocab_files_names = _FILES
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        from_files = kwargs.get("tokenizer_object") is None and kwargs.get("__slow_tokenizer") is None and (
            kwargs.get("tokenizer_file") is None or kwargs.get("from_slow", False)
        )
        if from_files and self.slow_tokenizer_class is not None and any(arg is not None for arg in args[:2]):
            # Built from vocab.json and merges.txt through the slow tokenizer, whose settings (its
            # special tokens with their flags included) then describe this tokenizer too.
            options = {key: value for key, value in kwargs.items() if key not in ("tokenizer_file", "from_slow")}
            slow = self.slow_tokenizer_class(*args, **options)
            kwargs = {**kwargs, **slow.init_kwargs, "__slow_tokenizer": slow}
        super().__init__(*args, **kwargs)
        add_prefix_space = kwargs.get("add_prefix_space", False)
        self._impose("pre_tokenizer", ("ByteLevel",), add_prefix_space=add_prefix_space)
        self.add_prefix_space = add_prefix_space

    def _impose(self, component: str, kinds: tuple[str, ...], **options: Any) -> None:
        current = getattr(self._tokenizer, component)
        if current is None:
            return
        state, changed = _with_options(json.loads(current.__getstate__()), kinds, options)
        if not changed:
            return
        # The component is rebuilt from its JSON through a whole-pipeline round trip, which handles any
        # component type (Sequence included) with the library's own deserializer.
        pipeline = json.loads(self._tokenizer.to_str())
        pipeline[component] = state
        self._tokenizer = Tokenizer.from_str(json.dumps(pipeline))

    def _backend_from_slow_files(self, *args: Any, **kwargs: Any) -> Tokenizer:
        if not any(arg is not None for arg in args[:2]):
            raise ValueError(
                "vocab_file / merges_file / tokenizer_file: expected a vocab.json and a merges.txt, or a "
                f"tokenizer.json, for {type(self).__name__}; got none of them"
            )
        return super()._backend_from_slow_files(*args, **kwargs)

    def _save_pretrained(self, save_directory, file_names, legacy_format=None, filename_prefix=None):
        files = super()._save_pretrained(save_directory, file_names, legacy_format, filename_prefix)
        prefix = f"{filename_prefix}-" if filename_prefix else ""
        tokenizer_file = os.path.join(os.fspath(save_directory), prefix + TOKENIZER_FILE)
        if tokenizer_file in files:
            _merges_as_strings(tokenizer_file)
        return files


def _merges_as_strings(tokenizer_file: str) -> None:
    """Rewrite the merges of a saved tokenizer.json as ``"a b"`` strings.

    Recent versions of the tokenizers library write each merge as a pair, which the versions that
    Transformers 4.37 runs with cannot read; every version reads the string form, which is exact as long
    as no token holds a space (byte-level tokens never do: a space is spelled "Ġ").
    """
    with open(tokenizer_file, encoding="utf-8") as handle:
        state = json.load(handle)
    merges = state.get("model", {}).get("merges")
    if not merges or not isinstance(merges[0], list) or any(" " in part for merge in merges for part in merge):
        return
    state["model"]["merges"] = [" ".join(merge) for merge in merges]
    _atomic_write_text(tokenizer_file, json.dumps(state, ensure_ascii=False))


class _WordsNeedPrefixSpace:
    """Pre-split words are tokenized as words that follow a space, which needs `add_prefix_space=True`.

    The space before a text is put here, by the slow tokenizer's rule (:meth:`_slow_adds_space`), rather than
    by the backend's ``ByteLevel`` pre-tokenizer, whose rule differs: it adds none before a text starting
    with " ", where the slow GPT-2 tokenizer does, and adds one before a text starting with other whitespace
    ("\t", "\n"), where the slow RoBERTa tokenizer does not. During a call the backend runs without its own
    prefix space; offsets are given back in the caller's text.
    """

    @staticmethod
    def _slow_adds_space(text: str) -> bool:
        return True

    def _batch_encode_plus(self, batch_text_or_text_pairs, *args: Any, **kwargs: Any):
        words = kwargs.get("is_split_into_words", False)
        if words and not self.add_prefix_space:
            raise ValueError(
                f"is_split_into_words=True needs add_prefix_space=True: create the {type(self).__name__} with "
                "add_prefix_space=True to encode pre-split words (got add_prefix_space=False)"
            )
        prefix = kwargs.pop("add_prefix_space", self.add_prefix_space)
        if not (prefix or self.add_prefix_space) or not isinstance(batch_text_or_text_pairs, (list, tuple)):
            return super()._batch_encode_plus(batch_text_or_text_pairs, *args, **kwargs)
        prefix = prefix or words

        def spaced(text):  # (text as the backend sees it, whether a space was put in front, length)
            if isinstance(text, str) and prefix and self._slow_adds_space(text):
                return " " + text, (1, len(text))
            return text, (0, 0)

        def one_sequence(sequence):
            if words and isinstance(sequence, (list, tuple)):
                pairs = [spaced(word) for word in sequence]
                return [word for word, _ in pairs], [shift for _, shift in pairs]
            return spaced(sequence)

        batch, shifts = [], []
        for item in batch_text_or_text_pairs:
            if words:
                is_pair = isinstance(item, (list, tuple)) and len(item) == 2 and all(
                    isinstance(part, (list, tuple)) for part in item)
            else:
                is_pair = isinstance(item, (list, tuple)) and len(item) == 2
            if is_pair:
                first, second = one_sequence(item[0]), one_sequence(item[1])
                batch.append((first[0], second[0]))
                shifts.append((first[1], second[1]))
            else:
                only = one_sequence(item)
                batch.append(only[0])
                shifts.append((only[1],))
        return_tensors = kwargs.pop("return_tensors", None)
        backend = self._tokenizer
        saved = backend.pre_tokenizer
        if saved is not None:
            options = {"add_prefix_space": False}
            state, changed = _with_options(json.loads(saved.__getstate__()), ("ByteLevel",), options)
            if changed:
                plain = copy.deepcopy(saved)
                plain.__setstate__(json.dumps(state).encode())
                backend.pre_tokenizer = plain
        try:
            output = super()._batch_encode_plus(batch, *args, return_tensors=None, **kwargs)
        finally:
            backend.pre_tokenizer = saved
        data = dict(output)
        processor = backend.post_processor
        trimmed = processor is not None and '"trim_offsets":true' in processor.__getstate__().decode().replace(" ", "")
        samples = data.get("overflow_to_sample_mapping") or list(range(len(output.encodings)))
        encodings = [_InUserText(encoding, shifts[sample], trimmed) for sample, encoding in zip(samples, output.encodings)]
        if "offset_mapping" in data:
            data["offset_mapping"] = [encoding.offsets for encoding in encodings]
        return BatchEncoding(data, encodings, tensor_type=return_tensors)


def _offsets_in_user_text(encoding: Any, shifts: tuple, trimmed: bool) -> list[tuple[int, int]]:
    """The backend's offsets (in the text with the space put in front) as positions in the caller's text.

    `shifts` holds, per sequence, ``(1, length)`` where a space was put in front of a text of `length`
    characters and ``(0, 0)`` where none was, or (pre-split words) a list of those, one per word.
    """
    fixed = []
    for offset, sequence, word in zip(encoding.offsets, encoding.sequence_ids, encoding.word_ids):
        shift, length = 0, 0
        if sequence is not None and sequence < len(shifts):
            added = shifts[sequence]
            if isinstance(added, list):
                added = added[word] if word is not None and word < len(added) else (0, 0)
            shift, length = added
        if shift:
            # A token of the space put in front alone spans the text's first character, or nothing where
            # offsets are trimmed, as with the backend's own prefix space.
            start, end = offset[0] - shift, offset[1] - shift
            fixed.append((max(0, start), end if end > 0 else 0 if trimmed else min(1, length)))
        else:
            fixed.append(tuple(offset))
    return fixed


class _InUserText(_EncodingView):
    """A backend `Encoding` whose character positions are those of the caller's text.

    The byte-level tokenizers put the slow tokenizer's prefix space in front of a text themselves, so the
    backend's positions count that space. This view gives every position-reporting method
    (``offsets``, ``token_to_chars``, ``char_to_token``, ``char_to_word``, ``word_to_chars``) in the text
    the caller passed, answering as the backend does (the first token whose span holds a character);
    everything else is the backend encoding's own.
    """

    __slots__ = ("_shifts", "_trimmed", "_offsets")
    _state = ("shifts", "trimmed")
    _what = "offsets in the caller's text"

    def __init__(self, encoding: Any, shifts: tuple, trimmed: bool) -> None:
        self._encoding = encoding
        self._shifts = shifts
        self._trimmed = trimmed
        self._offsets = _offsets_in_user_text(encoding, shifts, trimmed)

    @property
    def offsets(self) -> list[tuple[int, int]]:
        return list(self._offsets)

    @property
    def overflowing(self) -> list["_InUserText"]:
        return [_InUserText(item, self._shifts, self._trimmed) for item in self._encoding.overflowing]

    def token_to_chars(self, token_index: int):
        if self._encoding.token_to_chars(token_index) is None:
            return None
        return self._offsets[token_index]

    def _sequence_range(self, sequence_index: int) -> range:
        # The backend looks in the tokens of that sequence, or in all of them when it has no such range.
        tokens = [index for index, sequence in enumerate(self._encoding.sequence_ids) if sequence == sequence_index]
        if not tokens or self._encoding.n_sequences < 2 and None not in self._encoding.sequence_ids:
            return range(len(self._offsets))
        return range(tokens[0], tokens[-1] + 1)

    def char_to_token(self, char_pos: int, sequence_index: int = 0):
        self._encoding.char_to_token(char_pos, sequence_index)  # the backend's own argument checks
        for index in self._sequence_range(sequence_index):
            start, end = self._offsets[index]
            if start <= char_pos < end:
                return index
        return None

    def char_to_word(self, char_pos: int, sequence_index: int = 0):
        token = self.char_to_token(char_pos, sequence_index)
        return None if token is None else self._encoding.word_ids[token]

    def word_to_chars(self, word_index: int, sequence_index: int = 0):
        span = self._encoding.word_to_tokens(word_index, sequence_index)
        if span is None or span[1] == 0:
            return None
        return self._offsets[span[0]][0], self._offsets[span[1] - 1][1]


class _EndOfTextSpecials:
    """The constructor GPT-2 and GPT-NeoX share: every special token is ``<|endoftext|>`` by default."""

    def __init__(
        self,
        vocab_file: str | None = None,
        merges_file: str | None = None,
        tokenizer_file: str | None = None,
        unk_token: Any = "<|endoftext|>",
        bos_token: Any = "<|endoftext|>",
        eos_token: Any = "<|endoftext|>",
        add_prefix_space: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            vocab_file,
            merges_file,
            tokenizer_file=tokenizer_file,
            unk_token=unk_token,
            bos_token=bos_token,
            eos_token=eos_token,
            add_prefix_space=add_prefix_space,
            **kwargs,
        )
        self.add_bos_token = kwargs.get("add_bos_token", False)


class GPT2TokenizerFast(_WordsNeedPrefixSpace, _EndOfTextSpecials, _ByteLevelTokenizerFast):
    """GPT-2's byte-level BPE tokenizer, backed by the `tokenizers` library.

    Args:
        vocab_file: ``vocab.json``, token -> id.
        merges_file: ``merges.txt``, the merges in rank order.
        tokenizer_file: a tokenizer.json, used instead of the two files above when given.
        unk_token, bos_token, eos_token: the special tokens, all ``<|endoftext|>`` by default.
        add_prefix_space: put a space before the text (needed for ``is_split_into_words=True``).
        add_bos_token: start every sequence with ``bos_token`` (when building from vocab and merges).
    """

    _class_chat_template = CONCAT_EOS_TEMPLATE

    slow_tokenizer_class = GPT2Tokenizer
    pretrained_vocab_files_map = GPT2Tokenizer.pretrained_vocab_files_map
    max_model_input_sizes = GPT2Tokenizer.max_model_input_sizes


class RobertaTokenizerFast(_RobertaStyleLayout, _WordsNeedPrefixSpace, _ByteLevelTokenizerFast):
    """RoBERTa's tokenizer (GPT-2's byte-level BPE with ``<s> A </s></s> B </s>``), backed by `tokenizers`.

    Args:
        vocab_file: ``vocab.json``, token -> id.
        merges_file: ``merges.txt``, the merges in rank order.
        tokenizer_file: a tokenizer.json, used instead of the two files above when given.
        errors: how to decode byte sequences that are not UTF-8 (kept for the slow tokenizer).
        bos_token, eos_token, sep_token, cls_token, unk_token, pad_token, mask_token: the special tokens;
            ``mask_token`` takes the space before it.
        add_prefix_space: put a space before the text (needed for ``is_split_into_words=True``).
        trim_offsets: leave the leading space out of each token's character span.
    """

    _layout_token_ids = ("bos_token_id", "eos_token_id")
    slow_tokenizer_class = RobertaTokenizer
    pretrained_vocab_files_map = RobertaTokenizer.pretrained_vocab_files_map
    max_model_input_sizes = RobertaTokenizer.max_model_input_sizes

    @staticmethod
    def _slow_adds_space(text: str) -> bool:
        return bool(text) and not text[0].isspace()

    def __init__(
        self,
        vocab_file: str | None = None,
        merges_file: str | None = None,
        tokenizer_file: str | None = None,
        errors: str = "replace",
        bos_token: Any = "<s>",
        eos_token: Any = "</s>",
        sep_token: Any = "</s>",
        cls_token: Any = "<s>",
        unk_token: Any = "<unk>",
        pad_token: Any = "<pad>",
        mask_token: Any = "<mask>",
        add_prefix_space: bool = False,
        trim_offsets: bool = True,
        **kwargs: Any,
    ) -> None:
        if isinstance(mask_token, str):
            mask_token = AddedToken(mask_token, lstrip=True, rstrip=False, normalized=False)
        super().__init__(
            vocab_file,
            merges_file,
            tokenizer_file=tokenizer_file,
            errors=errors,
            bos_token=bos_token,
            eos_token=eos_token,
            sep_token=sep_token,
            cls_token=cls_token,
            unk_token=unk_token,
            pad_token=pad_token,
            mask_token=mask_token,
            add_prefix_space=add_prefix_space,
            trim_offsets=trim_offsets,
            **kwargs,
        )
        self._impose(
            "post_processor",
            ("RobertaProcessing", "ByteLevel"),
            add_prefix_space=add_prefix_space,
            trim_offsets=trim_offsets,
        )

    @property
    def mask_token(self) -> str | None:
        """The mask token; set as a string, it takes the space before it like a word does."""
        return PreTrainedTokenizerFast.mask_token.fget(self)

    @mask_token.setter
    def mask_token(self, value: Any) -> None:
        if isinstance(value, str):
            value = AddedToken(value, lstrip=True, rstrip=False)
        PreTrainedTokenizerFast.mask_token.fset(self, value)


class GPTNeoXTokenizerFast(_EndOfTextSpecials, _ByteLevelTokenizerFast):
    """GPT-NeoX's tokenizer (used by MPT): byte-level BPE over NFC-normalized text, from a tokenizer.json.

    Args:
        vocab_file: ``vocab.json``, token -> id (only without `tokenizer_file`).
        merges_file: ``merges.txt``, the merges in rank order (only without `tokenizer_file`).
        tokenizer_file: the checkpoint's tokenizer.json.
        unk_token, bos_token, eos_token: the special tokens, all ``<|endoftext|>`` by default.
        add_prefix_space: put a space before the text.
    """

    _class_chat_template = CONCAT_EOS_TEMPLATE

    pretrained_vocab_files_map = _hub_files(["EleutherAI/gpt-neox-20b"], tokenizer_file=TOKENIZER_FILE)
    max_model_input_sizes = {"EleutherAI/gpt-neox-20b": 2048}

    def _backend_from_slow_files(self, vocab_file: str | None = None, merges_file: str | None = None,
                                 *args: Any, **kwargs: Any) -> Tokenizer:
        # There is no slow GPT-NeoX tokenizer: vocab.json and merges.txt give NeoX's pipeline directly.
        if vocab_file is None and merges_file is None:
            return super()._backend_from_slow_files(vocab_file, merges_file)  # the error naming the files
        vocab, merges = read_bpe_files(vocab_file, merges_file)
        return byte_level_bpe_tokenizer(
            vocab,
            merges,
            add_prefix_space=kwargs.get("add_prefix_space", False),
            post_processor=processors.ByteLevel(trim_offsets=True),
            normalizer=normalizers.NFC(),
        )
