"""Checkpoint files shared by every framework: finding, reading and writing weights, dtype names.

Importing this package loads no deep-learning framework; torch is imported only by the calls that
return or receive torch tensors.
"""

from .dtypes import CANONICAL_DTYPES, canonical_dtype, dtype_size, to_numpy_dtype, to_torch_dtype
from .files import cached_file, pop_hub_kwargs
from .saving import parse_size, save_weights
from .weights import (
    FLAX_WEIGHTS_NAME,
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    TF2_WEIGHTS_NAME,
    WEIGHTS_INDEX_NAME,
    WEIGHTS_NAME,
    WeightsReader,
    add_variant,
    find_weights,
)

__all__ = [
    "CANONICAL_DTYPES",
    "FLAX_WEIGHTS_NAME",
    "SAFE_WEIGHTS_INDEX_NAME",
    "SAFE_WEIGHTS_NAME",
    "TF2_WEIGHTS_NAME",
    "WEIGHTS_INDEX_NAME",
    "WEIGHTS_NAME",
    "WeightsReader",
    "add_variant",
    "cached_file",
    "canonical_dtype",
    "dtype_size",
    "find_weights",
    "parse_size",
    "pop_hub_kwargs",
    "save_weights",
    "to_numpy_dtype",
    "to_torch_dtype",
]
