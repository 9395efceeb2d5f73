from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import torch

from polyformers.checkpoints import canonical_dtype, dtype_size, to_numpy_dtype, to_torch_dtype


@pytest.mark.parametrize(
    "given, expected",
    [
        ("float32", "float32"),
        ("fp32", "float32"),
        ("float", "float32"),
        ("torch.float16", "float16"),
        ("half", "float16"),
        ("BF16", "bfloat16"),
        ("double", "float64"),
        ("long", "int64"),
        ("int", "int32"),
        ("f4", "float32"),
        ("<i8", "int64"),
        ("auto", "auto"),
        (torch.float32, "float32"),
        (torch.bfloat16, "bfloat16"),
        (torch.bool, "bool"),
        (torch.float8_e4m3fn, "float8_e4m3fn"),
        (np.float16, "float16"),
        (np.dtype("int8"), "int8"),
        (np.dtype(">f4"), "float32"),
        (ml_dtypes.bfloat16, "bfloat16"),
        (float, "float64"),
    ],
)
def test_canonical_dtype(given, expected):
    assert canonical_dtype(given) == expected


def test_canonical_dtype_of_jax_and_tf():
    import jax.numpy as jnp
    import tensorflow as tf

    assert canonical_dtype(jnp.bfloat16) == "bfloat16"
    assert canonical_dtype(jnp.zeros(1, jnp.int32).dtype) == "int32"
    assert canonical_dtype(tf.float16) == "float16"
    assert canonical_dtype(tf.bfloat16) == "bfloat16"


@pytest.mark.parametrize("bad", ["float33", "", "object", np.dtype(object), None, 3])
def test_unknown_dtype_names_it(bad):
    with pytest.raises(ValueError) as info:
        canonical_dtype(bad)
    assert repr(bad) in str(info.value)
    if bad is not None:
        assert "expected one of bool, uint8" in str(info.value)


def test_conversions():
    assert to_torch_dtype("bf16") is torch.bfloat16
    assert to_torch_dtype(np.float64) is torch.float64
    assert to_numpy_dtype(torch.int64) == np.dtype("int64")
    assert to_numpy_dtype("bfloat16") == np.dtype(ml_dtypes.bfloat16)
    assert to_numpy_dtype("float8_e5m2") == np.dtype(ml_dtypes.float8_e5m2)
    assert dtype_size("bf16") == 2 and dtype_size(torch.complex64) == 8 and dtype_size("bool") == 1
    for name in ("float32", "float16", "bfloat16", "int64", "uint8", "bool", "float8_e4m3fn"):
        assert canonical_dtype(to_torch_dtype(name)) == name == canonical_dtype(to_numpy_dtype(name))


def test_auto_must_be_resolved_first():
    for convert in (to_torch_dtype, to_numpy_dtype, dtype_size):
        with pytest.raises(ValueError, match="'auto'.*resolve it from the checkpoint first"):
            convert("auto")
