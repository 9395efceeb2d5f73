"""MPT in PyTorch (MosaicML, 2023): a GPT-style pre-norm decoder whose attention takes ALiBi biases
instead of position embeddings.

Read top-down: attention (one fused query/key/value projection, scores biased by ALiBi), the
feed-forward layer, the block (norm, attention, residual; norm, MLP, residual), the bare model, then the
heads. The model computes what the reference 4.37 release computes for every ``MptConfig``, which means
ignoring several settings of the original MPT code (``MptConfig.ignored_settings``). Module attribute
names are the checkpoint keys of the reference checkpoints.
"""

from __future__ import annotations

import logging
import math
from typing import Optional

import torch
from torch import nn

from ...configs import MptConfig
from ...outputs import (
    BaseModelOutputWithPastAndCrossAttentions,
    CausalLMOutputWithCrossAttentions,
    TokenClassifierOutput,
)
from .. import fused
from .. import layers as L
from ..cache import Cache, reorder_legacy_or_cache
from ..generation import GenerationMixin
from ..modeling import PreTrainedModel

logger = logging.getLogger(__name__)


def _warn_ignored(config: MptConfig) -> None:
    """One warning per setting that the reference release (4.37) reads but does not act on, naming the
    setting, the value given and what the model computes instead (see ``MptConfig.ignored_settings``)."""
    for name, value, instead in config.ignored_settings():
        logger.warning("MptConfig %s=%r is ignored, as in the reference 4.37 release: using %s", name, value, instead)


class MptAttention(nn.Module):
    """Causal multi-head self-attention with ALiBi biases. As in the reference release, the projections
    have no biases and are not clipped (``clip_qkv`` is ignored); ``softmax_scale`` is honoured."""

    def __init__(self, config: MptConfig, layer_idx: int):
        super().__init__()
        attn = config.attn_config
        self.layer_idx = layer_idx
        self.n_heads = config.n_heads
        self.head_dim = config.d_model // config.n_heads
        if self.head_dim * self.n_heads != config.d_model:
            raise ValueError(f"d_model ({config.d_model}) must be divisible by n_heads ({config.n_heads})")
        scale = attn.softmax_scale
        self.softmax_scale = 1.0 / math.sqrt(self.head_dim) if scale is None else scale
        self.attn_pdrop = attn.attn_pdrop
        self.Wqkv = L.Linear(config.d_model, 3 * config.d_model, bias=False)
        self.out_proj = L.Linear(config.d_model, config.d_model, bias=False)

    def forward(self, hidden_states, bias, cache: Optional[Cache], cache_position, need_weights):
        batch, length, _ = hidden_states.shape
        qkv = self.Wqkv(hidden_states)
        # The projection's columns are query | key | value, each head by head.
        qkv = qkv.view(batch, length, 3, self.n_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (batch, heads, seq, head_dim)
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx, {"cache_position": cache_position})
        key_length = bias.shape[-1]  # a preallocated cache is read only up to the slots in use
        dropout = self.attn_pdrop if self.training else 0.0
        context, probs = L.attend(
            query, key[:, :, :key_length], value[:, :, :key_length], bias, scale=self.softmax_scale,
            dropout=dropout,
            # With dropout, the probabilities are dropped explicitly, as the reference does, so that a seeded
            # training step draws the same masks (the fused kernel draws its own).
            need_weights=need_weights or dropout > 0,
            masked_fill=True,  # the reference fills masked scores: a query seeing no key trains no query/key
        )
        return self.out_proj(L.merge_heads(context)), (probs if need_weights else None)


class MptMLP(nn.Module):
    """up, exact (erf) GELU, down; ``4 * d_model`` wide whatever ``expansion_ratio`` says, as in the
    reference release."""

    def __init__(self, config: MptConfig):
        super().__init__()
        inner = 4 * config.d_model
        self.up_proj = L.Linear(config.d_model, inner, bias=False)
        self.down_proj = L.Linear(inner, config.d_model, bias=False)

    def forward(self, hidden_states):
        return self.down_proj(L.gelu(self.up_proj(hidden_states)))


