"""MPNet in PyTorch (Song et al., 2020): a BERT-shaped encoder with a learned, bucketed relative position bias.

Read top-down: embeddings (word + absolute position, numbered like RoBERTa's), the relative position bias
shared by every layer, attention and the post-norm block, the encoder, the bare model with its pooler, then
the heads. Module attribute names are the checkpoint keys of the reference checkpoints (``attention.attn.q``,
``encoder.relative_attention_bias``, ``lm_head.layer_norm``, ...).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from ...configs import MPNetConfig
from ...outputs import (
    BaseModelOutputWithPooling,
    MaskedLMOutput,
    MultipleChoiceModelOutput,
    TokenClassifierOutput,
)
from .. import layers as L
from ..bert import BertIntermediate, BertOutput, prepare_encoder_inputs
from ..modeling import PreTrainedModel
from ..unpad import Packing

# The reference pins the padding id at 1 (fairseq's <pad>) whatever ``pad_token_id`` says: it is the row of
# the embedding tables kept at zero and the origin of the position numbering.
PADDING_IDX = 1
# The reference always buckets relative positions into 32 buckets up to a distance of 128, whatever
# ``relative_attention_num_buckets`` says; that field only sizes the bias table, which needs 32 rows or more.
NUM_BUCKETS = 32
MAX_DISTANCE = 128


class MPNetEmbeddings(nn.Module):
    """Word + absolute position embeddings, LayerNorm and dropout (no token types)."""

    def __init__(self, config: MPNetConfig):
        super().__init__()
        self.padding_idx = PADDING_IDX
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=PADDING_IDX)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size,
                                                padding_idx=PADDING_IDX)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.register_buffer("position_ids", torch.arange(config.max_position_embeddings)[None, :], persistent=False)

    def forward(self, input_ids=None, position_ids=None, inputs_embeds=None):
        if position_ids is None:
            if input_ids is not None:
                position_ids = L.position_ids_after_padding(input_ids, self.padding_idx)
            else:
                # Embeddings cannot tell which rows are padding, so every token counts.
                batch, length = inputs_embeds.shape[:2]
                first = self.padding_idx + 1
                position_ids = self.position_ids[:, first : first + length].expand(batch, -1)
            limit = self.position_embeddings.num_embeddings
            if position_ids.numel() and int(position_ids.max()) >= limit:
                raise ValueError(
                    f"the input needs position id {int(position_ids.max())} but max_position_embeddings={limit}: "
                    f"MPNet numbers tokens from {self.padding_idx + 1}, so at most {limit - self.padding_idx - 1} "
                    f"non-padding tokens fit, got {position_ids.shape[1]} tokens"
                )
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        return self.dropout(self.LayerNorm(inputs_embeds + self.position_embeddings(position_ids)))


def relative_position_bucket(relative_position: torch.Tensor, num_buckets: int = NUM_BUCKETS,
                             max_distance: int = MAX_DISTANCE) -> torch.Tensor:
    """T5-style buckets of ``key - query`` offsets. Each direction gets half the buckets: keys before the
    query the lower half, keys after it the upper half. Within a half, distances below a quarter of the
    buckets are exact; longer ones share logarithmically wider buckets, the last covering ``max_distance``
    and beyond."""
    half = num_buckets // 2
    distance = -relative_position
    bucket = (distance < 0).long() * half
    distance = distance.abs()
    exact = half // 2
    # Same float operations in the same order as the reference: a bucket edge must not move by rounding.
    wide = exact + (
        torch.log(distance.float() / exact) / math.log(max_distance / exact) * (half - exact)
    ).long()
    wide = torch.minimum(wide, torch.full_like(wide, half - 1))
    return bucket + torch.where(distance < exact, distance, wide)


class MPNetSelfAttention(nn.Module):
    """Multi-head self-attention whose scores get the relative position bias (and padding mask) added."""

    def __init__(self, config: MPNetConfig):
        super().__init__()
        L.attention_head_size(config.hidden_size, config.num_attention_heads)
        self.num_heads = config.num_attention_heads
        # Four square projections: query, key, value and output, in the checkpoints' order.
        self.q, self.k, self.v, self.o = (L.Linear(config.hidden_size, config.hidden_size) for _ in range(4))
        self.dropout_prob = config.attention_probs_dropout_prob

    def forward(self, hidden_states, bias, head_mask=None, output_attentions=False, packing: Optional[Packing] = None):
        # Packed (tokens, hidden) states go back to the padded layout for the attention product only.
        split_heads = L.split_heads if packing is None else packing.split_heads
        merge_heads = L.merge_heads if packing is None else packing.merge_heads
        query, key, value = (split_heads(part, self.num_heads) for part in
                             L.stacked_linear(hidden_states, self.q, self.k, self.v).chunk(3, dim=-1))
        context, probs = L.attend(
            query, key, value, bias,
            dropout=self.dropout_prob if self.training else 0.0,
            head_mask=head_mask,
            need_weights=output_attentions,
        )
        return self.o(merge_heads(context)), probs


class MPNetAttention(nn.Module):
    """Attention, dropout, residual, then LayerNorm (post-norm)."""

    def __init__(self, config: MPNetConfig):
        super().__init__()
        self.attn = MPNetSelfAttention(config)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states, bias, head_mask=None, output_attentions=False, packing: Optional[Packing] = None):
        attended, probs = self.attn(hidden_states, bias, head_mask, output_attentions, packing)
        return self.LayerNorm(self.dropout(attended) + hidden_states), probs


class MPNetLayer(nn.Module):
    """One encoder block: attention, then BERT's feed-forward (``intermediate`` and ``output``)."""

    def __init__(self, config: MPNetConfig):
        super().__init__()
        self.attention = MPNetAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(self, hidden_states, bias, head_mask=None, output_attentions=False, packing: Optional[Packing] = None):
        hidden_states, probs = self.attention(hidden_states, bias, head_mask, output_attentions, packing)
        return self.output(self.intermediate(hidden_states), hidden_states), probs


