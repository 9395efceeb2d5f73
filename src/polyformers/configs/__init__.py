"""Configuration classes of every family, framework-free, and the ``model_type`` registry."""

from __future__ import annotations

from .base import CONFIG_NAME, PretrainedConfig, PreTrainedConfig
from .electra import ElectraConfig
from .gptj import GPTJConfig
from .mpnet import MPNetConfig
from .mpt import MptAttentionConfig, MptConfig
from .pegasus import PegasusConfig
from .roberta import RobertaConfig

# model_type (the "model_type" key of config.json) -> config class; AutoConfig dispatches on it.
CONFIG_MAPPING: dict[str, type[PretrainedConfig]] = {
    cls.model_type: cls
    for cls in (ElectraConfig, RobertaConfig, MPNetConfig, GPTJConfig, MptConfig, PegasusConfig)
}
