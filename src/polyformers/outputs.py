"""Model outputs, shared by the PyTorch, Keras and Flax classes.

A :class:`ModelOutput` behaves like the reference's: fields are attributes, string keys and integer
indices at once; fields left at ``None`` are not keys and are skipped by indexing and ``to_tuple()``,
so ``outputs[0]`` is always the first field the model actually returned.

The concrete classes are declared as data (name -> fields) because they differ only in their fields;
framework prefixes (``TF``/``Flax``) name the same structure with the reference's field order.
"""

from __future__ import annotations

import dataclasses
import functools
from collections import OrderedDict
from typing import Any, Optional


class ModelOutput(OrderedDict):
    """Base of every output: a dataclass that is also an ordered dict of its non-``None`` fields."""

    def __post_init__(self) -> None:
        names = _field_names(type(self))
        first = getattr(self, names[0])
        others_none = all(getattr(self, n) is None for n in names[1:])
        # ``Output({"logits": x})`` and ``Output([("logits", x)])`` build from a mapping, as in the
        # reference; an array first field (anything with a shape) is never such a mapping.
        if others_none and first is not None and not hasattr(first, "shape"):
            pairs = _key_value_pairs(first)
            if pairs is not None:
                setattr(self, names[0], None)
                for key, value in pairs:
                    self[key] = value
                return
        for name in names:
            value = getattr(self, name)
            if value is not None:
                self[name] = value

    # A ModelOutput is a record, not a mutable mapping: removing keys would desynchronise attributes.
    def __delitem__(self, *args, **kwargs):
        raise TypeError(f"cannot delete keys of a {type(self).__name__}")

    def setdefault(self, *args, **kwargs):
        raise TypeError(f"cannot use setdefault on a {type(self).__name__}")

    def pop(self, *args, **kwargs):
        raise TypeError(f"cannot pop from a {type(self).__name__}")

    def update(self, *args, **kwargs):
        raise TypeError(f"cannot update a {type(self).__name__}; set its attributes instead")

    def __getitem__(self, key):
        if isinstance(key, str):
            return super().__getitem__(key)
        return self.to_tuple()[key]

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self.keys() and value is not None:
            super().__setitem__(name, value)
        super().__setattr__(name, value)

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        super().__setattr__(key, value)

    def __reduce__(self):
        if not dataclasses.is_dataclass(self):
            return super().__reduce__()
        callable_, _args, *rest = super().__reduce__()
        args = tuple(getattr(self, f.name) for f in dataclasses.fields(self))
        return (callable_, args, *rest)

    def to_tuple(self) -> tuple:
        """The non-``None`` fields, in declaration order."""
        return tuple(self[k] for k in self.keys())


@functools.lru_cache(maxsize=None)
def _field_names(cls: type) -> tuple[str, ...]:
    """The dataclass fields of an output class, in order (read once per class: every forward builds outputs)."""
    return tuple(f.name for f in dataclasses.fields(cls))


def _key_value_pairs(value) -> Optional[list]:
    """``value`` as a list of (str key, value) pairs, or None when it is not a dict or such an iterable."""
    if isinstance(value, dict):
        return list(value.items())
    if isinstance(value, (str, bytes)):
        return None
    try:
        items = list(value)
    except TypeError:
        return None
    if items and all(isinstance(i, (list, tuple)) and len(i) == 2 and isinstance(i[0], str) for i in items):
        return [tuple(i) for i in items]
    return None


def _declare(name: str, fields: str, doc: str) -> type:
    cls = dataclasses.make_dataclass(
        name,
        [(f, Optional[Any], dataclasses.field(default=None)) for f in fields.split()],
        bases=(ModelOutput,),
        eq=False,  # keep OrderedDict equality
        namespace={"__doc__": doc, "__module__": __name__},
    )
    globals()[name] = cls
    return cls


_H = "hidden_states attentions"

