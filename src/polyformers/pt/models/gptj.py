"""GPT-J in PyTorch (Wang & Komatsuzaki, 2021): a GPT-style decoder with rotary positions and parallel
attention and feed-forward branches.

Read top-down: attention (rotary on the first ``rotary_dim`` dimensions of each head, pairs of
neighbouring dimensions rotated together), the block (one layer norm feeding attention and MLP side by
side, both added to the residual), the bare model, then the heads. Module attribute names are the
checkpoint keys of the reference checkpoints.
"""

from __future__ import annotations

from typing import Optional

from torch import nn

from ...configs import GPTJConfig
from ...outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from .. import fused
from .. import layers as L
from ..cache import Cache, reorder_legacy_or_cache
from ..generation import GenerationMixin
from ..modeling import PreTrainedModel


def _rotary_dim(config: GPTJConfig) -> int:
    """How many leading dimensions of each head rotate; without ``rotary_dim``, all of them."""
    head_dim = config.n_embd // config.n_head
    rotary_dim = config.rotary_dim or head_dim
    if rotary_dim > head_dim or rotary_dim % 2:
        raise ValueError(f"rotary_dim must be even and at most the head size {head_dim}, got {config.rotary_dim}")
    return rotary_dim


class GPTJAttention(nn.Module):
    """Causal self-attention; queries and keys carry rotary positions, values do not. The three
    projections run as one matmul (``L.stacked_linear``)."""

    def __init__(self, config: GPTJConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.n_head
        self.head_dim = config.n_embd // config.n_head
        if self.head_dim * self.num_heads != config.n_embd:
            raise ValueError(f"n_embd ({config.n_embd}) must be divisible by n_head ({config.n_head})")
        self.rotary_dim = _rotary_dim(config)
        self.q_proj = L.Linear(config.n_embd, config.n_embd, bias=False)
        self.k_proj = L.Linear(config.n_embd, config.n_embd, bias=False)
        self.v_proj = L.Linear(config.n_embd, config.n_embd, bias=False)
        self.out_proj = L.Linear(config.n_embd, config.n_embd, bias=False)
        self.attn_pdrop = config.attn_pdrop
        self.resid_dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, hidden_states, rotation, mask: L.CausalMask, cache: Optional[Cache], cache_position,
                need_weights):
        batch, length, _ = hidden_states.shape
        qkv = L.stacked_linear(hidden_states, self.q_proj, self.k_proj, self.v_proj)
        qkv = qkv.view(batch, length, 3, self.num_heads, self.head_dim)
        L.rotate_pairs_(qkv[:, :, :2, :, : self.rotary_dim], rotation[:, :, None, None])
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (batch, heads, seq, head_dim)
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx, {"cache_position": cache_position})
        # The reference computes scores in float32: GPT-J's query-key products overflow float16.
        context, probs = L.attend(
            query, key[:, :, : mask.key_length], value[:, :, : mask.key_length], mask.bias,
            dropout=self.attn_pdrop if self.training else 0.0, need_weights=need_weights, float32_scores=True,
            is_causal=mask.is_causal,
        )
        return self.resid_dropout(self.out_proj(L.merge_heads(context))), probs


class GPTJMLP(nn.Module):
    def __init__(self, config: GPTJConfig):
        super().__init__()
        inner = config.n_inner if config.n_inner is not None else 4 * config.n_embd
        self.fc_in = L.Linear(config.n_embd, inner)
        self.fc_out = L.Linear(inner, config.n_embd)
        self.act = L.get_activation(config.activation_function)
        self.dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, hidden_states):
        return self.dropout(self.fc_out(self.act(self.fc_in(hidden_states))))


