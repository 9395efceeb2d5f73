"""Pure-Python ("slow") tokenizers: added tokens, tokenize, id conversion, encoding and decoding.

A family subclasses :class:`PreTrainedTokenizer` and provides ``_tokenize`` (text -> tokens of its
vocabulary), ``_convert_token_to_id``, ``_convert_id_to_token``, ``get_vocab``, ``vocab_size``,
``convert_tokens_to_string`` and ``save_vocabulary``; this module adds everything around them.
"""

from __future__ import annotations

import itertools
import logging
import re
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

from tokenizers import AddedToken

from .base import (
    BatchEncoding,
    PaddingStrategy,
    PreTrainedTokenizerBase,
    TensorType,
    TruncationStrategy,
)

logger = logging.getLogger(__name__)


class Trie:
    """Finds added tokens in a text: the leftmost match wins, and at one position the longest token."""

    def __init__(self):
        self.data: Dict[str, Any] = {}
        self._tokens: set = set()

    def add(self, word: str) -> None:
        if not word or word in self._tokens:
            return
        self._tokens.add(word)
        node = self.data
        for char in word:
            node = node.setdefault(char, {})
        node[""] = True

    def _longest_at(self, text: str, start: int) -> int:
        node = self.data
        end = -1
        i = start
        while i < len(text) and text[i] in node:
            node = node[text[i]]
            i += 1
            if "" in node:
                end = i
        return end

    def split(self, text: str) -> List[str]:
        """Cut ``text`` around every added token found; the pieces joined give back ``text``."""
        if not self.data:
            return [text]
        first_chars = self.data.keys()
        pieces: List[str] = []
        last = 0
        i = 0
        n = len(text)
        while i < n:
            if text[i] in first_chars:
                end = self._longest_at(text, i)
                if end > 0:
                    if i > last:
                        pieces.append(text[last:i])
                    pieces.append(text[i:end])
                    last = i = end
                    continue
            i += 1
        if last < n or not pieces:
            pieces.append(text[last:])
        return pieces


