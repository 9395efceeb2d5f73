"""``PretrainedConfig``: the settings of a model as plain data, with the reference 4.37 semantics.

A config is a bag of attributes. The family classes add their documented arguments; everything in a
``config.json`` that no class knows is kept as an attribute too, so a folder written by another version
survives a load/save round trip. Documented fields are checked whenever they are set (in the
constructor, by ``from_pretrained`` keyword overrides, or by plain assignment), so a bad value fails
where it is given rather than deep inside a model.

Nothing here imports a deep-learning framework: ``torch_dtype`` is stored as a name such as
``"float16"`` and a ``torch.dtype`` given by the caller is recognised without importing torch.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import numbers
import os
import re
import uuid
from typing import Any, Callable, Optional


logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"

# The reference reads ``transformers_version`` to decide which legacy behaviours a folder needs; ours
# follow the 4.37 format, so that is the version recorded.
SAVED_VERSION = "4.37.2"

PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")

_DTYPE_NAMES = frozenset(
    {
        "float16", "bfloat16", "float32", "float64", "complex64", "complex128",
        "int8", "uint8", "int16", "int32", "int64", "bool",
        "float8_e4m3fn", "float8_e5m2",
        "auto",  # from_pretrained(torch_dtype="auto") lands here and means "as stored"
    }
)
_DTYPE_SYNONYMS = {"half": "float16", "float": "float32", "double": "float64", "long": "int64", "int": "int32"}

# Keyword arguments of from_pretrained that only steer the lookup; never config fields, never "unused".
_LOOKUP_KWARGS = ("trust_remote_code", "_from_auto", "_from_pipeline", "user_agent", "_configuration_file")

_COMMIT_IN_PATH = re.compile(r"snapshots[\\/]([0-9a-f]{40})[\\/]")
_VERSIONED_CONFIG = re.compile(r"^config\.(.+)\.json$")
_REFERENCE_VERSION = (4, 37, 2)  # the release whose API and files this package follows


# --------------------------------------------------------------------------------------------------
# Field checks


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@dataclasses.dataclass(slots=True, eq=False)
class Field:
    """How one documented argument is checked.

    ``kind`` is one of ``int``, ``float`` (ints accepted), ``bool``, ``str``, ``activation`` (a name
    or a callable), ``dict``, ``str_list``, ``int_or_ints``, ``any``. ``low``/``high`` bound numbers
    (inclusive), ``choices`` limits strings, ``convert`` replaces the whole check for special fields.
    """

    kind: str
    _: dataclasses.KW_ONLY
    optional: bool = False
    low: Optional[float] = None
    high: Optional[float] = None
    choices: Optional[tuple] = None
    convert: Optional[Callable[[str, str, Any], Any]] = None

    def expected(self) -> str:
        words = {
            "int": "an int",
            "float": "a number",
            "bool": "a bool",
            "str": "a string",
            "activation": "an activation name or a callable",
            "dict": "a dict",
            "str_list": "a list of strings",
            "int_or_ints": "an int or a list of ints",
            "any": "any value",
        }[self.kind]
        if self.choices is not None:
            words = "one of " + ", ".join(repr(c) for c in self.choices)
        elif self.low is not None and self.high is not None:
            words += f" in [{self.low}, {self.high}]"
        elif self.low is not None:
            words += f" >= {self.low}"
        if self.optional:
            words += " or None"
        return words

    def check(self, owner: str, name: str, value: Any) -> Any:
        """Return ``value`` (numpy scalars turned into Python ones) or raise naming the field."""
        if self.convert is not None:
            return self.convert(owner, name, value)
        if value is None:
            if self.optional:
                return None
            raise _type_error(owner, name, self.expected(), value)
        kind = self.kind
        if kind == "int":
            if not _is_int(value):
                raise _type_error(owner, name, self.expected(), value)
            value = int(value)
        elif kind == "float":
            if not _is_real(value):
                raise _type_error(owner, name, self.expected(), value)
            if not isinstance(value, (int, float)):
                value = float(value)
            if math.isnan(value):
                raise _value_error(owner, name, self.expected(), value)
        elif kind == "bool":
            if not isinstance(value, bool):
                # numpy.bool_ is not a bool subclass but is what array code hands over
                if type(value).__name__ in ("bool_", "bool") and type(value).__module__ == "numpy":
                    return bool(value)
                raise _type_error(owner, name, self.expected(), value)
        elif kind == "str":
            if not isinstance(value, str):
                raise _type_error(owner, name, self.expected(), value)
        elif kind == "activation":
            if not (isinstance(value, str) or callable(value)):
                raise _type_error(owner, name, self.expected(), value)
        elif kind == "dict":
            if not isinstance(value, dict):
                raise _type_error(owner, name, self.expected(), value)
        elif kind == "str_list":
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise _type_error(owner, name, self.expected(), value)
            value = list(value)
        elif kind == "int_or_ints":
            if isinstance(value, (list, tuple)):
                if not all(_is_int(v) for v in value):
                    raise _type_error(owner, name, self.expected(), value)
                value = [int(v) for v in value]
            elif _is_int(value):
                value = int(value)
            else:
                raise _type_error(owner, name, self.expected(), value)
        if self.choices is not None and value not in self.choices:
            raise _value_error(owner, name, self.expected(), value)
        if self.low is not None and value < self.low:
            raise _value_error(owner, name, self.expected(), value)
        if self.high is not None and value > self.high:
            raise _value_error(owner, name, self.expected(), value)
        return value


def _type_error(owner: str, name: str, expected: str, value: Any) -> TypeError:
    return TypeError(f"{owner} argument {name!r}: expected {expected}, given {value!r} ({type(value).__name__})")


def _value_error(owner: str, name: str, expected: str, value: Any) -> ValueError:
    return ValueError(f"{owner} argument {name!r}: expected {expected}, given {value!r}")


# Shorthands the family files use.
def positive_int(optional: bool = False) -> Field:
    return Field("int", low=1, optional=optional)


def count(optional: bool = False) -> Field:
    """A number of things that may be zero (layers, token types, ...)."""
    return Field("int", low=0, optional=optional)


def probability(optional: bool = False) -> Field:
    return Field("float", low=0, high=1, optional=optional)


def non_negative(optional: bool = False) -> Field:
    return Field("float", low=0, optional=optional)


BOOL = Field("bool")
STRING = Field("str")
TOKEN_ID = Field("int", optional=True)  # negative ids occur in the wild (-1 meaning "none")

# The settings of a BERT encoder, which ELECTRA, RoBERTa and MPNet name and check alike.
BERT_FIELDS: dict[str, Field] = {
    "vocab_size": positive_int(),
    "hidden_size": positive_int(),
    "num_hidden_layers": count(),
    "num_attention_heads": positive_int(),
    "intermediate_size": positive_int(),
    "hidden_act": Field("activation"),
    "hidden_dropout_prob": probability(),
    "attention_probs_dropout_prob": probability(),
    "max_position_embeddings": positive_int(),
    "initializer_range": non_negative(),
    "layer_norm_eps": non_negative(),
}


def dtype_name(value: Any, owner: str = "PretrainedConfig", name: str = "torch_dtype") -> Optional[str]:
    """Canonical name (``"float16"``) of a dtype given as a name, a ``torch.dtype`` or a numpy dtype."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value[len("torch."):] if value.startswith("torch.") else value
    else:
        module = type(value).__module__ or ""
        if module.split(".")[0] == "torch":  # torch.dtype prints as "torch.float16"
            text = str(value).rsplit(".", 1)[-1]
        elif module.split(".")[0] == "numpy" and hasattr(value, "name"):
            text = value.name
        else:
            raise _type_error(owner, name, "a dtype name such as 'float16' or a torch.dtype", value)
    text = _DTYPE_SYNONYMS.get(text, text)
    if text not in _DTYPE_NAMES:
        raise _value_error(owner, name, "a dtype name such as 'float16', 'bfloat16' or 'float32'", value)
    return text


