"""What every tokenizer shares: special tokens, padding, truncation, batching, saving and loading.

:class:`PreTrainedTokenizerBase` is the common ancestor of the pure-Python tokenizers (``slow.py``) and
of the tokenizers backed by the ``tokenizers`` library (``fast.py``). It owns the public entry points
(``__call__``, ``encode``, ``pad``, ``decode``, ``save_pretrained``, ``from_pretrained``) and leaves
the actual encoding to two hooks, ``_encode_plus`` and ``_batch_encode_plus``, so that both kinds
of tokenizer give the same :class:`BatchEncoding` for the same arguments.

Nothing here imports a deep-learning framework: tensors are only built when ``return_tensors`` asks
for them, and the framework is imported at that moment.
"""

from __future__ import annotations

import copy
import functools
import gc
import json
import logging
import os
import tempfile
import warnings
from collections import UserDict
from collections.abc import Mapping, Sized
from contextlib import contextmanager
from enum import Enum
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

from tokenizers import AddedToken

logger = logging.getLogger(__name__)

# "No limit" sentinels: model_max_length defaults to the first, and anything above the second means
# the tokenizer was never told a real limit.
VERY_LARGE_INTEGER = int(1e30)
LARGE_INTEGER = int(1e20)

SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
ADDED_TOKENS_FILE = "added_tokens.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
FULL_TOKENIZER_FILE = "tokenizer.json"

TextInput = str
PreTokenizedInput = List[str]
EncodedInput = List[int]
TextInputPair = Tuple[str, str]
PreTokenizedInputPair = Tuple[List[str], List[str]]
EncodedInputPair = Tuple[List[int], List[int]]

_warned: set = set()


def _warn_once(message: str) -> None:
    # The reference repeats none of its advisory warnings per call; a training loop would drown in them.
    if message not in _warned:
        _warned.add(message)
        logger.warning(message)


# ----------------------------------------------------------------------------------------------------
# Chat templates
# ----------------------------------------------------------------------------------------------------

_CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# The default of the GPT-2 and GPT-NeoX tokenizers (so of GPT-J and MPT) in the reference's 4.37 release:
# roles are dropped, each message's text is followed by the end-of-text token.
CONCAT_EOS_TEMPLATE = "{% for message in messages %}{{ message.content }}{{ eos_token }}{% endfor %}"


@functools.lru_cache(maxsize=16)
def _compile_chat_template(source: str):
    """A chat template compiled once per distinct source (a server renders the same one per request)."""
    try:
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise ImportError("apply_chat_template needs jinja2 (pip install 'jinja2>=3.0')") from None
    if tuple(int(p) for p in jinja2.__version__.split(".")[:2] if p.isdigit()) < (3, 0):
        raise ImportError(f"apply_chat_template needs jinja2 >= 3.0, found {jinja2.__version__}")

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    # Block tags swallow the newline after them and the indentation before them, so templates can be
    # laid out readably without those characters reaching the prompt (the reference's settings).
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(source)


# ----------------------------------------------------------------------------------------------------
# Enums
# ----------------------------------------------------------------------------------------------------


class _ChoiceEnum(str, Enum):
    """A string enum whose error for a bad value lists the accepted ones."""

    @classmethod
    def _missing_(cls, value):
        choices = ", ".join(repr(m.value) for m in cls)
        raise ValueError(f"{value!r} is not a valid {cls.__name__}, please select one of {choices}")

    def __str__(self) -> str:
        return str(self.value)


def _choice(choices, value, error: str):
    """``value`` as a member of the enum ``choices``; a value that is none of them raises a ValueError whose
    message is ``error`` with the value's repr in place of ``{!r}``."""
    if isinstance(value, choices):
        return value
    try:
        return choices(value)
    except ValueError:
        raise ValueError(error.format(value)) from None


class PaddingStrategy(_ChoiceEnum):
    """Values of ``padding``: pad to the longest sequence of the batch, to ``max_length``, or not at all."""

    LONGEST = "longest"
    MAX_LENGTH = "max_length"
    DO_NOT_PAD = "do_not_pad"


class TruncationStrategy(_ChoiceEnum):
    """Values of ``truncation``: which sequence of a pair loses tokens when the input is too long."""

    ONLY_FIRST = "only_first"
    ONLY_SECOND = "only_second"
    LONGEST_FIRST = "longest_first"
    DO_NOT_TRUNCATE = "do_not_truncate"


class TensorType(_ChoiceEnum):
    """Values of ``return_tensors``."""

    PYTORCH = "pt"
    TENSORFLOW = "tf"
    NUMPY = "np"
    JAX = "jax"


class CharSpan(NamedTuple):
    """Characters ``[start, end)`` of the original string."""

    start: int
    end: int


class TokenSpan(NamedTuple):
    """Tokens ``[start, end)`` of an encoded sequence."""

    start: int
    end: int


# ----------------------------------------------------------------------------------------------------
# Tensor helpers (no framework import unless the value already is one of its tensors)
# ----------------------------------------------------------------------------------------------------


def _module_of(x) -> str:
    return type(x).__module__ or ""


def _is_torch_tensor(x) -> bool:
    if not _module_of(x).startswith("torch"):
        return False
    import torch

    return isinstance(x, torch.Tensor)


def _is_tf_tensor(x) -> bool:
    mod = _module_of(x)
    if not (mod.startswith("tensorflow") or mod.startswith("tf_keras") or mod.startswith("keras")):
        return False
    import tensorflow as tf

    return tf.is_tensor(x)


def _is_jax_array(x) -> bool:
    mod = _module_of(x)
    if not (mod.startswith("jax") or mod.startswith("jaxlib")):
        return False
    import jax

    return isinstance(x, jax.Array)


def _is_numpy(x) -> bool:
    if not _module_of(x).startswith("numpy"):
        return False
    import numpy as np

    return isinstance(x, (np.ndarray, np.generic))


def is_tensor(x) -> bool:
    """True for a torch, TensorFlow or JAX tensor or a NumPy array, without importing anything new."""
    return _is_numpy(x) or _is_torch_tensor(x) or _is_tf_tensor(x) or _is_jax_array(x)


