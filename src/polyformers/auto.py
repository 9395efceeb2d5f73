"""Auto classes: ``model_type`` (from config.json) -> the family's config, tokenizer and model classes.

One registry, extended by one :func:`register` call per family. Classes are named, not imported, so
the registry costs nothing until a class is asked for (and asking for a PyTorch model imports only torch).
"""

from __future__ import annotations

import os
from typing import Optional

import polyformers

from .checkpoints.files import cached_file, pop_hub_kwargs
from .configs import CONFIG_MAPPING, PretrainedConfig

# task name of the auto class -> {model_type: class name}
_MODELS: dict[str, dict[str, str]] = {}
# model_type -> (slow tokenizer class name or None, fast tokenizer class name or None)
_TOKENIZERS: dict[str, tuple[Optional[str], Optional[str]]] = {}
# Tokenizer classes of other families that some checkpoints name in tokenizer_config.json but whose
# algorithm and files are the same as one we have (the bert-base-uncased WordPiece is ELECTRA's).
_TOKENIZER_ALIASES = {"BertTokenizer": "ElectraTokenizer", "BertTokenizerFast": "ElectraTokenizerFast"}


def register(model_type: str, *, tokenizers: tuple[Optional[str], Optional[str]], models: dict[str, str]) -> None:
    """Declare a family: its tokenizer pair and, per auto class name, the model class name."""
    if model_type not in CONFIG_MAPPING:
        raise ValueError(f"model_type {model_type!r} has no config class in polyformers.configs.CONFIG_MAPPING")
    _TOKENIZERS[model_type] = tokenizers
    for auto_name, class_name in models.items():
        _MODELS.setdefault(auto_name, {})[model_type] = class_name


register(
    "electra",
    tokenizers=("ElectraTokenizer", "ElectraTokenizerFast"),
    models={
        "AutoModel": "ElectraModel",
        "AutoModelForPreTraining": "ElectraForPreTraining",
        "AutoModelForCausalLM": "ElectraForCausalLM",
        "AutoModelForMaskedLM": "ElectraForMaskedLM",
        "AutoModelForSequenceClassification": "ElectraForSequenceClassification",
        "AutoModelForTokenClassification": "ElectraForTokenClassification",
        "AutoModelForQuestionAnswering": "ElectraForQuestionAnswering",
        "AutoModelForMultipleChoice": "ElectraForMultipleChoice",
    },
)
register(
    "roberta",
    tokenizers=("RobertaTokenizer", "RobertaTokenizerFast"),
    models={
        "AutoModel": "RobertaModel",
        "AutoModelForPreTraining": "RobertaForMaskedLM",
        "AutoModelForCausalLM": "RobertaForCausalLM",
        "AutoModelForMaskedLM": "RobertaForMaskedLM",
        "AutoModelForSequenceClassification": "RobertaForSequenceClassification",
        "AutoModelForTokenClassification": "RobertaForTokenClassification",
        "AutoModelForQuestionAnswering": "RobertaForQuestionAnswering",
        "AutoModelForMultipleChoice": "RobertaForMultipleChoice",
    },
)
register(
    "mpnet",
    tokenizers=("MPNetTokenizer", "MPNetTokenizerFast"),
    models={
        "AutoModel": "MPNetModel",
        "AutoModelForPreTraining": "MPNetForMaskedLM",
        "AutoModelForMaskedLM": "MPNetForMaskedLM",
        "AutoModelForSequenceClassification": "MPNetForSequenceClassification",
        "AutoModelForTokenClassification": "MPNetForTokenClassification",
        "AutoModelForQuestionAnswering": "MPNetForQuestionAnswering",
        "AutoModelForMultipleChoice": "MPNetForMultipleChoice",
    },
)
register(
    "gptj",
    tokenizers=("GPT2Tokenizer", "GPT2TokenizerFast"),
    models={
        "AutoModel": "GPTJModel",
        "AutoModelForCausalLM": "GPTJForCausalLM",
        "AutoModelForSequenceClassification": "GPTJForSequenceClassification",
        "AutoModelForQuestionAnswering": "GPTJForQuestionAnswering",
    },
)
register(
    "mpt",
    tokenizers=(None, "GPTNeoXTokenizerFast"),
    models={
        "AutoModel": "MptModel",
        "AutoModelForCausalLM": "MptForCausalLM",
        "AutoModelForSequenceClassification": "MptForSequenceClassification",
        "AutoModelForTokenClassification": "MptForTokenClassification",
        "AutoModelForQuestionAnswering": "MptForQuestionAnswering",
    },
)
register(
    "pegasus",
    tokenizers=("PegasusTokenizer", "PegasusTokenizerFast"),
    models={
        "AutoModel": "PegasusModel",
        "AutoModelForSeq2SeqLM": "PegasusForConditionalGeneration",
        "AutoModelForCausalLM": "PegasusForCausalLM",
    },
)


def _config_class(model_type) -> type:
    try:
        return CONFIG_MAPPING[model_type]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown model_type {model_type!r}; polyformers supports {sorted(CONFIG_MAPPING)}"
        ) from None