class PreTrainedTokenizer(PreTrainedTokenizerBase):
    """Base class of the pure-Python tokenizers.

    Added tokens (special tokens and those from :meth:`add_tokens`) are matched in the text before the
    model's own tokenization and never split; their ``lstrip`` / ``rstrip`` / ``single_word`` /
    ``normalized`` flags are honoured.
    """

    def __init__(self, **kwargs):
        self.tokens_trie = Trie()
        if not hasattr(self, "_added_tokens_decoder"):
            self._added_tokens_decoder: Dict[int, AddedToken] = {}
        for index, token in (kwargs.pop("added_tokens_decoder", None) or {}).items():
            if isinstance(token, dict):
                token = AddedToken(**token)
            if not isinstance(token, AddedToken):
                raise TypeError(f"added_tokens_decoder values must be AddedToken, got {type(token).__name__}")
            self._added_tokens_decoder[int(index)] = token
        self._added_tokens_encoder: Dict[str, int] = {t.content: i for i, t in self._added_tokens_decoder.items()}
        super().__init__(**kwargs)
        # Special tokens always become added tokens, so that the trie protects them from being split.
        self._add_tokens(
            [t for t in self.all_special_tokens_extended if str(t) not in self._added_tokens_encoder],
            special_tokens=True,
        )
        self._decode_use_source_tokenizer = False

    # -- vocabulary --------------------------------------------------------------------------------

    @property
    def added_tokens_encoder(self) -> Dict[str, int]:
        """Added token content -> id, sorted by id."""
        return {t.content: i for i, t in sorted(self._added_tokens_decoder.items(), key=lambda item: item[0])}

    @property
    def added_tokens_decoder(self) -> Dict[int, AddedToken]:
        """Id -> AddedToken for every added token (special tokens included), sorted by id."""
        return dict(sorted(self._added_tokens_decoder.items(), key=lambda item: item[0]))

    @added_tokens_decoder.setter
    def added_tokens_decoder(self, value: Dict[int, Union[AddedToken, str]]):
        for index, token in value.items():
            if not isinstance(token, (str, AddedToken)) or not isinstance(index, int):
                raise TypeError(
                    f"added_tokens_decoder takes int -> AddedToken or str, got {type(index).__name__} -> "
                    f"{type(token).__name__}"
                )
            token = AddedToken(token, normalized=False, special=False) if isinstance(token, str) else token
            self._added_tokens_decoder[index] = token
            self._added_tokens_encoder[str(token)] = index
        self._update_trie()

    def get_added_vocab(self) -> Dict[str, int]:
        """The added tokens as ``content -> id``."""
        return self._added_tokens_encoder

    def __len__(self) -> int:
        # Added tokens may reuse ids of the base vocabulary, so count distinct tokens.
        return len(set(self.get_vocab().keys()))

    def _add_tokens(self, new_tokens: Iterable[Union[str, AddedToken]], special_tokens: bool = False) -> int:
        added = 0
        if new_tokens is None:
            return added
        vocab = dict(self.get_vocab())
        next_id = len(vocab)
        for token in new_tokens:
            if not isinstance(token, (str, AddedToken)):
                raise TypeError(f"tokens to add must be str or AddedToken, got {type(token).__name__}: {token!r}")
            if str(token) == "":
                continue
            if isinstance(token, str):
                if token in self._added_tokens_encoder:
                    continue
                special = special_tokens or token in self.all_special_tokens
                token = AddedToken(token, rstrip=False, lstrip=False, normalized=not special, special=special)
            elif special_tokens:
                # Registering as special flips the flag but keeps the caller's normalization choice.
                token.__setstate__({"special": True, "normalized": token.normalized})
            if not token.special and token.normalized and getattr(self, "do_lower_case", False):
                # Lower-cased text would never contain an upper-case added token.
                token.content = token.content.lower()
            if token.content in vocab:
                index = vocab[token.content]
            else:
                index = next_id + added
                vocab[token.content] = index
                added += 1
            if token.special and str(token) not in self.all_special_tokens:
                self._additional_special_tokens.append(token)
            self._added_tokens_decoder[index] = token
            self._added_tokens_encoder[token.content] = index
            if self.verbose:
                logger.info("Adding %s to the vocabulary", token)
        self._update_trie()
        return added

    def _update_trie(self, unique_no_split_tokens: Optional[List[str]] = None) -> None:
        for token in self._added_tokens_decoder.values():
            self.tokens_trie.add(token.content)
        for token in unique_no_split_tokens or []:
            self.tokens_trie.add(token)

    # -- tokenizing --------------------------------------------------------------------------------

    def prepare_for_tokenization(self, text: str, is_split_into_words: bool = False, **kwargs) -> Tuple[str, Dict]:
        """Hook for family-specific text changes before tokenizing; returns (text, unused kwargs)."""
        return text, kwargs

    def _lower_outside_protected(self, text: str) -> str:
        # Special tokens and case-sensitive added tokens keep their case; everything else is
        # lower-cased one character at a time (not str.lower() on the whole text, whose
        # context-dependent final sigma the reference does not produce), skipping newlines.
        protected = [re.escape(t) for t in self.all_special_tokens]
        protected += [
            re.escape(t.content) for t in self._added_tokens_decoder.values() if not t.special and t.normalized
        ]
        protected = [p for p in protected if p]
        if not protected:
            return re.sub(r".", lambda m: m.group(0).lower(), text)
        pattern = "(" + "|".join(protected) + ")|(.)"
        return re.sub(pattern, lambda m: m.group(1) or m.group(2).lower(), text)

    def tokenize(self, text: str, **kwargs) -> List[str]:
        """Split ``text`` into tokens: added tokens are kept whole, the rest goes to the model's tokenizer."""
        split_special_tokens = kwargs.pop("split_special_tokens", self.split_special_tokens)
        text, kwargs = self.prepare_for_tokenization(text, **kwargs)
        if kwargs:
            logger.warning("Keyword arguments %s not recognized.", kwargs)

        if getattr(self, "do_lower_case", False):
            text = self._lower_outside_protected(text)

        if split_special_tokens:
            no_split: set = set()
            pieces = [text]
        else:
            no_split = set(self._added_tokens_encoder)
            pieces = self.tokens_trie.split(text)

        for i, piece in enumerate(pieces):
            if piece not in no_split:
                continue
            token = self._added_tokens_decoder.get(self._added_tokens_encoder[piece])
            left = pieces[i - 1] if i > 0 else None
            right = pieces[i + 1] if i < len(pieces) - 1 else None
            if token.rstrip and right:
                pieces[i + 1] = right.lstrip()
            if token.lstrip and left:
                pieces[i - 1] = left.rstrip()
            # single_word: an added token glued to a word is not the token, just part of the word.
            if token.single_word and left and left[-1] != " ":
                pieces[i - 1] += piece
                pieces[i] = ""
            elif token.single_word and right and right[0] != " ":
                pieces[i] += right
                pieces[i + 1] = ""

        tokens: List[str] = []
        for piece in pieces:
            if not piece:
                continue
            if piece in no_split:
                tokens.append(piece)
            else:
                tokens.extend(self._tokenize(piece))
        return tokens

    def _tokenize(self, text: str, **kwargs) -> List[str]:
        raise NotImplementedError

    # -- ids ---------------------------------------------------------------------------------------

    def _convert_token_to_id_with_added_voc(self, token: Optional[str]) -> Optional[int]:
        if token is None:
            return None
        if token in self._added_tokens_encoder:
            return self._added_tokens_encoder[token]
        return self._convert_token_to_id(token)

    def _convert_token_to_id(self, token: str) -> int:
        raise NotImplementedError

    def _check_id(self, index: int) -> int:
        try:
            index = int(index)
        except (TypeError, ValueError):
            raise TypeError(f"token ids must be integers, got {type(index).__name__}: {index!r}") from None
        if index not in self._added_tokens_decoder and not self._in_base_vocab(index):
            raise IndexError(
                f"token id {index} is out of range: expected 0 <= id < {len(self)} for this tokenizer "
                f"({type(self).__name__}, vocab_size={self.vocab_size}, {len(self._added_tokens_decoder)} added tokens)"
            )
        return index

    def _in_base_vocab(self, index: int) -> bool:
        """Whether ``index`` is an id of the model's own vocabulary (added tokens aside)."""
        return 0 <= index < self.vocab_size

    def convert_ids_to_tokens(self, ids, skip_special_tokens: bool = False):
        """Id -> token, or list of ids -> list of tokens (without special tokens if ``skip_special_tokens``).

        Raises ``IndexError`` for an id outside the vocabulary.
        """
        # A lone id may be an int, a NumPy integer or a 0-d tensor; anything iterable is a sequence.
        if isinstance(ids, int) or (hasattr(ids, "__index__") and getattr(ids, "ndim", 0) == 0):
            index = self._check_id(ids)
            if index in self._added_tokens_decoder:
                return self._added_tokens_decoder[index].content
            return self._convert_id_to_token(index)
        special = set(self.all_special_ids) if skip_special_tokens else ()
        tokens = []
        for index in ids:
            index = self._check_id(index)
            if index in special:
                continue
            if index in self._added_tokens_decoder:
                tokens.append(self._added_tokens_decoder[index].content)
            else:
                tokens.append(self._convert_id_to_token(index))
        return tokens

    def _convert_id_to_token(self, index: int) -> str:
        raise NotImplementedError

    def convert_tokens_to_string(self, tokens: List[str]) -> str:
        """Join tokens back into text; the default puts a space between tokens."""
        return " ".join(tokens)

    # -- special-token layout defaults ---------------------------------------------------------------

    def get_special_tokens_mask(
        self,
        token_ids_0: List[int],
        token_ids_1: Optional[List[int]] = None,
        already_has_special_tokens: bool = False,
    ) -> List[int]:
        """1 where ``build_inputs_with_special_tokens`` puts a special token, 0 for sequence tokens."""
        if already_has_special_tokens:
            if token_ids_1 is not None:
                raise ValueError(
                    "token_ids_1 must be None with already_has_special_tokens=True: the ids already hold both "
                    "sequences and their special tokens"
                )
            return super().get_special_tokens_mask(token_ids_0, None, already_has_special_tokens=True)
        # Lay out placeholders instead of the ids: whatever the layout puts besides them is a special token.
        placeholder = object()
        first = [placeholder] * len(token_ids_0)
        second = None if token_ids_1 is None else [placeholder] * len(token_ids_1)
        return [0 if item is placeholder else 1 for item in self.build_inputs_with_special_tokens(first, second)]

    # -- encoding ----------------------------------------------------------------------------------

    def _text_to_ids(self, text, is_split_into_words: bool, **kwargs) -> List[int]:
        if isinstance(text, str):
            return self.convert_tokens_to_ids(self.tokenize(text, **kwargs))
        if isinstance(text, (list, tuple)) and len(text) > 0 and isinstance(text[0], str):
            if is_split_into_words:
                tokens = itertools.chain.from_iterable(
                    self.tokenize(word, is_split_into_words=True, **kwargs) for word in text
                )
                return self.convert_tokens_to_ids(list(tokens))
            return self.convert_tokens_to_ids(list(text))
        if isinstance(text, (list, tuple)) and len(text) > 0 and isinstance(text[0], int):
            return list(text)
        if is_split_into_words:
            raise ValueError(
                f"input {text!r} is not valid with is_split_into_words=True: expected a str or a non-empty "
                "list/tuple of str"
            )
        raise ValueError(
            f"input {text!r} is not valid: expected a str, a non-empty list/tuple of str (tokens) or of int (ids)"
        )

    def _refuse_offsets(self, return_offsets_mapping: bool) -> None:
        if return_offsets_mapping:
            raise NotImplementedError(
                "return_offsets_mapping=True needs a fast tokenizer (a PreTrainedTokenizerFast subclass such as "
                f"{type(self).__name__}Fast); pure-Python tokenizers do not track character offsets"
            )

    def _encode_plus(self, text, text_pair=None, **options) -> BatchEncoding:
        return self._encode_examples([(text, text_pair)], one=True, **options)

    def _batch_encode_plus(self, batch_text_or_text_pairs, **options) -> BatchEncoding:
        return self._encode_examples(batch_text_or_text_pairs, one=False, **options)

    def _encode_examples(
        self,
        examples,
        one: bool,
        *,
        add_special_tokens: bool,
        padding_strategy: PaddingStrategy,
        truncation_strategy: TruncationStrategy,
        max_length: Optional[int],
        stride: int,
        is_split_into_words: bool,
        pad_to_multiple_of: Optional[int],
        return_tensors: Union[None, str, TensorType],
        return_token_type_ids: Optional[bool],
        return_attention_mask: Optional[bool],
        return_overflowing_tokens: bool,
        return_special_tokens_mask: bool,
        return_offsets_mapping: bool,
        return_length: bool,
        verbose: bool,
        **kwargs,
    ) -> BatchEncoding:
        """Encode ``examples`` with :meth:`encode_plus`'s resolved options (other keywords go to
        :meth:`tokenize`). ``one``: a single (text, text_pair) example, prepared and padded by
        :meth:`prepare_for_model` with a batch axis only for tensors; otherwise a batch, whose entries
        are texts or (text, text_pair) pairs."""
        self._refuse_offsets(return_offsets_mapping)
        pairs = []
        for example in examples:
            if one:
                first, second = example
            elif not isinstance(example, (list, tuple)):
                first, second = example, None
            elif is_split_into_words and not isinstance(example[0], (list, tuple)):
                first, second = example, None
            else:
                if len(example) != 2:
                    raise ValueError(
                        f"a batch entry that is a list/tuple must be a (text, text_pair) pair; got {len(example)} "
                        "items (pass is_split_into_words=True for pre-split words)"
                    )
                first, second = example
            first_ids = self._text_to_ids(first, is_split_into_words, **kwargs)
            second_ids = self._text_to_ids(second, is_split_into_words, **kwargs) if second is not None else None
            pairs.append((first_ids, second_ids))
        prepare = dict(
            add_special_tokens=add_special_tokens,
            truncation=truncation_strategy.value,
            max_length=max_length,
            stride=stride,
            return_token_type_ids=return_token_type_ids,
            return_overflowing_tokens=return_overflowing_tokens,
            return_special_tokens_mask=return_special_tokens_mask,
            return_length=return_length,
            verbose=verbose,
        )
        # One example is padded as it is prepared; a batch once all its examples are.
        padding = dict(
            padding=padding_strategy.value,
            pad_to_multiple_of=pad_to_multiple_of,
            return_attention_mask=return_attention_mask,
        )
        if one:
            (first_ids, second_ids), = pairs
            return self.prepare_for_model(
                first_ids,
                pair_ids=second_ids,
                return_tensors=return_tensors,
                prepend_batch_axis=True,
                **padding,
                **prepare,
            )
        # Each example is prepared as lists, unpadded (so "length" is its own length), and the batch padded once.
        batch: Dict[str, list] = {}
        for first_ids, second_ids in pairs:
            outputs = self.prepare_for_model(
                first_ids, second_ids, padding=PaddingStrategy.DO_NOT_PAD.value, return_attention_mask=False, **prepare
            )
            for key, value in outputs.items():
                batch.setdefault(key, []).append(value)
        return BatchEncoding(self.pad(batch, max_length=max_length, **padding), tensor_type=return_tensors)

    # -- decoding ----------------------------------------------------------------------------------

    def _decode(
        self,
        token_ids,
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: Optional[bool] = None,
        spaces_between_special_tokens: bool = True,
        **kwargs,
    ) -> str:
        self._decode_use_source_tokenizer = kwargs.pop("use_source_tokenizer", False)
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        tokens = self.convert_ids_to_tokens(token_ids, skip_special_tokens=skip_special_tokens)
        # Added tokens outside the model's vocabulary are not pieces the model's detokenizer knows, so
        # they are emitted as they are, between detokenized stretches of ordinary tokens.
        specials = set(self.all_special_tokens)
        standalone = {t for t in self._added_tokens_encoder if t not in specials}
        standalone |= {
            t for t in self.additional_special_tokens if self.convert_tokens_to_ids(t) >= self.vocab_size
        }
        parts: List[str] = []
        run: List[str] = []
        for token in tokens:
            if token in standalone:
                if run:
                    text = self.convert_tokens_to_string(run)
                    if text:
                        parts.append(text)
                    run = []
                parts.append(token)
            else:
                run.append(token)
        if run:
            parts.append(self.convert_tokens_to_string(run))
        text = (" " if spaces_between_special_tokens else "").join(parts)

        if clean_up_tokenization_spaces is None:
            clean_up_tokenization_spaces = self.clean_up_tokenization_spaces
        return self.clean_up_tokenization(text) if clean_up_tokenization_spaces else text