def to_py_obj(obj):
    """Turn tensors, arrays and NumPy scalars (possibly nested in lists and dicts) into Python lists and numbers."""
    if isinstance(obj, (int, float, str, bool)) or obj is None:
        return obj
    if isinstance(obj, Mapping):
        return {k: to_py_obj(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_py_obj(o) for o in obj]
    if _is_torch_tensor(obj):
        return obj.detach().cpu().tolist()
    if _is_tf_tensor(obj):
        return obj.numpy().tolist()
    if _is_jax_array(obj) or _is_numpy(obj):
        import numpy as np

        return np.asarray(obj).tolist()
    return obj


# ----------------------------------------------------------------------------------------------------
# BatchEncoding
# ----------------------------------------------------------------------------------------------------


class BatchEncoding(UserDict):
    """The output of a tokenizer: a dict of model inputs (``input_ids``, ``attention_mask``, ...).

    Keys are also readable as attributes. Fast tokenizers attach their ``tokenizers.Encoding`` objects
    (``encodings``), which enable the alignment methods (``tokens``, ``word_ids``, ``char_to_token``,
    ...) mapping between characters, words and tokens. ``tensor_type`` converts the values to
    tensors; ``prepend_batch_axis`` adds a batch dimension of one when converting a single example.
    """

    def __init__(
        self,
        data: Optional[Dict[str, Any]] = None,
        encoding=None,
        tensor_type: Union[None, str, TensorType] = None,
        prepend_batch_axis: bool = False,
        n_sequences: Optional[int] = None,
    ):
        super().__init__(data)
        # tokenizers.Encoding is a Rust object, not a list; wrap a single one for uniform indexing.
        if encoding is not None and not isinstance(encoding, (list, tuple)):
            encoding = [encoding]
        self._encodings = list(encoding) if encoding is not None else None
        if n_sequences is None and self._encodings:
            n_sequences = self._encodings[0].n_sequences
        self._n_sequences = n_sequences
        self.convert_to_tensors(tensor_type=tensor_type, prepend_batch_axis=prepend_batch_axis)

    @property
    def n_sequences(self) -> Optional[int]:
        """1 or 2 sequences per example, when known (fast tokenizers only)."""
        return self._n_sequences

    @property
    def is_fast(self) -> bool:
        """Whether this was produced by a fast tokenizer (and so carries ``encodings``)."""
        return self._encodings is not None

    @property
    def encodings(self):
        """The ``tokenizers.Encoding`` of each example, or ``None`` for a slow tokenizer's output."""
        return self._encodings

    def __getitem__(self, item):
        if isinstance(item, str):
            return self.data[item]
        if isinstance(item, int):
            if self._encodings is None:
                raise KeyError(
                    f"integer index {item} selects the Encoding of one example, but this BatchEncoding has no "
                    "encodings (it was produced by a slow tokenizer); index it with a key such as 'input_ids'"
                )
            return self._encodings[item]
        if isinstance(item, slice):
            return {key: self.data[key][item] for key in self.data}
        raise KeyError(
            f"BatchEncoding keys must be a str (input name), an int (one example's Encoding) or a slice "
            f"(a sub-batch), got {type(item).__name__}: {item!r}"
        )

    def __getattr__(self, item: str):
        # Only reached when normal lookup failed; "data" is guarded so that unpickling cannot recurse.
        if item in ("data", "_encodings", "_n_sequences") or item.startswith("__"):
            raise AttributeError(item)
        try:
            return self.data[item]
        except KeyError:
            raise AttributeError(f"{type(self).__name__} has no attribute or key {item!r}") from None

    def __getstate__(self):
        return {"data": self.data, "encodings": self._encodings, "n_sequences": self._n_sequences}

    def __setstate__(self, state):
        self.data = state.get("data", {})
        self._encodings = state.get("encodings")
        self._n_sequences = state.get("n_sequences")

    # -- alignment (fast tokenizers only) --------------------------------------------------------

    def _need_encodings(self, method: str):
        if self._encodings is None:
            raise ValueError(
                f"{method}() needs the token/character alignment that only fast tokenizers record; this "
                "BatchEncoding comes from a slow (pure Python) tokenizer. Use the matching *Fast tokenizer class."
            )
        return self._encodings

    def _batch_and_index(self, method: str, batch_or_index: int, index: Optional[int]) -> Tuple[int, int]:
        encodings = self._need_encodings(method)
        if index is None:
            if len(encodings) > 1:
                raise ValueError(
                    f"{method}() on a batch of {len(encodings)} examples needs both the batch index and the "
                    "position; only one index was given"
                )
            return 0, batch_or_index
        return batch_or_index, index

    def tokens(self, batch_index: int = 0) -> List[str]:
        """The tokens of example ``batch_index`` (special tokens included)."""
        return self._need_encodings("tokens")[batch_index].tokens

    def sequence_ids(self, batch_index: int = 0) -> List[Optional[int]]:
        """For each token, 0 or 1 for the sequence it belongs to, ``None`` for special tokens."""
        return self._need_encodings("sequence_ids")[batch_index].sequence_ids

    def words(self, batch_index: int = 0) -> List[Optional[int]]:
        """Deprecated name of :meth:`word_ids`."""
        warnings.warn("BatchEncoding.words() is deprecated; use word_ids()", FutureWarning)
        return self.word_ids(batch_index)

    def word_ids(self, batch_index: int = 0) -> List[Optional[int]]:
        """For each token, the index of the word it comes from, ``None`` for special tokens."""
        return self._need_encodings("word_ids")[batch_index].word_ids

    def token_to_sequence(self, batch_or_token_index: int, token_index: Optional[int] = None) -> int:
        """Which sequence (0 or 1) a token belongs to."""
        b, t = self._batch_and_index("token_to_sequence", batch_or_token_index, token_index)
        if t < 0:
            t += len(self._encodings[b].ids)
        return self._encodings[b].token_to_sequence(t)

    def token_to_word(self, batch_or_token_index: int, token_index: Optional[int] = None) -> Optional[int]:
        """The index of the word (in its sequence) that a token comes from."""
        b, t = self._batch_and_index("token_to_word", batch_or_token_index, token_index)
        if t < 0:
            t += len(self._encodings[b].ids)
        return self._encodings[b].token_to_word(t)

    def word_to_tokens(
        self, batch_or_word_index: int, word_index: Optional[int] = None, sequence_index: int = 0
    ) -> Optional[TokenSpan]:
        """The span of tokens of a word, or ``None`` when the word produced no token."""
        b, w = self._batch_and_index("word_to_tokens", batch_or_word_index, word_index)
        if w < 0:  # counted from the end of the token sequence, as the reference does
            w += len(self._encodings[b].ids)
        span = self._encodings[b].word_to_tokens(w, sequence_index)
        return TokenSpan(*span) if span is not None else None

    def token_to_chars(self, batch_or_token_index: int, token_index: Optional[int] = None) -> Optional[CharSpan]:
        """The characters of the original string a token covers; ``None`` for special tokens."""
        b, t = self._batch_and_index("token_to_chars", batch_or_token_index, token_index)
        span = self._encodings[b].token_to_chars(t)
        return CharSpan(*span) if span is not None else None

    def char_to_token(
        self, batch_or_char_index: int, char_index: Optional[int] = None, sequence_index: int = 0
    ) -> Optional[int]:
        """The token that covers a character of the original string, ``None`` if none does (e.g. a space)."""
        b, c = self._batch_and_index("char_to_token", batch_or_char_index, char_index)
        return self._encodings[b].char_to_token(c, sequence_index)

    def word_to_chars(
        self, batch_or_word_index: int, word_index: Optional[int] = None, sequence_index: int = 0
    ) -> CharSpan:
        """The characters of the original string a word covers."""
        b, w = self._batch_and_index("word_to_chars", batch_or_word_index, word_index)
        return CharSpan(*self._encodings[b].word_to_chars(w, sequence_index))

    def char_to_word(
        self, batch_or_char_index: int, char_index: Optional[int] = None, sequence_index: int = 0
    ) -> Optional[int]:
        """The word that contains a character of the original string."""
        b, c = self._batch_and_index("char_to_word", batch_or_char_index, char_index)
        return self._encodings[b].char_to_word(c, sequence_index)

    # -- tensors -----------------------------------------------------------------------------------

    def convert_to_tensors(
        self, tensor_type: Union[None, str, TensorType] = None, prepend_batch_axis: bool = False
    ) -> "BatchEncoding":
        """Convert every value to a tensor of ``tensor_type`` ('pt', 'tf', 'np' or 'jax'), in place."""
        if tensor_type is None:
            return self
        tensor_type = _choice(
            TensorType,
            tensor_type,
            "return_tensors must be one of 'pt', 'tf', 'np', 'jax' or None, got {!r}",
        )
        as_tensor, already = _tensor_factory(tensor_type)
        for key, value in self.items():
            if already(value):
                continue
            if prepend_batch_axis:
                value = [value]
            try:
                self[key] = as_tensor(value)
            except Exception as err:  # every framework has its own exception type for ragged input
                if key == "overflowing_tokens":
                    raise ValueError(
                        "cannot turn 'overflowing_tokens' into a tensor: its rows have different lengths. Leave "
                        "return_tensors=None with return_overflowing_tokens=True, or use a fast tokenizer, which "
                        "returns the overflow as extra rows of input_ids"
                    ) from err
                raise ValueError(
                    f"cannot create a {tensor_type.value!r} tensor from {key!r}: the sequences probably have "
                    "different lengths. Pass padding=True (and truncation=True) so that every sequence of the "
                    f"batch has the same length. ({type(err).__name__}: {err})"
                ) from err
        return self

    def to(self, device) -> "BatchEncoding":
        """Move every torch tensor to ``device`` (a str, an int or a ``torch.device``); returns self."""
        if isinstance(device, (str, int)) or type(device).__name__ == "device":
            self.data = {k: v.to(device=device) if _is_torch_tensor(v) else v for k, v in self.data.items()}
        else:
            logger.warning("BatchEncoding.to() expects a device (str, int or torch.device), got %r", device)
        return self


def _tensor_factory(tensor_type: TensorType):
    """(converter, is-already-converted test) for one framework, importing it only now."""
    import numpy as np

    def ragged_safe(value):
        # A list of arrays converts faster as one array; do it before handing over to the framework.
        if isinstance(value, (list, tuple)) and value and isinstance(value[0], np.ndarray):
            value = np.array(value)
        return value

    if tensor_type == TensorType.PYTORCH:
        import torch

        return (lambda v: torch.tensor(ragged_safe(v))), (lambda v: isinstance(v, torch.Tensor))
    if tensor_type == TensorType.TENSORFLOW:
        import tensorflow as tf

        return (lambda v: tf.constant(ragged_safe(v))), tf.is_tensor
    if tensor_type == TensorType.JAX:
        import jax.numpy as jnp

        return (lambda v: jnp.array(ragged_safe(v))), _is_jax_array

    def to_numpy(value):
        # Ragged rows (no padding) give a 1-D object array of row arrays rather than an error, as the
        # reference does: NumPy callers can still iterate over the examples.
        if isinstance(value, (list, tuple)) and value and isinstance(value[0], (list, tuple, np.ndarray)):
            if len({len(v) for v in value}) > 1:
                rows = np.empty(len(value), dtype=object)
                for i, row in enumerate(value):
                    rows[i] = np.asarray(row)
                return rows
        return np.asarray(ragged_safe(value))

    return to_numpy, (lambda v: isinstance(v, np.ndarray))


# ----------------------------------------------------------------------------------------------------
# PreTrainedTokenizerBase
# ----------------------------------------------------------------------------------------------------


def _special_token_property(name: str):
    attr = "_" + name

    def getter(self):
        value = getattr(self, attr)
        if value is None:
            if self.verbose:
                logger.error("Using %s, but it is not set yet.", name)
            return None
        return str(value)

    def setter(self, value):
        if value is not None and not isinstance(value, (str, AddedToken)):
            raise ValueError(f"{name} must be a str, an AddedToken or None, got {type(value).__name__}: {value!r}")
        setattr(self, attr, value)

    return property(getter, setter, doc=f"The {name.replace('_', ' ')} as a string (None when not set).")


def _special_id_property(name: str):
    attr = "_" + name

    def getter(self):
        if getattr(self, attr) is None:
            return None
        return self.convert_tokens_to_ids(str(getattr(self, attr)))

    def setter(self, value):
        setattr(self, attr, self.convert_ids_to_tokens(value) if value is not None else None)

    return property(getter, setter, doc=f"The id of the {name.replace('_', ' ')} (None when not set).")


class PreTrainedTokenizerBase:
    """Base of slow and fast tokenizers: special tokens, the encoding entry points, padding, truncation,
    decoding, and saving to / loading from a checkpoint folder.

    Subclasses set ``vocab_files_names`` (constructor argument -> file name in the folder) and implement
    the tokenization itself (``_encode_plus``, ``_batch_encode_plus``, ``tokenize``,
    ``convert_tokens_to_ids``, ``convert_ids_to_tokens``, ``_decode``, ``get_vocab``, ``save_vocabulary``).
    """

    SPECIAL_TOKENS_ATTRIBUTES = [
        "bos_token",
        "eos_token",
        "unk_token",
        "sep_token",
        "pad_token",
        "cls_token",
        "mask_token",
        "additional_special_tokens",
    ]

    vocab_files_names: Dict[str, str] = {}
    pretrained_vocab_files_map: Dict[str, Dict[str, str]] = {}
    pretrained_init_configuration: Dict[str, Dict[str, Any]] = {}
    max_model_input_sizes: Dict[str, Optional[int]] = {}
    _auto_class: Optional[str] = None

    model_input_names: List[str] = ["input_ids", "token_type_ids", "attention_mask"]
    padding_side: str = "right"
    truncation_side: str = "right"
    slow_tokenizer_class = None

    bos_token = _special_token_property("bos_token")
    eos_token = _special_token_property("eos_token")
    unk_token = _special_token_property("unk_token")
    sep_token = _special_token_property("sep_token")
    pad_token = _special_token_property("pad_token")
    cls_token = _special_token_property("cls_token")
    mask_token = _special_token_property("mask_token")
    bos_token_id = _special_id_property("bos_token")
    eos_token_id = _special_id_property("eos_token")
    unk_token_id = _special_id_property("unk_token")
    sep_token_id = _special_id_property("sep_token")
    pad_token_id = _special_id_property("pad_token")
    cls_token_id = _special_id_property("cls_token")
    mask_token_id = _special_id_property("mask_token")

    def __init__(self, **kwargs):
        self.init_inputs = ()
        # Saved verbatim by save_pretrained, so it must hold the constructor's arguments as given.
        self.init_kwargs = copy.deepcopy(kwargs)
        self.name_or_path = kwargs.pop("name_or_path", "")
        self._processor_class = kwargs.pop("processor_class", None)

        model_max_length = kwargs.pop("model_max_length", kwargs.pop("max_len", None))
        self.model_max_length = model_max_length if model_max_length is not None else VERY_LARGE_INTEGER

        self.padding_side = kwargs.pop("padding_side", self.padding_side)
        if self.padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {self.padding_side!r}")
        self.truncation_side = kwargs.pop("truncation_side", self.truncation_side)
        if self.truncation_side not in ("right", "left"):
            raise ValueError(f"truncation_side must be 'right' or 'left', got {self.truncation_side!r}")
        self.model_input_names = kwargs.pop("model_input_names", self.model_input_names)
        self.clean_up_tokenization_spaces = kwargs.pop("clean_up_tokenization_spaces", True)
        self.split_special_tokens = kwargs.pop("split_special_tokens", False)
        self.chat_template = kwargs.pop("chat_template", None)
        self.deprecation_warnings: Dict[str, bool] = {}
        self._in_target_context_manager = False
        self._pad_token_type_id = 0

        self.verbose = kwargs.pop("verbose", True)
        # Every special token starts unset; those given are set below.
        for attr in self.SPECIAL_TOKENS_ATTRIBUTES:
            setattr(self, "_" + attr, None)
        self._additional_special_tokens: List[Union[str, AddedToken]] = []
        for key, value in kwargs.items():
            if value is None or key not in self.SPECIAL_TOKENS_ATTRIBUTES:
                continue
            if key == "additional_special_tokens":
                if not isinstance(value, (list, tuple)) or not all(isinstance(t, (str, AddedToken)) for t in value):
                    raise TypeError(
                        f"additional_special_tokens must be a list of str or AddedToken, got {value!r}"
                    )
                self._additional_special_tokens = list(value)
            elif isinstance(value, (str, AddedToken)):
                setattr(self, key, value)
            else:
                raise TypeError(f"{key} must be a str or an AddedToken, got {type(value).__name__}: {value!r}")

    # -- special tokens ----------------------------------------------------------------------------

    @property
    def additional_special_tokens(self) -> List[str]:
        """Extra special tokens (beyond bos/eos/unk/sep/pad/cls/mask), as strings."""
        return [str(t) for t in self._additional_special_tokens]

    @additional_special_tokens.setter
    def additional_special_tokens(self, value):
        self._additional_special_tokens = list(value) if value is not None else []

    @property
    def additional_special_tokens_ids(self) -> List[int]:
        return self.convert_tokens_to_ids(self.additional_special_tokens)

    @additional_special_tokens_ids.setter
    def additional_special_tokens_ids(self, values):
        self._additional_special_tokens = [self.convert_ids_to_tokens(v) for v in values]

    @property
    def pad_token_type_id(self) -> int:
        """The token type id used for padding positions."""
        return self._pad_token_type_id

    @property
    def special_tokens_map(self) -> Dict[str, Union[str, List[str]]]:
        """Each set special-token attribute mapped to its value(s) as strings."""
        out = {}
        for attr in self.SPECIAL_TOKENS_ATTRIBUTES:
            value = getattr(self, "_" + attr)
            if value:
                out[attr] = [str(v) for v in value] if isinstance(value, (list, tuple)) else str(value)
        return out

    @property
    def special_tokens_map_extended(self) -> Dict[str, Any]:
        """Like :attr:`special_tokens_map` but keeping ``AddedToken`` objects as they were given."""
        out = {}
        for attr in self.SPECIAL_TOKENS_ATTRIBUTES:
            value = getattr(self, "_" + attr)
            if value:
                out[attr] = value
        return out

    @property
    def all_special_tokens_extended(self) -> List[Union[str, AddedToken]]:
        """Every distinct special token, in attribute order, as given (str or AddedToken)."""
        seen = set()
        out = []
        for value in self.special_tokens_map_extended.values():
            for token in value if isinstance(value, (list, tuple)) else [value]:
                if str(token) not in seen:
                    seen.add(str(token))
                    out.append(token)
        return out

    @property
    def all_special_tokens(self) -> List[str]:
        """Every distinct special token as a string."""
        return [str(t) for t in self.all_special_tokens_extended]

    @property
    def all_special_ids(self) -> List[int]:
        """The ids of :attr:`all_special_tokens`."""
        return self.convert_tokens_to_ids(self.all_special_tokens)

    def add_special_tokens(
        self, special_tokens_dict: Dict[str, Any], replace_additional_special_tokens: bool = True
    ) -> int:
        """Set special tokens (keys from ``SPECIAL_TOKENS_ATTRIBUTES``) and add the new ones to the vocabulary.

        Returns how many tokens the vocabulary grew by. With ``replace_additional_special_tokens`` a given
        ``additional_special_tokens`` list replaces the current one; otherwise it extends it.
        """
        if not special_tokens_dict:
            return 0
        to_register: List[AddedToken] = []
        for key, value in special_tokens_dict.items():
            if key not in self.SPECIAL_TOKENS_ATTRIBUTES:
                raise ValueError(
                    f"add_special_tokens got the key {key!r}; expected one of {self.SPECIAL_TOKENS_ATTRIBUTES}"
                )
            if key == "additional_special_tokens":
                if not isinstance(value, (list, tuple)) or not all(isinstance(t, (str, AddedToken)) for t in value):
                    raise ValueError(f"additional_special_tokens must be a list of str or AddedToken, got {value!r}")
                new = []
                for token in value:
                    if isinstance(token, str):
                        token = AddedToken(token, rstrip=False, lstrip=False, normalized=False, special=True)
                    if not replace_additional_special_tokens and str(token) in self.additional_special_tokens:
                        continue
                    new.append(token)
                if replace_additional_special_tokens and new:
                    self._additional_special_tokens = list(new)
                else:
                    self._additional_special_tokens.extend(new)
                to_register += new
            else:
                if not isinstance(value, (str, AddedToken)):
                    raise ValueError(f"{key} must be a str or an AddedToken, got {type(value).__name__}: {value!r}")
                if isinstance(value, str):
                    value = AddedToken(value, rstrip=False, lstrip=False, normalized=False, special=True)
                setattr(self, key, value)
                if value not in to_register:
                    to_register.append(value)
        return self.add_tokens(to_register, special_tokens=True)

    def add_tokens(self, new_tokens, special_tokens: bool = False) -> int:
        """Add tokens (str or AddedToken) missing from the vocabulary; returns how many were added."""
        if not new_tokens:
            return 0
        if not isinstance(new_tokens, (list, tuple)):
            new_tokens = [new_tokens]
        return self._add_tokens(new_tokens, special_tokens=special_tokens)

    def _add_tokens(self, new_tokens, special_tokens: bool = False) -> int:
        raise NotImplementedError

    def sanitize_special_tokens(self) -> int:
        """Kept for compatibility: special tokens are always registered, so nothing is left to do."""
        return self.add_tokens(self.all_special_tokens_extended, special_tokens=True)

    # -- sizes and flags ---------------------------------------------------------------------------

    @property
    def is_fast(self) -> bool:
        return False

    @property
    def vocab_size(self) -> int:
        """Size of the base vocabulary, without added tokens."""
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    def get_vocab(self) -> Dict[str, int]:
        """The vocabulary as a ``token -> id`` dict, added tokens included."""
        raise NotImplementedError

    @property
    def max_len_single_sentence(self) -> int:
        """The longest single sequence that fits once special tokens are added."""
        return self.model_max_length - self.num_special_tokens_to_add(pair=False)

    @property
    def max_len_sentences_pair(self) -> int:
        """The longest pair of sequences (together) that fits once special tokens are added."""
        return self.model_max_length - self.num_special_tokens_to_add(pair=True)

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        """How many special tokens ``build_inputs_with_special_tokens`` adds to one sequence or a pair."""
        return len(self.build_inputs_with_special_tokens([], [] if pair else None))

    def __repr__(self) -> str:
        added = "\n\t".join(f"{i}: {t!r}," for i, t in self.added_tokens_decoder.items())
        return (
            f"{type(self).__name__}(name_or_path='{self.name_or_path}', vocab_size={self.vocab_size}, "
            f"model_max_length={self.model_max_length}, is_fast={self.is_fast}, "
            f"padding_side='{self.padding_side}', truncation_side='{self.truncation_side}', "
            f"special_tokens={self.special_tokens_map}, "
            f"clean_up_tokenization_spaces={self.clean_up_tokenization_spaces}),  "
            "added_tokens_decoder={\n\t" + added + "\n}"
        )

    @property
    def added_tokens_decoder(self) -> Dict[int, AddedToken]:
        raise NotImplementedError

    # -- model-specific formatting (overridden by each family) ---------------------------------------

    def build_inputs_with_special_tokens(
        self, token_ids_0: List[int], token_ids_1: Optional[List[int]] = None
    ) -> List[int]:
        """Add the model's special tokens around one sequence or a pair; the default adds none."""
        if token_ids_1 is None:
            return list(token_ids_0)
        return list(token_ids_0) + list(token_ids_1)

    def create_token_type_ids_from_sequences(
        self, token_ids_0: List[int], token_ids_1: Optional[List[int]] = None
    ) -> List[int]:
        """Token type ids for a sequence (all 0) or a pair (0 for the first, 1 for the second)."""
        if token_ids_1 is None:
            return [0] * len(token_ids_0)
        return [0] * len(token_ids_0) + [1] * len(token_ids_1)

    def get_special_tokens_mask(
        self,
        token_ids_0: List[int],
        token_ids_1: Optional[List[int]] = None,
        already_has_special_tokens: bool = False,
    ) -> List[int]:
        """1 for special tokens and 0 for sequence tokens, for ids that already contain special tokens."""
        if not already_has_special_tokens or token_ids_1 is not None:
            raise ValueError(
                "get_special_tokens_mask on this tokenizer needs already_has_special_tokens=True and no "
                "token_ids_1; to get the mask while encoding, pass return_special_tokens_mask=True"
            )
        special = set(self.all_special_ids)
        return [1 if t in special else 0 for t in token_ids_0]

    # -- the main entry point ----------------------------------------------------------------------

    def __call__(
        self,
        text=None,
        text_pair=None,
        text_target=None,
        text_pair_target=None,
        add_special_tokens: bool = True,
        padding: Union[bool, str, PaddingStrategy] = False,
        truncation: Union[bool, str, TruncationStrategy, None] = None,
        max_length: Optional[int] = None,
        stride: int = 0,
        is_split_into_words: bool = False,
        pad_to_multiple_of: Optional[int] = None,
        return_tensors: Union[None, str, TensorType] = None,
        return_token_type_ids: Optional[bool] = None,
        return_attention_mask: Optional[bool] = None,
        return_overflowing_tokens: bool = False,
        return_special_tokens_mask: bool = False,
        return_offsets_mapping: bool = False,
        return_length: bool = False,
        verbose: bool = True,
        **kwargs,
    ) -> BatchEncoding:
        """Tokenize and prepare for the model one text, a pair, a batch, or pre-split words.

        ``text`` is a str, a list of str (a batch, or one pre-split example with
        ``is_split_into_words=True``) or a list of lists of str (a batch of pre-split examples).
        ``text_target`` / ``text_pair_target`` are encoded the same way and returned as ``labels``.
        """
        common = _keyword_arguments(locals(), "text", "text_pair", "text_target", "text_pair_target")
        if text is None and text_target is None:
            raise ValueError("pass at least one of text or text_target to the tokenizer; both were None")
        encodings = None
        if text is not None:
            # Targets may be encoded differently (e.g. other language code); inputs first.
            if not self._in_target_context_manager:
                self._switch_to_input_mode()
            encodings = self._call_one(text=text, text_pair=text_pair, **common)
        if text_target is not None:
            self._switch_to_target_mode()
            target_encodings = self._call_one(text=text_target, text_pair=text_pair_target, **common)
        self._switch_to_input_mode()
        if text_target is None:
            return encodings
        if text is None:
            return target_encodings
        encodings["labels"] = target_encodings["input_ids"]
        return encodings

    @contextmanager
    def as_target_tokenizer(self):
        """Deprecated: encode targets by passing ``text_target`` to the tokenizer instead."""
        warnings.warn("as_target_tokenizer is deprecated; pass text_target=... to the tokenizer", FutureWarning)
        self._switch_to_target_mode()
        self._in_target_context_manager = True
        try:
            yield
        finally:
            self._in_target_context_manager = False
            self._switch_to_input_mode()

    def _switch_to_input_mode(self):
        """Hook for tokenizers that encode inputs and targets differently."""

    def _switch_to_target_mode(self):
        """Hook for tokenizers that encode inputs and targets differently."""

    @staticmethod
    def _is_valid_text_input(t) -> bool:
        if isinstance(t, str):
            return True
        if isinstance(t, (list, tuple)):
            if len(t) == 0 or isinstance(t[0], str):
                return True
            if isinstance(t[0], (list, tuple)):
                return len(t[0]) == 0 or isinstance(t[0][0], str)
        return False

    def _call_one(self, text, text_pair=None, is_split_into_words: bool = False, **kwargs) -> BatchEncoding:
        expected = (
            "a str (one example), a list of str (a batch, or one pre-split example with "
            "is_split_into_words=True) or a list of lists of str (a batch of pre-split examples)"
        )
        if not self._is_valid_text_input(text):
            raise ValueError(f"text must be {expected}; got {_describe(text)}")
        if text_pair is not None and not self._is_valid_text_input(text_pair):
            raise ValueError(f"text_pair must be {expected}; got {_describe(text_pair)}")

        if is_split_into_words:
            is_batched = isinstance(text, (list, tuple)) and bool(text) and isinstance(text[0], (list, tuple))
        else:
            is_batched = isinstance(text, (list, tuple))

        if is_batched:
            if isinstance(text_pair, str):
                raise TypeError(
                    "text is a batch, so text_pair must be a list or tuple of the same length; got a single str"
                )
            if text_pair is not None and len(text) != len(text_pair):
                raise ValueError(
                    f"text and text_pair must have the same number of examples; got {len(text)} and {len(text_pair)}"
                )
            batch = list(zip(text, text_pair)) if text_pair is not None else text
            return self.batch_encode_plus(batch, is_split_into_words=is_split_into_words, **kwargs)
        return self.encode_plus(text=text, text_pair=text_pair, is_split_into_words=is_split_into_words, **kwargs)

    def encode_plus(
        self,
        text,
        text_pair=None,
        add_special_tokens: bool = True,
        padding: Union[bool, str, PaddingStrategy] = False,
        truncation: Union[bool, str, TruncationStrategy, None] = None,
        max_length: Optional[int] = None,
        stride: int = 0,
        is_split_into_words: bool = False,
        pad_to_multiple_of: Optional[int] = None,
        return_tensors: Union[None, str, TensorType] = None,
        return_token_type_ids: Optional[bool] = None,
        return_attention_mask: Optional[bool] = None,
        return_overflowing_tokens: bool = False,
        return_special_tokens_mask: bool = False,
        return_offsets_mapping: bool = False,
        return_length: bool = False,
        verbose: bool = True,
        **kwargs,
    ) -> BatchEncoding:
        """Encode one example (a text, pre-split words or ids; optionally with a pair)."""
        strategies, options = self._resolve_strategies(_keyword_arguments(locals(), "text", "text_pair"))
        return self._encode_plus(text=text, text_pair=text_pair, **strategies, **options)

    def batch_encode_plus(
        self,
        batch_text_or_text_pairs,
        add_special_tokens: bool = True,
        padding: Union[bool, str, PaddingStrategy] = False,
        truncation: Union[bool, str, TruncationStrategy, None] = None,
        max_length: Optional[int] = None,
        stride: int = 0,
        is_split_into_words: bool = False,
        pad_to_multiple_of: Optional[int] = None,
        return_tensors: Union[None, str, TensorType] = None,
        return_token_type_ids: Optional[bool] = None,
        return_attention_mask: Optional[bool] = None,
        return_overflowing_tokens: bool = False,
        return_special_tokens_mask: bool = False,
        return_offsets_mapping: bool = False,
        return_length: bool = False,
        verbose: bool = True,
        **kwargs,
    ) -> BatchEncoding:
        """Encode a batch of examples; each is a text, a (text, pair) tuple, pre-split words or ids."""
        strategies, options = self._resolve_strategies(_keyword_arguments(locals(), "batch_text_or_text_pairs"))
        return self._batch_encode_plus(batch_text_or_text_pairs=batch_text_or_text_pairs, **strategies, **options)

    def _resolve_strategies(self, options: Dict[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
        """The keyword arguments of :meth:`encode_plus` as :meth:`_encode_plus` takes them: ``padding`` and
        ``truncation`` (and their older spellings) become ``padding_strategy`` and ``truncation_strategy``.

        Returns those resolved settings and the other options apart, so that a caller passing both still
        gets Python's error for an option given twice."""
        padding_strategy, truncation_strategy, max_length, rest = self._get_padding_truncation_strategies(**options)
        strategies = {
            "padding_strategy": padding_strategy,
            "truncation_strategy": truncation_strategy,
            "max_length": max_length,
            "pad_to_multiple_of": options["pad_to_multiple_of"],
            "verbose": options["verbose"],
        }
        return strategies, rest

    def _encode_plus(self, text, text_pair=None, **options) -> BatchEncoding:
        """Encode one example. Receives :meth:`encode_plus`'s arguments with ``padding`` / ``truncation``
        already resolved into ``padding_strategy`` / ``truncation_strategy`` and ``max_length``."""
        raise NotImplementedError

    def _batch_encode_plus(self, batch_text_or_text_pairs, **options) -> BatchEncoding:
        """Encode a batch; receives :meth:`batch_encode_plus`'s arguments resolved as for :meth:`_encode_plus`."""
        raise NotImplementedError

    def encode(
        self,
        text,
        text_pair=None,
        add_special_tokens: bool = True,
        padding: Union[bool, str, PaddingStrategy] = False,
        truncation: Union[bool, str, TruncationStrategy, None] = None,
        max_length: Optional[int] = None,
        stride: int = 0,
        return_tensors: Union[None, str, TensorType] = None,
        **kwargs,
    ):
        """Encode one example and return only its ``input_ids`` (a list, or a tensor with a batch axis)."""
        options = _keyword_arguments(locals(), "text", "text_pair")
        return self.encode_plus(text, text_pair=text_pair, **options)["input_ids"]

    def tokenize(self, text: str, pair: Optional[str] = None, add_special_tokens: bool = False, **kwargs) -> List[str]:
        """Split ``text`` into tokens of the vocabulary (added tokens kept whole)."""
        raise NotImplementedError

    def convert_tokens_to_ids(self, tokens):
        """A token (str) gives an id, a list of tokens a list of ids; unknown tokens give the unknown id."""
        if tokens is None:
            return None
        if isinstance(tokens, str):
            return self._convert_token_to_id_with_added_voc(tokens)
        return [self._convert_token_to_id_with_added_voc(token) for token in tokens]

    def _convert_token_to_id_with_added_voc(self, token: str) -> Optional[int]:
        """The id of one token, added tokens included."""
        raise NotImplementedError

    def convert_ids_to_tokens(self, ids, skip_special_tokens: bool = False):
        """An id (int) gives a token, a sequence of ids a list of tokens, without the special ones when
        ``skip_special_tokens``; an id outside the vocabulary raises ``IndexError``."""
        raise NotImplementedError

    def convert_tokens_to_string(self, tokens: List[str]) -> str:
        """Join tokens back into text, undoing the tokenizer's subword markers."""
        raise NotImplementedError

    # -- padding / truncation strategies -------------------------------------------------------------

    def _get_padding_truncation_strategies(
        self, padding=False, truncation=None, max_length=None, pad_to_multiple_of=None, verbose=True, **kwargs
    ):
        """Resolve the user's ``padding`` / ``truncation`` / ``max_length`` into strategies and a length.

        Also accepts the older ``truncation_strategy`` and ``pad_to_max_length`` keywords.
        """
        old_truncation_strategy = kwargs.pop("truncation_strategy", "do_not_truncate")
        old_pad_to_max_length = kwargs.pop("pad_to_max_length", False)

        if max_length is not None and padding is False and truncation is None:
            if verbose:
                _warn_once(
                    "max_length was given but truncation was not: truncating with the 'longest_first' strategy. "
                    "Pass truncation=True (or a strategy name) to make this explicit."
                )
            truncation = "longest_first"

        if padding is False and old_pad_to_max_length:
            if verbose:
                warnings.warn(
                    "pad_to_max_length is deprecated; use padding='max_length' (or padding=True for the longest)",
                    FutureWarning,
                )
            padding_strategy = PaddingStrategy.LONGEST if max_length is None else PaddingStrategy.MAX_LENGTH
        elif padding is False or padding is None:
            padding_strategy = PaddingStrategy.DO_NOT_PAD
        elif padding is True:
            if verbose and max_length is not None and truncation in (None, False, "do_not_truncate"):
                warnings.warn(
                    "max_length is ignored with padding=True and no truncation; to pad to max_length use "
                    "padding='max_length'"
                )
            padding_strategy = PaddingStrategy.LONGEST
        else:
            padding_strategy = _choice(
                PaddingStrategy,
                padding,
                "padding must be True, False, 'longest', 'max_length' or 'do_not_pad'; got {!r}",
            )

        if truncation is None and old_truncation_strategy != "do_not_truncate":
            if verbose:
                warnings.warn("truncation_strategy is deprecated; use truncation=<strategy>", FutureWarning)
            truncation_strategy = TruncationStrategy(old_truncation_strategy)
        elif truncation is False or truncation is None:
            truncation_strategy = TruncationStrategy.DO_NOT_TRUNCATE
        elif truncation is True:
            truncation_strategy = TruncationStrategy.LONGEST_FIRST
        else:
            truncation_strategy = _choice(
                TruncationStrategy,
                truncation,
                "truncation must be True, False, 'longest_first', 'only_first', 'only_second' or "
                "'do_not_truncate'; got {!r}",
            )

        if max_length is None:
            no_limit = self.model_max_length > LARGE_INTEGER
            if padding_strategy == PaddingStrategy.MAX_LENGTH:
                if no_limit:
                    if verbose:
                        _warn_once(
                            "padding='max_length' without max_length, and this tokenizer has no model_max_length: "
                            "not padding. Pass max_length=<int>."
                        )
                    padding_strategy = PaddingStrategy.DO_NOT_PAD
                else:
                    max_length = self.model_max_length
            if truncation_strategy != TruncationStrategy.DO_NOT_TRUNCATE:
                if no_limit:
                    if verbose:
                        _warn_once(
                            f"truncation={truncation_strategy.value!r} without max_length, and this tokenizer has "
                            "no model_max_length: not truncating. Pass max_length=<int>."
                        )
                    truncation_strategy = TruncationStrategy.DO_NOT_TRUNCATE
                else:
                    max_length = self.model_max_length

        if padding_strategy != PaddingStrategy.DO_NOT_PAD and (self._pad_token is None or self.pad_token_id < 0):
            raise ValueError(
                f"padding={padding!r} needs a padding token, but this tokenizer has pad_token=None. Set one, e.g. "
                "tokenizer.pad_token = tokenizer.eos_token, or tokenizer.add_special_tokens({'pad_token': '[PAD]'})"
            )
        if (
            truncation_strategy != TruncationStrategy.DO_NOT_TRUNCATE
            and padding_strategy != PaddingStrategy.DO_NOT_PAD
            and pad_to_multiple_of is not None
            and max_length is not None
            and max_length % pad_to_multiple_of != 0
        ):
            raise ValueError(
                f"with truncation and padding both on, max_length ({max_length}) must be a multiple of "
                f"pad_to_multiple_of ({pad_to_multiple_of})"
            )
        return padding_strategy, truncation_strategy, max_length, kwargs

    # -- padding -------------------------------------------------------------------------------------

    def pad(
        self,
        encoded_inputs,
        padding: Union[bool, str, PaddingStrategy] = True,
        max_length: Optional[int] = None,
        pad_to_multiple_of: Optional[int] = None,
        return_attention_mask: Optional[bool] = None,
        return_tensors: Union[None, str, TensorType] = None,
        verbose: bool = True,
    ) -> BatchEncoding:
        """Pad one encoded example or a batch (a dict of lists, or a list of dicts as data collators pass).

        Pads ``input_ids`` with ``pad_token_id``, ``token_type_ids`` with ``pad_token_type_id``,
        ``special_tokens_mask`` with 1 and the attention mask with 0, on ``self.padding_side``.
        Tensor inputs are accepted; the output then uses the same framework unless ``return_tensors`` says.
        """
        if isinstance(encoded_inputs, (list, tuple)) and encoded_inputs and isinstance(encoded_inputs[0], Mapping):
            encoded_inputs = {key: [example[key] for example in encoded_inputs] for key in encoded_inputs[0].keys()}
        main = self.model_input_names[0]
        if not isinstance(encoded_inputs, Mapping) or main not in encoded_inputs:
            given = list(encoded_inputs.keys()) if isinstance(encoded_inputs, Mapping) else _describe(encoded_inputs)
            raise ValueError(
                f"pad() needs an encoding (or a list of encodings) that includes {main!r}; got {given}"
            )
        required = encoded_inputs[main]
        if required is None or (isinstance(required, Sized) and len(required) == 0):
            if return_attention_mask:
                encoded_inputs["attention_mask"] = []
            return encoded_inputs

        # Find one element to learn whether we were given tensors and of which framework.
        first = required[0]
        if isinstance(first, (list, tuple)):
            for item in required:
                if len(item) != 0:
                    first = item[0]
                    break
        if not isinstance(first, (int, list, tuple)):
            if _is_tf_tensor(first):
                return_tensors = "tf" if return_tensors is None else return_tensors
            elif _is_torch_tensor(first):
                return_tensors = "pt" if return_tensors is None else return_tensors
            elif _is_numpy(first):
                return_tensors = "np" if return_tensors is None else return_tensors
            elif _is_jax_array(first):
                return_tensors = "jax" if return_tensors is None else return_tensors
            else:
                raise ValueError(
                    f"pad() got {main} elements of type {type(first).__name__}; expected int, list, or a NumPy, "
                    "PyTorch, TensorFlow or JAX tensor"
                )
            encoded_inputs = {key: to_py_obj(value) for key, value in encoded_inputs.items()}

        padding_strategy, _, max_length, _ = self._get_padding_truncation_strategies(
            padding=padding, max_length=max_length, verbose=verbose
        )

        def pad_one(example: Dict[str, Any]) -> Dict[str, Any]:
            # Reads padding_strategy and max_length when called: a batch fixes them to its longest first.
            return self._pad(
                example,
                max_length=max_length,
                padding_strategy=padding_strategy,
                pad_to_multiple_of=pad_to_multiple_of,
                return_attention_mask=return_attention_mask,
            )

        required = encoded_inputs[main]
        if required and not isinstance(required[0], (list, tuple)):
            return BatchEncoding(pad_one(dict(encoded_inputs)), tensor_type=return_tensors)

        batch_size = len(required)
        for key, value in encoded_inputs.items():
            if len(value) != batch_size:
                raise ValueError(
                    f"pad() got a batch of {batch_size} {main} but {len(value)} {key}; every key needs one entry "
                    "per example"
                )
        if padding_strategy == PaddingStrategy.LONGEST:
            max_length = max(len(ids) for ids in required)
            padding_strategy = PaddingStrategy.MAX_LENGTH
        batch_outputs: Dict[str, list] = {}
        for i in range(batch_size):
            padded = pad_one({key: value[i] for key, value in encoded_inputs.items()})
            for key, value in padded.items():
                batch_outputs.setdefault(key, []).append(value)
        return BatchEncoding(batch_outputs, tensor_type=return_tensors)

    def _pad(
        self,
        encoded_inputs: Dict[str, Any],
        max_length: Optional[int] = None,
        padding_strategy: PaddingStrategy = PaddingStrategy.DO_NOT_PAD,
        pad_to_multiple_of: Optional[int] = None,
        return_attention_mask: Optional[bool] = None,
    ) -> Dict[str, Any]:
        """Pad one example (a dict of flat lists) in place of its lists; returns the dict."""
        if return_attention_mask is None:
            return_attention_mask = "attention_mask" in self.model_input_names
        main = self.model_input_names[0]
        required = encoded_inputs[main]
        if padding_strategy == PaddingStrategy.LONGEST:
            max_length = len(required)
        if max_length is not None and pad_to_multiple_of is not None and max_length % pad_to_multiple_of != 0:
            max_length = (max_length // pad_to_multiple_of + 1) * pad_to_multiple_of

        if return_attention_mask and "attention_mask" not in encoded_inputs:
            encoded_inputs["attention_mask"] = [1] * len(required)
        if padding_strategy == PaddingStrategy.DO_NOT_PAD or max_length is None:
            return encoded_inputs
        missing = max_length - len(required)
        if missing <= 0:
            return encoded_inputs

        fills = {main: self.pad_token_id, "token_type_ids": self.pad_token_type_id, "special_tokens_mask": 1}
        if return_attention_mask:
            fills["attention_mask"] = 0
        for key, fill in fills.items():
            if key not in encoded_inputs:
                continue
            values = list(encoded_inputs[key])
            if self.padding_side == "right":
                encoded_inputs[key] = values + [fill] * missing
            elif self.padding_side == "left":
                encoded_inputs[key] = [fill] * missing + values
            else:
                raise ValueError(f"padding_side must be 'right' or 'left', got {self.padding_side!r}")
        return encoded_inputs

    # -- preparing ids for the model (used by the slow tokenizers) -----------------------------------

    def prepare_for_model(
        self,
        ids: List[int],
        pair_ids: Optional[List[int]] = None,
        add_special_tokens: bool = True,
        padding: Union[bool, str, PaddingStrategy] = False,
        truncation: Union[bool, str, TruncationStrategy, None] = None,
        max_length: Optional[int] = None,
        stride: int = 0,
        pad_to_multiple_of: Optional[int] = None,
        return_tensors: Union[None, str, TensorType] = None,
        return_token_type_ids: Optional[bool] = None,
        return_attention_mask: Optional[bool] = None,
        return_overflowing_tokens: bool = False,
        return_special_tokens_mask: bool = False,
        return_offsets_mapping: bool = False,
        return_length: bool = False,
        verbose: bool = True,
        prepend_batch_axis: bool = False,
        **kwargs,
    ) -> BatchEncoding:
        """Turn token ids (one sequence or a pair) into model inputs: truncate, add special tokens, pad.

        With ``return_overflowing_tokens`` the ids cut off by truncation (plus ``stride`` ids of
        context) come back as ``overflowing_tokens``, with ``num_truncated_tokens``.
        """
        padding_strategy, truncation_strategy, max_length, kwargs = self._get_padding_truncation_strategies(
            padding=padding,
            truncation=truncation,
            max_length=max_length,
            pad_to_multiple_of=pad_to_multiple_of,
            verbose=verbose,
            **kwargs,
        )
        pair = pair_ids is not None
        if return_token_type_ids and not add_special_tokens:
            raise ValueError(
                "return_token_type_ids=True needs add_special_tokens=True (the type ids are defined by the "
                "special-token layout); set return_token_type_ids=None or add_special_tokens=True"
            )
        if return_overflowing_tokens and truncation_strategy == TruncationStrategy.LONGEST_FIRST and pair:
            raise ValueError(
                "return_overflowing_tokens=True is not possible for a pair with truncation='longest_first'; "
                "use truncation='only_first' or 'only_second'"
            )
        if return_token_type_ids is None:
            return_token_type_ids = "token_type_ids" in self.model_input_names
        if return_attention_mask is None:
            return_attention_mask = "attention_mask" in self.model_input_names

        encoded: Dict[str, Any] = {}
        total_len = len(ids) + (len(pair_ids) if pair else 0)
        if add_special_tokens:
            total_len += self.num_special_tokens_to_add(pair=pair)
        overflowing: List[int] = []
        if truncation_strategy != TruncationStrategy.DO_NOT_TRUNCATE and max_length and total_len > max_length:
            ids, pair_ids, overflowing = self.truncate_sequences(
                ids,
                pair_ids=pair_ids,
                num_tokens_to_remove=total_len - max_length,
                truncation_strategy=truncation_strategy,
                stride=stride,
            )
        if return_overflowing_tokens:
            encoded["overflowing_tokens"] = overflowing
            encoded["num_truncated_tokens"] = total_len - (max_length if max_length is not None else total_len)

        if add_special_tokens:
            sequence = self.build_inputs_with_special_tokens(ids, pair_ids)
            token_type_ids = self.create_token_type_ids_from_sequences(ids, pair_ids)
        else:
            sequence = list(ids) + (list(pair_ids) if pair else [])
            token_type_ids = [0] * len(sequence)
        encoded["input_ids"] = sequence
        if return_token_type_ids:
            encoded["token_type_ids"] = token_type_ids
        if return_special_tokens_mask:
            if add_special_tokens:
                encoded["special_tokens_mask"] = self.get_special_tokens_mask(ids, pair_ids)
            else:
                encoded["special_tokens_mask"] = [0] * len(sequence)

        self._eventual_warn_about_too_long_sequence(encoded["input_ids"], max_length, verbose)
        if padding_strategy != PaddingStrategy.DO_NOT_PAD or return_attention_mask:
            encoded = self.pad(
                encoded,
                max_length=max_length,
                padding=padding_strategy.value,
                pad_to_multiple_of=pad_to_multiple_of,
                return_attention_mask=return_attention_mask,
            )
        if return_length:
            encoded["length"] = len(encoded["input_ids"])
        return BatchEncoding(encoded, tensor_type=return_tensors, prepend_batch_axis=prepend_batch_axis)

    def truncate_sequences(
        self,
        ids: List[int],
        pair_ids: Optional[List[int]] = None,
        num_tokens_to_remove: int = 0,
        truncation_strategy: Union[str, TruncationStrategy] = "longest_first",
        stride: int = 0,
    ) -> Tuple[List[int], Optional[List[int]], List[int]]:
        """Remove ``num_tokens_to_remove`` ids following the strategy; returns (ids, pair_ids, overflowing).

        The overflow holds the removed ids plus up to ``stride`` ids of context next to the cut; it is
        empty for pairs under 'longest_first', where ids go from both sequences.
        """
        if num_tokens_to_remove <= 0:
            return ids, pair_ids, []
        if not isinstance(truncation_strategy, TruncationStrategy):
            truncation_strategy = TruncationStrategy(truncation_strategy)
        if self.truncation_side not in ("left", "right"):
            raise ValueError(f"truncation_side must be 'right' or 'left', got {self.truncation_side!r}")
        left = self.truncation_side == "left"

        def cut(seq: List[int]) -> Tuple[List[int], List[int]]:
            window = min(len(seq), stride + num_tokens_to_remove)
            if left:
                return seq[num_tokens_to_remove:], seq[:window]
            return seq[:-num_tokens_to_remove], seq[-window:]

        overflowing: List[int] = []
        S = TruncationStrategy
        if truncation_strategy == S.ONLY_FIRST or (truncation_strategy == S.LONGEST_FIRST and pair_ids is None):
            if len(ids) > num_tokens_to_remove:
                ids, overflowing = cut(ids)
            else:
                message = (
                    f"cannot truncate: {num_tokens_to_remove} tokens must go but the first sequence has only "
                    f"{len(ids)}."
                )
                if truncation_strategy == S.ONLY_FIRST:
                    message += " Use truncation='longest_first' or 'only_second' instead of 'only_first'."
                logger.error(message)
        elif truncation_strategy == S.LONGEST_FIRST:
            logger.warning(
                "overflowing tokens are not returned for pairs truncated with 'longest_first'; the list stays "
                "empty even though tokens were removed"
            )
            # Trim the longer sequence down to the shorter one first, then both alternately.
            first_remove = min(abs(len(pair_ids) - len(ids)), num_tokens_to_remove)
            rest = num_tokens_to_remove - first_remove
            if len(ids) > len(pair_ids):
                n_ids, n_pair = first_remove + rest // 2, rest - rest // 2
            else:
                n_ids, n_pair = rest // 2, first_remove + rest - rest // 2
            if left:
                ids, pair_ids = ids[n_ids:], pair_ids[n_pair:]
            else:
                ids = ids[:-n_ids] if n_ids > 0 else ids
                pair_ids = pair_ids[:-n_pair] if n_pair > 0 else pair_ids
        elif truncation_strategy == S.ONLY_SECOND and pair_ids is not None:
            if len(pair_ids) > num_tokens_to_remove:
                pair_ids, overflowing = cut(pair_ids)
            else:
                logger.error(
                    f"cannot truncate: {num_tokens_to_remove} tokens must go but the second sequence has only "
                    f"{len(pair_ids)}. Use truncation='longest_first' or 'only_first' instead of 'only_second'."
                )
        return ids, pair_ids, overflowing

    def _eventual_warn_about_too_long_sequence(self, ids: List[int], max_length: Optional[int], verbose: bool):
        if max_length is None and len(ids) > self.model_max_length and verbose:
            _warn_once(
                f"Token indices sequence length is longer than the specified maximum sequence length for this "
                f"model ({len(ids)} > {self.model_max_length}). Running this sequence through the model will "
                "result in indexing errors"
            )

    # -- decoding ------------------------------------------------------------------------------------

    def decode(
        self,
        token_ids,
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: Optional[bool] = None,
        **kwargs,
    ) -> str:
        """Turn ids (a list, array or tensor) back into a string."""
        token_ids = to_py_obj(token_ids)
        return self._decode(
            token_ids=token_ids,
            skip_special_tokens=skip_special_tokens,
            clean_up_tokenization_spaces=clean_up_tokenization_spaces,
            **kwargs,
        )

    def batch_decode(
        self,
        sequences,
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: Optional[bool] = None,
        **kwargs,
    ) -> List[str]:
        """Decode each sequence of a batch."""
        return [
            self.decode(
                seq,
                skip_special_tokens=skip_special_tokens,
                clean_up_tokenization_spaces=clean_up_tokenization_spaces,
                **kwargs,
            )
            for seq in sequences
        ]

    def _decode(self, token_ids, **options) -> str:
        """Decode one sequence; receives :meth:`decode`'s arguments, ``token_ids`` as a Python list or int."""
        raise NotImplementedError

    # Undo the spaces that word-level detokenization leaves before punctuation and English contractions.
    _CLEANUP_REPLACEMENTS = (
        (" .", "."),
        (" ?", "?"),
        (" !", "!"),
        (" ,", ","),
        (" ' ", "'"),
        (" n't", "n't"),
        (" 'm", "'m"),
        (" 's", "'s"),
        (" 've", "'ve"),
        (" 're", "'re"),
    )

    @staticmethod
    def clean_up_tokenization(out_string: str) -> str:
        """Remove spaces before punctuation and inside English contractions ("do n't" -> "don't")."""
        for old, new in PreTrainedTokenizerBase._CLEANUP_REPLACEMENTS:
            out_string = out_string.replace(old, new)
        return out_string

    # -- chat templates ------------------------------------------------------------------------------

    @property
    def default_chat_template(self) -> str:
        """The template used when neither ``chat_template`` nor ``tokenizer.chat_template`` is set: the class's
        own default where the reference's 4.37 release has one (GPT-2 and GPT-NeoX: each message's text then
        the end-of-text token, :data:`CONCAT_EOS_TEMPLATE`), else ChatML
        (``<|im_start|>role\ncontent<|im_end|>``), without beginning or end tokens. A warning says so once,
        since the model was probably not trained on it."""
        template = self._class_chat_template or _CHATML_TEMPLATE
        _warn_once(
            f"No chat template is defined for this tokenizer: using {type(self).__name__}'s default. If it does "
            "not suit the model, set tokenizer.chat_template to the template the model was trained with."
        )
        return template

    # A class whose reference tokenizer has its own default chat template names it here.
    _class_chat_template: Optional[str] = None

    def apply_chat_template(
        self,
        conversation,
        chat_template: Optional[str] = None,
        add_generation_prompt: bool = False,
        tokenize: bool = True,
        padding: bool = False,
        truncation: bool = False,
        max_length: Optional[int] = None,
        return_tensors: Union[None, str, TensorType] = None,
        **tokenizer_kwargs,
    ):
        """Render a conversation with a Jinja chat template, as text or as token ids.

        ``conversation`` is a list of ``{"role": ..., "content": ...}`` dicts (or an object with a
        ``messages`` list of them). The template is ``chat_template`` if given, else
        ``tokenizer.chat_template`` (saved in ``tokenizer_config.json`` as "chat_template"), else
        :attr:`default_chat_template`. It sees ``messages``, ``add_generation_prompt`` (end with what opens
        the assistant's reply) and the special tokens (``bos_token``, ``eos_token``, ...), and may call
        ``raise_exception(message)`` to reject a conversation (a ``jinja2.TemplateError``). It runs in
        Jinja's immutable sandbox, so a template from a checkpoint can read its inputs but not change
        them or reach Python internals.

        With ``tokenize=False`` returns the rendered string; otherwise its ids, encoded without adding
        special tokens (the template places them), with ``padding``, ``truncation``, ``max_length``,
        ``return_tensors`` and the other keyword arguments passed to :meth:`encode`.
        """
        messages = getattr(conversation, "messages", conversation)
        if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
            raise TypeError(
                f"conversation: expected a list of {{'role': ..., 'content': ...}} dicts, given "
                f"{type(conversation).__name__}"
            )
        for i, message in enumerate(messages):
            if not isinstance(message, Mapping):
                raise TypeError(f"conversation[{i}]: expected a dict with 'role' and 'content', given "
                                f"{type(message).__name__}")
        if chat_template is None:
            chat_template = self.chat_template if self.chat_template is not None else self.default_chat_template
        if not isinstance(chat_template, str):
            raise TypeError(f"chat_template: expected a Jinja template string, given {type(chat_template).__name__}")
        rendered = _compile_chat_template(chat_template).render(
            messages=list(messages), add_generation_prompt=add_generation_prompt, **self.special_tokens_map
        )
        if not tokenize:
            return rendered
        return self.encode(
            rendered,
            add_special_tokens=False,
            padding=padding,
            truncation=truncation,
            max_length=max_length,
            return_tensors=return_tensors,
            **tokenizer_kwargs,
        )

    # -- saving --------------------------------------------------------------------------------------

    @classmethod
    def convert_added_tokens(cls, obj, save: bool = False, add_type_field: bool = True):
        """Recursively turn ``AddedToken`` objects into JSON dicts (``save``) or such dicts back into tokens."""
        if isinstance(obj, dict) and obj.get("__type") == "AddedToken":
            fields = {k: v for k, v in obj.items() if k != "__type"}
            return AddedToken(**fields)
        if isinstance(obj, AddedToken) and save:
            state = obj.__getstate__()
            if add_type_field:
                state["__type"] = "AddedToken"
            else:
                # special_tokens_map.json files of older releases never carried this field.
                state.pop("special", None)
            return state
        if isinstance(obj, (list, tuple)):
            return [cls.convert_added_tokens(o, save=save, add_type_field=add_type_field) for o in obj]
        if isinstance(obj, dict):
            return {k: cls.convert_added_tokens(v, save=save, add_type_field=add_type_field) for k, v in obj.items()}
        return obj

    def save_pretrained(
        self,
        save_directory: Union[str, os.PathLike],
        legacy_format: Optional[bool] = None,
        filename_prefix: Optional[str] = None,
        push_to_hub: bool = False,
        **kwargs,
    ) -> Tuple[str, ...]:
        """Write the tokenizer to a folder that :meth:`from_pretrained` (here or in the reference) can load.

        Writes ``tokenizer_config.json``, ``special_tokens_map.json``, the vocabulary files and, for
        fast tokenizers, ``tokenizer.json``. ``legacy_format=False`` writes only ``tokenizer.json``-style
        files (fast tokenizers only). Returns the paths written.
        """
        save_directory = os.fspath(save_directory)
        if os.path.isfile(save_directory):
            raise ValueError(f"save_directory must be a folder, got the existing file {save_directory!r}")
        os.makedirs(save_directory, exist_ok=True)
        prefix = filename_prefix + "-" if filename_prefix else ""
        special_tokens_map_file = os.path.join(save_directory, prefix + SPECIAL_TOKENS_MAP_FILE)
        tokenizer_config_file = os.path.join(save_directory, prefix + TOKENIZER_CONFIG_FILE)

        config = copy.deepcopy(self.init_kwargs)
        # Attributes changed after construction win over the constructor's arguments.
        for key in list(self.init_kwargs) + ["model_max_length", "clean_up_tokenization_spaces"]:
            if key in self.SPECIAL_TOKENS_ATTRIBUTES:
                value = getattr(self, "_" + key)
                if key == "additional_special_tokens":
                    config[key] = [str(t) for t in value]
                else:
                    config[key] = str(value) if value is not None else None
                continue
            if hasattr(type(self), key) or key in self.__dict__:
                try:
                    config[key] = getattr(self, key)
                except (AttributeError, NotImplementedError):
                    pass
        config.update(self.special_tokens_map)
        if self.chat_template is not None:
            config["chat_template"] = self.chat_template
        if len(self.init_inputs) > 0:
            config["init_inputs"] = copy.deepcopy(list(self.init_inputs))
        for file_id in self.vocab_files_names:
            config.pop(file_id, None)
        config = self.convert_added_tokens(config, add_type_field=True, save=True)
        config["added_tokens_decoder"] = {
            str(index): token.__getstate__() for index, token in self.added_tokens_decoder.items()
        }
        class_name = type(self).__name__
        if class_name.endswith("Fast") and class_name != "PreTrainedTokenizerFast":
            class_name = class_name[: -len("Fast")]
        config["tokenizer_class"] = class_name
        if getattr(self, "_auto_map", None) is not None:
            config["auto_map"] = self._auto_map
        if self._processor_class is not None:
            config["processor_class"] = self._processor_class
        for private in ("name_or_path", "special_tokens_map_file", "tokenizer_file", "added_tokens_file",
                        "tokenizer_config_file"):
            config.pop(private, None)
        _atomic_write_json(tokenizer_config_file, config)

        special_map = self.convert_added_tokens(self.special_tokens_map_extended, save=True, add_type_field=False)
        _atomic_write_json(special_tokens_map_file, special_map)

        written = self._save_pretrained(
            save_directory=save_directory,
            file_names=(tokenizer_config_file, special_tokens_map_file),
            legacy_format=legacy_format,
            filename_prefix=filename_prefix,
        )
        if push_to_hub:
            from ..checkpoints.files import push_folder

            push_folder(save_directory, **kwargs)
        return written

    def _save_pretrained(
        self,
        save_directory: str,
        file_names: Tuple[str, ...],
        legacy_format: Optional[bool] = None,
        filename_prefix: Optional[str] = None,
    ) -> Tuple[str, ...]:
        """Write the vocabulary (and ``added_tokens.json`` for tokens beyond it). Fast tokenizers override
        this to also write ``tokenizer.json``."""
        if legacy_format is False:
            raise ValueError(
                "legacy_format=False saves only tokenizer.json, which only fast tokenizers "
                "(PreTrainedTokenizerFast subclasses) have; use legacy_format=None or True"
            )
        prefix = filename_prefix + "-" if filename_prefix else ""
        added_tokens_file = os.path.join(save_directory, prefix + ADDED_TOKENS_FILE)
        beyond = {tok: idx for tok, idx in self.added_tokens_encoder.items() if idx >= self.vocab_size}
        if beyond:
            _atomic_write_json(added_tokens_file, beyond)
        vocab_files = self.save_vocabulary(save_directory, filename_prefix=filename_prefix)
        return tuple(file_names) + tuple(vocab_files) + (added_tokens_file,)

    def save_vocabulary(self, save_directory: str, filename_prefix: Optional[str] = None) -> Tuple[str, ...]:
        """Write only the vocabulary files; returns their paths."""
        raise NotImplementedError

    @property
    def added_tokens_encoder(self) -> Dict[str, int]:
        return {t.content: i for i, t in self.added_tokens_decoder.items()}

    # -- loading -------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Union[str, os.PathLike], *init_inputs, **kwargs):
        """Load a tokenizer from a folder written by ``save_pretrained`` or from a Hub repository id.

        Reads ``tokenizer_config.json`` (the constructor's saved arguments), the vocabulary files,
        ``special_tokens_map.json``, ``added_tokens.json`` and ``tokenizer.json`` when present. Keyword
        arguments override what the files say. Hub options (``cache_dir``, ``revision``, ``token``,
        ``local_files_only``, ``subfolder``, ...) choose where the files come from.
        """
        from ..checkpoints.files import cached_file, pop_hub_kwargs

        hub = pop_hub_kwargs(kwargs)
        for ignored in ("_from_auto", "_from_pipeline", "_commit_hash", "trust_remote_code", "use_fast"):
            kwargs.pop(ignored, None)
        name = os.fspath(pretrained_model_name_or_path)

        resolved: Dict[str, Optional[str]] = {}
        if os.path.isfile(name):
            if len(cls.vocab_files_names) != 1:
                raise ValueError(
                    f"{cls.__name__}.from_pretrained needs a folder or a Hub id; a single file ({name!r}) only works "
                    "for tokenizers with exactly one vocabulary file"
                )
            warnings.warn(
                f"{cls.__name__}.from_pretrained() with the path of a single file is deprecated; pass the folder",
                FutureWarning,
            )
            resolved[next(iter(cls.vocab_files_names))] = name
        else:
            wanted = {
                **cls.vocab_files_names,
                "added_tokens_file": ADDED_TOKENS_FILE,
                "special_tokens_map_file": SPECIAL_TOKENS_MAP_FILE,
                "tokenizer_config_file": TOKENIZER_CONFIG_FILE,
                "tokenizer_file": FULL_TOKENIZER_FILE,
            }
            for file_id, filename in wanted.items():
                resolved[file_id] = cached_file(name, filename, missing_ok=True, **hub)
        if all(path is None for path in resolved.values()):
            raise OSError(
                f"cannot load a {cls.__name__} from {name!r}: it has none of the tokenizer files "
                f"({', '.join(sorted(set(cls.vocab_files_names.values()) | {TOKENIZER_CONFIG_FILE}))})"
            )
        with collector_paused():
            return cls._from_pretrained(resolved, name, {}, *init_inputs, **kwargs)

    @classmethod
    def _from_pretrained(
        cls,
        resolved_vocab_files: Dict[str, Optional[str]],
        pretrained_model_name_or_path: str,
        init_configuration: Dict[str, Any],
        *init_inputs,
        **kwargs,
    ):
        """Build the tokenizer from resolved local files. Fast tokenizers override this to convert
        from the slow class when there is no ``tokenizer.json``."""
        resolved = dict(resolved_vocab_files)
        config_file = resolved.pop("tokenizer_config_file", None)
        has_tokenizer_file = resolved.get("tokenizer_file") is not None
        if config_file is not None:
            init_kwargs = _read_json(config_file, "tokenizer_config.json")
            saved_class = init_kwargs.pop("tokenizer_class", None)
            if not has_tokenizer_file:
                init_kwargs.pop("tokenizer_file", None)
            saved_inputs = init_kwargs.pop("init_inputs", ())
            if not init_inputs:
                init_inputs = tuple(saved_inputs)
            if saved_class is not None and cls.__name__.replace("Fast", "") != saved_class.replace("Fast", ""):
                logger.warning(
                    "The checkpoint's tokenizer_class is %r but it is being loaded with %r; tokenization may differ.",
                    saved_class,
                    cls.__name__,
                )
        else:
            init_kwargs = dict(init_configuration)
        init_kwargs.pop("auto_map", None)
        init_kwargs.update(kwargs)

        known_limit = cls.max_model_input_sizes.get(pretrained_model_name_or_path)
        if isinstance(known_limit, (int, float)):
            init_kwargs["model_max_length"] = min(init_kwargs.get("model_max_length", VERY_LARGE_INTEGER), known_limit)
        if config_file is None and pretrained_model_name_or_path in cls.pretrained_init_configuration:
            for key, value in cls.pretrained_init_configuration[pretrained_model_name_or_path].items():
                init_kwargs.setdefault(key, value)

        added_tokens_file = resolved.pop("added_tokens_file", None)
        special_tokens_map_file = resolved.pop("special_tokens_map_file", None)
        for file_id, path in resolved.items():
            if file_id not in init_kwargs:
                init_kwargs[file_id] = path
        tokenizer_file = resolved.pop("tokenizer_file", None)
        init_kwargs["name_or_path"] = pretrained_model_name_or_path

        added_tokens_decoder: Dict[int, AddedToken] = {}
        added_tokens_map: Dict[str, AddedToken] = {}
        if "added_tokens_decoder" in init_kwargs:
            for index, token in init_kwargs["added_tokens_decoder"].items():
                if isinstance(token, dict):
                    token = AddedToken(**{k: v for k, v in token.items() if k != "__type"})
                if not isinstance(token, AddedToken):
                    raise ValueError(
                        f"added_tokens_decoder[{index!r}] must be a dict or an AddedToken, got {type(token).__name__}"
                    )
                added_tokens_decoder[int(index)] = token
                added_tokens_map[str(token)] = token
        else:
            # Folders written before added_tokens_decoder existed spread the same facts over three files.
            if special_tokens_map_file is not None:
                special_map = _read_json(special_tokens_map_file, SPECIAL_TOKENS_MAP_FILE)
                for key, value in special_map.items():
                    if kwargs.get(key):
                        continue
                    if isinstance(value, dict):
                        value = AddedToken(**{**value, "special": True})
                    elif key == "additional_special_tokens" and isinstance(value, list):
                        merged = init_kwargs.pop("additional_special_tokens", None) or []
                        for token in value:
                            if isinstance(token, dict):
                                token = AddedToken(**{**token, "special": True})
                            if token not in merged:
                                merged.append(token)
                        value = merged
                    init_kwargs[key] = value
            if added_tokens_file is not None:
                specials = set()
                for key in cls.SPECIAL_TOKENS_ATTRIBUTES:
                    value = init_kwargs.get(key)
                    if value is None:
                        continue
                    if key == "additional_special_tokens":
                        specials.update(str(t) for t in value)
                    else:
                        specials.add(str(value))
                for content, index in _read_json(added_tokens_file, ADDED_TOKENS_FILE).items():
                    special = content in specials
                    token = AddedToken(content, rstrip=False, lstrip=False, normalized=not special, special=special)
                    added_tokens_decoder[int(index)] = token
                    added_tokens_map[content] = token
            if tokenizer_file is not None:
                for entry in _read_json(tokenizer_file, FULL_TOKENIZER_FILE).get("added_tokens", []):
                    entry = dict(entry)
                    index = entry.pop("id")
                    token = AddedToken(**entry)
                    added_tokens_decoder[int(index)] = token
                    added_tokens_map[str(token)] = token

        init_kwargs["added_tokens_decoder"] = added_tokens_decoder
        init_kwargs = cls.convert_added_tokens(init_kwargs, save=False)
        # Give string special tokens the flags (lstrip, normalized, ...) recorded for them.
        for key in cls.SPECIAL_TOKENS_ATTRIBUTES:
            if key == "additional_special_tokens" or init_kwargs.get(key) is None or not added_tokens_map:
                continue
            init_kwargs[key] = added_tokens_map.get(str(init_kwargs[key]), init_kwargs[key])
        return cls(*init_inputs, **init_kwargs)


# Special-token layouts that several families share, for their build_inputs_with_special_tokens and
# create_token_type_ids_from_sequences.


def _bert_style_inputs(
    cls_id: int, sep_id: int, token_ids_0: List[int], token_ids_1: Optional[List[int]]
) -> List[int]:
    """``[CLS] A [SEP]``, or ``[CLS] A [SEP] B [SEP]`` for a pair."""
    output = [cls_id] + list(token_ids_0) + [sep_id]
    if token_ids_1 is None:
        return output
    return output + list(token_ids_1) + [sep_id]


def _bert_style_token_types(token_ids_0: List[int], token_ids_1: Optional[List[int]]) -> List[int]:
    """0 for ``[CLS] A [SEP]``, then 1 for ``B [SEP]``."""
    first = [0] * (len(token_ids_0) + 2)
    if token_ids_1 is None:
        return first
    return first + [1] * (len(token_ids_1) + 1)


def _roberta_style_inputs(
    cls_id: int, sep_id: int, token_ids_0: List[int], token_ids_1: Optional[List[int]]
) -> List[int]:
    """``<s> A </s>``, or ``<s> A </s></s> B </s>`` for a pair (families without token types)."""
    output = [cls_id] + list(token_ids_0) + [sep_id]
    if token_ids_1 is None:
        return output
    return output + [sep_id] + list(token_ids_1) + [sep_id]


class _RobertaStyleLayout:
    """``<s> A </s>`` for one sequence, ``<s> A </s></s> B </s>`` for a pair, and token type ids all 0:
    the layout of families without token types (RoBERTa, MPNet); listed first among a tokenizer's bases.

    ``_layout_token_ids`` names the ids that frame the sequences: the slow tokenizers use ``cls_token`` and
    ``sep_token``, the fast ones (as the reference's do) ``bos_token`` and ``eos_token``.
    """

    _layout_token_ids = ("cls_token_id", "sep_token_id")

    def build_inputs_with_special_tokens(
        self, token_ids_0: List[int], token_ids_1: Optional[List[int]] = None
    ) -> List[int]:
        """``<s> A </s>`` or ``<s> A </s></s> B </s>``."""
        first, last = (getattr(self, name) for name in self._layout_token_ids)
        return _roberta_style_inputs(first, last, token_ids_0, token_ids_1)

    def create_token_type_ids_from_sequences(
        self, token_ids_0: List[int], token_ids_1: Optional[List[int]] = None
    ) -> List[int]:
        """All zeros, one per token of the built input: these families have no token types."""
        return [0] * len(_roberta_style_inputs(0, 0, token_ids_0, token_ids_1))


def _keyword_arguments(arguments: Dict[str, Any], *leave_out: str) -> Dict[str, Any]:
    """A method's arguments as keywords, from ``locals()`` taken as its first statement: the named ones
    (but ``self`` and those in ``leave_out``) merged with what its ``**kwargs`` caught.

    The encoding entry points spell out the reference's long signatures and pass them on whole; this keeps
    one list of those names (the signature) instead of one more per call.
    """
    options = dict(arguments)
    for name in ("self", "kwargs", *leave_out):
        del options[name]
    options.update(arguments["kwargs"])
    return options


def _describe(value) -> str:
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{type(value).__name__} {text}"


@contextmanager
def collector_paused():
    """Hold Python's cycle collector while a vocabulary loads.

    A load allocates hundreds of thousands of small containers (the merges' pairs, the JSON's lists and
    dicts), none of them in a cycle. Each burst of allocations starts collections, and a full one walks every
    object of the process: in a process holding two million objects, a GPT-2 vocabulary took 0.55 s to load
    instead of 0.09 s whenever one fell inside it. A collector already off stays off.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _read_json(path: str, what: str) -> Dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as err:
        raise OSError(f"{what} at {path!r} is not valid JSON: {err}") from err


def _atomic_write_json(path: str, obj) -> None:
    """Write JSON as the reference formats it (2-space indent, sorted keys, UTF-8, final newline)."""
    _atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def _hub_files(checkpoints, **files: str) -> Dict[str, Dict[str, str]]:
    """A ``pretrained_vocab_files_map``: for each file argument (``vocab_file="vocab.txt"``), the file's Hub
    URL in each checkpoint."""
    return {
        key: {name: f"https://huggingface.co/{name}/resolve/main/{file}" for name in checkpoints}
        for key, file in files.items()
    }


def _atomic_write_text(path: str, text: str) -> None:
    # A crash mid-write must never leave a half-written file where a checkpoint used to be.
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix="-" + os.path.basename(path))
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
