"""Text generation for the Keras models on TensorFlow: ``generate``, its decoding strategies (greedy decoding,
sampling, beam search and beam sampling, contrastive search) and its logits processors, eager or under XLA.

The package reads top-down from the entry point to the pieces it uses:

- :mod:`.mixin`: :class:`TFGenerationMixin`, whose ``generate`` checks the arguments, prepares the prompt and
  picks a decoding strategy from the settings; the contract a model implements.
- one module per strategy, each a function taking the model first: :mod:`.greedy` (greedy decoding and
  sampling), :mod:`.beam_search` (beam search and beam sampling), :mod:`.contrastive` (contrastive search).
- :mod:`.processors` (logits processors and warpers), :mod:`.loop` (the fixed-shape sequence buffer and
  cache the loops share, and the record of attentions and hidden states).

Everything public is re-exported here, so ``from polyformers.keras.generation import X`` names the same object
as the module that defines it.
"""

from .mixin import TFGenerationMixin
from .processors import (
    TFForcedBOSTokenLogitsProcessor,
    TFForcedEOSTokenLogitsProcessor,
    TFForceTokensLogitsProcessor,
    TFInfNanRemoveLogitsProcessor,
    TFLogitNormalization,
    TFLogitsProcessor,
    TFLogitsProcessorList,
    TFLogitsWarper,
    TFMinLengthLogitsProcessor,
    TFMinNewTokensLengthLogitsProcessor,
    TFNoBadWordsLogitsProcessor,
    TFNoRepeatNGramLogitsProcessor,
    TFRepetitionPenaltyLogitsProcessor,
    TFSuppressTokensAtBeginLogitsProcessor,
    TFSuppressTokensLogitsProcessor,
    TFTemperatureLogitsWarper,
    TFTopKLogitsWarper,
    TFTopPLogitsWarper,
    _ban,
)