def _convert_dtype(owner: str, name: str, value: Any) -> Optional[str]:
    return dtype_name(value, owner, name)


def _int_keys(owner: str, name: str, value: Any, what: str) -> dict:
    try:
        return {int(key): item for key, item in value.items()}
    except (TypeError, ValueError):
        raise ValueError(
            f"{owner} argument {name!r}: expected a dict keyed by {what} ids (ints, or digit strings from JSON), "
            f"given {value!r}"
        ) from None


def _convert_id2label(owner: str, name: str, value: Any) -> Optional[dict]:
    if value is None:
        return None
    if not isinstance(value, dict):
        # ValueError, as the reference raises for a non-dict map
        raise _value_error(owner, name, "a dict of label id -> label name", value)
    return _int_keys(owner, name, value, "label")


def _convert_label2id(owner: str, name: str, value: Any) -> Optional[dict]:
    if value is not None and not isinstance(value, dict):
        raise _value_error(owner, name, "a dict of label name -> label id", value)
    return value


def _convert_pruned_heads(owner: str, name: str, value: Any) -> dict:
    if not isinstance(value, dict):
        raise _type_error(owner, name, "a dict of layer index -> list of head indices", value)
    return _int_keys(owner, name, value, "layer")


def _convert_name_or_path(owner: str, name: str, value: Any) -> str:
    return "" if value is None else str(os.fspath(value) if isinstance(value, os.PathLike) else value)


