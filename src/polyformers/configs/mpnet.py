"""MPNet configuration."""

from __future__ import annotations

from typing import Any, Optional

from .base import Field, PretrainedConfig, count, non_negative, positive_int, probability


class MPNetConfig(PretrainedConfig):
    """Configuration of an MPNet model; the defaults describe ``microsoft/mpnet-base``.

    Args:
        vocab_size: number of token ids the embedding table covers (30527).
        hidden_size: width of the encoder layers (768).
        num_hidden_layers: number of encoder layers (12).
        num_attention_heads: attention heads per layer (12).
        intermediate_size: width of the feed-forward inner layer (3072).
        hidden_act: activation of the feed-forward layer, a name such as ``"gelu"`` or a callable.
        hidden_dropout_prob: dropout on embeddings and layer outputs (0.1).
        attention_probs_dropout_prob: dropout on attention probabilities (0.1).
        max_position_embeddings: size of the position table (512).
        initializer_range: standard deviation of the weight initialiser (0.02).
        layer_norm_eps: epsilon of the layer norms (1e-12).
        relative_attention_num_buckets: number of buckets of the relative position bias (32).
        pad_token_id, bos_token_id, eos_token_id: ids of ``<pad>`` (1), ``<s>`` (0) and ``</s>`` (2).
    """

    model_type = "mpnet"
    _fields = {
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
        "relative_attention_num_buckets": positive_int(),
    }

    def __init__(
        self,
        vocab_size: int = 30527,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        intermediate_size: int = 3072,
        hidden_act: Any = "gelu",
        hidden_dropout_prob: float = 0.1,
        attention_probs_dropout_prob: float = 0.1,
        max_position_embeddings: int = 512,
        initializer_range: float = 0.02,
        layer_norm_eps: float = 1e-12,
        relative_attention_num_buckets: int = 32,
        pad_token_id: Optional[int] = 1,
        bos_token_id: Optional[int] = 0,
        eos_token_id: Optional[int] = 2,
        **kwargs: Any,
    ):
        super().__init__(pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id, **kwargs)
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.layer_norm_eps = layer_norm_eps
        self.relative_attention_num_buckets = relative_attention_num_buckets