class MptBlock(nn.Module):
    """Pre-norm block: x + attention(norm_1(x)), then + mlp(norm_2(.)). MPT's norms have no bias.

    Both residual branches are dropped with ``attn_config.attn_pdrop``, as in the reference release (which
    ignores ``resid_pdrop``)."""

    def __init__(self, config: MptConfig, layer_idx: int):
        super().__init__()
        self.norm_1 = nn.LayerNorm(config.d_model, eps=config.layer_norm_epsilon, bias=False)
        self.attn = MptAttention(config, layer_idx)
        self.norm_2 = nn.LayerNorm(config.d_model, eps=config.layer_norm_epsilon, bias=False)
        self.ffn = MptMLP(config)
        self.resid_attn_dropout = nn.Dropout(config.attn_config.attn_pdrop)
        self.resid_ffn_dropout = nn.Dropout(config.attn_config.attn_pdrop)

    def forward(self, hidden_states, bias, cache, cache_position, need_weights):
        attended, probs = self.attn(self.norm_1(hidden_states), bias, cache, cache_position, need_weights)
        if self.training:  # dropout is the identity otherwise: a decoding step skips the calls
            attended = self.resid_attn_dropout(attended)
        hidden_states = attended + hidden_states
        fed = self.ffn(self.norm_2(hidden_states))
        if self.training:
            fed = self.resid_ffn_dropout(fed)
        return fed + hidden_states, probs


class MptPreTrainedModel(PreTrainedModel):
    config_class = MptConfig
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True
    _supports_cache_class = True
    _supports_static_cache = True

    def _init_weights(self, module: nn.Module) -> None:
        L.init_normal_weights(module, self.config.initializer_range)


class MptModel(MptPreTrainedModel):
    """The bare MPT decoder: token embeddings, ``n_layers`` blocks, a final norm.

    It computes what the reference 4.37 release computes for every config: the settings that release
    ignores (``MptConfig.ignored_settings``) are ignored here too, with one warning each."""

    _input_embeddings = "wte"

    def __init__(self, config: MptConfig):
        _warn_ignored(config)
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList([MptBlock(config, i) for i in range(config.n_layers)])
        self.norm_f = nn.LayerNorm(config.d_model, eps=config.layer_norm_epsilon, bias=False)
        self._slopes = None  # ALiBi's per-head slopes, computed on the first call
        self._alibi_table = None  # (1, heads, 1, slots): the decoding steps' biases (_last_query_alibi)
        self.gradient_checkpointing = False
        self.post_init()

    def forward(self, input_ids=None, past_key_values=None, attention_mask=None, inputs_embeds=None, use_cache=None,
                output_attentions=None, output_hidden_states=None, return_dict=None, position_ids=None,
                cache_position=None):
        """``position_ids`` is accepted so that every causal LM takes the same decoding arguments; ALiBi
        depends only on distances between cache slots, which left padding does not change."""
        run = L.decoder_inputs(self, self.wte, input_ids, inputs_embeds, past_key_values, attention_mask,
                               cache_position, use_cache, output_attentions, output_hidden_states, return_dict)
        embeds = run.inputs_embeds
        if self._slopes is None or self._slopes.device != embeds.device:
            # A maximum exponent of 8 whatever attn_config.alibi_bias_max says, as in the reference release.
            self._slopes = L.alibi_slopes(self.config.n_heads, 8, embeds.device)
        # ALiBi needs an explicit bias, so the causal mask is explicit too, but for a decoding step
        # without padding, which needs none.
        causal = L.decoder_self_attention_mask(attention_mask, run.cache_position, run.key_length, torch.float32,
                                               explicit=embeds.shape[1] > 1 or run.output_attentions, slots=run.slots)
        if causal.bias is None and not causal.is_causal and embeds.shape[1] == 1:
            bias = self._last_query_alibi(run.key_length)  # a decoding step that sees every slot
        else:
            bias = L.alibi_bias(self._slopes, run.cache_position, run.key_length)
        if causal.bias is not None:
            # Summed in float32 and clamped: in float16 a masked slot's minimum plus a negative ALiBi term
            # would round to -inf, and a fully masked (padding) row would turn into NaNs.
            bias = (bias + causal.bias).clamp(min=torch.finfo(embeds.dtype).min)
        if bias.dtype != embeds.dtype:
            bias = bias.to(embeds.dtype)

        # No embedding dropout: the reference ignores emb_pdrop.
        stepped = fused.alibi_blocks(self, embeds, bias, run)  # a decoding step in one compiled call
        if stepped is not None:
            hidden, all_hidden, all_attn = stepped, None, None
        else:
            hidden, all_hidden, all_attn = L.run_blocks(
                self.blocks, embeds, (bias, run.cache, run.cache_position, run.output_attentions), run
            )
        return L.decoder_output(BaseModelOutputWithPastAndCrossAttentions, self.norm_f(hidden), all_hidden, all_attn,
                                run)

    def _last_query_alibi(self, key_length: int) -> torch.Tensor:
        """ALiBi's bias for one query after ``key_length`` keys, ``slope * (slot - (key_length - 1))``: the
        last ``key_length`` columns of a table kept for the longest such step so far (one slice a step
        instead of building the row; the same values as :func:`layers.alibi_bias`)."""
        table = self._alibi_table
        if table is None or table.shape[-1] < key_length or table.device != self._slopes.device:
            width = max(key_length, 256, 0 if table is None else 2 * table.shape[-1])
            slot = torch.full((1,), width - 1, device=self._slopes.device)
            self._alibi_table = table = L.alibi_bias(self._slopes, slot, width)
        return table[..., table.shape[-1] - key_length:]


