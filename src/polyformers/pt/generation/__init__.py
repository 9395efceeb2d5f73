"""Text generation for PyTorch models: ``generate``, its decoding strategies, logits processors and
stopping criteria.

The package reads top-down from the entry point to the pieces it uses:

- :mod:`.mixin`: :class:`GenerationMixin`, whose ``generate`` checks the arguments, prepares the prompt (and
  the encoder's output) and picks a decoding strategy from the settings; the contract a model implements.
- one module per strategy, each a function taking the model first: :mod:`.greedy` (greedy decoding and
  sampling), :mod:`.beam_search` (beam search and beam sampling), :mod:`.group_beam_search` (diverse beam
  search), :mod:`.contrastive` (contrastive search), :mod:`.constrained` (constrained beam search and its
  :class:`Constraint` classes), :mod:`.assisted` (assisted and prompt lookup decoding).
- :mod:`.processors` (logits processors and warpers), :mod:`.stopping` (stopping criteria),
  :mod:`.hypotheses` (beam bookkeeping shared by the beam strategies), :mod:`.records` (the output records
  and what collects them). Streamers live in :mod:`polyformers.pt.streamers`.

Everything public is re-exported here, so ``from polyformers.pt.generation import X`` names the same object
as the module that defines it.
"""

from ...generation_config import GenerationConfig
from .assisted import (
    AssistedCandidateGenerator,
    CandidateGenerator,
    PromptLookupCandidateGenerator,
    assisted_decoding,
    cache_length,
    crop_cache,
)
from .constrained import (
    ConstrainedBeamSearchScorer,
    Constraint,
    ConstraintListState,
    DisjunctiveConstraint,
    DisjunctiveTrie,
    PhrasalConstraint,
    constrained_beam_search,
)
from .hypotheses import reorder_cache
from .mixin import GenerationMixin
from .processors import (
    EncoderNoRepeatNGramLogitsProcessor,
    EncoderRepetitionPenaltyLogitsProcessor,
    EpsilonLogitsWarper,
    EtaLogitsWarper,
    ExponentialDecayLengthPenalty,
    ForcedBOSTokenLogitsProcessor,
    ForcedEOSTokenLogitsProcessor,
    ForceTokensLogitsProcessor,
    HammingDiversityLogitsProcessor,
    InfNanRemoveLogitsProcessor,
    LogitNormalization,
    LogitsProcessor,
    LogitsProcessorList,
    LogitsWarper,
    MinLengthLogitsProcessor,
    MinNewTokensLengthLogitsProcessor,
    NoBadWordsLogitsProcessor,
    NoRepeatNGramLogitsProcessor,
    PrefixConstrainedLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    SequenceBiasLogitsProcessor,
    SuppressTokensAtBeginLogitsProcessor,
    SuppressTokensLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
    UnbatchedClassifierFreeGuidanceLogitsProcessor,
)
from .records import (
    BeamSampleDecoderOnlyOutput,
    BeamSampleEncoderDecoderOutput,
    BeamSearchDecoderOnlyOutput,
    BeamSearchEncoderDecoderOutput,
    GenerateBeamDecoderOnlyOutput,
    GenerateBeamEncoderDecoderOutput,
    GenerateDecoderOnlyOutput,
    GenerateEncoderDecoderOutput,
    GreedySearchDecoderOnlyOutput,
    GreedySearchEncoderDecoderOutput,
    SampleDecoderOnlyOutput,
    SampleEncoderDecoderOutput,
)
from .stopping import (
    EosTokenCriteria,
    MaxLengthCriteria,
    MaxTimeCriteria,
    StoppingCriteria,
    StoppingCriteriaList,
    StopStringCriteria,
)
