"""Tokenizers speaking the Transformers 4.37 API. Importing this package imports no deep-learning framework."""

from tokenizers import AddedToken

from .. import _TOKENIZER_EXPORTS

from .base import (
    BatchEncoding,
    CharSpan,
    PaddingStrategy,
    PreTrainedTokenizerBase,
    TensorType,
    TokenSpan,
    TruncationStrategy,
)
from .slow import PreTrainedTokenizer
from .wordpiece import BasicTokenizer, ElectraTokenizer, WordPieceTokenizer, WordpieceTokenizer

from .fast import ElectraTokenizerFast, PreTrainedTokenizerFast
from .bpe import ByteLevelBPETokenizer, GPT2Tokenizer, RobertaTokenizer
from .bpe_fast import GPT2TokenizerFast, GPTNeoXTokenizerFast, RobertaTokenizerFast
from .mpnet import MPNetTokenizer, MPNetTokenizerFast
from .sentencepiece import PegasusTokenizer, PegasusTokenizerFast

__all__ = [
    *_TOKENIZER_EXPORTS,
    "CharSpan",
    "PaddingStrategy",
    "TensorType",
    "TokenSpan",
    "TruncationStrategy",
    "BasicTokenizer",
    "WordpieceTokenizer",
    "WordPieceTokenizer",
    "ByteLevelBPETokenizer",
]
