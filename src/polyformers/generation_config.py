"""GenerationConfig: how ``generate`` decodes, as data (framework-free).

Every field of the reference's 4.37 ``GenerationConfig`` is kept, with its default, so a
``generation_config.json`` written by either library reads back unchanged. Values are checked when they are
set, so a bad value fails where it is written, naming the field; checks that depend on several fields (is
``temperature`` usable for sampling?) run in :meth:`GenerationConfig.validate`, which ``generate`` calls.
"""

from __future__ import annotations

import copy
import json
import logging
import numbers
import os
import warnings
from typing import Any, Optional

from .configs.base import SAVED_VERSION, Field, count, positive_int, write_text_atomic

logger = logging.getLogger("polyformers")

GENERATION_CONFIG_NAME = "generation_config.json"

# Written by the library and the Hub, not settings: ignored when comparing two configs.
_METADATA_FIELDS = ("_from_model_config", "_commit_hash", "_original_object_hash", "transformers_version")

# Arguments of ``generate`` itself, which a config cannot hold (a common mistake is to put them there).
_GENERATE_ARGUMENTS = (
    "logits_processor", "stopping_criteria", "prefix_allowed_tokens_fn", "synced_gpus", "assistant_model",
    "streamer", "negative_prompt_ids", "negative_prompt_attention_mask",
)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _error(name: str, expected: str, value: Any) -> ValueError:
    return ValueError(f"GenerationConfig argument {name!r}: expected {expected}, given {value!r}")