# name: (fields in order, what it is). PyTorch names first; TF/Flax variants below reuse the layout.
_OUTPUTS = {
    "BaseModelOutput": (f"last_hidden_state {_H}", "Encoder output: last layer's states."),
    "BaseModelOutputWithPooling": (f"last_hidden_state pooler_output {_H}", "Encoder output with pooled first token."),
    "BaseModelOutputWithPast": (f"last_hidden_state past_key_values {_H}", "Decoder output with its key/value cache."),
    "BaseModelOutputWithCrossAttentions": (
        f"last_hidden_state {_H} cross_attentions",
        "Encoder/decoder output with cross-attention weights.",
    ),
    "BaseModelOutputWithPastAndCrossAttentions": (
        f"last_hidden_state past_key_values {_H} cross_attentions",
        "Decoder output with cache and cross-attention weights.",
    ),
    "BaseModelOutputWithPoolingAndCrossAttentions": (
        "last_hidden_state pooler_output hidden_states past_key_values attentions cross_attentions",
        "Encoder output with pooling, cache and cross-attention weights.",
    ),
    "CausalLMOutput": (f"loss logits {_H}", "Next-token prediction output."),
    "CausalLMOutputWithPast": (f"loss logits past_key_values {_H}", "Next-token prediction output with cache."),
    "CausalLMOutputWithCrossAttentions": (
        f"loss logits past_key_values {_H} cross_attentions",
        "Next-token prediction output with cache and cross-attention weights.",
    ),
    "MaskedLMOutput": (f"loss logits {_H}", "Masked language modelling output."),
    "SequenceClassifierOutput": (f"loss logits {_H}", "Sequence classification or regression output."),
    "SequenceClassifierOutputWithPast": (
        f"loss logits past_key_values {_H}",
        "Sequence classification output of a decoder, with cache.",
    ),
    "TokenClassifierOutput": (f"loss logits {_H}", "Per-token classification output."),
    "QuestionAnsweringModelOutput": (f"loss start_logits end_logits {_H}", "Extractive QA span logits."),
    "MultipleChoiceModelOutput": (f"loss logits {_H}", "Multiple-choice scores, one per choice."),
    "Seq2SeqModelOutput": (
        "last_hidden_state past_key_values decoder_hidden_states decoder_attentions cross_attentions "
        "encoder_last_hidden_state encoder_hidden_states encoder_attentions",
        "Encoder-decoder output.",
    ),
    "Seq2SeqLMOutput": (
        "loss logits past_key_values decoder_hidden_states decoder_attentions cross_attentions "
        "encoder_last_hidden_state encoder_hidden_states encoder_attentions",
        "Encoder-decoder language modelling output.",
    ),
    "ElectraForPreTrainingOutput": (
        f"loss logits {_H}",
        "Replaced-token detection output: one logit per token (positive means 'replaced').",
    ),
    # generate(return_dict_in_generate=True): one record per strategy family, as in the reference.
    "GenerateDecoderOnlyOutput": (
        "sequences scores attentions hidden_states past_key_values",
        "Greedy or sampled sequences of a decoder-only model, with per-step scores and states as asked.",
    ),
    "GenerateEncoderDecoderOutput": (
        "sequences scores encoder_attentions encoder_hidden_states decoder_attentions cross_attentions "
        "decoder_hidden_states past_key_values",
        "Greedy or sampled sequences of an encoder-decoder model, with per-step scores and states as asked.",
    ),
    "GenerateBeamDecoderOnlyOutput": (
        "sequences sequences_scores scores beam_indices attentions hidden_states past_key_values",
        "Beam search results of a decoder-only model: sequences, their final scores and beam trails.",
    ),
    "GenerateBeamEncoderDecoderOutput": (
        "sequences sequences_scores scores beam_indices encoder_attentions encoder_hidden_states "
        "decoder_attentions cross_attentions decoder_hidden_states past_key_values",
        "Beam search results of an encoder-decoder model: sequences, their final scores and beam trails.",
    ),
}

