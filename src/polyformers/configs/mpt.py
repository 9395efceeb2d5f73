"""MPT configuration: the model settings and the nested attention settings."""

from __future__ import annotations

import logging
from typing import Any, Optional, Union

from .base import BOOL, Field, PretrainedConfig, count, non_negative, positive_int, probability

logger = logging.getLogger(__name__)

ATTN_IMPLS = ("torch", "flash", "triton")


ATTN_TYPES = ("multihead_attention", "multiquery_attention")  # what the reference 4.37 release accepts


def _check_attn_type(owner: str, name: str, value: Any) -> str:
    # The model (as the reference 4.37 release) always builds per-head keys and values, and warns when
    # another kind is asked for (MptConfig.ignored_settings).
    if value in ATTN_TYPES:
        return value
    raise ValueError(f"{owner} argument {name!r}: expected one of {ATTN_TYPES}, given {value!r}")


class MptAttentionConfig(PretrainedConfig):
    """Attention settings of an MPT model, stored as ``MptConfig.attn_config``.

    Most arguments exist so that the MPT checkpoints published before native support load unchanged.

    Args:
        attn_type: kind of attention of the original code; the model always uses multi-head attention.
        attn_pdrop: dropout on attention probabilities (0).
        attn_impl: attention kernel the original code used: ``"torch"``, ``"flash"`` or ``"triton"``.
        clip_qkv: if set, queries, keys and values are clipped to ``[-clip_qkv, clip_qkv]``.
        softmax_scale: scale of the attention scores; None means ``1/sqrt(head_dim)``.
        prefix_lm: whether the model runs as a prefix LM (bidirectional attention inside the prefix).
        qk_ln: whether queries and keys go through a layer norm.
        attn_uses_sequence_id: whether attention is restricted to tokens with the same sequence id.
        alibi: whether ALiBi biases are used instead of position embeddings (True).
        alibi_bias_max: largest ALiBi slope exponent (8).

    Keys other than these are ignored, as in the reference: an attention config holds nothing else.
    Of these settings the MPT models (like the reference 4.37 release) act on ``attn_pdrop`` and
    ``softmax_scale`` only; see :meth:`MptConfig.ignored_settings`.
    """

    _fields = {
        "attn_type": Field("str", convert=_check_attn_type),
        "attn_pdrop": probability(),
        "attn_impl": Field("str", choices=ATTN_IMPLS),
        "clip_qkv": non_negative(optional=True),
        "softmax_scale": non_negative(optional=True),
        "prefix_lm": BOOL,
        "qk_ln": BOOL,
        "attn_uses_sequence_id": BOOL,
        "alibi": BOOL,
        "alibi_bias_max": positive_int(),
    }

    def __init__(
        self, attn_type: str = "multihead_attention", attn_pdrop: float = 0, attn_impl: str = "torch",
        clip_qkv: Optional[float] = None, softmax_scale: Optional[float] = None, prefix_lm: bool = False,
        qk_ln: bool = False, attn_uses_sequence_id: bool = False, alibi: bool = True, alibi_bias_max: int = 8,
        **kwargs: Any,
    ):
        # The nested dict of a saved MptConfig repeats every common setting; those are not settings of the
        # attention and are dropped. Anything else is unknown to MPT and worth a warning.
        unknown = sorted(set(kwargs) - _common_keys())
        if unknown:
            logger.warning("MptAttentionConfig ignores unknown keys %s", unknown)
        super().__init__()
        self._set_fields(MptAttentionConfig._fields, locals())

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs: Any):
        """Load the attention settings alone, from an attention config or from a whole MPT config."""
        config_dict, kwargs = cls.get_config_dict(pretrained_model_name_or_path, **kwargs)
        if config_dict.get("model_type") == "mpt":
            config_dict = config_dict["attn_config"]
        cls._warn_model_type(config_dict)
        return cls.from_dict(config_dict, **kwargs)


_COMMON_KEYS: Optional[frozenset] = None


def _common_keys() -> frozenset:
    global _COMMON_KEYS
    if _COMMON_KEYS is None:
        extra = {"dtype", "num_labels", "name_or_path", "attn_implementation", "_commit_hash", "xla_device"}
        _COMMON_KEYS = frozenset(PretrainedConfig().to_dict()) | extra
    return _COMMON_KEYS


def _convert_attn_config(owner: str, name: str, value: Any) -> MptAttentionConfig:
    if value is None:
        return MptAttentionConfig()
    if isinstance(value, MptAttentionConfig):
        return value
    if isinstance(value, dict):
        return MptAttentionConfig(**value)
    raise TypeError(f"{owner} argument {name!r}: expected a dict or an MptAttentionConfig, given {value!r}")


def _convert_logit_scale(owner: str, name: str, value: Any) -> Union[float, str, None]:
    if value is None or value == "inv_sqrt_d_model":
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"{owner} argument {name!r}: expected a number, 'inv_sqrt_d_model' or None, given {value!r}"
        )
    return value


