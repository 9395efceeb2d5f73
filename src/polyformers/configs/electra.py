"""ELECTRA configuration."""

from __future__ import annotations

from typing import Any, Optional

from .base import BERT_FIELDS, BOOL, Field, PretrainedConfig, count, positive_int, probability

POSITION_EMBEDDING_TYPES = ("absolute", "relative_key", "relative_key_query")
SUMMARY_TYPES = ("last", "first", "mean", "cls_index", "attn")


class ElectraConfig(PretrainedConfig):
    """Configuration of an ELECTRA model (generator or discriminator).

    The defaults describe the small discriminator, ``google/electra-small-discriminator``.

    Args:
        vocab_size: number of token ids the embedding table covers (30522).
        embedding_size: width of the token embeddings (128); when it differs from ``hidden_size`` the
            embeddings are projected to ``hidden_size``.
        hidden_size: width of the encoder layers (256).
        num_hidden_layers: number of encoder layers (12).
        num_attention_heads: attention heads per layer (4).
        intermediate_size: width of the feed-forward inner layer (1024).
        hidden_act: activation of the feed-forward layer, a name such as ``"gelu"`` or a callable.
        hidden_dropout_prob: dropout on embeddings and layer outputs (0.1).
        attention_probs_dropout_prob: dropout on attention probabilities (0.1).
        max_position_embeddings: longest sequence the position table covers (512).
        type_vocab_size: number of token type ids (2).
        initializer_range: standard deviation of the weight initialiser (0.02).
        layer_norm_eps: epsilon of the layer norms (1e-12).
        summary_type: how sequence-level heads pool the hidden states: ``"last"``, ``"first"``,
            ``"mean"``, ``"cls_index"`` or ``"attn"`` (``"first"``).
        summary_use_proj: whether the pooled summary goes through a projection (True).
        summary_activation: activation after that projection, e.g. ``"gelu"``, or None.
        summary_last_dropout: dropout after the projection and activation (0.1).
        pad_token_id: id of the padding token (0).
        position_embedding_type: ``"absolute"``, ``"relative_key"`` or ``"relative_key_query"``.
        use_cache: whether a decoder returns its key/value cache (True).
        classifier_dropout: dropout of the classification head; None falls back to ``hidden_dropout_prob``.
    """

    model_type = "electra"
    _fields = {
        **BERT_FIELDS,
        "embedding_size": positive_int(),
        "type_vocab_size": count(),
        "summary_type": Field("str", choices=SUMMARY_TYPES),
        "summary_use_proj": BOOL,
        "summary_activation": Field("activation", optional=True),
        "summary_last_dropout": probability(),
        "position_embedding_type": Field("str", choices=POSITION_EMBEDDING_TYPES),
        "use_cache": BOOL,
        "classifier_dropout": probability(optional=True),
    }

    def __init__(
        self, vocab_size: int = 30522, embedding_size: int = 128, hidden_size: int = 256, num_hidden_layers: int = 12,
        num_attention_heads: int = 4, intermediate_size: int = 1024, hidden_act: Any = "gelu",
        hidden_dropout_prob: float = 0.1, attention_probs_dropout_prob: float = 0.1,
        max_position_embeddings: int = 512, type_vocab_size: int = 2, initializer_range: float = 0.02,
        layer_norm_eps: float = 1e-12, summary_type: str = "first", summary_use_proj: bool = True,
        summary_activation: Optional[str] = "gelu", summary_last_dropout: float = 0.1,
        pad_token_id: Optional[int] = 0, position_embedding_type: str = "absolute", use_cache: bool = True,
        classifier_dropout: Optional[float] = None, **kwargs: Any,
    ):
        super().__init__(pad_token_id=pad_token_id, **kwargs)
        self._set_fields(ElectraConfig._fields, locals())
