"""MPNet configuration."""

from __future__ import annotations

from typing import Any, Optional

from .base import BERT_FIELDS, PretrainedConfig, positive_int


class MPNetConfig(PretrainedConfig):
    """Configuration of an MPNet model; the defaults describe ``microsoft/mpnet-base``.

    The encoder's arguments, ``vocab_size`` to ``layer_norm_eps``, mean what they mean in
    :class:`ElectraConfig` (MPNet has no token types, no separate ``embedding_size`` and no sequence
    summary); the defaults are those of the signature.

    Args:
        relative_attention_num_buckets: number of buckets of the relative position bias (32).
        pad_token_id, bos_token_id, eos_token_id: ids of ``<pad>`` (1), ``<s>`` (0) and ``</s>`` (2).
    """

    model_type = "mpnet"
    _fields = {**BERT_FIELDS, "relative_attention_num_buckets": positive_int()}

    def __init__(
        self, vocab_size: int = 30527, hidden_size: int = 768, num_hidden_layers: int = 12,
        num_attention_heads: int = 12, intermediate_size: int = 3072, hidden_act: Any = "gelu",
        hidden_dropout_prob: float = 0.1, attention_probs_dropout_prob: float = 0.1,
        max_position_embeddings: int = 512, initializer_range: float = 0.02, layer_norm_eps: float = 1e-12,
        relative_attention_num_buckets: int = 32, pad_token_id: Optional[int] = 1, bos_token_id: Optional[int] = 0,
        eos_token_id: Optional[int] = 2, **kwargs: Any,
    ):
        super().__init__(pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id, **kwargs)
        self._set_fields(MPNetConfig._fields, locals())
