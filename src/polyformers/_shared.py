"""Framework-free pieces that the PyTorch, Keras and Flax code share: the output flags resolved against a config,
the configuration ``from_pretrained`` loads, checkpoint names bridged across a bare model and a head model,
the loading report, the activation lookup, two checks of the BERT layers (position embedding type,
cross-attention), a model's generation settings and those of one ``generate`` call.

Nothing here imports a deep-learning framework.
"""

from __future__ import annotations

import copy
import logging
import os
from typing import Iterable, Optional

from .configs import PretrainedConfig
from .generation_config import GenerationConfig

logger = logging.getLogger("polyformers")


def output_flags(config, output_attentions, output_hidden_states, return_dict) -> tuple:
    """``(output_attentions, output_hidden_states, return_dict)``: the flags given, as bools, and the config's
    values for those left None."""
    return (
        config.output_attentions if output_attentions is None else bool(output_attentions),
        config.output_hidden_states if output_hidden_states is None else bool(output_hidden_states),
        config.use_return_dict if return_dict is None else bool(return_dict),
    )


def bridge_prefix(prefix: str, ours: Iterable[str], keys: Iterable[str]) -> tuple[dict[str, str], list[str]]:
    """Our key -> checkpoint key for the checkpoint's ``keys``, and the keys left unused.

    A bare model's checkpoint names its weights without the head model's ``prefix`` (``"electra."``) and a
    head model's checkpoint with it; when only one side uses the prefix, keys are matched across it.
    """
    ours = set(ours)
    keys = list(keys)
    ckpt_has = bool(prefix) and any(k.startswith(prefix) for k in keys)
    model_has = bool(prefix) and any(k.startswith(prefix) for k in ours)
    mapping, unused = {}, []
    for key in keys:
        new = key
        if ckpt_has and not model_has:
            if not key.startswith(prefix):
                unused.append(key)
                continue
            new = key[len(prefix):]
        elif model_has and not ckpt_has:
            new = prefix + key
        if new in ours:
            mapping[new] = key
        else:
            unused.append(key)
    return mapping, unused


def warn_loading(name: str, source: str, missing: list, unexpected: list, mismatched: list) -> None:
    """The reference's warnings after loading the model class ``name`` from ``source``: checkpoint weights not
    used, model weights not found (newly initialised), and weights whose shapes did not match."""
    if unexpected:
        logger.warning("Some weights of the model checkpoint at %s were not used when initializing %s: %s",
                       source, name, unexpected)
    if missing:
        logger.warning(
            "Some weights of %s were not initialized from the model checkpoint at %s and are newly "
            "initialized: %s\nYou should probably TRAIN this model on a down-stream task to be able to use "
            "it for predictions and inference.", name, source, missing,
        )
    if mismatched:
        lines = "\n".join(f"- {k}: found shape {a} in the checkpoint and {b} in the model" for k, a, b in mismatched)
        logger.warning("Some weights of %s were not initialized from the model checkpoint at %s because the "
                       "shapes did not match:\n%s", name, source, lines)


def pick_activation(table: dict, name):
    """The activation ``name`` from a framework's ``table`` of them; a callable passes through."""
    if callable(name):
        return name
    if isinstance(name, str) and name in table:
        return table[name]
    raise ValueError(f"unknown activation {name!r}; expected one of {sorted(table)}")


def checked_position_embedding_type(config, given: Optional[str] = None) -> str:
    """The position embedding type of a BERT attention layer: ``given``, else the config's (``"absolute"``
    when it has none), checked."""
    kind = given or getattr(config, "position_embedding_type", "absolute")
    if kind not in ("absolute", "relative_key", "relative_key_query"):
        raise ValueError(
            "position_embedding_type must be 'absolute', 'relative_key' or 'relative_key_query', "
            f"got {kind!r}"
        )
    return kind


def check_cross_attention(layer_has_it: bool) -> None:
    """A BERT layer given ``encoder_hidden_states`` needs cross-attention (``config.add_cross_attention``)."""
    if layer_has_it:
        return
    raise ValueError("encoder_hidden_states were given but the model has no cross-attention layers: "
                     "set add_cross_attention=True in the config")


def settings_for_call(generation_config, kwargs: dict) -> tuple:
    """A copy of ``generation_config`` updated with the settings among ``generate``'s ``kwargs``, validated,
    and the ``kwargs`` that are not settings (the model's inputs)."""
    config = copy.deepcopy(generation_config)
    model_kwargs = config.update(**kwargs)
    config.validate()
    return config, model_kwargs


def _model_generation_config(model) -> GenerationConfig:
    """The generation settings a model was given, else those derived from its config (once, then kept)."""
    if model.__dict__.get("_generation_config") is None:
        model.__dict__["_generation_config"] = GenerationConfig.from_model_config(model.config)
    return model.__dict__["_generation_config"]


def _give_generation_config(model, value: Optional[GenerationConfig]) -> None:
    if value is not None and not isinstance(value, GenerationConfig):
        raise TypeError(f"generation_config: expected a GenerationConfig, given {type(value).__name__}")
    model.__dict__["_generation_config"] = value


# A generating model's ``generation_config`` attribute: None given resets it to the config's settings.
generation_config_property = property(_model_generation_config, _give_generation_config)


def config_for_loading(config_class, path: str, config, hub: dict, kwargs: dict) -> tuple:
    """``from_pretrained``'s configuration: ``config`` as given (a copy; ``kwargs`` left for the model), else
    loaded from ``config`` or ``path`` with ``kwargs`` updating it; returns it, named after ``path``, and the
    keyword arguments it did not take."""
    if config is None or isinstance(config, (str, os.PathLike)):
        config, unused = config_class.from_pretrained(
            path if config is None else config, return_unused_kwargs=True, **hub, **kwargs
        )
    else:
        if not isinstance(config, PretrainedConfig):
            raise TypeError(f"config must be a PretrainedConfig or a path, got {type(config).__name__}")
        config, unused = copy.deepcopy(config), kwargs
    config.name_or_path = path
    return config, unused