class MptConfig(PretrainedConfig):
    """Configuration of an MPT model; the defaults are close to ``mosaicml/mpt-7b``.

    ``hidden_size``, ``num_attention_heads`` and ``num_hidden_layers`` read and write ``d_model``,
    ``n_heads`` and ``n_layers``.

    Args:
        d_model: width of the embeddings and hidden states (2048).
        n_heads: attention heads per layer (16).
        n_layers: number of decoder layers (24).
        expansion_ratio: feed-forward width as a multiple of ``d_model`` (4).
        max_seq_len: longest sequence the model is meant for (2048).
        vocab_size: number of token ids the embedding table covers (50368).
        resid_pdrop: dropout on the attention output before the residual sum (0.0).
        layer_norm_epsilon: epsilon of the layer norms (1e-5).
        emb_pdrop: dropout on embeddings (0.0).
        learned_pos_emb: whether learned position embeddings are used (True).
        attn_config: the attention settings, a dict or an :class:`MptAttentionConfig`.
        init_device: device used for parameter initialisation by the original code ("cpu").
        logit_scale: if set, logits are multiplied by it (a number or ``"inv_sqrt_d_model"``).
        no_bias: whether linear layers go without bias (True).
        verbose: logging level of the original code; deprecated (0).
        embedding_fraction: fraction of the embedding gradient that flows back (1.0).
        norm_type: layer norm flavour; every MPT model uses ``"low_precision_layernorm"``.
        use_cache: whether the model returns its key/value cache (False).
        initializer_range: standard deviation of the weight initialiser (0.02).

    The reference 4.37 release stores every setting but ignores several in its model; the MPT models here
    do the same, so that its checkpoints give its outputs, and warn once per such setting when a config
    gives it a non-default value (:meth:`ignored_settings`): the feed-forward layer is always
    ``4 * d_model`` wide, ALiBi always uses a maximum exponent of 8, there are no biases, no embedding
    dropout, no logit scaling, and ``attn_config.attn_pdrop`` (not ``resid_pdrop``) drops the attention
    probabilities and both residual branches.
    """

    model_type = "mpt"
    attribute_map = {"num_attention_heads": "n_heads", "hidden_size": "d_model", "num_hidden_layers": "n_layers"}
    _fields = {
        "d_model": positive_int(),
        "n_heads": positive_int(),
        "n_layers": count(),
        "expansion_ratio": positive_int(),
        "max_seq_len": positive_int(),
        "vocab_size": positive_int(),
        "resid_pdrop": probability(),
        "layer_norm_epsilon": non_negative(),
        "emb_pdrop": probability(),
        "learned_pos_emb": BOOL,
        "attn_config": Field("any", convert=_convert_attn_config),
        "init_device": Field("str"),
        "logit_scale": Field("any", convert=_convert_logit_scale),
        "no_bias": BOOL,
        "verbose": count(),
        "embedding_fraction": probability(),
        "norm_type": Field("str"),
        "use_cache": BOOL,
        "initializer_range": non_negative(),
    }

    def __init__(
        self, d_model: int = 2048, n_heads: int = 16, n_layers: int = 24, expansion_ratio: int = 4,
        max_seq_len: int = 2048, vocab_size: int = 50368, resid_pdrop: float = 0.0, layer_norm_epsilon: float = 1e-5,
        emb_pdrop: float = 0.0, learned_pos_emb: bool = True,
        attn_config: Union[MptAttentionConfig, dict, None] = None, init_device: str = "cpu",
        logit_scale: Union[float, str, None] = None, no_bias: bool = True, verbose: int = 0,
        embedding_fraction: float = 1.0, norm_type: str = "low_precision_layernorm", use_cache: bool = False,
        initializer_range: float = 0.02, **kwargs: Any,
    ):
        self._set_fields(MptConfig._fields, locals())
        super().__init__(**kwargs)

    def ignored_settings(self) -> list:
        """The settings the reference 4.37 ``MptModel`` reads from a config but does not act on, where this
        config gives them a value other than the default: ``(name, value, what is used instead)`` triples.

        The MPT models here follow the reference, so that the checkpoints it writes load and compute the
        same outputs; they log one warning per triple when built. (``learned_pos_emb`` is not listed: no
        position embedding is ever used, which is what its non-default value ``False`` asks for.)
        """
        attn = self.attn_config
        checks = [
            ("expansion_ratio", self.expansion_ratio, 4, "a feed-forward width of 4 * d_model"),
            ("no_bias", self.no_bias, True, "no biases in linear layers and layer norms"),
            ("resid_pdrop", self.resid_pdrop, 0.0,
             f"attn_config.attn_pdrop={attn.attn_pdrop} on the residual branches"),
            ("emb_pdrop", self.emb_pdrop, 0.0, "no dropout on the embeddings"),
            ("embedding_fraction", self.embedding_fraction, 1.0, "the whole gradient for the embeddings"),
            ("logit_scale", self.logit_scale, None, "unscaled logits"),
            ("norm_type", self.norm_type, "low_precision_layernorm", "LayerNorm without bias"),
            ("init_device", self.init_device, "cpu", "the device the model is built on"),
            ("verbose", self.verbose, 0, "the library's logging settings"),
            ("attn_config.attn_type", attn.attn_type, "multihead_attention", "multi-head attention"),
            ("attn_config.attn_impl", attn.attn_impl, "torch", "PyTorch attention"),
            ("attn_config.clip_qkv", attn.clip_qkv, None, "unclipped queries, keys and values"),
            ("attn_config.qk_ln", attn.qk_ln, False, "no query/key layer norms"),
            ("attn_config.prefix_lm", attn.prefix_lm, False, "causal attention everywhere"),
            ("attn_config.attn_uses_sequence_id", attn.attn_uses_sequence_id, False,
             "attention across sequence ids"),
            ("attn_config.alibi", attn.alibi, True, "ALiBi biases"),
            ("attn_config.alibi_bias_max", attn.alibi_bias_max, 8, "ALiBi slopes with a maximum exponent of 8"),
        ]
        return [(name, value, instead) for name, value, default, instead in checks if value != default]
