"""GPT-J configuration."""

from __future__ import annotations

from typing import Any, Optional

from .base import BOOL, Field, PretrainedConfig, count, non_negative, positive_int, probability


class GPTJConfig(PretrainedConfig):
    """Configuration of a GPT-J model; the defaults describe ``EleutherAI/gpt-j-6B``.

    The standard names ``hidden_size``, ``num_attention_heads``, ``num_hidden_layers`` and
    ``max_position_embeddings`` read and write ``n_embd``, ``n_head``, ``n_layer`` and ``n_positions``.

    Args:
        vocab_size: number of token ids the embedding table covers (50400; the tokenizer has 50257
            BPE entries plus 143 extra tokens).
        n_positions: longest sequence the model is meant for (2048).
        n_embd: width of the embeddings and hidden states (4096).
        n_layer: number of decoder layers (28).
        n_head: attention heads per layer (16).
        rotary_dim: how many dimensions of each head get rotary position embeddings (64).
        n_inner: width of the feed-forward inner layer; None means ``4 * n_embd``.
        activation_function: feed-forward activation name, e.g. ``"gelu_new"``, ``"gelu"``, ``"relu"``,
            ``"silu"`` or ``"tanh"``.
        resid_pdrop: dropout on residual branches (0.0).
        embd_pdrop: dropout on embeddings (0.0).
        attn_pdrop: dropout on attention probabilities (0.0).
        layer_norm_epsilon: epsilon of the layer norms (1e-5).
        initializer_range: standard deviation of the weight initialiser (0.02).
        use_cache: whether the model returns its key/value cache (True).
        bos_token_id, eos_token_id: both ``<|endoftext|>`` (50256).
        pad_token_id: id of the padding token (None; GPT-J has no padding token of its own).
        tie_word_embeddings: whether the LM head shares the input embedding (False for GPT-J).
    """

    model_type = "gptj"
    attribute_map = {
        "max_position_embeddings": "n_positions",
        "hidden_size": "n_embd",
        "num_attention_heads": "n_head",
        "num_hidden_layers": "n_layer",
    }
    _fields = {
        "vocab_size": positive_int(),
        "n_positions": positive_int(),
        "n_embd": positive_int(),
        "n_layer": count(),
        "n_head": positive_int(),
        "rotary_dim": positive_int(optional=True),
        "n_inner": positive_int(optional=True),
        "activation_function": Field("str"),
        "resid_pdrop": probability(),
        "embd_pdrop": probability(),
        "attn_pdrop": probability(),
        "layer_norm_epsilon": non_negative(),
        "initializer_range": non_negative(),
        "use_cache": BOOL,
    }

    def __init__(
        self, vocab_size: int = 50400, n_positions: int = 2048, n_embd: int = 4096, n_layer: int = 28,
        n_head: int = 16, rotary_dim: Optional[int] = 64, n_inner: Optional[int] = None,
        activation_function: str = "gelu_new", resid_pdrop: float = 0.0, embd_pdrop: float = 0.0,
        attn_pdrop: float = 0.0, layer_norm_epsilon: float = 1e-5, initializer_range: float = 0.02,
        use_cache: bool = True, bos_token_id: Optional[int] = 50256, eos_token_id: Optional[int] = 50256,
        pad_token_id: Optional[int] = None, tie_word_embeddings: bool = False, **kwargs: Any,
    ):
        self._set_fields(GPTJConfig._fields, locals())
        super().__init__(
            bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
            tie_word_embeddings=tie_word_embeddings, **kwargs,
        )
