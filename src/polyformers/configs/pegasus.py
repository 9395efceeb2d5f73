"""Pegasus configuration."""

from __future__ import annotations

from typing import Any, Optional

from .base import BOOL, Field, PretrainedConfig, count, non_negative, positive_int, probability


class PegasusConfig(PretrainedConfig):
    """Configuration of a Pegasus encoder-decoder; the defaults describe ``google/pegasus-large``.

    ``hidden_size`` reads and writes ``d_model``; ``num_attention_heads`` reads and writes
    ``encoder_attention_heads``.

    Args:
        vocab_size: number of token ids the embedding table covers (50265).
        max_position_embeddings: longest sequence the sinusoidal positions cover (1024).
        encoder_layers, decoder_layers: number of layers of each stack (12).
        encoder_ffn_dim, decoder_ffn_dim: width of the feed-forward inner layers (4096).
        encoder_attention_heads, decoder_attention_heads: attention heads per layer (16).
        encoder_layerdrop, decoder_layerdrop: probability of skipping a whole layer in training (0.0).
        use_cache: whether the decoder returns its key/value cache (True).
        is_encoder_decoder: True for Pegasus.
        activation_function: feed-forward activation name (``"gelu"``) or a callable.
        d_model: width of the layers and embeddings (1024).
        dropout: dropout on embeddings and layer outputs (0.1).
        attention_dropout: dropout on attention probabilities (0.0).
        activation_dropout: dropout after the feed-forward activation (0.0).
        init_std: standard deviation of the weight initialiser (0.02).
        decoder_start_token_id: first token of every decoder input (0, the pad token).
        scale_embedding: whether embeddings are multiplied by ``sqrt(d_model)`` (False).
        pad_token_id: id of ``<pad>`` (0).
        eos_token_id: id of ``</s>`` (1).
        forced_eos_token_id: token forced last when generation reaches ``max_length`` (1).
    """

    model_type = "pegasus"
    keys_to_ignore_at_inference = ["past_key_values"]
    attribute_map = {"num_attention_heads": "encoder_attention_heads", "hidden_size": "d_model"}
    _fields = {
        "vocab_size": positive_int(),
        "max_position_embeddings": positive_int(),
        "encoder_layers": count(),
        "encoder_ffn_dim": positive_int(),
        "encoder_attention_heads": positive_int(),
        "decoder_layers": count(),
        "decoder_ffn_dim": positive_int(),
        "decoder_attention_heads": positive_int(),
        "encoder_layerdrop": probability(),
        "decoder_layerdrop": probability(),
        "use_cache": BOOL,
        "activation_function": Field("activation"),
        "d_model": positive_int(),
        "dropout": probability(),
        "attention_dropout": probability(),
        "activation_dropout": probability(),
        "init_std": non_negative(),
        "scale_embedding": BOOL,
        "num_hidden_layers": count(),
    }

    def __init__(
        self, vocab_size: int = 50265, max_position_embeddings: int = 1024, encoder_layers: int = 12,
        encoder_ffn_dim: int = 4096, encoder_attention_heads: int = 16, decoder_layers: int = 12,
        decoder_ffn_dim: int = 4096, decoder_attention_heads: int = 16, encoder_layerdrop: float = 0.0,
        decoder_layerdrop: float = 0.0, use_cache: bool = True, is_encoder_decoder: bool = True,
        activation_function: Any = "gelu", d_model: int = 1024, dropout: float = 0.1, attention_dropout: float = 0.0,
        activation_dropout: float = 0.0, init_std: float = 0.02, decoder_start_token_id: Optional[int] = 0,
        scale_embedding: bool = False, pad_token_id: Optional[int] = 0, eos_token_id: Optional[int] = 1,
        forced_eos_token_id: Optional[int] = 1, **kwargs: Any,
    ):
        self._set_fields(PegasusConfig._fields, locals())
        # Generic code (e.g. cache sizing) asks for num_hidden_layers; Pegasus answers with the encoder depth.
        self.num_hidden_layers = encoder_layers
        super().__init__(
            pad_token_id=pad_token_id, eos_token_id=eos_token_id, is_encoder_decoder=is_encoder_decoder,
            decoder_start_token_id=decoder_start_token_id, forced_eos_token_id=forced_eos_token_id, **kwargs,
        )