def _open_unit(name: str, value: Any) -> Any:
    """A fraction in (0, 1]: 0 would keep nothing, so it is refused rather than silently keeping one token."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not 0 < value <= 1:
        raise _error(name, "a number in (0, 1]", value)
    return float(value)


def _positive_number(optional: bool):
    def check(name: str, value: Any) -> Any:
        if value is None and optional:
            return None
        if not isinstance(value, numbers.Real) or isinstance(value, bool) or not value > 0:
            raise _error(name, "a number > 0" + (" or None" if optional else ""), value)
        return value

    return check


def _number(name: str, value: Any) -> Any:
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise _error(name, "a number", value)
    return value


def _cutoff(name: str, value: Any) -> Any:
    """A probability floor in [0, 1): 0 turns it off, 1 or more would filter every token."""
    if value is None:
        return None
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not 0 <= value < 1:
        raise _error(name, "a number in [0, 1) or None", value)
    return value


def _non_negative_number(name: str, value: Any) -> Any:
    if value is None:
        return None
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or value < 0:
        raise _error(name, "a number >= 0 or None", value)
    return value


def _decay(name: str, value: Any) -> Any:
    if value is None:
        return None
    if (
        isinstance(value, (list, tuple)) and len(value) == 2 and _is_int(value[0]) and value[0] >= 0
        and isinstance(value[1], numbers.Real) and not isinstance(value[1], bool)
    ):
        return value
    raise _error(name, "(start_index: int >= 0, decay_factor: float) or None", value)


def _sequence_bias(name: str, value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, dict) and value and all(
        isinstance(ids, tuple) and ids and all(_is_int(t) and t >= 0 for t in ids)
        and isinstance(bias, numbers.Real) and not isinstance(bias, bool)
        for ids, bias in value.items()
    ):
        return value
    raise _error(name, "a non-empty dict {tuple of token ids: float bias} or None", value)


def _token_ids(optional: bool = True, empty: bool = False):
    """An int or a list of ints (several end-of-sequence tokens, for instance), each >= 0; with ``empty`` the
    empty list too (``eos_token_id=[]``: no end-of-sequence token, where None means the model's own)."""

    def check(name: str, value: Any) -> Any:
        if value is None and optional:
            return None
        if _is_int(value) and value >= 0:
            return int(value)
        if isinstance(value, (list, tuple)) and (value or empty) and all(_is_int(v) and v >= 0 for v in value):
            return [int(v) for v in value]
        kinds = "a token id >= 0 or a " + ("" if empty else "non-empty ") + "list of them"
        raise _error(name, kinds + (" or None" if optional else ""), value)

    return check


def _id_list(name: str, value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, (list, tuple)) and all(_is_int(v) and v >= 0 for v in value):
        return [int(v) for v in value]
    raise _error(name, "a list of token ids >= 0 or None", value)


def _id_lists(name: str, value: Any) -> Any:
    if value is None:
        return None
    if (
        isinstance(value, (list, tuple)) and value
        and all(isinstance(seq, (list, tuple)) and seq and all(_is_int(v) and v >= 0 for v in seq) for seq in value)
    ):
        return [[int(v) for v in seq] for seq in value]
    raise _error(name, "a non-empty list of non-empty lists of token ids >= 0, or None", value)


def _force_words(name: str, value: Any) -> Any:
    """Words the output must contain: each entry a list of token ids (a phrase) or a list of such lists
    (any one of them)."""
    if value is None:
        return None

    def ids(seq: Any) -> bool:
        return isinstance(seq, list) and len(seq) > 0 and all(_is_int(v) and v >= 0 for v in seq)

    if isinstance(value, list) and value and all(
        ids(entry) or (isinstance(entry, list) and entry and all(ids(word) for word in entry)) for entry in value
    ):
        return value
    raise _error(name, "a non-empty list of words, each a non-empty list of token ids >= 0 (or a list of such lists, "
                       "one of which must appear), or None", value)


def _constraints(name: str, value: Any) -> Any:
    """Constraint objects (polyformers.PhrasalConstraint, ...): checked by their methods, so that this module
    stays framework-free."""
    if value is None:
        return None
    methods = ("advance", "does_advance", "update", "reset", "remaining", "copy")
    if isinstance(value, list) and value and all(all(callable(getattr(c, m, None)) for m in methods) for c in value):
        return value
    raise _error(name, "a non-empty list of Constraint objects (PhrasalConstraint, DisjunctiveConstraint, ...) or None",
                 value)


def _forced_decoder_ids(name: str, value: Any) -> Any:
    """[index, token id] pairs; a None token (as in Whisper's files) leaves that position free."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)) and value and all(
        isinstance(pair, (list, tuple)) and len(pair) == 2 and _is_int(pair[0]) and pair[0] >= 0
        and (pair[1] is None or _is_int(pair[1]) and pair[1] >= 0)
        for pair in value
    ):
        return [[int(index), None if token is None else int(token)] for index, token in value]
    raise _error(name, "a non-empty list of [index >= 0, token id >= 0 or None] pairs, or None", value)


def _guidance_scale(name: str, value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return value
    raise _error(name, "a number (1 turns guidance off) or None", value)


def _early_stopping(name: str, value: Any) -> Any:
    if not isinstance(value, bool) and value != "never":
        raise _error(name, "True, False or 'never'", value)
    return value


def _stop_strings(name: str, value: Any) -> Any:
    if value is None or isinstance(value, str) and value:
        return value
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) and v for v in value):
        return list(value)
    raise _error(name, "a non-empty string, a list of them, or None", value)


def _field(field: Field):
    def check(name: str, value: Any) -> Any:
        try:
            return field.check("GenerationConfig", name, value)
        except TypeError as err:  # one exception type for every bad value of a generation setting
            raise ValueError(str(err)) from None

    return check


_BOOL = _field(Field("bool"))
_ANY = None  # accepted as given: settings of decoding modes this package does not run (see generate)

# field -> (default, check). The order is the reference's, which keeps to_dict() readable side by side.
FIELDS: dict[str, tuple[Any, Any]] = {
    # length
    "max_length": (20, _field(count(optional=True))),
    "max_new_tokens": (None, _field(positive_int(optional=True))),
    "min_length": (0, _field(count(optional=True))),
    "min_new_tokens": (None, _field(count(optional=True))),
    "early_stopping": (False, _early_stopping),
    "max_time": (None, _positive_number(optional=True)),
    "stop_strings": (None, _stop_strings),
    # strategy
    "do_sample": (False, _BOOL),
    "num_beams": (1, _field(positive_int(optional=True))),
    "num_beam_groups": (1, _field(positive_int())),
    "penalty_alpha": (None, _non_negative_number),
    "use_cache": (True, _BOOL),
    # logits manipulation
    "temperature": (1.0, _field(Field("float", optional=True))),
    "top_k": (50, _field(count(optional=True))),
    "top_p": (1.0, lambda n, v: None if v is None else _open_unit(n, v)),
    "typical_p": (1.0, lambda n, v: None if v is None else _open_unit(n, v)),
    "epsilon_cutoff": (0.0, _cutoff),
    "eta_cutoff": (0.0, _cutoff),
    "diversity_penalty": (0.0, _number),
    "repetition_penalty": (1.0, lambda n, v: None if v is None else _positive_number(False)(n, v)),
    "encoder_repetition_penalty": (1.0, lambda n, v: None if v is None else _positive_number(False)(n, v)),
    "length_penalty": (1.0, _number),
    "no_repeat_ngram_size": (0, _field(count(optional=True))),
    "bad_words_ids": (None, _id_lists),
    "force_words_ids": (None, _force_words),
    "renormalize_logits": (False, _BOOL),
    "constraints": (None, _constraints),
    "forced_bos_token_id": (None, _token_ids()),
    "forced_eos_token_id": (None, _token_ids()),
    "remove_invalid_values": (False, _BOOL),
    "exponential_decay_length_penalty": (None, _decay),
    "suppress_tokens": (None, _id_list),
    "begin_suppress_tokens": (None, _id_list),
    "forced_decoder_ids": (None, _forced_decoder_ids),
    "sequence_bias": (None, _sequence_bias),
    "guidance_scale": (None, _guidance_scale),
    "low_memory": (None, _ANY),  # read as a truth value, as the reference does (contrastive search only)
    # outputs
    "num_return_sequences": (1, _field(positive_int())),
    "output_attentions": (False, _BOOL),
    "output_hidden_states": (False, _BOOL),
    "output_scores": (False, _BOOL),
    "return_dict_in_generate": (False, _BOOL),
    # special tokens
    "pad_token_id": (None, _token_ids()),
    "bos_token_id": (None, _token_ids()),
    "eos_token_id": (None, _token_ids(empty=True)),
    # encoder-decoder models
    "encoder_no_repeat_ngram_size": (0, _field(count(optional=True))),
    "decoder_start_token_id": (None, _token_ids()),
    # assisted generation
    "num_assistant_tokens": (5, _positive_number(False)),  # the reference's schedule makes it a float
    "num_assistant_tokens_schedule": ("heuristic", _ANY),  # checked when an assistant uses it
    "prompt_lookup_num_tokens": (None, _field(positive_int(optional=True))),
    "generation_kwargs": ({}, _ANY),
}

# Fields whose default the reference writes only when changed; ``stop_strings`` is newer than 4.37 and is
# left out of to_dict() while unset, so full dumps stay identical to the reference's.
_NEWER_FIELDS = ("stop_strings",)

# A non-default value here selects a decoding mode that generate does not implement.
UNSUPPORTED = {
}


class GenerationConfig:
    """Settings of ``generate``: lengths, decoding strategy, logits processing, outputs, special tokens.

    Any field can be given as a keyword argument; unknown keywords become attributes too (they are written
    to JSON and read back), except when the config is built from a model config, whose other settings are
    not generation settings.
    """

    def __init__(self, **kwargs: Any):
        for name, (default, _) in FIELDS.items():
            setattr(self, name, kwargs.pop(name, copy.deepcopy(default)))
        self._from_model_config = bool(kwargs.pop("_from_model_config", False))
        self._commit_hash = kwargs.pop("_commit_hash", None)
        self.transformers_version = kwargs.pop("transformers_version", SAVED_VERSION)
        if not self._from_model_config:
            for key, value in kwargs.items():
                setattr(self, key, value)
        self.validate(is_init=True)

    def __setattr__(self, name: str, value: Any) -> None:
        spec = FIELDS.get(name)
        if spec is not None and spec[1] is not None:
            value = spec[1](name, value)
        object.__setattr__(self, name, value)

    # -- comparison -----------------------------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, GenerationConfig):
            return False
        return self.to_json_string(use_diff=False, ignore_metadata=True) == other.to_json_string(
            use_diff=False, ignore_metadata=True
        )

    def __hash__(self) -> int:
        return hash(self.to_json_string(ignore_metadata=True))

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string(ignore_metadata=True)}"

    # -- validation -----------------------------------------------------------------------------------

    def validate(self, is_init: bool = False) -> None:
        """Check the fields against each other: errors for impossible combinations, ``UserWarning`` for
        settings the chosen decoding mode ignores (as the reference does)."""
        where = " (found while building the generation config: the file it came from may need fixing)" if is_init else ""
        if self.num_beams is None:
            warnings.warn("`num_beams` is set to None - defaulting to 1.", UserWarning)
            self.num_beams = 1
        if self.do_sample:
            if self.temperature is not None and self.temperature <= 0:
                raise ValueError(
                    f"GenerationConfig argument 'temperature': expected a number > 0 when do_sample=True, given "
                    f"{self.temperature!r}; for greedy decoding set do_sample=False"
                )
        else:
            ignored = {"temperature": 1.0, "top_p": 1.0, "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0}
            if self.penalty_alpha is None:
                ignored["top_k"] = 50
            for name, default in ignored.items():
                if getattr(self, name) != default:
                    warnings.warn(
                        f"`do_sample` is set to `False`. However, `{name}` is set to `{getattr(self, name)}` -- this "
                        f"flag is only used in sample-based generation modes. You should set `do_sample=True` or "
                        f"unset `{name}`.{where}",
                        UserWarning,
                    )
        if self.num_beams == 1:
            ignored = {"early_stopping": False, "num_beam_groups": 1, "diversity_penalty": 0.0, "length_penalty": 1.0,
                       "constraints": None}
            for name, default in ignored.items():
                if getattr(self, name) != default:
                    warnings.warn(
                        f"`num_beams` is set to 1. However, `{name}` is set to `{getattr(self, name)}` -- this flag "
                        f"is only used in beam-based generation modes. You should set `num_beams>1` or unset "
                        f"`{name}`.{where}",
                        UserWarning,
                    )
        if self.num_beams > 1 and (self.constraints is not None or self.force_words_ids is not None):
            # Constrained beam search is deterministic and has one group. Like the reference, do_sample is refused
            # with constraints only (with force_words_ids alone it is ignored).
            constrained = "constraints / force_words_ids select constrained beam search, so "
            if self.do_sample and self.constraints is not None:
                raise ValueError(f"GenerationConfig argument 'do_sample': {constrained}it must be False, given True")
            if self.num_beam_groups != 1:
                raise ValueError(
                    f"GenerationConfig argument 'num_beam_groups': {constrained}it must be 1, given "
                    f"{self.num_beam_groups}"
                )
        if self.num_beams > 1 and (self.diversity_penalty != 0.0 or self.num_beam_groups != 1):
            group = "diversity_penalty != 0.0 or num_beam_groups != 1 selects group beam search, so "
            if self.do_sample:
                raise ValueError(f"GenerationConfig argument 'do_sample': {group}it must be False, given True")
            if self.num_beams % self.num_beam_groups != 0:
                raise ValueError(
                    f"GenerationConfig argument 'num_beam_groups': {group}it must divide num_beams={self.num_beams}, "
                    f"given {self.num_beam_groups}"
                )
            if self.diversity_penalty == 0.0:
                raise ValueError(
                    f"GenerationConfig argument 'diversity_penalty': {group}it must be > 0.0 (or the groups are "
                    "identical), given 0.0"
                )
        if self.num_return_sequences != 1:
            if self.num_beams == 1 and not self.do_sample:
                raise ValueError(
                    "GenerationConfig argument 'num_return_sequences': greedy decoding returns one sequence per "
                    f"prompt, so it must be 1 unless do_sample=True or num_beams > 1, given {self.num_return_sequences}"
                )
            if self.num_beams > 1 and self.num_return_sequences > self.num_beams:
                raise ValueError(
                    f"GenerationConfig argument 'num_return_sequences': expected at most num_beams={self.num_beams}, "
                    f"given {self.num_return_sequences}"
                )
        for name in _GENERATE_ARGUMENTS:
            if name in self.__dict__:
                raise ValueError(
                    f"{name!r} is an argument of generate(), not a GenerationConfig field; pass it to generate()"
                )

    # -- dict and JSON --------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Every attribute, JSON-ready, with the writer's version."""
        output = copy.deepcopy(self.__dict__)
        for private in ("_commit_hash", "_original_object_hash"):
            output.pop(private, None)
        for name in _NEWER_FIELDS:
            if output.get(name) is None:
                output.pop(name, None)
        output["transformers_version"] = SAVED_VERSION
        return output

    def to_diff_dict(self) -> dict[str, Any]:
        """The attributes that differ from a default ``GenerationConfig()`` (what the JSON file holds)."""
        defaults = GenerationConfig().to_dict()
        return {
            key: value
            for key, value in self.to_dict().items()
            if key not in defaults or key == "transformers_version" or value != defaults[key]
        }

    def to_json_string(self, use_diff: bool = True, ignore_metadata: bool = False) -> str:
        data = self.to_diff_dict() if use_diff else self.to_dict()
        if ignore_metadata:
            for name in _METADATA_FIELDS:
                data.pop(name, None)
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    def to_json_file(self, json_file_path: str | os.PathLike, use_diff: bool = True) -> None:
        write_text_atomic(json_file_path, self.to_json_string(use_diff=use_diff))

    def update(self, **kwargs: Any) -> dict[str, Any]:
        """Set the keywords that name attributes of this config; return the others (the caller's, e.g. the
        model's inputs) without changing the dict passed in."""
        unused = {}
        for key, value in kwargs.items():
            if hasattr(self, key):
                setattr(self, key, value)
            else:
                unused[key] = value
        return unused

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any):
        """Build from a dict; keyword arguments override it. ``return_unused_kwargs=True`` also returns the
        keywords that are not fields."""
        return_unused_kwargs = kwargs.pop("return_unused_kwargs", False)
        kwargs.pop("_from_auto", None)
        kwargs.pop("_from_pipeline", None)
        if "_commit_hash" in kwargs and "_commit_hash" in config_dict:
            kwargs["_commit_hash"] = config_dict["_commit_hash"]
        config = cls(**{**config_dict, **kwargs})
        unused = config.update(**kwargs)
        return (config, unused) if return_unused_kwargs else config

    @classmethod
    def from_model_config(cls, model_config) -> "GenerationConfig":
        """The generation settings a model config carries (older checkpoints kept them there)."""
        config_dict = model_config.to_dict()
        config_dict.pop("_from_model_config", None)
        config = cls.from_dict(config_dict, _from_model_config=True)
        # Composite models keep their generation settings in the decoder's config.
        defaults = GenerationConfig()
        for part in ("decoder", "generator", "text_config"):
            nested = config_dict.get(part)
            if isinstance(nested, dict):
                for name in config.to_dict():
                    if name in nested and getattr(config, name) == getattr(defaults, name):
                        setattr(config, name, nested[name])
        config._original_object_hash = hash(config)
        return config

    # -- files ----------------------------------------------------------------------------------------

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        config_file_name: Optional[str | os.PathLike] = None,
        push_to_hub: bool = False,
        **kwargs: Any,
    ) -> None:
        """Write ``generation_config.json`` (atomically) into ``save_directory``.

        A config that fails :meth:`validate`, warnings included, is refused: it would load with surprises.
        """
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                self.validate()
        except ValueError as err:
            raise ValueError(f"the generation config is invalid and was not saved: {err}") from err
        if caught:
            raise ValueError(
                "the generation config is invalid and was not saved: " + "; ".join(str(w.message) for w in caught)
            )
        save_directory = os.fspath(save_directory)
        if os.path.isfile(save_directory):
            raise ValueError(f"save_directory must be a folder, given the file {save_directory!r}")
        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, os.fspath(config_file_name or GENERATION_CONFIG_NAME))
        self.to_json_file(path, use_diff=True)
        logger.info("generation config saved in %s", path)
        if push_to_hub:
            from .checkpoints.files import push_folder

            push_folder(save_directory, **kwargs)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name: str | os.PathLike,
        config_file_name: Optional[str | os.PathLike] = None,
        **kwargs: Any,
    ) -> "GenerationConfig":
        """Load ``generation_config.json`` from a folder, a JSON file path or a Hub repository id; keyword
        arguments that are fields override the file."""
        from .checkpoints.files import cached_file, pop_hub_kwargs

        hub = pop_hub_kwargs(kwargs)
        name = os.fspath(pretrained_model_name)
        filename = os.fspath(config_file_name or GENERATION_CONFIG_NAME)
        path = name if os.path.isfile(name) else cached_file(name, filename, **hub)
        try:
            with open(path, "r", encoding="utf-8") as handle:
                config_dict = json.load(handle)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise OSError(f"the generation config file {path!r} is not valid JSON: {err}") from err
        if not isinstance(config_dict, dict):
            raise OSError(f"the generation config file {path!r} must hold a JSON object, found {type(config_dict).__name__}")
        return cls.from_dict(config_dict, **kwargs)