def _convert_problem_type(owner: str, name: str, value: Any) -> Optional[str]:
    if value is not None and value not in PROBLEM_TYPES:
        raise _value_error(owner, name, "one of " + ", ".join(repr(p) for p in PROBLEM_TYPES) + " or None", value)
    return value


def _convert_early_stopping(owner: str, name: str, value: Any) -> Any:
    if not isinstance(value, bool) and value != "never":
        raise _value_error(owner, name, "True, False or 'never'", value)
    return value


# Generation settings that 4.37 configs still carry (only for backward compatibility: the generation
# config is where they belong now). Loading keeps them; saving writes the ones that differ.
GENERATION_DEFAULTS: dict[str, Any] = {
    "max_length": 20,
    "min_length": 0,
    "do_sample": False,
    "early_stopping": False,
    "num_beams": 1,
    "num_beam_groups": 1,
    "diversity_penalty": 0.0,
    "temperature": 1.0,
    "top_k": 50,
    "top_p": 1.0,
    "typical_p": 1.0,
    "repetition_penalty": 1.0,
    "length_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0,
    "bad_words_ids": None,
    "num_return_sequences": 1,
    "output_scores": False,
    "return_dict_in_generate": False,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "remove_invalid_values": False,
    "exponential_decay_length_penalty": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
}

_BASE_FIELDS: dict[str, Field] = {
    "return_dict": BOOL,
    "output_hidden_states": BOOL,
    "output_attentions": BOOL,
    "torchscript": BOOL,
    "torch_dtype": Field("any", convert=_convert_dtype),
    "use_bfloat16": BOOL,
    "tf_legacy_loss": BOOL,
    "pruned_heads": Field("dict", convert=_convert_pruned_heads),
    "tie_word_embeddings": BOOL,
    "chunk_size_feed_forward": count(),
    "is_encoder_decoder": BOOL,
    "is_decoder": BOOL,
    "cross_attention_hidden_size": positive_int(optional=True),
    "add_cross_attention": BOOL,
    "tie_encoder_decoder": BOOL,
    "architectures": Field("str_list", optional=True),
    "finetuning_task": Field("str", optional=True),
    "id2label": Field("dict", convert=_convert_id2label),
    "label2id": Field("dict", convert=_convert_label2id),
    "tokenizer_class": Field("str", optional=True),
    "prefix": Field("str", optional=True),
    "bos_token_id": TOKEN_ID,
    "pad_token_id": TOKEN_ID,
    "eos_token_id": Field("int_or_ints", optional=True),
    "sep_token_id": TOKEN_ID,
    "decoder_start_token_id": TOKEN_ID,
    "task_specific_params": Field("dict", optional=True),
    "problem_type": Field("str", convert=_convert_problem_type),
    "_name_or_path": Field("str", convert=_convert_name_or_path),
    "_attn_implementation_internal": Field("str", optional=True),
    # generation settings: types only, the generation code owns their meaning
    "max_length": count(optional=True),
    "min_length": count(optional=True),
    "do_sample": BOOL,
    "early_stopping": Field("any", convert=_convert_early_stopping),
    "num_beams": positive_int(),
    "num_beam_groups": positive_int(),
    "diversity_penalty": Field("float"),
    "temperature": Field("float", low=0),
    "top_k": count(optional=True),
    "top_p": Field("float", low=0, high=1),
    "typical_p": Field("float", low=0, high=1),
    "repetition_penalty": Field("float", low=0),
    "length_penalty": Field("float"),
    "no_repeat_ngram_size": count(),
    "encoder_no_repeat_ngram_size": count(),
    "num_return_sequences": positive_int(),
    "output_scores": BOOL,
    "return_dict_in_generate": BOOL,
    "forced_bos_token_id": TOKEN_ID,
    "forced_eos_token_id": Field("int_or_ints", optional=True),
    "remove_invalid_values": BOOL,
}