class GPTJBlock(nn.Module):
    """x + attention(ln(x)) + mlp(ln(x)): both branches read the same normalised input."""

    def __init__(self, config: GPTJConfig, layer_idx: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = GPTJAttention(config, layer_idx)
        self.mlp = GPTJMLP(config)

    def forward(self, hidden_states, rotation, mask, cache, cache_position, need_weights):
        normed = self.ln_1(hidden_states)
        attended, probs = self.attn(normed, rotation, mask, cache, cache_position, need_weights)
        return attended + self.mlp(normed) + hidden_states, probs


class GPTJPreTrainedModel(PreTrainedModel):
    config_class = GPTJConfig
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True
    _supports_cache_class = True
    _supports_static_cache = True
    # Checkpoints written by older releases carry the causal-mask buffers; the mask is computed instead.
    _keys_to_ignore_on_load_unexpected = [r"h\.\d+\.attn\.masked_bias", r"h\.\d+\.attn\.bias"]
    # The first forward stacks q, k and v into one matrix; mapped, their pages would stay resident too.
    _keys_loaded_unmapped = [r"attn\.[qkv]_proj\.weight$"]

    def _init_weights(self, module: nn.Module) -> None:
        L.init_normal_weights(module, self.config.initializer_range)


class GPTJModel(GPTJPreTrainedModel):
    """The bare GPT-J decoder: token embeddings, ``n_layer`` blocks, a final layer norm."""

    _input_embeddings = "wte"

    def __init__(self, config: GPTJConfig):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.drop = nn.Dropout(config.embd_pdrop)
        self.h = nn.ModuleList([GPTJBlock(config, i) for i in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.rotary = L.RotaryTable(_rotary_dim(config), length=config.n_positions)
        self.gradient_checkpointing = False
        self.post_init()

    def forward(self, input_ids=None, past_key_values=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, use_cache=None, output_attentions=None, output_hidden_states=None,
                return_dict=None, cache_position=None):
        run = L.decoder_inputs(self, self.wte, input_ids, inputs_embeds, past_key_values, attention_mask,
                               cache_position, use_cache, output_attentions, output_hidden_states, return_dict)
        embeds = run.inputs_embeds
        position_ids = run.cache_position[None] if position_ids is None else position_ids.to(embeds.device)
        mask = L.decoder_self_attention_mask(attention_mask, run.cache_position, run.key_length, embeds.dtype,
                                             explicit=run.output_attentions, slots=run.slots)
        rotation = self.rotary(position_ids)

        hidden = embeds
        if token_type_ids is not None:
            vocab_size = self.config.vocab_size
            L.check_ids("token_type_ids", token_type_ids, vocab_size, f"vocab_size={vocab_size}")
            hidden = hidden + self.wte(token_type_ids.view(-1, embeds.shape[1]))
        hidden = self.drop(hidden)

        stepped = fused.rotary_blocks(self, hidden, rotation, mask, run)  # a decoding step in one compiled call
        if stepped is not None:
            hidden, all_hidden, all_attn = stepped, None, None
        else:
            hidden, all_hidden, all_attn = L.run_blocks(
                self.h, hidden, (rotation, mask, run.cache, run.cache_position, run.output_attentions), run
            )
        return L.decoder_output(BaseModelOutputWithPast, self.ln_f(hidden), all_hidden, all_attn, run)


class GPTJForCausalLM(GenerationMixin, GPTJPreTrainedModel):
    """GPT-J with its language modelling head (a biased projection to the vocabulary). ``labels`` are
    the input ids, shifted inside the loss; -100 is ignored."""

    _tied_weights_keys = ["lm_head.weight"]
    _output_embeddings = "lm_head"
    prepare_inputs_for_generation = L.cached_decoder_generation_inputs
    _reorder_cache = staticmethod(reorder_legacy_or_cache)

    def __init__(self, config: GPTJConfig):
        super().__init__(config)
        self.transformer = GPTJModel(config)
        self.lm_head = L.Linear(config.n_embd, config.vocab_size)
        self.post_init()

    def forward(self, input_ids=None, past_key_values=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, use_cache=None, output_attentions=None, output_hidden_states=None,
                return_dict=None, cache_position=None, logits_to_keep=0):
        body = self.transformer(input_ids, past_key_values, attention_mask, token_type_ids, position_ids, inputs_embeds,
                                use_cache, output_attentions, output_hidden_states, True, cache_position)
        return L.causal_lm_output(CausalLMOutputWithPast, self.lm_head, body, logits_to_keep, labels, return_dict,
                                  self.config)


class GPTJForSequenceClassification(GPTJPreTrainedModel):
    """Classifies a sequence from the hidden state of its last real token; the loss follows
    ``config.problem_type`` (regression, single-label or multi-label)."""

    def __init__(self, config: GPTJConfig):
        super().__init__(config)
        L.add_last_token_classifier(self, GPTJModel(config))
        self.post_init()

    def forward(self, input_ids=None, past_key_values=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, use_cache=None, output_attentions=None, output_hidden_states=None,
                return_dict=None):
        body = self.transformer(input_ids, past_key_values, attention_mask, token_type_ids, position_ids, inputs_embeds,
                                use_cache, output_attentions, output_hidden_states, return_dict=True)
        return L.last_token_classifier_output(self.score(body.last_hidden_state), input_ids, labels, body,
                                              return_dict, self.config)


class GPTJForQuestionAnswering(GPTJPreTrainedModel):
    """Extractive QA: start and end logits over the tokens (``num_labels`` must be 2)."""

    def __init__(self, config: GPTJConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.transformer = GPTJModel(config)
        self.qa_outputs = nn.Linear(config.n_embd, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                start_positions=None, end_positions=None, output_attentions=None, output_hidden_states=None,
                return_dict=None):
        body = self.transformer(input_ids, None, attention_mask, token_type_ids, position_ids, inputs_embeds, False,
                                output_attentions, output_hidden_states, return_dict=True)
        return L.span_output(self.qa_outputs(body.last_hidden_state), start_positions, end_positions, body,
                             return_dict, self.config)
