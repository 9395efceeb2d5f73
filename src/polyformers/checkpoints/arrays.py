"""Moving tensors between torch, numpy and raw bytes without extra copies.

torch is imported only by the functions that receive torch tensors, so numpy-only callers (Keras,
Flax) never load it.
"""

from __future__ import annotations

import numpy as np

from .dtypes import canonical_dtype, to_numpy_dtype


def is_torch_tensor(value) -> bool:
    # Checked by module name so that a numpy caller does not import torch just to ask.
    return type(value).__module__.startswith("torch") and hasattr(value, "untyped_storage")


def torch_raw_bytes(tensor) -> np.ndarray:
    """The tensor's elements as a flat little-endian uint8 array, sharing memory when it is contiguous on CPU."""
    import torch

    tensor = tensor.detach()
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()
    # reshape(-1) first: a 0-d tensor cannot be viewed as bytes, a 1-element vector can.
    return tensor.contiguous().reshape(-1).view(torch.uint8).numpy()


def torch_to_numpy(tensor) -> np.ndarray:
    """A numpy array with the tensor's dtype and shape; bfloat16 and float8 become ml_dtypes arrays."""
    np_dtype = to_numpy_dtype(canonical_dtype(tensor.dtype))
    return torch_raw_bytes(tensor).view(np_dtype).reshape(tuple(tensor.shape))


def numpy_raw_bytes(array: np.ndarray) -> np.ndarray:
    """The array's elements as a flat little-endian uint8 array, sharing memory when it is contiguous."""
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8)