# --------------------------------------------------------------------------------------------------
# Files


def _read_json(path: str | os.PathLike) -> dict:
    try:
        with open(path, "r", encoding="utf-8") as handle:
            data = json.loads(handle.read())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise OSError(f"the config file {os.fspath(path)!r} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise OSError(
            f"the config file {os.fspath(path)!r} must hold a JSON object, found {type(data).__name__}"
        )
    return data


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Replace ``path`` with ``text`` so that readers see the old file or the new one, never half of one.

    The temporary file lives in the same folder (``os.replace`` is atomic only within a file system) and is
    created with the default permissions, as a plain ``open`` would.
    """
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{name}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except FileNotFoundError:
            pass
        raise


def _parse_version(text: str) -> Optional[tuple]:
    parts = re.findall(r"\d+", text)
    return tuple(int(p) for p in parts[:3]) if parts else None


def _pick_versioned_file(names: list) -> str:
    """Among ``config.X.Y.Z.json`` files, the newest one not newer than the reference release."""
    best, best_version = CONFIG_NAME, None
    for name in names:
        match = _VERSIONED_CONFIG.match(str(name))
        version = _parse_version(match.group(1)) if match else None
        if version is not None and version <= _REFERENCE_VERSION and (best_version is None or version > best_version):
            best, best_version = name, version
    return best


# --------------------------------------------------------------------------------------------------


class PretrainedConfig:
    """Base class of all configurations: common settings, (de)serialisation, loading and saving.

    Class attributes: ``model_type`` (written to ``config.json`` and used by ``AutoConfig``),
    ``attribute_map`` (standard names such as ``hidden_size`` mapped to a family's own names),
    ``is_composition`` and ``keys_to_ignore_at_inference``.

    Every keyword argument is stored as an attribute; the common ones have these defaults:
    ``return_dict=True``, ``output_hidden_states=False``, ``output_attentions=False``,
    ``torchscript=False``, ``torch_dtype=None`` (also readable and settable as ``dtype``; stored as a
    name like ``"float16"``), ``use_bfloat16=False``, ``tf_legacy_loss=False``, ``pruned_heads={}``,
    ``tie_word_embeddings=True``, ``chunk_size_feed_forward=0``, ``is_encoder_decoder=False``,
    ``is_decoder=False``, ``cross_attention_hidden_size=None``, ``add_cross_attention=False``,
    ``tie_encoder_decoder=False``, the legacy generation settings (``max_length=20``, ``num_beams=1``,
    ...), ``architectures``, ``finetuning_task``, ``id2label``/``label2id`` (two labels by default, or
    ``num_labels`` of them), ``tokenizer_class``, ``prefix``, ``bos_token_id``, ``pad_token_id``,
    ``eos_token_id``, ``sep_token_id``, ``decoder_start_token_id``, ``task_specific_params`` and
    ``problem_type`` (``"regression"``, ``"single_label_classification"`` or
    ``"multi_label_classification"``).
    """

    model_type: str = ""
    is_composition: bool = False
    attribute_map: dict[str, str] = {}
    keys_to_ignore_at_inference: list[str] = []
    _auto_class: Optional[str] = None
    _fields: dict[str, Field] = _BASE_FIELDS
    _all_fields: dict[str, Field] = _BASE_FIELDS

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        merged = dict(cls.__mro__[1].__dict__.get("_all_fields", _BASE_FIELDS))
        merged.update(cls.__dict__.get("_fields", {}))
        cls._all_fields = merged

    # -- attribute access -------------------------------------------------------------------------

    @classmethod
    def _canonical(cls, key: str) -> str:
        mapped = cls.attribute_map.get(key)
        if mapped is not None:
            return mapped
        return "torch_dtype" if key == "dtype" else key

    def __setattr__(self, key: str, value: Any) -> None:
        cls = type(self)
        key = cls._canonical(key)
        field = cls._all_fields.get(key)
        if field is not None:
            value = field.check(cls.__name__, key, value)
        object.__setattr__(self, key, value)

    def __getattr__(self, key: str) -> Any:
        # Only reached when normal lookup fails: that is how aliases (never stored) resolve.
        if key.startswith("__"):
            raise AttributeError(key)
        canonical = type(self)._canonical(key)
        if canonical != key:
            return getattr(self, canonical)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {key!r}")

    def __init__(self, **kwargs: Any):
        self.return_dict = kwargs.pop("return_dict", True)
        self.output_hidden_states = kwargs.pop("output_hidden_states", False)
        self.output_attentions = kwargs.pop("output_attentions", False)
        self.torchscript = kwargs.pop("torchscript", False)
        self.torch_dtype = self._pop_dtype(kwargs)
        self.use_bfloat16 = kwargs.pop("use_bfloat16", False)
        self.tf_legacy_loss = kwargs.pop("tf_legacy_loss", False)
        self.pruned_heads = kwargs.pop("pruned_heads", {})
        self.tie_word_embeddings = kwargs.pop("tie_word_embeddings", True)
        self.chunk_size_feed_forward = kwargs.pop("chunk_size_feed_forward", 0)

        self.is_encoder_decoder = kwargs.pop("is_encoder_decoder", False)
        self.is_decoder = kwargs.pop("is_decoder", False)
        self.cross_attention_hidden_size = kwargs.pop("cross_attention_hidden_size", None)
        self.add_cross_attention = kwargs.pop("add_cross_attention", False)
        self.tie_encoder_decoder = kwargs.pop("tie_encoder_decoder", False)

        for name, default in GENERATION_DEFAULTS.items():
            setattr(self, name, kwargs.pop(name, default))

        self.architectures = kwargs.pop("architectures", None)
        self.finetuning_task = kwargs.pop("finetuning_task", None)
        self.id2label = kwargs.pop("id2label", None)
        self.label2id = kwargs.pop("label2id", None)
        num_labels = kwargs.pop("num_labels", None)
        if self.id2label is None:
            self.num_labels = 2 if num_labels is None else num_labels
        elif num_labels is not None and num_labels != len(self.id2label):
            # The explicit map wins, as in the reference.
            logger.warning(
                "num_labels=%s disagrees with id2label (%d labels); keeping id2label", num_labels, len(self.id2label)
            )

        self.tokenizer_class = kwargs.pop("tokenizer_class", None)
        self.prefix = kwargs.pop("prefix", None)
        self.bos_token_id = kwargs.pop("bos_token_id", None)
        self.pad_token_id = kwargs.pop("pad_token_id", None)
        self.eos_token_id = kwargs.pop("eos_token_id", None)
        self.sep_token_id = kwargs.pop("sep_token_id", None)
        self.decoder_start_token_id = kwargs.pop("decoder_start_token_id", None)
        self.task_specific_params = kwargs.pop("task_specific_params", None)
        self.problem_type = kwargs.pop("problem_type", None)

        if kwargs.pop("xla_device", None) is not None:
            logger.warning("xla_device is obsolete and ignored; it can be dropped from config.json")

        self._name_or_path = kwargs.pop("name_or_path", "")
        self._commit_hash = kwargs.pop("_commit_hash", None)
        self._attn_implementation_internal = kwargs.pop("attn_implementation", None)
        self.transformers_version = kwargs.pop("transformers_version", None)

        if kwargs.get("gradient_checkpointing", False):
            logger.warning(
                "gradient_checkpointing in a config is obsolete: call model.gradient_checkpointing_enable() instead"
            )

        # Whatever is left is kept as-is: configs written by other versions must survive a round trip.
        for key, value in kwargs.items():
            setattr(self, key, value)

    def _set_fields(self, fields: dict, arguments: dict) -> None:
        """Set, and so check, the family's documented ``fields`` from its constructor's ``arguments`` (its
        ``locals()``), in the order of the constructor's parameters."""
        for name, value in arguments.items():
            if name in fields:
                setattr(self, name, value)

    def _pop_dtype(self, kwargs: dict) -> Optional[str]:
        owner = type(self).__name__
        legacy = dtype_name(kwargs.pop("torch_dtype", None), owner, "torch_dtype")
        newer = dtype_name(kwargs.pop("dtype", None), owner, "dtype")
        if legacy is not None and newer is not None and legacy != newer:
            raise ValueError(
                f"{owner}: torch_dtype and dtype name the same setting but disagree: given {legacy!r} and {newer!r}"
            )
        return legacy if legacy is not None else newer

    # -- derived properties -----------------------------------------------------------------------

    @property
    def name_or_path(self) -> str:
        return getattr(self, "_name_or_path", None)

    @name_or_path.setter
    def name_or_path(self, value: Any) -> None:
        self._name_or_path = value

    @property
    def use_return_dict(self) -> bool:
        """Whether models return output objects; torchscript forces tuples."""
        return self.return_dict and not self.torchscript

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @num_labels.setter
    def num_labels(self, num_labels: int) -> None:
        num_labels = count().check(type(self).__name__, "num_labels", num_labels)
        current = self.__dict__.get("id2label")
        if current is None or len(current) != num_labels:
            self.id2label = {i: f"LABEL_{i}" for i in range(num_labels)}
            self.label2id = {label: i for i, label in self.id2label.items()}

    @property
    def _attn_implementation(self) -> str:
        return self.__dict__.get("_attn_implementation_internal") or "eager"

    @_attn_implementation.setter
    def _attn_implementation(self, value: Optional[str]) -> None:
        self._attn_implementation_internal = value

    def get_text_config(self, decoder: bool = False) -> "PretrainedConfig":
        """The config of the text part; these families have only one part, so ``self``."""
        return self

    # -- serialisation ----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """All attributes as a JSON-ready dict, with ``model_type`` and the writer's version added."""
        output = copy.deepcopy(self.__dict__)
        output["model_type"] = type(self).model_type
        for private in ("_auto_class", "_commit_hash", "_attn_implementation_internal", "_pre_quantization_dtype"):
            output.pop(private, None)
        output["transformers_version"] = SAVED_VERSION
        for key, value in output.items():
            if isinstance(value, PretrainedConfig):
                nested = value.to_dict()
                del nested["transformers_version"]
                output[key] = nested
        return output

    def to_diff_dict(self) -> dict[str, Any]:
        """What ``config.json`` holds: family fields always, common fields only where they differ from
        the defaults of the base class or of this class."""
        full = self.to_dict()
        base = PretrainedConfig().to_dict()
        own = {} if self.is_composition else type(self)().to_dict()
        out: dict[str, Any] = {}
        for key, value in full.items():
            sub = self.__dict__.get(key)
            if isinstance(sub, PretrainedConfig) and isinstance(own.get(key), dict):
                diff = _nested_diff(sub, value, own[key])
                if "model_type" in value:
                    diff["model_type"] = value["model_type"]  # kept so the nested type stays readable
                if diff:
                    out[key] = diff
            elif (
                key not in base
                or key == "transformers_version"
                or value != base[key]
                or (key in own and value != own[key])
            ):
                out[key] = value
        return out

    def to_json_string(self, use_diff: bool = True) -> str:
        data = self.to_diff_dict() if use_diff else self.to_dict()
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    def to_json_file(self, json_file_path: str | os.PathLike, use_diff: bool = True) -> None:
        write_text_atomic(json_file_path, self.to_json_string(use_diff=use_diff))

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs: Any) -> None:
        """Write ``config.json`` into ``save_directory`` (created if missing); reload with ``from_pretrained``.

        The file is replaced atomically, so an interrupted save leaves the previous ``config.json`` intact.
        """
        if os.path.isfile(save_directory):
            raise AssertionError(f"save_directory should be a folder, given the file {os.fspath(save_directory)!r}")
        own_defaults = type(self)().__dict__ if not self.is_composition else {}
        unusual = {
            name: getattr(self, name)
            for name, default in GENERATION_DEFAULTS.items()
            if getattr(self, name, default) != default and getattr(self, name) != own_defaults.get(name, default)
        }
        if unusual:
            logger.warning(
                "non-default generation settings in the model config belong in a generation config: %s", unusual
            )
        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, CONFIG_NAME)
        self.to_json_file(path, use_diff=True)
        logger.info("configuration saved in %s", path)
        if push_to_hub:
            from ..checkpoints.files import push_folder

            push_folder(os.fspath(save_directory), **kwargs)

    def update(self, config_dict: dict[str, Any]) -> None:
        """Set each key of ``config_dict`` as an attribute (checked like any assignment)."""
        for key, value in config_dict.items():
            setattr(self, key, value)

    def update_from_string(self, update_str: str) -> None:
        """Apply ``"n_embd=10,resid_pdrop=0.2,scale_attn_weights=false"``; values are parsed by the type
        the attribute already has, and only existing attributes may be changed."""
        for item in update_str.split(","):
            if "=" not in item:
                raise ValueError(f"update_str: expected comma-separated key=value pairs, given {update_str!r}")
            key, text = item.split("=", 1)
            if not hasattr(self, key):
                raise ValueError(f"update_str: key {key!r} is not an attribute of this config")
            old = getattr(self, key)
            if isinstance(old, bool):
                if text.lower() in ("true", "1", "y", "yes"):
                    value: Any = True
                elif text.lower() in ("false", "0", "n", "no"):
                    value = False
                else:
                    raise ValueError(f"update_str: expected true or false for {key!r}, given {text!r}")
            elif isinstance(old, int):
                value = int(text)
            elif isinstance(old, float):
                value = float(text)
            elif isinstance(old, str):
                value = text
            else:
                raise ValueError(
                    f"update_str: only int, float, bool or string attributes can be updated, {key!r} holds "
                    f"{type(old).__name__}"
                )
            setattr(self, key, value)

    def dict_torch_dtype_to_str(self, d: dict[str, Any]) -> None:
        """Turn ``torch_dtype`` values (here and in nested dicts) into names like ``"float32"``, in place."""
        if d.get("torch_dtype") is not None:
            d["torch_dtype"] = dtype_name(d["torch_dtype"], type(self).__name__)
        for value in d.values():
            if isinstance(value, dict):
                self.dict_torch_dtype_to_str(value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PretrainedConfig) and self.__dict__ == other.__dict__

    __hash__ = None  # mutable and compared by value

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string()}"

    # -- loading ----------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any):
        """Load from a folder holding ``config.json``, a path to a JSON file, or a Hub repository id.

        Keyword arguments naming config attributes override the loaded values; Hub options (``revision``,
        ``cache_dir``, ``token``, ``local_files_only``, ``subfolder``, ...) steer the lookup. With
        ``return_unused_kwargs=True`` the result is ``(config, unused_kwargs)``.
        """
        config_dict, kwargs = cls.get_config_dict(pretrained_model_name_or_path, **kwargs)
        cls._warn_model_type(config_dict)
        return cls.from_dict(config_dict, **kwargs)

    @classmethod
    def _warn_model_type(cls, config_dict: dict) -> None:
        found = config_dict.get("model_type")
        if found is not None and found != cls.model_type:
            # The reference only warns: configs are sometimes shared between related families on purpose.
            logger.warning(
                "loading a config of model_type %r into %s (model_type %r); some settings may not apply",
                found,
                cls.__name__,
                cls.model_type,
            )

    @classmethod
    def get_config_dict(
        cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The raw dict of a checkpoint's config and the keyword arguments the lookup did not consume."""
        from ..checkpoints.files import pop_hub_kwargs  # imported on use: configs stay importable on their own

        hub = pop_hub_kwargs(kwargs)
        filename = kwargs.pop("_configuration_file", CONFIG_NAME)
        for name in _LOOKUP_KWARGS:
            kwargs.pop(name, None)
        kwargs.pop("_commit_hash", None)  # recomputed from where the file really is

        config_dict = cls._load_config_file(pretrained_model_name_or_path, filename, hub)
        if "configuration_files" in config_dict:
            chosen = _pick_versioned_file(config_dict["configuration_files"])
            if chosen != filename:
                config_dict = cls._load_config_file(pretrained_model_name_or_path, chosen, hub)
        return config_dict, kwargs

    @staticmethod
    def _load_config_file(path_or_id: str | os.PathLike, filename: str, hub: dict) -> dict:
        subfolder = hub.get("subfolder", "")
        name = os.fspath(path_or_id)
        direct = os.path.join(subfolder, name) if subfolder else name
        if os.path.isfile(direct):
            resolved = direct
        else:
            from ..checkpoints.files import cached_file

            resolved = cached_file(name, filename, **hub)
        config_dict = _read_json(resolved)
        match = _COMMIT_IN_PATH.search(os.fspath(resolved))
        config_dict["_commit_hash"] = match.group(1) if match else None
        return config_dict

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any):
        """Build a config from ``config_dict``, then apply keyword overrides for existing attributes.

        Keywords that are not attributes come back unused (with ``return_unused_kwargs=True``);
        ``torch_dtype`` is applied and also returned, since model loading needs it too.
        """
        return_unused_kwargs = kwargs.pop("return_unused_kwargs", False)
        kwargs.pop("_from_auto", None)
        kwargs.pop("_from_pipeline", None)
        config_dict = dict(config_dict)
        if "_commit_hash" in kwargs and "_commit_hash" in config_dict:
            kwargs["_commit_hash"] = config_dict["_commit_hash"]
        config_dict["attn_implementation"] = kwargs.pop("attn_implementation", None)

        config = cls(**config_dict)

        if "num_labels" in kwargs and "id2label" in kwargs:
            id2label = kwargs["id2label"] or {}
            if len(id2label) != kwargs["num_labels"]:
                raise ValueError(
                    f"num_labels={kwargs['num_labels']} and id2label={kwargs['id2label']!r} disagree on the number "
                    "of labels; pass only one of them"
                )
        used = []
        for key, value in kwargs.items():
            if hasattr(config, key):
                current = getattr(config, key)
                if isinstance(current, PretrainedConfig) and isinstance(value, dict):
                    value = type(current)(**value)
                setattr(config, key, value)
                if key not in ("torch_dtype", "dtype"):
                    used.append(key)
        for key in used:
            kwargs.pop(key)
        if return_unused_kwargs:
            return config, kwargs
        return config

    @classmethod
    def from_json_file(cls, json_file: str | os.PathLike):
        """Build a config from a JSON file of its arguments."""
        return cls(**_read_json(json_file))

    @classmethod
    def _dict_from_json_file(cls, json_file: str | os.PathLike) -> dict:
        return _read_json(json_file)

    @classmethod
    def register_for_auto_class(cls, auto_class: str | type = "AutoConfig") -> None:
        """Mark a custom config class for ``AutoConfig`` (kept for API compatibility)."""
        name = auto_class if isinstance(auto_class, str) else auto_class.__name__
        if name != "AutoConfig":
            raise ValueError(f"auto_class: expected 'AutoConfig', given {name!r}")
        cls._auto_class = name

    @staticmethod
    def _get_generation_defaults() -> dict[str, Any]:
        return dict(GENERATION_DEFAULTS)

    def _has_non_default_generation_parameters(self) -> bool:
        return any(getattr(self, name, default) != default for name, default in GENERATION_DEFAULTS.items())


# The newer spelling (the GPT-J page uses it); same class.
PreTrainedConfig = PretrainedConfig


def _nested_diff(config: PretrainedConfig, values: dict, reference: dict) -> dict:
    """Entries of a nested config's dict that differ from its class's defaults or from ``reference``
    (the same field in the parent class's default config)."""
    defaults = type(config)().to_dict()
    diff = {}
    for key, value in values.items():
        sub = config.__dict__.get(key)
        if isinstance(sub, PretrainedConfig) and isinstance(reference.get(key), dict):
            inner = _nested_diff(sub, value, reference[key])
            if inner:
                diff[key] = inner
        elif key not in reference or value != reference[key] or key not in defaults or value != defaults[key]:
            diff[key] = value
    return diff