class MPNetEncoder(nn.Module):
    """The layer stack plus the relative position bias table they all share (one scalar per bucket and head)."""

    def __init__(self, config: MPNetConfig):
        super().__init__()
        self.config = config
        self.layer = nn.ModuleList(MPNetLayer(config) for _ in range(config.num_hidden_layers))
        self.relative_attention_bias = nn.Embedding(config.relative_attention_num_buckets, config.num_attention_heads)
        self.skip_padding = False  # see pt/unpad.py

    def position_bias(self, length: int, device) -> torch.Tensor:
        """(1, heads, query, key) bias from token offsets within the sequence (padding does not shift them)."""
        if self.relative_attention_bias.num_embeddings < NUM_BUCKETS:
            raise ValueError(
                f"relative_attention_num_buckets must be at least {NUM_BUCKETS} (MPNet always uses {NUM_BUCKETS} "
                f"buckets), got {self.relative_attention_bias.num_embeddings}"
            )
        # Bucketed on the CPU, as the reference does, so that float rounding at bucket edges is the same
        # on every device.
        positions = torch.arange(length)
        buckets = relative_position_bucket(positions[None, :] - positions[:, None]).to(device)
        return self.relative_attention_bias(buckets).permute(2, 0, 1)[None]

    def forward(self, hidden_states, mask, head_masks, output_attentions=False, output_hidden_states=False):
        bias = self.position_bias(hidden_states.shape[1], hidden_states.device) + mask
        all_hidden = (hidden_states,) if output_hidden_states else None
        all_attn = () if output_attentions else None
        packing = None
        if self.skip_padding and not (self.training or output_attentions or any(m is not None for m in head_masks)):
            packing = Packing.from_additive_mask(mask)
        if packing is not None:
            hidden_states = packing.pack(hidden_states)
        for layer, head_mask in zip(self.layer, head_masks):
            hidden_states, probs = layer(hidden_states, bias, head_mask, output_attentions, packing)
            if output_attentions:
                all_attn += (probs,)
            if output_hidden_states:
                all_hidden += (hidden_states if packing is None else packing.unpack(hidden_states),)
        if packing is not None:
            hidden_states = all_hidden[-1] if output_hidden_states else packing.unpack(hidden_states)
        return hidden_states, all_hidden, all_attn


class MPNetPooler(nn.Module):
    """The first token's state through a dense layer and tanh."""

    def __init__(self, config: MPNetConfig):
        super().__init__()
        self.dense = L.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden_states):
        return self.activation(self.dense(hidden_states[:, 0]))