class AutoConfig:
    """Reads config.json and builds the config class its ``model_type`` names."""

    def __init__(self):
        raise OSError("AutoConfig is not instantiable: use AutoConfig.from_pretrained(path) or AutoConfig.for_model(type)")

    @classmethod
    def for_model(cls, model_type: str, *args, **kwargs) -> PretrainedConfig:
        return _config_class(model_type)(*args, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        config_dict, _ = PretrainedConfig.get_config_dict(pretrained_model_name_or_path, **dict(kwargs))
        model_type = config_dict.get("model_type")
        if model_type is None:
            raise ValueError(
                f"the config.json of {os.fspath(pretrained_model_name_or_path)!r} has no 'model_type'; "
                f"expected one of {sorted(CONFIG_MAPPING)}"
            )
        return _config_class(model_type).from_pretrained(pretrained_model_name_or_path, **kwargs)


class AutoTokenizer:
    """Picks the tokenizer class from tokenizer_config.json's ``tokenizer_class``, or else from the
    config's ``model_type``; the fast class is preferred, as in the reference, unless ``use_fast=False``."""

    def __init__(self):
        raise OSError("AutoTokenizer is not instantiable: use AutoTokenizer.from_pretrained(path)")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *inputs, use_fast: bool = True,
                        tokenizer_type: Optional[str] = None, **kwargs):
        path = os.fspath(pretrained_model_name_or_path)
        hub = pop_hub_kwargs(kwargs)
        kwargs.update(hub)
        config = kwargs.pop("config", None)
        slow_fast: Optional[tuple] = None
        if tokenizer_type is not None:
            slow_fast = _TOKENIZERS.get(tokenizer_type)
            if slow_fast is None:
                raise ValueError(f"unknown tokenizer_type {tokenizer_type!r}; expected one of {sorted(_TOKENIZERS)}")
        if slow_fast is None:
            named = _tokenizer_class_from_files(path, hub)
            if named:
                named = _TOKENIZER_ALIASES.get(named, named)
                base = named[:-4] if named.endswith("Fast") else named
                for pair in _TOKENIZERS.values():
                    if base in pair or base + "Fast" in pair:
                        slow_fast = pair
                        break
                else:
                    raise ValueError(
                        f"tokenizer class {named!r} named by {path!r} is not supported; polyformers has "
                        f"{sorted(n for pair in _TOKENIZERS.values() for n in pair if n)}"
                    )
        if slow_fast is None:
            if config is None:
                config = AutoConfig.from_pretrained(path, **hub)
            slow_fast = _TOKENIZERS.get(config.model_type)
            if slow_fast is None:
                raise ValueError(f"no tokenizer is registered for model_type {config.model_type!r}")
        slow, fast = slow_fast
        name = fast if (use_fast and fast) else slow
        if name is None:
            raise ValueError(f"no {'fast' if use_fast else 'slow'} tokenizer exists for {path!r}")
        return getattr(polyformers, name).from_pretrained(path, *inputs, **kwargs)


def _tokenizer_class_from_files(path: str, hub: dict) -> Optional[str]:
    import json

    config_file = cached_file(path, "tokenizer_config.json", missing_ok=True, **hub)
    if config_file is None:
        return None
    with open(config_file, encoding="utf-8") as f:
        try:
            return json.load(f).get("tokenizer_class")
        except json.JSONDecodeError as err:
            raise ValueError(f"{config_file} is not valid JSON: {err}") from None


class _AutoModel:
    """Base of the AutoModel* classes: the task is the class name."""

    def __init__(self):
        raise OSError(f"{type(self).__name__} is not instantiable: use .from_pretrained(path) or .from_config(config)")

    @classmethod
    def _model_class(cls, config: PretrainedConfig) -> type:
        table = _MODELS.get(cls.__name__, {})
        name = table.get(getattr(config, "model_type", None))
        if name is None:
            raise ValueError(
                f"unrecognised configuration class {type(config).__name__} for {cls.__name__}; model type "
                f"should be one of {sorted(table)}"
            )
        return getattr(polyformers, name)

    @classmethod
    def from_config(cls, config: PretrainedConfig, **kwargs):
        return cls._model_class(config).from_config(config, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        config = kwargs.pop("config", None)
        # Arguments of the loader itself must not reach the config (a config would take ``dtype`` as its own).
        loading = {k: kwargs.pop(k) for k in _LOADER_KWARGS if k in kwargs}
        if not isinstance(config, PretrainedConfig):
            hub = pop_hub_kwargs(kwargs)
            config, kwargs = AutoConfig.from_pretrained(
                config or pretrained_model_name_or_path, return_unused_kwargs=True, **hub, **kwargs
            )
            kwargs.update(hub)
        return cls._model_class(config).from_pretrained(pretrained_model_name_or_path, *model_args, config=config,
                                                        **loading, **kwargs)


_LOADER_KWARGS = (
    "dtype", "torch_dtype", "device_map", "ignore_mismatched_sizes", "output_loading_info", "use_safetensors",
    "variant", "low_cpu_mem_usage", "from_tf", "from_flax", "attn_implementation", "_fast_init",
    "trust_remote_code",
)


def _auto_model(name: str, doc: str) -> type:
    cls = type(name, (_AutoModel,), {"__doc__": doc, "__module__": __name__})
    globals()[name] = cls
    return cls


for _name, _doc in {
    "AutoModel": "The bare model of the checkpoint's family.",
    "AutoModelForPreTraining": "The family's pre-training head (ELECTRA: replaced-token detection).",
    "AutoModelForCausalLM": "A left-to-right language model head.",
    "AutoModelForMaskedLM": "A masked language model head.",
    "AutoModelForSequenceClassification": "A sequence classification/regression head.",
    "AutoModelForTokenClassification": "A per-token classification head.",
    "AutoModelForQuestionAnswering": "An extractive question answering head.",
    "AutoModelForMultipleChoice": "A multiple-choice head.",
    "AutoModelForSeq2SeqLM": "An encoder-decoder with a language model head (summarisation, translation).",
}.items():
    _auto_model(_name, _doc)