__all__ = ["GenerationConfig", "GENERATION_CONFIG_NAME"]


def use_model_tokens(config: "GenerationConfig", own: "GenerationConfig", refuse_missing_pad: bool) -> None:
    """Set ``config``'s end and pad tokens to the ones the decoding loops use, as 4.37 does (PyTorch and TF).

    In 4.37 ``eos_token_id=None`` (or ``pad_token_id=None``), passed to ``generate`` or in the
    ``generation_config`` given, does not mean "no end token": every decoding loop replaces a None by the
    model's own ``generation_config`` value (``own``), while the logits processors (``min_length``,
    ``min_new_tokens``, ...), the warpers, the default attention mask and the pad-from-eos fallback were built
    from the value given. "No end token" is ``eos_token_id=[]`` there and here. With ``refuse_missing_pad``
    (greedy search, sampling, contrastive search, assisted decoding: 4.37 raises at their first step), an end
    token without a pad token is refused; beam searches need a pad token only once beams need padding.
    """
    if config.eos_token_id is None and own.eos_token_id is not None:
        config.eos_token_id = copy.copy(own.eos_token_id)
    if config.pad_token_id is None and own.pad_token_id is not None:
        config.pad_token_id = own.pad_token_id
    if refuse_missing_pad and config.eos_token_id is not None and config.pad_token_id is None:
        raise ValueError(
            f"pad_token_id: needed with an end-of-sequence token, to pad the sequences that end early, given "
            f"None; eos_token_id=None was replaced by the model's generation_config.eos_token_id="
            f"{config.eos_token_id!r} (as 4.37 does), whose generation_config has no pad_token_id either. Pass "
            f"pad_token_id=..., or eos_token_id=[] with a pad_token_id for no end token"
        )