class MPNetPreTrainedModel(PreTrainedModel):
    # The first forward stacks q, k and v into one matrix; mapped, their pages would stay resident too.
    _keys_loaded_unmapped = [r"attn\.[qkv]\.(weight|bias)$"]
    config_class = MPNetConfig
    base_model_prefix = "mpnet"

    def _init_weights(self, module: nn.Module) -> None:
        L.init_normal_weights(module, self.config.initializer_range)
        if isinstance(module, MPNetLMHead):
            module.bias.data.zero_()


class MPNetModel(MPNetPreTrainedModel):
    """The bare MPNet encoder: hidden states and, unless ``add_pooling_layer=False``, the pooled first token."""

    _input_embeddings = "embeddings.word_embeddings"

    def __init__(self, config: MPNetConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        self.embeddings = MPNetEmbeddings(config)
        self.encoder = MPNetEncoder(config)
        self.pooler = MPNetPooler(config) if add_pooling_layer else None
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, head_mask=None, inputs_embeds=None,
                output_attentions=None, output_hidden_states=None, return_dict=None):
        config = self.config
        output_attentions, output_hidden_states, return_dict = L.output_flags(
            config, output_attentions, output_hidden_states, return_dict
        )
        _, _, _, mask, _, head_masks = prepare_encoder_inputs(
            config, input_ids, inputs_embeds, config.hidden_size, attention_mask, head_mask, None, None, None,
            self.dtype,
        )
        L.check_ids("position_ids", position_ids, config.max_position_embeddings,
                    f"max_position_embeddings={config.max_position_embeddings}")
        hidden = self.embeddings(input_ids, position_ids, inputs_embeds)
        hidden, all_hidden, all_attn = self.encoder(hidden, mask, head_masks, output_attentions, output_hidden_states)
        pooled = self.pooler(hidden) if self.pooler is not None else None
        if not return_dict:
            # The reference keeps the pooler's slot (None without a pooler), so hidden states and attentions
            # sit at the same tuple index either way.
            return (hidden, pooled) + tuple(x for x in (all_hidden, all_attn) if x is not None)
        return BaseModelOutputWithPooling(
            last_hidden_state=hidden, pooler_output=pooled, hidden_states=all_hidden, attentions=all_attn
        )


class MPNetLMHead(nn.Module):
    """Dense, GELU, LayerNorm, then the projection onto the vocabulary (tied to the word embeddings).

    The output bias is one vector, ``bias``; the reference also exposes it as ``decoder.bias``, an alias,
    which is why older checkpoints may store it under both names.
    """

    def __init__(self, config: MPNetConfig):
        super().__init__()
        self.dense = L.Linear(config.hidden_size, config.hidden_size)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.decoder = L.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.activation = L.get_activation("gelu")

    def forward(self, features):
        return self.decoder(self.layer_norm(self.activation(self.dense(features)))) + self.bias


class MPNetForMaskedLM(MPNetPreTrainedModel):
    """Predicts masked tokens; labels of -100 are ignored by the loss."""

    _tied_weights_keys = ["lm_head.decoder.weight"]
    _output_embeddings = "lm_head.decoder"
    # The alias of lm_head.bias (see MPNetLMHead), same values.
    _keys_to_ignore_on_load_unexpected = [r"^lm_head\.decoder\.bias$"]

    def __init__(self, config: MPNetConfig):
        super().__init__(config)
        self.mpnet = MPNetModel(config, add_pooling_layer=False)
        self.lm_head = MPNetLMHead(config)
        self.post_init()

    def resize_token_embeddings(self, new_num_tokens=None, pad_to_multiple_of=None):
        embeddings = super().resize_token_embeddings(new_num_tokens, pad_to_multiple_of)
        old = self.lm_head.bias
        if old.shape[0] != embeddings.num_embeddings:
            bias = torch.zeros(embeddings.num_embeddings, dtype=old.dtype, device=old.device)
            keep = min(old.shape[0], bias.shape[0])
            bias[:keep] = old.data[:keep]
            self.lm_head.bias = nn.Parameter(bias)
        return embeddings

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, head_mask=None, inputs_embeds=None,
                labels=None, output_attentions=None, output_hidden_states=None, return_dict=None):
        body = self.mpnet(input_ids, attention_mask, position_ids, head_mask, inputs_embeds,
                          output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                          return_dict=True)
        logits = self.lm_head(body.last_hidden_state)
        return L.labelled_output(MaskedLMOutput, logits, labels, body, return_dict, self.config)


