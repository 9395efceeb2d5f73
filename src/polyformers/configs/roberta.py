"""RoBERTa configuration."""

from __future__ import annotations

from typing import Any, Optional

from .base import BOOL, Field, PretrainedConfig, count, non_negative, positive_int, probability
from .electra import POSITION_EMBEDDING_TYPES


class RobertaConfig(PretrainedConfig):
    """Configuration of a RoBERTa model; the defaults describe ``roberta-base``.

    Args:
        vocab_size: number of token ids the embedding table covers (50265).
        hidden_size: width of the encoder layers (768).
        num_hidden_layers: number of encoder layers (12).
        num_attention_heads: attention heads per layer (12).
        intermediate_size: width of the feed-forward inner layer (3072).
        hidden_act: activation of the feed-forward layer, a name such as ``"gelu"`` or a callable.
        hidden_dropout_prob: dropout on embeddings and layer outputs (0.1).
        attention_probs_dropout_prob: dropout on attention probabilities (0.1).
        max_position_embeddings: size of the position table (512); RoBERTa positions start after
            ``pad_token_id``, so checkpoints use ``max length + 2`` (514).
        type_vocab_size: number of token type ids (2; the released checkpoints use 1).
        initializer_range: standard deviation of the weight initialiser (0.02).
        layer_norm_eps: epsilon of the layer norms (1e-12).
        pad_token_id, bos_token_id, eos_token_id: ids of ``<pad>`` (1), ``<s>`` (0) and ``</s>`` (2).
        position_embedding_type: ``"absolute"``, ``"relative_key"`` or ``"relative_key_query"``.
        use_cache: whether a decoder returns its key/value cache (True).
        classifier_dropout: dropout of the classification head; None falls back to ``hidden_dropout_prob``.
    """

    model_type = "roberta"
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
        "type_vocab_size": count(),
        "initializer_range": non_negative(),
        "layer_norm_eps": non_negative(),
        "position_embedding_type": Field("str", choices=POSITION_EMBEDDING_TYPES),
        "use_cache": BOOL,
        "classifier_dropout": probability(optional=True),
    }

    def __init__(
        self,
        vocab_size: int = 50265,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        intermediate_size: int = 3072,
        hidden_act: Any = "gelu",
        hidden_dropout_prob: float = 0.1,
        attention_probs_dropout_prob: float = 0.1,
        max_position_embeddings: int = 512,
        type_vocab_size: int = 2,
        initializer_range: float = 0.02,
        layer_norm_eps: float = 1e-12,
        pad_token_id: Optional[int] = 1,
        bos_token_id: Optional[int] = 0,
        eos_token_id: Optional[int] = 2,
        position_embedding_type: str = "absolute",
        use_cache: bool = True,
        classifier_dropout: Optional[float] = None,
        **kwargs: Any,
    ):
        super().__init__(pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id, **kwargs)
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.hidden_act = hidden_act
        self.intermediate_size = intermediate_size
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.max_position_embeddings = max_position_embeddings
        self.type_vocab_size = type_vocab_size
        self.initializer_range = initializer_range
        self.layer_norm_eps = layer_norm_eps
        self.position_embedding_type = position_embedding_type
        self.use_cache = use_cache
        self.classifier_dropout = classifier_dropout