class MptForCausalLM(GenerationMixin, MptPreTrainedModel):
    """MPT with its language modelling head, tied to the input embeddings. ``labels`` are the input
    ids, shifted inside the loss; -100 is ignored. ``config.logit_scale`` is ignored, as in the reference
    release: the logits are not scaled."""

    _tied_weights_keys = ["lm_head.weight"]
    _output_embeddings = "lm_head"
    prepare_inputs_for_generation = L.alibi_decoder_generation_inputs
    _reorder_cache = staticmethod(reorder_legacy_or_cache)

    def __init__(self, config: MptConfig):
        super().__init__(config)
        self.transformer = MptModel(config)
        self.lm_head = L.Linear(config.d_model, config.vocab_size, bias=False)
        self.post_init()

    def forward(self, input_ids=None, past_key_values=None, attention_mask=None, inputs_embeds=None, labels=None,
                use_cache=None, output_attentions=None, output_hidden_states=None, return_dict=None,
                position_ids=None, cache_position=None, logits_to_keep=0):
        body = self.transformer(input_ids, past_key_values, attention_mask, inputs_embeds, use_cache, output_attentions,
                                output_hidden_states, return_dict=True, cache_position=cache_position)
        return L.causal_lm_output(CausalLMOutputWithCrossAttentions, self.lm_head, body, logits_to_keep, labels,
                                  return_dict, self.config)


class MptForSequenceClassification(MptPreTrainedModel):
    """Classifies a sequence from the hidden state of its last real token; the loss follows
    ``config.problem_type`` (regression, single-label or multi-label)."""

    def __init__(self, config: MptConfig):
        super().__init__(config)
        L.add_last_token_classifier(self, MptModel(config))
        self.post_init()

    def forward(self, input_ids=None, past_key_values=None, attention_mask=None, inputs_embeds=None, labels=None,
                use_cache=None, output_attentions=None, output_hidden_states=None, return_dict=None):
        body = self.transformer(input_ids, past_key_values, attention_mask, inputs_embeds, use_cache, output_attentions,
                                output_hidden_states, return_dict=True)
        return L.last_token_classifier_output(self.score(body.last_hidden_state), input_ids, labels, body,
                                              return_dict, self.config)


class MptForTokenClassification(MptPreTrainedModel):
    """One label per token (NER and the like); labels of -100 are ignored."""

    def __init__(self, config: MptConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.transformer = MptModel(config)
        # MPT configs name no classifier dropout; like the reference, a config may add one.
        dropout = getattr(config, "classifier_dropout", None)
        if dropout is None:
            dropout = getattr(config, "hidden_dropout", None)
        self.dropout = nn.Dropout(0.1 if dropout is None else dropout)
        self.classifier = nn.Linear(config.d_model, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, past_key_values=None, attention_mask=None, inputs_embeds=None, labels=None,
                use_cache=None, output_attentions=None, output_hidden_states=None, return_dict=None):
        body = self.transformer(input_ids, past_key_values, attention_mask, inputs_embeds, use_cache, output_attentions,
                                output_hidden_states, return_dict=True)
        logits = self.classifier(self.dropout(body.last_hidden_state))
        return L.labelled_output(TokenClassifierOutput, logits, labels, body, return_dict, self.config)


class MptForQuestionAnswering(MptPreTrainedModel):
    """Extractive QA: start and end logits over the tokens."""

    def __init__(self, config: MptConfig):
        super().__init__(config)
        self.transformer = MptModel(config)
        self.qa_outputs = nn.Linear(config.d_model, 2)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, start_positions=None,
                end_positions=None, output_attentions=None, output_hidden_states=None, return_dict=None):
        body = self.transformer(input_ids, None, attention_mask, inputs_embeds, False, output_attentions,
                                output_hidden_states, return_dict=True)
        return L.span_output(self.qa_outputs(body.last_hidden_state), start_positions, end_positions, body,
                             return_dict, self.config)