class MPNetClassificationHead(L.ClassificationHead):
    """Sentence-level head on the first token: dropout, dense, tanh, dropout, projection."""

    def __init__(self, config: MPNetConfig):
        super().__init__(config.hidden_size, config.num_labels, config.hidden_dropout_prob, torch.tanh)


class MPNetForSequenceClassification(MPNetPreTrainedModel):
    """Classification or regression on the whole sequence; the loss follows ``config.problem_type``."""

    def __init__(self, config: MPNetConfig):
        super().__init__(config)
        L.head_body(self, MPNetModel(config, add_pooling_layer=False))
        self.classifier = MPNetClassificationHead(config)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, head_mask=None, inputs_embeds=None,
                labels=None, output_attentions=None, output_hidden_states=None, return_dict=None):
        body = self.mpnet(input_ids, attention_mask, position_ids, head_mask, inputs_embeds,
                          output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                          return_dict=True)
        logits = self.classifier(body.last_hidden_state)
        return L.classifier_output(logits, labels, body, return_dict, self.config)


class MPNetForTokenClassification(MPNetPreTrainedModel):
    """One label per token (NER and the like); labels of -100 are ignored."""

    def __init__(self, config: MPNetConfig):
        super().__init__(config)
        L.add_token_classifier(self, MPNetModel(config, add_pooling_layer=False), config.hidden_dropout_prob)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, head_mask=None, inputs_embeds=None,
                labels=None, output_attentions=None, output_hidden_states=None, return_dict=None):
        body = self.mpnet(input_ids, attention_mask, position_ids, head_mask, inputs_embeds,
                          output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                          return_dict=True)
        logits = self.classifier(self.dropout(body.last_hidden_state))
        return L.labelled_output(TokenClassifierOutput, logits, labels, body, return_dict, self.config)


class MPNetForQuestionAnswering(MPNetPreTrainedModel):
    """Extractive QA: start and end logits over the tokens (``num_labels`` must be 2)."""

    def __init__(self, config: MPNetConfig):
        super().__init__(config)
        L.add_span_classifier(self, MPNetModel(config, add_pooling_layer=False))
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, head_mask=None, inputs_embeds=None,
                start_positions=None, end_positions=None, output_attentions=None, output_hidden_states=None,
                return_dict=None):
        body = self.mpnet(input_ids, attention_mask, position_ids, head_mask, inputs_embeds,
                          output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                          return_dict=True)
        return L.span_output(self.qa_outputs(body.last_hidden_state), start_positions, end_positions, body,
                             return_dict, self.config)


class MPNetForMultipleChoice(MPNetPreTrainedModel):
    """Scores each of ``num_choices`` candidate sequences from its pooled first token; inputs are
    (batch, num_choices, sequence)."""

    def __init__(self, config: MPNetConfig):
        super().__init__(config)
        L.add_pooled_choice_classifier(self, MPNetModel(config))
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, head_mask=None, inputs_embeds=None,
                labels=None, output_attentions=None, output_hidden_states=None, return_dict=None):
        reference = input_ids if input_ids is not None else inputs_embeds
        if reference is None or reference.dim() != (3 if input_ids is not None else 4):
            given = None if reference is None else tuple(reference.shape)
            raise ValueError(
                "pass input_ids of shape (batch, num_choices, sequence) or inputs_embeds of shape "
                f"(batch, num_choices, sequence, hidden_size), got {given}"
            )
        num_choices = reference.shape[1]
        flat = L.flatten_choices
        body = self.mpnet(flat(input_ids), flat(attention_mask), flat(position_ids), head_mask, flat(inputs_embeds),
                          output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                          return_dict=True)
        logits = self.classifier(self.dropout(body.pooler_output)).view(-1, num_choices)
        return L.labelled_output(MultipleChoiceModelOutput, logits, labels, body, return_dict, self.config,
                                 L.multiple_choice_loss)
