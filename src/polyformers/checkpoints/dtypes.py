"""One vocabulary of dtype names shared by every framework.

Configs store ``torch_dtype`` as a string ("float32", sometimes "torch.float16"), users pass
``torch.bfloat16``, ``"fp16"``, ``jnp.bfloat16`` or ``np.float32``, and safetensors headers use their
own codes. Everything is reduced to one canonical string, the name torch and numpy (with ml_dtypes)
share: "float32", "bfloat16", "int64", ...
"""

from __future__ import annotations

from typing import Any

import numpy as np

# canonical name -> bytes per element
_ITEMSIZE = {
    "bool": 1,
    "uint8": 1,
    "int8": 1,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
    "float8_e4m3fnuz": 1,
    "float8_e5m2fnuz": 1,
    "int16": 2,
    "uint16": 2,
    "float16": 2,
    "bfloat16": 2,
    "int32": 4,
    "uint32": 4,
    "float32": 4,
    "int64": 8,
    "uint64": 8,
    "float64": 8,
    "complex64": 8,
    "complex128": 16,
}

CANONICAL_DTYPES = tuple(_ITEMSIZE)

# Spellings found in configs, command lines and the frameworks' own shorthand. "float", "half",
# "double", "long" and "int" follow torch (torch.float is float32, torch.int is int32), since
# ``torch_dtype`` strings come from torch.
_ALIASES = {
    "fp32": "float32",
    "f32": "float32",
    "float": "float32",
    "single": "float32",
    "fp16": "float16",
    "f16": "float16",
    "half": "float16",
    "bf16": "bfloat16",
    "fp64": "float64",
    "f64": "float64",
    "double": "float64",
    "long": "int64",
    "int": "int32",
    "short": "int16",
    "byte": "uint8",
    "cfloat": "complex64",
    "cdouble": "complex128",
    "fp8_e4m3": "float8_e4m3fn",
    "fp8_e5m2": "float8_e5m2",
}

# Only these need ml_dtypes to exist as numpy dtypes.
_ML_DTYPES = {"bfloat16", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz"}


def canonical_dtype(dtype: Any) -> str:
    """Return the canonical name of ``dtype``: a string alias, a torch/numpy/TF/JAX dtype, or "auto".

    "auto" (take the dtype from the checkpoint) is kept as is, since only the caller can resolve it.
    """
    if isinstance(dtype, str):
        name = dtype.strip()
        lowered = name.lower()
        for prefix in ("torch.", "jnp.", "np.", "tf."):
            if lowered.startswith(prefix):
                lowered = lowered[len(prefix):]
        if lowered == "auto" or lowered in _ITEMSIZE:
            return lowered
        if lowered in _ALIASES:
            return _ALIASES[lowered]
        # numpy codes such as "f4" or "<i8"; checked last so that "int" and "float" keep torch's meaning
        try:
            found = np.dtype(name).name
        except TypeError:
            found = None
        if found in _ITEMSIZE:
            return found
        raise ValueError(
            f"unknown dtype {dtype!r}: expected one of {', '.join(CANONICAL_DTYPES)}, 'auto', "
            f"or an alias such as {', '.join(sorted(_ALIASES))}"
        )
    if dtype is None:
        raise ValueError("dtype must be a dtype or a dtype name, got None")
    if type(dtype).__module__.startswith("torch"):
        return canonical_dtype(str(dtype))
    try:
        found = np.dtype(dtype).name  # numpy types and dtypes, ml_dtypes, jax.numpy scalar types
    except TypeError:
        found = None
    if found is None:
        name = getattr(dtype, "name", None)  # tf.DType
        if isinstance(name, str):
            return canonical_dtype(name)
    if found in _ITEMSIZE:
        return found
    raise ValueError(f"unknown dtype {dtype!r} (type {type(dtype).__name__}): expected one of {', '.join(CANONICAL_DTYPES)}")


def dtype_size(dtype: Any) -> int:
    """Bytes per element of ``dtype``."""
    name = canonical_dtype(dtype)
    if name == "auto":
        raise ValueError("dtype 'auto' has no size: resolve it from the checkpoint first")
    return _ITEMSIZE[name]


def to_torch_dtype(dtype: Any):
    """The ``torch.dtype`` for ``dtype`` (imports torch)."""
    name = canonical_dtype(dtype)
    if name == "auto":
        raise ValueError("dtype 'auto' cannot be turned into a torch dtype: resolve it from the checkpoint first")
    import torch

    found = getattr(torch, name, None)
    if not isinstance(found, torch.dtype):
        raise TypeError(f"this torch {torch.__version__} has no dtype {name!r}")
    return found


def to_numpy_dtype(dtype: Any) -> np.dtype:
    """The ``numpy.dtype`` for ``dtype``; bfloat16 and float8 come from ml_dtypes."""
    name = canonical_dtype(dtype)
    if name == "auto":
        raise ValueError("dtype 'auto' cannot be turned into a numpy dtype: resolve it from the checkpoint first")
    if name in _ML_DTYPES:
        try:
            import ml_dtypes
        except ImportError as err:
            raise ImportError(
                f"numpy has no {name} dtype; install ml_dtypes (`pip install ml_dtypes`) to use {name} "
                "weights as numpy arrays"
            ) from err
        return np.dtype(getattr(ml_dtypes, name))
    return np.dtype(name)