# The TF classes of the reference order pooling outputs differently and name the same records.
_TF_OUTPUTS = {
    "TFBaseModelOutput": _OUTPUTS["BaseModelOutput"],
    "TFBaseModelOutputWithPastAndCrossAttentions": _OUTPUTS["BaseModelOutputWithPastAndCrossAttentions"],
    "TFBaseModelOutputWithPooling": _OUTPUTS["BaseModelOutputWithPooling"],
    "TFBaseModelOutputWithPoolingAndCrossAttentions": (
        f"last_hidden_state pooler_output past_key_values {_H} cross_attentions",
        "Encoder output with pooling, cache and cross-attention weights.",
    ),
    "TFCausalLMOutputWithCrossAttentions": _OUTPUTS["CausalLMOutputWithCrossAttentions"],
    "TFMaskedLMOutput": _OUTPUTS["MaskedLMOutput"],
    "TFSequenceClassifierOutput": _OUTPUTS["SequenceClassifierOutput"],
    "TFTokenClassifierOutput": _OUTPUTS["TokenClassifierOutput"],
    "TFQuestionAnsweringModelOutput": _OUTPUTS["QuestionAnsweringModelOutput"],
    "TFMultipleChoiceModelOutput": _OUTPUTS["MultipleChoiceModelOutput"],
    "TFElectraForPreTrainingOutput": _OUTPUTS["ElectraForPreTrainingOutput"],
    # TF generate(return_dict_in_generate=True), named per strategy as in the reference.
    "TFGreedySearchDecoderOnlyOutput": (
        "sequences scores attentions hidden_states",
        "Greedy sequences of a decoder-only model, with the scores of each step as asked.",
    ),
    "TFSampleDecoderOnlyOutput": (
        "sequences scores attentions hidden_states",
        "Sampled sequences of a decoder-only model, with the scores of each step as asked.",
    ),
    "TFBeamSearchDecoderOnlyOutput": (
        "sequences sequences_scores scores beam_indices attentions hidden_states",
        "Beam search results of a decoder-only model: the best sequences, their final scores and beam trails.",
    ),
    "TFBeamSampleDecoderOnlyOutput": (
        "sequences sequences_scores scores beam_indices attentions hidden_states",
        "Beam sampling results of a decoder-only model: the best sequences, their final scores and beam trails.",
    ),
    "TFContrastiveSearchDecoderOnlyOutput": (
        "sequences scores attentions hidden_states",
        "Contrastive search sequences of a decoder-only model, with the scores of each step as asked.",
    ),
}

# Flax outputs never carry a loss: Flax models return logits and leave the loss to the training step.
_FLAX_OUTPUTS = {
    "FlaxBaseModelOutput": _OUTPUTS["BaseModelOutput"],
    "FlaxBaseModelOutputWithPastAndCrossAttentions": _OUTPUTS["BaseModelOutputWithPastAndCrossAttentions"],
    "FlaxCausalLMOutputWithCrossAttentions": (
        f"logits past_key_values {_H} cross_attentions",
        "Next-token logits with cache and cross-attention weights.",
    ),
    "FlaxSeq2SeqModelOutput": _OUTPUTS["Seq2SeqModelOutput"],
    "FlaxSeq2SeqLMOutput": (
        "logits past_key_values decoder_hidden_states decoder_attentions cross_attentions "
        "encoder_last_hidden_state encoder_hidden_states encoder_attentions",
        "Encoder-decoder language modelling logits.",
    ),
    # Flax generate: fixed-length sequences (max_length), padded after the end of each.
    "FlaxGreedySearchOutput": ("sequences", "Greedy decoding: the generated sequences."),
    "FlaxSampleOutput": ("sequences", "Sampling: the generated sequences."),
    "FlaxBeamSearchOutput": ("sequences scores", "Beam search: the best sequences and their scores."),
}

for _table in (_OUTPUTS, _TF_OUTPUTS, _FLAX_OUTPUTS):
    for _name, (_fields, _doc) in _table.items():
        _declare(_name, _fields, _doc)

__all__ = ["ModelOutput", *_OUTPUTS, *_TF_OUTPUTS, *_FLAX_OUTPUTS]
