"""polyformers: the Transformers 4.37 API for six model families in PyTorch, Keras 3 and Flax.

Public names are resolved lazily, on first access, so ``import polyformers`` imports no deep-learning
framework: touching ``polyformers.ElectraModel`` imports torch, ``polyformers.ElectraConfig`` does not.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module (relative to this package) that defines it
_EXPORTS: dict[str, str] = {}


def _export(module: str, *names: str) -> None:
    for name in names:
        _EXPORTS[name] = module


_export(
    ".configs",
    "PretrainedConfig",
    "ElectraConfig",
    "RobertaConfig",
    "MPNetConfig",
    "GPTJConfig",
    "MptConfig",
    "MptAttentionConfig",
    "PegasusConfig",
)
_export(".outputs", "ModelOutput")
# The tokenizer names exported here; polyformers.tokenizers builds its ``__all__`` from this list too.
_TOKENIZER_EXPORTS = (
    "AddedToken",
    "BatchEncoding",
    "PreTrainedTokenizerBase",
    "PreTrainedTokenizer",
    "PreTrainedTokenizerFast",
    "ElectraTokenizer",
    "ElectraTokenizerFast",
    "GPT2Tokenizer",
    "GPT2TokenizerFast",
    "RobertaTokenizer",
    "RobertaTokenizerFast",
    "GPTNeoXTokenizerFast",
    "MPNetTokenizer",
    "MPNetTokenizerFast",
    "PegasusTokenizer",
    "PegasusTokenizerFast",
)
_export(".tokenizers", *_TOKENIZER_EXPORTS)
_export(
    ".auto",
    "AutoConfig",
    "AutoTokenizer",
    "AutoModel",
    "AutoModelForPreTraining",
    "AutoModelForCausalLM",
    "AutoModelForMaskedLM",
    "AutoModelForSequenceClassification",
    "AutoModelForTokenClassification",
    "AutoModelForQuestionAnswering",
    "AutoModelForMultipleChoice",
    "AutoModelForSeq2SeqLM",
)
_export(".pt.modeling", "PreTrainedModel")
_export(
    ".pt.models.electra",
    "ElectraPreTrainedModel",
    "ElectraModel",
    "ElectraForPreTraining",
    "ElectraForCausalLM",
    "ElectraForMaskedLM",
    "ElectraForSequenceClassification",
    "ElectraForTokenClassification",
    "ElectraForQuestionAnswering",
    "ElectraForMultipleChoice",
)
_export(
    ".pt.models.roberta",
    "RobertaPreTrainedModel",
    "RobertaModel",
    "RobertaForCausalLM",
    "RobertaForMaskedLM",
    "RobertaForSequenceClassification",
    "RobertaForMultipleChoice",
    "RobertaForTokenClassification",
    "RobertaForQuestionAnswering",
)
_export(
    ".pt.models.mpnet",
    "MPNetPreTrainedModel",
    "MPNetModel",
    "MPNetForMaskedLM",
    "MPNetForSequenceClassification",
    "MPNetForTokenClassification",
    "MPNetForQuestionAnswering",
    "MPNetForMultipleChoice",
)
_export(".pt.cache", "Cache", "DynamicCache", "StaticCache")
_export(".training.arguments", "TrainingArguments", "IntervalStrategy", "SchedulerType")
_export(
    ".training.trainer",
    "Trainer", "TrainOutput", "PredictionOutput", "EvalPrediction", "set_seed", "get_last_checkpoint",
)
_export(
    ".training.callbacks",
    "TrainerCallback", "TrainerState", "TrainerControl", "EarlyStoppingCallback", "ProgressCallback",
    "PrinterCallback", "DefaultFlowCallback",
)
_export(
    ".training.schedules",
    "get_scheduler", "get_constant_schedule", "get_constant_schedule_with_warmup", "get_linear_schedule_with_warmup",
    "get_cosine_schedule_with_warmup", "get_cosine_with_hard_restarts_schedule_with_warmup",
    "get_polynomial_decay_schedule_with_warmup", "get_inverse_sqrt_schedule",
)
_export(
    ".training.collators",
    "default_data_collator", "DataCollatorWithPadding", "DataCollatorForLanguageModeling",
    "DataCollatorForTokenClassification", "DataCollatorForSeq2Seq", "DataCollatorForWholeWordMask",
)
_export(".keras.modeling", "TFPreTrainedModel")
_export(
    ".keras.generation",
    "TFGenerationMixin",
    "TFLogitsProcessor",
    "TFLogitsWarper",
    "TFLogitsProcessorList",
    "TFTemperatureLogitsWarper",
    "TFTopKLogitsWarper",
    "TFTopPLogitsWarper",
    "TFRepetitionPenaltyLogitsProcessor",
    "TFNoRepeatNGramLogitsProcessor",
    "TFNoBadWordsLogitsProcessor",
    "TFMinLengthLogitsProcessor",
    "TFMinNewTokensLengthLogitsProcessor",
    "TFForcedBOSTokenLogitsProcessor",
    "TFForcedEOSTokenLogitsProcessor",
    "TFSuppressTokensLogitsProcessor",
    "TFSuppressTokensAtBeginLogitsProcessor",
    "TFInfNanRemoveLogitsProcessor",
    "TFLogitNormalization",
)
_export(
    ".keras.models.roberta",
    "TFRobertaPreTrainedModel",
    "TFRobertaModel",
    "TFRobertaForCausalLM",
    "TFRobertaForMaskedLM",
    "TFRobertaForSequenceClassification",
    "TFRobertaForMultipleChoice",
    "TFRobertaForTokenClassification",
    "TFRobertaForQuestionAnswering",
)
_export(
    ".keras.models.mpnet",
    "TFMPNetPreTrainedModel",
    "TFMPNetModel",
    "TFMPNetForMaskedLM",
    "TFMPNetForSequenceClassification",
    "TFMPNetForMultipleChoice",
    "TFMPNetForTokenClassification",
    "TFMPNetForQuestionAnswering",
)
_export(
    ".keras.models.electra",
    "TFElectraPreTrainedModel",
    "TFElectraModel",
    "TFElectraForPreTraining",
    "TFElectraForMaskedLM",
    "TFElectraForSequenceClassification",
    "TFElectraForMultipleChoice",
    "TFElectraForTokenClassification",
    "TFElectraForQuestionAnswering",
)
_export(".generation_config", "GenerationConfig")
_export(".pipelines", "pipeline", "Pipeline", "PipelineError")
_export(".pt.generation.mixin", "GenerationMixin")
_export(
    ".pt.generation.processors",
    "LogitsProcessor",
    "LogitsWarper",
    "LogitsProcessorList",
    "TemperatureLogitsWarper",
    "TopKLogitsWarper",
    "TopPLogitsWarper",
    "TypicalLogitsWarper",
    "RepetitionPenaltyLogitsProcessor",
    "NoRepeatNGramLogitsProcessor",
    "NoBadWordsLogitsProcessor",
    "MinLengthLogitsProcessor",
    "MinNewTokensLengthLogitsProcessor",
    "ForcedBOSTokenLogitsProcessor",
    "ForcedEOSTokenLogitsProcessor",
    "SuppressTokensLogitsProcessor",
    "SuppressTokensAtBeginLogitsProcessor",
    "PrefixConstrainedLogitsProcessor",
    "InfNanRemoveLogitsProcessor",
    "LogitNormalization",
    "ForceTokensLogitsProcessor",
    "UnbatchedClassifierFreeGuidanceLogitsProcessor",
)
_export(
    ".pt.generation.stopping",
    "StoppingCriteria",
    "StoppingCriteriaList",
    "MaxLengthCriteria",
    "MaxTimeCriteria",
    "EosTokenCriteria",
    "StopStringCriteria",
)
_export(
    ".pt.generation.constrained",
    "Constraint",
    "PhrasalConstraint",
    "DisjunctiveConstraint",
    "ConstraintListState",
)
_export(".pt.streamers", "TextStreamer", "TextIteratorStreamer")
_export(
    ".pt.models.gptj",
    "GPTJPreTrainedModel",
    "GPTJModel",
    "GPTJForCausalLM",
    "GPTJForSequenceClassification",
    "GPTJForQuestionAnswering",
)
_export(
    ".pt.models.mpt",
    "MptPreTrainedModel",
    "MptModel",
    "MptForCausalLM",
    "MptForSequenceClassification",
    "MptForTokenClassification",
    "MptForQuestionAnswering",
)

_export(
    ".pt.models.pegasus",
    "PegasusPreTrainedModel",
    "PegasusModel",
    "PegasusForConditionalGeneration",
    "PegasusForCausalLM",
)

_export(".flax.modeling", "FlaxPreTrainedModel")
_export(
    ".flax.models.pegasus",
    "FlaxPegasusPreTrainedModel",
    "FlaxPegasusModel",
    "FlaxPegasusForConditionalGeneration",
)
_export(
    ".flax.generation",
    "FlaxGenerationMixin",
    "FlaxLogitsProcessor",
    "FlaxLogitsWarper",
    "FlaxLogitsProcessorList",
    "FlaxTemperatureLogitsWarper",
    "FlaxTopKLogitsWarper",
    "FlaxTopPLogitsWarper",
    "FlaxMinLengthLogitsProcessor",
    "FlaxForcedBOSTokenLogitsProcessor",
    "FlaxForcedEOSTokenLogitsProcessor",
    "FlaxSuppressTokensLogitsProcessor",
)

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'polyformers' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
