"""RoBERTa configuration."""

from __future__ import annotations

from typing import Any, Optional

from .base import BERT_FIELDS, BOOL, Field, PretrainedConfig, count, probability
from .electra import POSITION_EMBEDDING_TYPES


class RobertaConfig(PretrainedConfig):
    """Configuration of a RoBERTa model; the defaults describe ``roberta-base``.

    The encoder's arguments mean what they mean in :class:`ElectraConfig` (RoBERTa has no separate
    ``embedding_size`` and no sequence summary); the defaults are those of the signature. RoBERTa's own:

    Args:
        max_position_embeddings: size of the position table (512); RoBERTa positions start after
            ``pad_token_id``, so checkpoints use ``max length + 2`` (514).
        type_vocab_size: number of token type ids (2; the released checkpoints use 1).
        pad_token_id, bos_token_id, eos_token_id: ids of ``<pad>`` (1), ``<s>`` (0) and ``</s>`` (2).
    """

    model_type = "roberta"
    _fields = {
        **BERT_FIELDS,
        "type_vocab_size": count(),
        "position_embedding_type": Field("str", choices=POSITION_EMBEDDING_TYPES),
        "use_cache": BOOL,
        "classifier_dropout": probability(optional=True),
    }

    def __init__(
        self, vocab_size: int = 50265, hidden_size: int = 768, num_hidden_layers: int = 12,
        num_attention_heads: int = 12, intermediate_size: int = 3072, hidden_act: Any = "gelu",
        hidden_dropout_prob: float = 0.1, attention_probs_dropout_prob: float = 0.1,
        max_position_embeddings: int = 512, type_vocab_size: int = 2, initializer_range: float = 0.02,
        layer_norm_eps: float = 1e-12, pad_token_id: Optional[int] = 1, bos_token_id: Optional[int] = 0,
        eos_token_id: Optional[int] = 2, position_embedding_type: str = "absolute", use_cache: bool = True,
        classifier_dropout: Optional[float] = None, **kwargs: Any,
    ):
        super().__init__(pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id, **kwargs)
        self._set_fields(RobertaConfig._fields, locals())
