"""Fast tokenizers: `PreTrainedTokenizerFast` over a `tokenizers.Tokenizer`, and `ElectraTokenizerFast`.

All text processing happens in the Rust backend; this module translates the Transformers calling
conventions (padding and truncation strategies, pairs, pre-split words, overflow) into backend
settings and the backend's `Encoding` objects back into a `BatchEncoding`.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import tokenizers
import tokenizers.pre_tokenizers
import tokenizers.processors
import tokenizers.trainers
from tokenizers import Encoding, Tokenizer, normalizers

from .base import (
    BatchEncoding,
    PaddingStrategy,
    PreTrainedTokenizerBase,
    TruncationStrategy,
    _bert_style_inputs,
    _bert_style_token_types,
)
from .convert import convert_slow_tokenizer, wordpiece_tokenizer
from .wordpiece import ElectraTokenizer

__all__ = ["PreTrainedTokenizerFast", "ElectraTokenizerFast"]

TOKENIZER_FILE = "tokenizer.json"
ADDED_TOKENS_FILE = "added_tokens.json"

# (constructor argument, key of the backend's truncation / padding settings), in the order they are applied.
_TRUNCATION_ARGUMENTS = (
    ("max_length", "max_length"),
    ("truncation_side", "direction"),
    ("stride", "stride"),
    ("truncation_strategy", "strategy"),
)
_PADDING_ARGUMENTS = (
    ("pad_token", "pad_token"),
    ("pad_token_type_id", "pad_type_id"),
    ("padding_side", "direction"),
    ("max_length", "length"),
    ("pad_to_multiple_of", "pad_to_multiple_of"),
)


def _backend_token(token: Any) -> str | tokenizers.AddedToken:
    """What the backend's add_tokens accepts, from a str or any AddedToken-like object.

    Strings pass through so the backend picks its defaults (normalized unless special).
    """
    if isinstance(token, (str, tokenizers.AddedToken)):
        return token
    content = getattr(token, "content", None)
    if not isinstance(content, str):
        raise TypeError(f"token: expected a str or an AddedToken, got {type(token).__name__}")
    options = {
        name: getattr(token, name)
        for name in ("single_word", "lstrip", "rstrip", "normalized", "special")
        if getattr(token, name, None) is not None
    }
    return tokenizers.AddedToken(content, **options)


class _EncodingView:
    """A backend `Encoding` with some answers changed by a subclass; everything else is the encoding's own.

    A subclass lists its further slots, and in ``_state`` the constructor arguments after the encoding, each
    kept in the slot of the same name with a leading underscore (what pickling saves and gives back).
    """

    __slots__ = ("_encoding",)
    _state: tuple = ()
    _what = ""  # what the view changes, for its repr

    def __getattr__(self, name: str) -> Any:
        # Only names the view does not hold get here; a slot not yet set (while unpickling) must not be
        # looked up on an encoding that is not there either.
        if name.startswith("__") or name in _EncodingView.__slots__ or name in type(self).__slots__:
            raise AttributeError(name)
        return getattr(self._encoding, name)

    def __len__(self) -> int:
        return len(self._encoding)

    def __repr__(self) -> str:
        return f"Encoding(num_tokens={len(self._encoding)}, {self._what})"

    def __getstate__(self) -> dict:
        return {"encoding": self._encoding, **{name: getattr(self, "_" + name) for name in self._state}}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["encoding"], *(state[name] for name in self._state))


class PreTrainedTokenizerFast(PreTrainedTokenizerBase):
    """Base class of the fast tokenizers, which delegate tokenization to a `tokenizers.Tokenizer`.

    The backend comes from `tokenizer_object` (copied), from `tokenizer_file` (a tokenizer.json), or is
    converted from the slow tokenizer's files (or from a slow tokenizer instance given by the loader).
    Everything else (special tokens, padding side, maximum length, ...) is handled as in the slow
    tokenizers, by `PreTrainedTokenizerBase`.
    """

    vocab_files_names: dict[str, str] = {"tokenizer_file": TOKENIZER_FILE}
    slow_tokenizer_class: type | None = None
    can_save_slow_tokenizer: bool = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        tokenizer_object = kwargs.pop("tokenizer_object", None)
        slow_tokenizer = kwargs.pop("__slow_tokenizer", None)
        tokenizer_file = kwargs.pop("tokenizer_file", None)
        from_slow = kwargs.pop("from_slow", False)
        added_tokens_decoder = kwargs.pop("added_tokens_decoder", None) or {}

        if tokenizer_object is not None:
            if not isinstance(tokenizer_object, Tokenizer):
                raise TypeError(
                    f"tokenizer_object: expected a tokenizers.Tokenizer, got {type(tokenizer_object).__name__}"
                )
            backend = copy.deepcopy(tokenizer_object)
        elif tokenizer_file is not None and not from_slow:
            if not os.path.isfile(tokenizer_file):
                raise ValueError(f"tokenizer_file: expected an existing tokenizer.json, got {tokenizer_file!r}")
            backend = Tokenizer.from_file(os.fspath(tokenizer_file))
        elif slow_tokenizer is not None:
            backend = convert_slow_tokenizer(slow_tokenizer)
        else:
            backend = self._backend_from_slow_files(*args, **kwargs)
        if slow_tokenizer is not None:
            # the slow tokenizer's options describe this tokenizer too, and are saved with it
            for key, value in getattr(slow_tokenizer, "init_kwargs", {}).items():
                kwargs.setdefault(key, value)
        self._tokenizer: Tokenizer = backend
        self._decode_use_source_tokenizer = False

        # Truncation and padding stored in a tokenizer.json become this tokenizer's defaults.
        for stored, arguments in ((backend.truncation, _TRUNCATION_ARGUMENTS), (backend.padding, _PADDING_ARGUMENTS)):
            if stored is not None:
                for argument, key in arguments:
                    kwargs.setdefault(argument, stored[key])

        super().__init__(**kwargs)
        self._register_added_tokens(added_tokens_decoder)

    def _backend_from_slow_files(self, *args: Any, **kwargs: Any) -> Tokenizer:
        """Build the backend when no tokenizer.json is given: through the slow class, by default."""
        if self.slow_tokenizer_class is None:
            raise ValueError(
                "tokenizer_object / tokenizer_file: expected a tokenizers.Tokenizer or a tokenizer.json path "
                f"(or slow-tokenizer files for a class that can convert them), got neither for {type(self).__name__}"
            )
        return convert_slow_tokenizer(self.slow_tokenizer_class(*args, **kwargs))

    def _register_added_tokens(self, added_tokens_decoder: dict[int, Any]) -> None:
        """Add tokens listed by the config and special tokens that the backend does not know yet."""
        known = {token.content for token in self._tokenizer.get_added_tokens_decoder().values()}
        pending: list[Any] = []
        for index in sorted(added_tokens_decoder):
            token = added_tokens_decoder[index]
            if str(token) not in known:
                pending.append(token)
                known.add(str(token))
        for token in self.all_special_tokens_extended:
            if str(token) not in known:
                pending.append(token)
                known.add(str(token))
        if not pending:
            return
        special_names = set(self.all_special_tokens)
        # Consecutive tokens of the same kind go in one call: each call rebuilds the backend's matcher.
        run: list[Any] = []
        run_special: bool | None = None
        for token in pending:
            special = bool(getattr(token, "special", False)) or str(token) in special_names
            if run and special != run_special:
                self._add_tokens(run, special_tokens=bool(run_special))
                run = []
            run.append(token)
            run_special = special
        self._add_tokens(run, special_tokens=bool(run_special))

    # ----------------------------------------------------------------------------------------- backend
    @property
    def is_fast(self) -> bool:
        return True

    @property
    def backend_tokenizer(self) -> Tokenizer:
        """The `tokenizers.Tokenizer` doing the work."""
        return self._tokenizer

    @property
    def decoder(self) -> Any:
        """The backend's decoder."""
        return self._tokenizer.decoder

    @property
    def vocab_size(self) -> int:
        """Size of the base vocabulary, without added tokens."""
        return self._tokenizer.get_vocab_size(with_added_tokens=False)

    def get_vocab(self) -> dict[str, int]:
        return self._tokenizer.get_vocab(with_added_tokens=True)

    @property
    def vocab(self) -> dict[str, int]:
        return self.get_vocab()

    @property
    def added_tokens_decoder(self) -> dict[int, tokenizers.AddedToken]:
        """Added tokens by id, as the backend stores them."""
        return dict(sorted(self._tokenizer.get_added_tokens_decoder().items()))

    @property
    def added_tokens_encoder(self) -> dict[str, int]:
        """Added tokens' ids by content."""
        return {token.content: index for index, token in self.added_tokens_decoder.items()}

    def get_added_vocab(self) -> dict[str, int]:
        return self.added_tokens_encoder

    def __len__(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        return self._tokenizer.num_special_tokens_to_add(pair)

    def _add_tokens(self, new_tokens: Sequence[Any], special_tokens: bool = False) -> int:
        tokens = [_backend_token(token) for token in new_tokens]
        backend = self._tokenizer
        # Counted as the slow tokenizers count: the contents the vocabulary (added tokens included) did not
        # hold. The backend also counts a content its model holds ("hello"), as 4.37's fast tokenizers do.
        new_contents = {str(token) for token in tokens if str(token) and backend.token_to_id(str(token)) is None}
        if special_tokens:
            backend.add_special_tokens(tokens)
        else:
            backend.add_tokens(tokens)
        return len(new_contents)

    # ------------------------------------------------------------------------------ tokens and ids
    def _convert_token_to_id_with_added_voc(self, token: str) -> int | None:
        index = self._tokenizer.token_to_id(token)
        return self.unk_token_id if index is None else index

    def _convert_token_to_id(self, token: str) -> int | None:
        return self._convert_token_to_id_with_added_voc(token)

    def _convert_id_to_token(self, index: int) -> str | None:
        index = int(index)
        return self._renamed_added_tokens().get(index) or self._tokenizer.id_to_token(index)

    def convert_ids_to_tokens(self, ids: int | Iterable[int], skip_special_tokens: bool = False) -> str | list[str]:
        if isinstance(ids, int):
            return self._convert_id_to_token(ids)
        skipped = set(self.all_special_ids) if skip_special_tokens else set()
        renamed = self._renamed_added_tokens()
        tokens = []
        for index in ids:
            index = int(index)
            if index in skipped:
                continue
            tokens.append(renamed.get(index) or self._tokenizer.id_to_token(index))
        return tokens

    def _renamed_added_tokens(self) -> dict[int, str]:
        """Added tokens that the backend reads back in its normalized form (``"abc"`` for a normalized
        ``"àbc"`` when the normalizer strips accents), by id, with their contents: the slow tokenizers give
        the content. Kept until the vocabulary changes size."""
        backend = self._tokenizer
        if backend.normalizer is None:
            return {}
        key = (id(backend), backend.get_vocab_size(with_added_tokens=True))
        cached = getattr(self, "_renamed_cache", None)
        if cached is None or cached[0] != key:
            renamed = {index: token.content for index, token in backend.get_added_tokens_decoder().items()
                       if backend.id_to_token(index) != token.content}
            cached = self._renamed_cache = (key, renamed)
        return cached[1]

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return self._tokenizer.decoder.decode(tokens)

    def tokenize(
        self, text: str, pair: str | None = None, add_special_tokens: bool = False, **kwargs: Any
    ) -> list[str]:
        """Split `text` (and `pair`) into tokens with the backend."""
        return self.encode_plus(text=text, text_pair=pair, add_special_tokens=add_special_tokens, **kwargs).tokens()

    # --------------------------------------------------------------------------------- encoding
    @contextmanager
    def _backend_settings(self, *settings: Any):
        """Configure the backend's truncation and padding for one call (``settings`` are the arguments of
        :meth:`set_truncation_and_padding`), then put the old settings back.

        Restoring keeps one call's options from leaking into later direct backend use or into a saved
        tokenizer.json.
        """
        backend = self._tokenizer
        saved_truncation, saved_padding = backend.truncation, backend.padding
        try:
            self.set_truncation_and_padding(*settings)
            yield backend
        finally:
            if saved_truncation is None:
                backend.no_truncation()
            else:
                backend.enable_truncation(**saved_truncation)
            if saved_padding is None:
                backend.no_padding()
            else:
                backend.enable_padding(**saved_padding)

    def set_truncation_and_padding(
        self,
        padding_strategy: PaddingStrategy,
        truncation_strategy: TruncationStrategy,
        max_length: int | None,
        stride: int,
        pad_to_multiple_of: int | None,
    ) -> None:
        """Put the backend's truncation and padding in the state the strategies ask for."""
        backend = self._tokenizer
        padding_strategy = PaddingStrategy(padding_strategy)
        truncation_strategy = TruncationStrategy(truncation_strategy)
        if truncation_strategy == TruncationStrategy.DO_NOT_TRUNCATE:
            if backend.truncation is not None:
                backend.no_truncation()
        else:
            if max_length is None:
                raise ValueError(
                    f"max_length: expected an int when truncation is {truncation_strategy.value!r}, got None"
                )
            wanted = {
                "max_length": max_length,
                "stride": stride,
                "strategy": truncation_strategy.value,
                "direction": self.truncation_side,
            }
            current = backend.truncation
            if current is None or {key: current.get(key) for key in wanted} != wanted:
                try:
                    backend.enable_truncation(**wanted)
                except Exception as error:  # the backend's own message names the problem
                    raise ValueError(f"truncation: {error}") from error
        if padding_strategy == PaddingStrategy.DO_NOT_PAD:
            if backend.padding is not None:
                backend.no_padding()
        else:
            wanted = {
                "length": max_length if padding_strategy == PaddingStrategy.MAX_LENGTH else None,
                "direction": self.padding_side,
                "pad_id": self.pad_token_id,
                "pad_token": self.pad_token,
                "pad_type_id": self.pad_token_type_id,
                "pad_to_multiple_of": pad_to_multiple_of,
            }
            if backend.padding != wanted:
                backend.enable_padding(**wanted)

    def _convert_encoding(
        self,
        encoding: Encoding,
        return_token_type_ids: bool | None = None,
        return_attention_mask: bool | None = None,
        return_overflowing_tokens: bool = False,
        return_special_tokens_mask: bool = False,
        return_offsets_mapping: bool = False,
        return_length: bool = False,
    ) -> tuple[dict[str, list], list[Encoding]]:
        """One backend encoding (plus its overflow when asked) as lists per output key."""
        if return_token_type_ids is None:
            return_token_type_ids = "token_type_ids" in self.model_input_names
        if return_attention_mask is None:
            return_attention_mask = "attention_mask" in self.model_input_names
        encodings = [encoding]
        if return_overflowing_tokens and encoding.overflowing:
            encodings += encoding.overflowing
        columns: dict[str, list] = {"input_ids": []}
        if return_token_type_ids:
            columns["token_type_ids"] = []
        if return_attention_mask:
            columns["attention_mask"] = []
        if return_special_tokens_mask:
            columns["special_tokens_mask"] = []
        if return_offsets_mapping:
            columns["offset_mapping"] = []
        if return_length:
            columns["length"] = []
        for item in encodings:
            columns["input_ids"].append(item.ids)
            if return_token_type_ids:
                columns["token_type_ids"].append(item.type_ids)
            if return_attention_mask:
                columns["attention_mask"].append(item.attention_mask)
            if return_special_tokens_mask:
                columns["special_tokens_mask"].append(item.special_tokens_mask)
            if return_offsets_mapping:
                columns["offset_mapping"].append(item.offsets)
            if return_length:
                columns["length"].append(len(item.ids))
        return columns, encodings

    def _batch_encode_plus(
        self,
        batch_text_or_text_pairs: Sequence[Any],
        add_special_tokens: bool = True,
        padding_strategy: PaddingStrategy = PaddingStrategy.DO_NOT_PAD,
        truncation_strategy: TruncationStrategy = TruncationStrategy.DO_NOT_TRUNCATE,
        max_length: int | None = None,
        stride: int = 0,
        is_split_into_words: bool = False,
        pad_to_multiple_of: int | None = None,
        return_tensors: Any = None,
        return_token_type_ids: bool | None = None,
        return_attention_mask: bool | None = None,
        return_overflowing_tokens: bool = False,
        return_special_tokens_mask: bool = False,
        return_offsets_mapping: bool = False,
        return_length: bool = False,
        verbose: bool = True,
        **kwargs: Any,
    ) -> BatchEncoding:
        if not isinstance(batch_text_or_text_pairs, (list, tuple)):
            raise TypeError(
                "batch_text_or_text_pairs: expected a list or a tuple, "
                f"got {type(batch_text_or_text_pairs).__name__}"
            )
        with self._backend_settings(padding_strategy, truncation_strategy, max_length, stride, pad_to_multiple_of):
            try:
                encodings = self._tokenizer.encode_batch(
                    batch_text_or_text_pairs,
                    add_special_tokens=add_special_tokens,
                    is_pretokenized=is_split_into_words,
                )
            except TypeError as error:
                raise TypeError(
                    "text: expected str, a list of str, a pair of them, or (with is_split_into_words=True) "
                    f"lists of words; the backend refused the input: {error}"
                ) from error
            except BaseException as error:
                # The backend reports impossible truncation (a sequence too short for the strategy, or a
                # stride too large for what max_length leaves) with a bare Exception or even a panic,
                # which is not an Exception at all; both become a ValueError naming the arguments.
                if type(error) is not Exception and type(error).__name__ != "PanicException":
                    raise
                raise ValueError(
                    f"truncation / max_length / stride: expected settings the inputs can satisfy, got "
                    f"truncation={TruncationStrategy(truncation_strategy).value!r}, max_length={max_length}, "
                    f"stride={stride}; the backend said: {str(error).splitlines()[0] if str(error) else error!r}"
                ) from None
        per_sample = [
            self._convert_encoding(
                encoding,
                return_token_type_ids=return_token_type_ids,
                return_attention_mask=return_attention_mask,
                return_overflowing_tokens=return_overflowing_tokens,
                return_special_tokens_mask=return_special_tokens_mask,
                return_offsets_mapping=return_offsets_mapping,
                return_length=return_length,
            )
            for encoding in encodings
        ]
        # An overflowing sample contributes several rows; flatten them in order.
        data: dict[str, list] = {}
        for key in per_sample[0][0] if per_sample else ("input_ids",):
            data[key] = [row for columns, _ in per_sample for row in columns[key]]
        flat_encodings = [item for _, items in per_sample for item in items]
        if return_overflowing_tokens:
            data["overflow_to_sample_mapping"] = [
                index for index, (columns, _) in enumerate(per_sample) for _ in columns["input_ids"]
            ]
        for input_ids in data["input_ids"]:
            self._warn_if_too_long(input_ids, max_length, verbose)
        return BatchEncoding(data, flat_encodings, tensor_type=return_tensors)

    def _encode_plus(self, text: Any, text_pair: Any = None, **options: Any) -> BatchEncoding:
        # One example is a batch of one, encoded with the same options. An empty second text is still a
        # pair, as in the slow tokenizers (the reference's fast ones drop it).
        batch = [(text, text_pair)] if text_pair is not None else [text]
        output = self._batch_encode_plus(batch, **options)
        # Without tensors or overflow a single input gives unbatched lists.
        if options.get("return_tensors") is None and not options.get("return_overflowing_tokens", False):
            output = BatchEncoding(
                {
                    key: value[0] if len(value) > 0 and isinstance(value[0], list) else value
                    for key, value in output.items()
                },
                output.encodings,
            )
        self._warn_if_too_long(output["input_ids"], options.get("max_length"), options.get("verbose", True))
        return output

    def _warn_if_too_long(self, ids: Any, max_length: int | None, verbose: bool) -> None:
        warn = getattr(self, "_eventual_warn_about_too_long_sequence", None)
        if warn is not None:
            warn(ids, max_length, verbose)

    # --------------------------------------------------------------------------------- decoding
    def _decode(
        self,
        token_ids: int | list[int],
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
        **kwargs: Any,
    ) -> str:
        self._decode_use_source_tokenizer = kwargs.pop("use_source_tokenizer", False)
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        token_ids = [int(index) for index in token_ids]
        renamed = self._renamed_added_tokens()
        if renamed and not renamed.keys().isdisjoint(token_ids):
            # what the backend's decode does, with the added tokens' contents in place of their normalized form
            tokens = self.convert_ids_to_tokens(token_ids, skip_special_tokens=skip_special_tokens)
            decoder = self._tokenizer.decoder
            text = decoder.decode(tokens) if decoder is not None else " ".join(tokens)
        else:
            text = self._tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens)
        if clean_up_tokenization_spaces is None:
            clean_up_tokenization_spaces = self.clean_up_tokenization_spaces
        if clean_up_tokenization_spaces:
            text = self.clean_up_tokenization(text)
        return text

    # --------------------------------------------------------------------------------- training
    def train_new_from_iterator(
        self,
        text_iterator: Iterable[str] | Iterable[list[str]],
        vocab_size: int,
        length: int | None = None,
        new_special_tokens: list[Any] | None = None,
        special_tokens_map: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> PreTrainedTokenizerFast:
        """A tokenizer of the same kind (pipeline, special tokens, options) trained anew on `text_iterator`.

        Args:
            text_iterator: texts, or batches (lists) of texts.
            vocab_size: the size the new vocabulary should reach.
            length: the number of items in `text_iterator`, for progress reporting.
            new_special_tokens: special tokens to add to the new tokenizer.
            special_tokens_map: renames special tokens (old content -> new content).
            kwargs: passed to the backend's trainer.
        """
        if not isinstance(vocab_size, int) or vocab_size <= 0:
            raise ValueError(f"vocab_size: expected a positive int, got {vocab_size!r}")
        renames = dict(special_tokens_map or {})
        state = json.loads(self._tokenizer.to_str())
        added_tokens = state.pop("added_tokens")
        post_processor = state.pop("post_processor")
        state["added_tokens"] = []
        model = state["model"]
        model_type = model["type"]
        # Start from an empty model of the same type; its options (prefix, unk token, ...) stay.
        if model_type == "BPE":
            model["vocab"], model["merges"] = {}, []
        elif model_type == "Unigram":
            if model.get("unk_id") is not None:
                unk = model["vocab"][model["unk_id"]][0]
                model["unk_id"] = 0
                model["vocab"] = [[renames.get(unk, unk), 0.0]]
            else:
                model["vocab"] = []
        elif model_type in ("WordLevel", "WordPiece"):
            model["vocab"] = {}
        else:
            raise ValueError(
                f"train_new_from_iterator: expected a backend model of type BPE, Unigram, WordLevel or WordPiece, "
                f"got {model_type}"
            )
        if model_type in ("BPE", "WordLevel", "WordPiece") and model.get("unk_token") in renames:
            model["unk_token"] = renames[model["unk_token"]]
        backend = Tokenizer.from_str(json.dumps(state))

        # Special tokens keep their ids at the start of the new vocabulary (Unigram keeps every added token).
        special_tokens: list[Any] = []
        for entry in added_tokens:
            special = entry.pop("special", None)
            entry.pop("id", None)
            if model_type != "Unigram" and not special:
                continue
            entry["content"] = renames.get(entry["content"], entry["content"])
            special_tokens.append(tokenizers.AddedToken(**entry, special=bool(special)))
        if new_special_tokens:
            special_tokens.extend(new_special_tokens)

        if model_type == "BPE":
            for option in ("continuing_subword_prefix", "end_of_word_suffix"):
                if option not in kwargs and model.get(option) is not None:
                    kwargs[option] = model[option]
        elif model_type == "WordPiece" and "continuing_subword_prefix" not in kwargs:
            kwargs["continuing_subword_prefix"] = model.get("continuing_subword_prefix", "##")
        if model_type == "Unigram" and model.get("unk_id") is not None:
            kwargs.setdefault("unk_token", model["vocab"][0][0])
        pre_tokenizer = state.get("pre_tokenizer") or {}
        if pre_tokenizer.get("type") == "ByteLevel" or any(
            step.get("type") == "ByteLevel" for step in pre_tokenizer.get("pretokenizers", [])
        ):
            kwargs.setdefault("initial_alphabet", tokenizers.pre_tokenizers.ByteLevel.alphabet())
        trainer_class = {
            "BPE": tokenizers.trainers.BpeTrainer,
            "Unigram": tokenizers.trainers.UnigramTrainer,
            "WordLevel": tokenizers.trainers.WordLevelTrainer,
            "WordPiece": tokenizers.trainers.WordPieceTrainer,
        }[model_type]
        trainer = trainer_class(vocab_size=vocab_size, special_tokens=special_tokens, **kwargs)
        backend.train_from_iterator(text_iterator, length=length, trainer=trainer)

        if post_processor is not None:
            trained = json.loads(backend.to_str())
            trained["post_processor"] = self._renumber_post_processor(post_processor, backend, renames)
            backend = Tokenizer.from_str(json.dumps(trained))

        options = dict(self.init_kwargs)
        for name in ("tokenizer_object", "tokenizer_file", "vocab_file", "added_tokens_decoder"):
            options.pop(name, None)
        for attribute in self.SPECIAL_TOKENS_ATTRIBUTES:
            if attribute == "additional_special_tokens":
                continue
            value = getattr(self, "_" + attribute)
            if value is None:
                continue
            content = renames.get(str(value), str(value))
            if isinstance(value, tokenizers.AddedToken):
                options[attribute] = tokenizers.AddedToken(
                    content,
                    single_word=value.single_word,
                    lstrip=value.lstrip,
                    rstrip=value.rstrip,
                    normalized=value.normalized,
                    special=True,
                )
            else:
                options[attribute] = content
        additional = [renames.get(token, token) for token in self.additional_special_tokens]
        if new_special_tokens:
            additional.extend(new_special_tokens)
        if additional:
            options["additional_special_tokens"] = additional
        return type(self)(tokenizer_object=backend, **options)

    @staticmethod
    def _renumber_post_processor(post_processor: dict, backend: Tokenizer, renames: dict[str, str]) -> dict:
        """The post-processor's special tokens, renamed and pointing at their ids in the new vocabulary."""
        post_processor = copy.deepcopy(post_processor)
        kind = post_processor.get("type")
        if kind == "TemplateProcessing":
            for entry in post_processor.get("special_tokens", {}).values():
                entry["tokens"] = [renames.get(token, token) for token in entry["tokens"]]
                entry["id"] = renames.get(entry["id"], entry["id"])
                entry["ids"] = [backend.token_to_id(token) for token in entry["tokens"]]
            for template in ("single", "pair"):
                for piece in post_processor.get(template, []):
                    if "SpecialToken" in piece:
                        piece["SpecialToken"]["id"] = renames.get(piece["SpecialToken"]["id"],
                                                                  piece["SpecialToken"]["id"])
            special = post_processor.get("special_tokens", {})
            post_processor["special_tokens"] = {entry["id"]: entry for entry in special.values()}
        elif kind in ("BertProcessing", "RobertaProcessing"):
            for key in ("cls", "sep"):
                token = renames.get(post_processor[key][0], post_processor[key][0])
                post_processor[key] = [token, backend.token_to_id(token)]
        return post_processor

    # ----------------------------------------------------------------------------------- saving
    def _save_pretrained(
        self,
        save_directory: str | os.PathLike,
        file_names: tuple[str, ...],
        legacy_format: bool | None = None,
        filename_prefix: str | None = None,
    ) -> tuple[str, ...]:
        """Write tokenizer.json, and also the slow tokenizer's files unless `legacy_format` is False."""
        save_directory = os.fspath(save_directory)
        prefix = f"{filename_prefix}-" if filename_prefix else ""
        save_slow = (
            legacy_format is None or legacy_format is True
        ) and self.slow_tokenizer_class is not None and self.can_save_slow_tokenizer
        save_fast = legacy_format is None or legacy_format is False
        if legacy_format is True and not save_slow:
            raise ValueError(
                "legacy_format: expected None or False for a tokenizer that cannot write slow-tokenizer files, got True"
            )
        file_names = tuple(file_names)
        if save_slow:
            added_tokens_file = os.path.join(save_directory, prefix + ADDED_TOKENS_FILE)
            # Only tokens beyond the base vocabulary belong in the legacy added_tokens.json.
            added = {token: index for token, index in self.added_tokens_encoder.items() if index >= self.vocab_size}
            if added:
                with open(added_tokens_file, "w", encoding="utf-8") as handle:
                    handle.write(json.dumps(added, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
            file_names += tuple(self.save_vocabulary(save_directory, filename_prefix=filename_prefix))
            file_names += (added_tokens_file,)
        if save_fast:
            tokenizer_file = os.path.join(save_directory, prefix + TOKENIZER_FILE)
            self._tokenizer.save(tokenizer_file)
            file_names += (tokenizer_file,)
        return file_names

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str, ...]:
        """Write the backend model's vocabulary files (e.g. vocab.txt) and return their paths."""
        if not os.path.isdir(save_directory):
            raise ValueError(f"save_directory: expected an existing directory, got {save_directory!r}")
        return tuple(self._tokenizer.model.save(save_directory, filename_prefix))


_WHITESPACE = tokenizers.Regex(r"\s+")
# Unassigned and private-use characters: the slow tokenizers' clean-up drops them (Python counts them as
# "other" characters, categories C*), the backend's BertNormalizer keeps them.
_UNASSIGNED = tokenizers.Regex(r"[\p{Cn}\p{Co}]")
_PUNCTUATION = tokenizers.Regex(r"[!-/:-@\[-`{-~\p{P}]")


def _clean_first(normalizer_state: dict) -> list:
    return [normalizers.Replace(_UNASSIGNED, "")] if normalizer_state.get("clean_text", True) else []


class _BasicTokenizerSteps:
    """What the slow BasicTokenizer does and the backend's BertNormalizer does not, in a fast WordPiece
    tokenizer.

    - The clean-up drops unassigned and private-use characters too.
    - ``never_split``: a whitespace-delimited word listed there is neither stripped of accents nor split at
      punctuation, and a listed word (or punctuation-free piece) missing from the vocabulary gives the
      unknown token's id. With ``do_lower_case`` the slow tokenizer lowercases the text before looking for
      the words, so a listed word with capitals never matches; that is kept too.
    - Added tokens with ``do_lower_case``: as the slow tokenizer, a non-special token added with
      ``normalized=True`` is lowercased when added (and not counted when the vocabulary already holds the
      lowercased content), and added tokens are matched in the text lowercased except the special tokens
      and the normalized added tokens, before any other normalization (accents kept): a token added with
      ``normalized=False`` and capitals is never found, and a lowercase special token typed in other
      letter case (MPNet's ``"<MASK>"``) is. See :meth:`_lowercase_first_pipeline`.

    During a call, the backend's normalizer (and, with ``never_split``, its pre-tokenizer) are replaced by
    ones doing the slow tokenizer's steps in its order (clean-up, CJK spacing and NFC on the whole text;
    then, word by word, case and accents, then punctuation); the saved tokenizer.json stays the plain one.
    """

    def _lowercases_added_tokens(self) -> bool:
        # During the base constructor (which registers the configured added tokens) the attribute is not
        # set yet; the constructor's argument is in init_kwargs then.
        return bool(getattr(self, "do_lower_case", getattr(self, "init_kwargs", {}).get("do_lower_case", False)))

    def _add_tokens(self, new_tokens: Sequence[Any], special_tokens: bool = False) -> int:
        if special_tokens or not self._lowercases_added_tokens():
            return super()._add_tokens(new_tokens, special_tokens=special_tokens)
        specials = set(self.all_special_tokens)
        lowered: list[Any] = []
        for token in new_tokens:
            if isinstance(token, str):
                if token and token not in specials:
                    token = tokenizers.AddedToken(token.lower(), normalized=True, special=False)
            else:
                token = _backend_token(token)
                if token.normalized and not token.special:
                    token = tokenizers.AddedToken(token.content.lower(), single_word=token.single_word,
                                                  lstrip=token.lstrip, rstrip=token.rstrip, normalized=True,
                                                  special=False)
            lowered.append(token)
        return super()._add_tokens(lowered, special_tokens=False)

    def _lowercase_first_protected(self, state: dict, inputs: Any) -> list[str] | None:
        """The strings the slow tokenizer keeps unlowered (the special tokens, then the normalized
        non-special added tokens), or None when lowercasing first cannot change the result: no lowercasing,
        or only special tokens are added and no text holds one of them in other letter case."""
        if not (state.get("lowercase") and self._lowercases_added_tokens()):
            return None
        added = self._tokenizer.get_added_tokens_decoder()
        if all(token.special for token in added.values()):
            # The common case, decided without building the special-token list (a tenth of a short call).
            # The backend matches special tokens as written, the slow tokenizer in the lowercased text: they
            # differ only where a text holds a lowercase special token in other letter case (MPNet's
            # "<MASK>", which the slow tokenizer reads as "<mask>").
            cased = [token.content for token in added.values()
                     if token.content == token.content.lower() != token.content.upper()]
            if not cased or not any(_holds_in_other_case(text, cased) for text in _texts_of(inputs)):
                return None
        specials = self.all_special_tokens
        special_set = set(specials)
        # A non-normalized non-special token is not kept: the slow tokenizer looks for it in the lowercased
        # text, where one with capitals ("MiXeD") never stands.
        normalized = [token.content for _, token in sorted(added.items())
                      if not token.special and token.normalized and token.content not in special_set]
        return [text for text in specials + normalized if text]

    def _lowercase_first_pipeline(self, whole: Any, pre_tokenizer: Any):
        """Normalizer and pre-tokenizer for a call where added tokens must be matched as the slow tokenizer
        matches them: in the text that Python has lowercased already (see :func:`_lowercase_outside`), all
        added tokens as written. The backend's normalizer then only expands "İ", which Python leaves in
        place to keep every character's offset ("İ".lower() is two characters); the usual normalization
        (``whole``) runs on the pieces between added tokens, before ``pre_tokenizer``."""

        class _Rest:
            def pre_tokenize(self, pretokenized):
                pretokenized.normalize(whole.normalize)

        steps = [tokenizers.pre_tokenizers.PreTokenizer.custom(_Rest())]
        if pre_tokenizer is not None:
            steps.append(pre_tokenizer)
        return normalizers.Replace("\u0130", "\u0130".lower()), tokenizers.pre_tokenizers.Sequence(steps)

    def _never_split_pipeline(self, normalizer_state: dict):
        words = set(self._never_split)
        vocab = self._tokenizer.get_vocab(with_added_tokens=False)
        unk = str(self.unk_token)
        lowercase = bool(normalizer_state.get("lowercase", True))
        strip_accents = normalizer_state.get("strip_accents")
        per_word = normalizers.BertNormalizer(clean_text=False, handle_chinese_chars=False,
                                              strip_accents=strip_accents, lowercase=lowercase)

        def keep(piece):
            text = piece.normalized
            if text not in vocab:
                piece.replace(text, unk)
            return piece

        def split(_, normalized):
            out = []
            for word in normalized.split(_WHITESPACE, "removed"):
                if lowercase:  # the slow tokenizer lowercases the whole text before it looks for the words
                    word.lowercase()
                if word.normalized in words:
                    out.append(keep(word))
                    continue
                per_word.normalize(word)
                for piece in word.split(_PUNCTUATION, "isolated"):
                    out.append(keep(piece) if piece.normalized in words else piece)
            return out

        class _Words:
            def pre_tokenize(self, pretokenized):
                pretokenized.split(split)

        whole = normalizers.Sequence(_clean_first(normalizer_state) + [
            normalizers.BertNormalizer(clean_text=bool(normalizer_state.get("clean_text", True)),
                                       handle_chinese_chars=bool(normalizer_state.get("handle_chinese_chars", True)),
                                       strip_accents=False, lowercase=False),
            normalizers.NFC(),
        ])
        return whole, tokenizers.pre_tokenizers.PreTokenizer.custom(_Words())

    def _batch_encode_plus(self, batch_text_or_text_pairs: Any, **kwargs: Any) -> BatchEncoding:
        backend = self._tokenizer
        normalizer = backend.normalizer
        state = json.loads(normalizer.__getstate__()) if normalizer is not None else {}
        if state.get("type") != "BertNormalizer":
            return super()._batch_encode_plus(batch_text_or_text_pairs, **kwargs)
        saved = backend.pre_tokenizer
        if getattr(self, "_never_split", None):
            whole, pre_tokenizer = self._never_split_pipeline(state)
        elif state.get("clean_text", True):
            whole, pre_tokenizer = normalizers.Sequence(_clean_first(state) + [normalizer]), saved
        else:
            whole, pre_tokenizer = normalizer, saved
        protected = self._lowercase_first_protected(state, batch_text_or_text_pairs)
        if protected is not None:
            pattern = _protected_pattern(tuple(protected)) if protected else None
            batch_text_or_text_pairs = _lowercase_inputs(batch_text_or_text_pairs, pattern)
            whole, pre_tokenizer = self._lowercase_first_pipeline(whole, pre_tokenizer)
        elif whole is normalizer:
            return super()._batch_encode_plus(batch_text_or_text_pairs, **kwargs)
        backend.normalizer, backend.pre_tokenizer = whole, pre_tokenizer
        try:
            return super()._batch_encode_plus(batch_text_or_text_pairs, **kwargs)
        finally:
            backend.normalizer, backend.pre_tokenizer = normalizer, saved


_PROTECTED_PATTERNS: dict[tuple[str, ...], re.Pattern] = {}


def _protected_pattern(protected: tuple[str, ...]) -> re.Pattern:
    pattern = _PROTECTED_PATTERNS.get(protected)
    if pattern is None:
        if len(_PROTECTED_PATTERNS) > 64:
            _PROTECTED_PATTERNS.clear()
        # One group: re.split keeps the protected strings, at the odd indices. Alternatives are tried in
        # this order at each position, as in the slow tokenizer's own regular expression.
        pattern = _PROTECTED_PATTERNS[protected] = re.compile("(" + "|".join(map(re.escape, protected)) + ")")
    return pattern


def _lower_keeping_length(text: str) -> str:
    """Each character lowercased on its own (no final-sigma rule, as the slow tokenizer lowercases), except
    the one whose lowercase is longer ("İ"), kept for the backend to expand with its offsets."""
    lowered = text.lower()
    if len(lowered) == len(text) and "\u03a3" not in text:
        return lowered
    return "".join(low if len(low := char.lower()) == 1 else char for char in text)


def _lowercase_outside(text: str, pattern: re.Pattern | None) -> str:
    """``text`` lowercased except the protected strings (as the slow tokenizer's ``tokenize`` does), with
    every character at its place."""
    if pattern is None:
        return _lower_keeping_length(text)
    pieces = pattern.split(text)
    pieces[::2] = [_lower_keeping_length(piece) for piece in pieces[::2]]
    return "".join(pieces)


def _texts_of(inputs: Any) -> Iterator[str]:
    """Every text of a batch: texts, pairs, pre-split words, pairs of them."""
    if isinstance(inputs, str):
        yield inputs
    elif isinstance(inputs, (list, tuple)):
        for item in inputs:
            yield from _texts_of(item)


def _holds_in_other_case(text: str, contents: list[str]) -> bool:
    """Whether ``text`` lowercased holds one of the (lowercase) ``contents`` where ``text`` itself does not."""
    lowered = text.lower()
    return lowered != text and any(lowered.count(content) > text.count(content) for content in contents)


def _lowercase_inputs(inputs: Any, pattern: re.Pattern | None) -> Any:
    """Every text of a batch (texts, pairs, pre-split words, pairs of them) lowercased outside the protected
    strings; anything else is left for the backend to refuse."""
    if isinstance(inputs, str):
        return _lowercase_outside(inputs, pattern)
    if isinstance(inputs, (list, tuple)):
        return type(inputs)(_lowercase_inputs(item, pattern) for item in inputs)
    return inputs


class ElectraTokenizerFast(_BasicTokenizerSteps, PreTrainedTokenizerFast):
    """A fast ELECTRA tokenizer (WordPiece, backed by the `tokenizers` library).

    Args:
        vocab_file: the vocabulary, one token a line.
        tokenizer_file: a tokenizer.json; used instead of `vocab_file` when given.
        do_lower_case: lowercase the input.
        unk_token, sep_token, pad_token, cls_token, mask_token: the special tokens.
        clean_text: remove control characters and turn every whitespace into a plain space.
        tokenize_chinese_chars: split around every CJK ideograph.
        strip_accents: remove accents; `None` follows `do_lower_case`, as in the original ELECTRA.
        wordpieces_prefix: the prefix of word-continuation pieces.
        never_split: words kept whole and untouched, as the slow tokenizer keeps them (the reference's
            fast tokenizer ignores them).

    Options given here override the corresponding settings of a tokenizer.json.
    """

    vocab_files_names = {"vocab_file": "vocab.txt", "tokenizer_file": TOKENIZER_FILE}
    model_input_names = ["input_ids", "token_type_ids", "attention_mask"]
    slow_tokenizer_class = ElectraTokenizer

    def __init__(
        self,
        vocab_file: str | None = None,
        tokenizer_file: str | None = None,
        do_lower_case: bool = True,
        unk_token: Any = "[UNK]",
        sep_token: Any = "[SEP]",
        pad_token: Any = "[PAD]",
        cls_token: Any = "[CLS]",
        mask_token: Any = "[MASK]",
        tokenize_chinese_chars: bool = True,
        strip_accents: bool | None = None,
        **kwargs: Any,
    ) -> None:
        # Given only when the caller asked: a tokenizer.json's own values must survive otherwise.
        explicit = {name: kwargs[name] for name in ("clean_text", "wordpieces_prefix") if name in kwargs}
        self.vocab_file = vocab_file
        super().__init__(
            vocab_file,
            tokenizer_file=tokenizer_file,
            do_lower_case=do_lower_case,
            unk_token=unk_token,
            sep_token=sep_token,
            pad_token=pad_token,
            cls_token=cls_token,
            mask_token=mask_token,
            tokenize_chinese_chars=tokenize_chinese_chars,
            strip_accents=strip_accents,
            **kwargs,
        )
        self._align_backend(
            do_lower_case=do_lower_case,
            strip_accents=strip_accents,
            tokenize_chinese_chars=tokenize_chinese_chars,
            **explicit,
        )
        self.do_lower_case = do_lower_case
        self._never_split = frozenset(kwargs.get("never_split") or ())

    @property
    def can_save_slow_tokenizer(self) -> bool:  # type: ignore[override]
        # The backend's WordPiece model writes vocab.txt itself, so no source file is needed.
        return isinstance(self._tokenizer.model, tokenizers.models.WordPiece)

    def _backend_from_slow_files(self, vocab_file: str | None = None, *args: Any, **kwargs: Any) -> Tokenizer:
        if vocab_file is None:
            raise ValueError("vocab_file / tokenizer_file: expected a vocab.txt or a tokenizer.json path, got neither")
        return wordpiece_tokenizer(
            vocab_file,
            unk_token=str(kwargs.get("unk_token", "[UNK]")),
            cls_token=str(kwargs.get("cls_token", "[CLS]")),
            sep_token=str(kwargs.get("sep_token", "[SEP]")),
            do_lower_case=kwargs.get("do_lower_case", True),
            strip_accents=kwargs.get("strip_accents"),
            tokenize_chinese_chars=kwargs.get("tokenize_chinese_chars", True),
            clean_text=kwargs.get("clean_text", True),
            wordpieces_prefix=kwargs.get("wordpieces_prefix", "##"),
        )

    def _align_backend(self, **wanted: Any) -> None:
        """Make a loaded tokenizer.json follow this constructor's text options.

        Every option is honoured, including the ones (clean_text, wordpieces_prefix) that a
        tokenizer.json could otherwise silently override.
        """
        backend = self._tokenizer
        if backend.normalizer is not None:
            state = json.loads(backend.normalizer.__getstate__())
            if state.get("type") == "BertNormalizer":
                current = {
                    "do_lower_case": state.get("lowercase"),
                    "strip_accents": state.get("strip_accents"),
                    "tokenize_chinese_chars": state.get("handle_chinese_chars"),
                    "clean_text": state.get("clean_text"),
                }
                target = {key: wanted.get(key, value) for key, value in current.items()}
                if target != current:
                    backend.normalizer = normalizers.BertNormalizer(
                        clean_text=bool(target["clean_text"]),
                        handle_chinese_chars=bool(target["tokenize_chinese_chars"]),
                        strip_accents=target["strip_accents"],
                        lowercase=bool(target["do_lower_case"]),
                    )
        prefix = wanted.get("wordpieces_prefix")
        if prefix is not None:
            model = backend.model
            if isinstance(model, tokenizers.models.WordPiece) and model.continuing_subword_prefix != prefix:
                model.continuing_subword_prefix = prefix
                backend.model = model
            decoder = backend.decoder
            if isinstance(decoder, tokenizers.decoders.WordPiece) and decoder.prefix != prefix:
                decoder.prefix = prefix
                backend.decoder = decoder

    def build_inputs_with_special_tokens(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None
    ) -> list[int]:
        """`[CLS] A [SEP]` for one sequence, `[CLS] A [SEP] B [SEP]` for a pair."""
        return _bert_style_inputs(self.cls_token_id, self.sep_token_id, token_ids_0, token_ids_1)

    def create_token_type_ids_from_sequences(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None
    ) -> list[int]:
        """Segment ids: 0 for `[CLS] A [SEP]`, 1 for `B [SEP]`."""
        return _bert_style_token_types(token_ids_0, token_ids_1)