def warper_plan(config: "GenerationConfig") -> list[tuple[str, tuple, dict]]:
    """The logits warpers ``config`` asks for, in the reference's order, as ``(kind, args, kwargs)``; each
    framework builds its own class of each kind with ``cls(*args, **kwargs)`` (and skips kinds it has none of).

    Kinds: ``temperature``, ``top_k``, ``top_p``, ``typical_p``, ``epsilon``, ``eta`` (each with its value,
    and ``min_tokens_to_keep`` but temperature) and ``renormalize``. Beam sampling keeps at least one token
    besides the end tokens per beam, so that a beam can always continue (the reference counts the end
    tokens only when given as a list).
    """
    keep = 1
    if config.num_beams > 1:
        keep = len(config.eos_token_id) + 1 if isinstance(config.eos_token_id, list) else 2
    kept = {"min_tokens_to_keep": keep}
    plan: list[tuple[str, tuple, dict]] = []
    if config.temperature is not None and config.temperature != 1.0:
        plan.append(("temperature", (config.temperature,), {}))
    if config.top_k is not None and config.top_k != 0:
        plan.append(("top_k", (config.top_k,), kept))
    if config.top_p is not None and config.top_p < 1.0:
        plan.append(("top_p", (config.top_p,), kept))
    if config.typical_p is not None and config.typical_p < 1.0:
        plan.append(("typical_p", (config.typical_p,), kept))
    if config.epsilon_cutoff is not None and 0.0 < config.epsilon_cutoff < 1.0:
        plan.append(("epsilon", (config.epsilon_cutoff,), kept))
    if config.eta_cutoff is not None and 0.0 < config.eta_cutoff < 1.0:
        plan.append(("eta", (config.eta_cutoff,), kept))
    if config.renormalize_logits:
        plan.append(("renormalize", (), {}))
    return plan


def reject_duplicate_processors(settings_made: list, passed: list) -> None:
    """A processor passed to ``generate`` may not repeat one that the generation settings create."""
    for theirs in passed:
        if any(type(theirs) is type(mine) for mine in settings_made):
            raise ValueError(
                f"logits_processor: a {type(theirs).__name__} was passed, but the generation settings already "
                "create one; change the setting instead of passing the processor"
            )
