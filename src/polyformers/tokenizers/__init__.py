"""Tokenizers speaking the Transformers 4.37 API. Importing this package imports no deep-learning framework."""

from tokenizers import AddedToken

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

__all__ = [
    "AddedToken",
    "BatchEncoding",
    "CharSpan",
    "PaddingStrategy",
    "TensorType",
    "TokenSpan",
    "TruncationStrategy",
    "PreTrainedTokenizerBase",
    "PreTrainedTokenizer",
    "PreTrainedTokenizerFast",
    "BasicTokenizer",
    "WordpieceTokenizer",
    "WordPieceTokenizer",
    "ElectraTokenizer",
    "ElectraTokenizerFast",
]
