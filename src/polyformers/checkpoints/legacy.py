"""The reference's legacy weight files, read as PyTorch key names and layouts without TensorFlow or JAX.

A ``tf_model.h5`` (written by the reference's TF 2 classes) is read with h5py, a ``flax_model.msgpack``
(written by its Flax classes) with msgpack; both are imported only when such a file is opened. The
result behaves like a :class:`~polyformers.checkpoints.WeightsReader`, so every framework's loader and
``polyformers convert`` pull tensors from it by PyTorch key, one at a time.

Names follow one rule per framework (:func:`tf_key`, :func:`flax_key`), the same rules the Keras and
Flax classes use for their own variables; a family whose legacy names the rule gets wrong lists them in
:data:`EXCEPTIONS`.
"""

from __future__ import annotations

import os
from typing import Callable, Iterator, Mapping, Optional

import numpy as np

from .dtypes import canonical_dtype, to_numpy_dtype
from .files import cached_file, pop_hub_kwargs
from .weights import FLAX_WEIGHTS_NAME, FRAMEWORKS, TF2_WEIGHTS_NAME

# Leaf names of Keras and linen variables and their PyTorch counterparts; True where the PyTorch tensor
# is the transpose (a Dense kernel is (in, out), an nn.Linear weight (out, in)).
TF_LEAVES = {"kernel": ("weight", True), "gamma": ("weight", False), "beta": ("bias", False),
             "embeddings": ("weight", False)}
FLAX_LEAVES = {"kernel": ("weight", True), "scale": ("weight", False), "embedding": ("weight", False)}

# framework -> model_type -> {rule's dotted name: PyTorch key}, for legacy names the rules get wrong.
# The TF 2 names of RoBERTa, MPNet and ELECTRA and the Flax names of Pegasus all follow the rules
# (checked against every head class of the 4.37 reference), so no family needs an entry today.
EXCEPTIONS: dict[str, dict[str, dict[str, str]]] = {"tf": {}, "flax": {}}


def tf_key(name: str, exceptions: Optional[Mapping[str, str]] = None) -> tuple[str, bool]:
    """The PyTorch key of a Keras variable and whether its array is transposed.

    ``name`` is a TF 2 h5 weight name (``encoder/layer_._0/output/dense/kernel:0``) or a dotted Keras
    attribute path (``encoder.layer.0.output_.dense.kernel``): TF 2 numbers list items ``layer_._N``,
    Keras-reserved attribute names carry a trailing underscore, and the leaf is renamed by ``TF_LEAVES``.
    ``exceptions`` maps dotted names the rule gets wrong to their keys (never transposed).
    """
    parts = name.split(":")[0].replace("_._", ".").replace("/", ".").split(".")
    parts = [p[:-1] if p.endswith("_") and len(p) > 1 else p for p in parts]
    dotted = ".".join(parts)
    if exceptions and dotted in exceptions:
        return exceptions[dotted], False
    leaf, transpose = TF_LEAVES.get(parts[-1], (parts[-1], False))
    return ".".join(parts[:-1] + [leaf]), transpose


def flax_key(path: tuple, exceptions: Optional[Mapping[str, str]] = None) -> tuple[str, bool]:
    """The PyTorch key of the linen parameter at pytree ``path`` and whether its array is transposed.

    ``("model", "encoder", "layers", "0", "fc1", "kernel")`` -> ``("model.encoder.layers.0.fc1.weight",
    True)``: the path joined with dots, the leaf renamed by ``FLAX_LEAVES``. ``exceptions`` maps dotted
    paths the rule gets wrong to their keys (never transposed).
    """
    path = tuple(path)
    dotted = ".".join(path)
    if exceptions and dotted in exceptions:
        return exceptions[dotted], False
    leaf, transpose = FLAX_LEAVES.get(path[-1], (path[-1], False))
    return ".".join(path[:-1] + (leaf,)), transpose


class LegacyWeights:
    """The tensors of one legacy file by PyTorch key, in PyTorch layout; the interface of WeightsReader.

    ``source_names`` maps each key to the name it has in the file, for messages.
    """

    def __init__(self, path: str, entries: Mapping[str, tuple[Callable[[], np.ndarray], tuple, str, bool]],
                 source_names: Mapping[str, str], fmt: str, on_close: Optional[Callable[[], None]] = None):
        self.files = (path,)
        self.index_file = None
        self.source_format = fmt  # "tf" or "flax": the file's own format
        self.source_names = dict(source_names)
        self._entries = dict(entries)  # key -> (load, stored shape, dtype, transposed)
        self._on_close = on_close
        self._closed = False

    @property
    def metadata(self) -> dict:
        # What a safetensors header would say of these tensors: PyTorch names and layouts.
        return {"format": "pt"}

    def keys(self) -> list[str]:
        return list(self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key) -> bool:
        return key in self._entries

    def _entry(self, key):
        if self._closed:
            raise ValueError(f"the weights reader of {self.files[0]!r} is closed")
        try:
            return self._entries[key]
        except KeyError:
            raise KeyError(f"no tensor {key!r} in {self.files[0]!r}") from None

    def shape(self, key: str) -> tuple:
        _, shape, _, transposed = self._entry(key)
        return tuple(shape[::-1]) if transposed else tuple(shape)

    def dtype(self, key: str) -> str:
        return self._entry(key)[2]

    def get(self, key: str, framework: str = "pt", *, mapped: bool = True):
        """The tensor ``key`` in PyTorch layout. Arrays here always have memory of their own (a legacy
        file is decoded, not mapped), so ``mapped`` is accepted and changes nothing."""
        del mapped
        if framework not in FRAMEWORKS:
            raise ValueError(f"framework must be one of {', '.join(map(repr, FRAMEWORKS))}, got {framework!r}")
        load, _, _, transposed = self._entry(key)
        array = load()
        array = np.ascontiguousarray(array.T if transposed else array)
        if framework == "np":
            return array
        import torch

        if array.dtype.kind != "V":
            return torch.from_numpy(array.copy() if not array.flags.writeable else array)
        # bfloat16 and float8 are ml_dtypes arrays, unknown to torch.from_numpy: go through their bytes.
        raw = np.ascontiguousarray(array).reshape(-1).view(np.uint8).copy()
        return torch.from_numpy(raw).view(_torch_dtype(array)).reshape(array.shape)

    def read_into(self, key: str, out) -> None:
        """The tensor ``key`` (PyTorch layout) copied into the torch tensor ``out`` of its shape."""
        if tuple(out.shape) != self.shape(key):
            raise ValueError(f"read_into {key!r}: out has shape {tuple(out.shape)}, the tensor {self.shape(key)}")
        out.copy_(self.get(key, "pt"))

    def close(self) -> None:
        if not self._closed and self._on_close is not None:
            self._on_close()
        self._closed = True

    def __enter__(self) -> "LegacyWeights":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LegacyWeights({len(self._entries)} tensors in {self.files[0]!r}, {self.source_format})"


def _torch_dtype(array: np.ndarray):
    from .dtypes import to_torch_dtype

    return to_torch_dtype(canonical_dtype(array.dtype))


def _add(entries: dict, names: dict, key: str, source: str, entry, path: str) -> None:
    if key in entries and names[key] == source:
        return  # a tied weight: TF 2 lists it under every layer that uses it
    if key in entries:
        raise OSError(f"{path!r}: the weights {names[key]!r} and {source!r} both map to the PyTorch key {key!r}")
    entries[key] = entry
    names[key] = source


# ---------------------------------------------------------------------------------------------------
# TF 2: tf_model.h5


def _text(value) -> str:
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def read_tf_h5(path: str | os.PathLike, exceptions: Optional[Mapping[str, str]] = None) -> LegacyWeights:
    """Open a ``tf_model.h5`` written by the reference's TF 2 ``save_pretrained`` (Keras 2 h5 weights:
    one group per top-level layer, each listing its ``weight_names``). Arrays are read on demand."""
    import h5py

    path = os.fspath(path)
    try:
        h5 = h5py.File(path, "r")
    except OSError as err:
        raise OSError(f"cannot read {path!r} as a Keras h5 weights file: {err}") from None
    layer_names = h5.attrs.get("layer_names")
    if layer_names is None:
        h5.close()
        raise OSError(f"{path!r} is not a Keras 2 weights file (no 'layer_names' attribute)")
    entries, names = {}, {}
    for group in map(_text, layer_names):
        for weight in map(_text, h5[group].attrs.get("weight_names", [])):
            dataset = h5[group][weight]
            # The first scope is the saving model's own name (tf_roberta_for_masked_lm_1, ...).
            key, transposed = tf_key(weight.split("/", 1)[-1], exceptions)
            load = (lambda d=dataset: np.asarray(d[()]))
            entry = (load, tuple(dataset.shape), canonical_dtype(dataset.dtype), transposed)
            _add(entries, names, key, weight, entry, path)
    return LegacyWeights(path, entries, names, "tf", on_close=h5.close)


# ---------------------------------------------------------------------------------------------------
# Flax: flax_model.msgpack

_NDARRAY, _COMPLEX, _SCALAR = 1, 2, 3  # flax.serialization's msgpack extension codes
_CHUNKED = "__msgpack_chunked_array__"  # flax splits leaves over 1 GiB into a dict of chunks


def _array_from_bytes(data: bytes) -> np.ndarray:
    import msgpack

    shape, dtype_name, buffer = msgpack.unpackb(data, raw=True)
    return np.frombuffer(buffer, dtype=to_numpy_dtype(_text(dtype_name))).reshape(shape)


def _ext_hook(code: int, data: bytes):
    import msgpack

    if code == _NDARRAY:
        return _array_from_bytes(data)
    if code == _SCALAR:
        return _array_from_bytes(data)[()]
    if code == _COMPLEX:
        real, imag = msgpack.unpackb(data)
        return complex(real, imag)
    return msgpack.ExtType(code, data)


def _leaves(tree, prefix: tuple = ()) -> Iterator[tuple[tuple, np.ndarray]]:
    if isinstance(tree, dict) and _CHUNKED in tree:
        shape = tuple(tree["shape"][str(i)] for i in range(len(tree["shape"])))
        chunks = [tree["chunks"][str(i)] for i in range(len(tree["chunks"]))]
        yield prefix, np.concatenate(chunks).reshape(shape)
    elif isinstance(tree, dict):
        for name, value in tree.items():
            yield from _leaves(value, prefix + (str(name),))
    elif isinstance(tree, np.ndarray):
        yield prefix, tree
    else:
        yield prefix, np.asarray(tree)


def read_flax_msgpack(path: str | os.PathLike, exceptions: Optional[Mapping[str, str]] = None) -> LegacyWeights:
    """Open a ``flax_model.msgpack`` written by the reference's Flax ``save_pretrained``: the parameter
    pytree in flax's msgpack encoding. The file is decoded whole; the arrays are views of its bytes."""
    import msgpack

    path = os.fspath(path)
    with open(path, "rb") as fh:
        data = fh.read()
    try:
        tree = msgpack.unpackb(data, ext_hook=_ext_hook, raw=False)
    except Exception as err:  # msgpack raises many types for a file that is not msgpack
        raise OSError(f"cannot read {path!r} as a Flax msgpack checkpoint: {type(err).__name__}: {err}") from None
    if not isinstance(tree, dict):
        raise OSError(f"{path!r} holds a {type(tree).__name__}, expected a dict of parameters")
    # A model with _do_init=False may have been saved with its {"params": ...} collection wrapper.
    if set(tree) == {"params"} and isinstance(tree["params"], dict):
        tree = tree["params"]
    entries, names = {}, {}
    for leaf_path, array in _leaves(tree):
        key, transposed = flax_key(leaf_path, exceptions)
        entry = ((lambda a=array: a), tuple(array.shape), canonical_dtype(array.dtype), transposed)
        _add(entries, names, key, "/".join(leaf_path), entry, path)
    if not entries:
        raise OSError(f"{path!r} holds no arrays")
    return LegacyWeights(path, entries, names, "flax")


# ---------------------------------------------------------------------------------------------------

LEGACY_FILES = {"tf": TF2_WEIGHTS_NAME, "flax": FLAX_WEIGHTS_NAME}
_READERS = {"tf": read_tf_h5, "flax": read_flax_msgpack}


def find_legacy_weights(path_or_id: str | os.PathLike, framework: Optional[str] = None,
                        exceptions: Optional[Mapping[str, str]] = None, **hub_kwargs) -> Optional[LegacyWeights]:
    """The ``tf_model.h5`` or ``flax_model.msgpack`` of a folder or Hub repository, opened; None when it
    has neither. ``framework`` ("tf" or "flax") looks for that one file only; without it the h5 comes
    first. Without ``exceptions`` the family's entry in :data:`EXCEPTIONS` applies (the folder's
    config names the family)."""
    hub = pop_hub_kwargs(hub_kwargs)
    if hub_kwargs:
        raise TypeError(f"find_legacy_weights() got unexpected keyword arguments: {', '.join(sorted(hub_kwargs))}")
    if framework is not None and framework not in LEGACY_FILES:
        raise ValueError(f"framework must be one of {sorted(LEGACY_FILES)} or None, got {framework!r}")
    for name in [framework] if framework else list(LEGACY_FILES):
        file = cached_file(path_or_id, LEGACY_FILES[name], missing_ok=True, **hub)
        if file is not None:
            table = exceptions or EXCEPTIONS[name].get(_model_type(path_or_id), {})
            return _READERS[name](file, table)
    return None


def _model_type(path_or_id) -> Optional[str]:
    import json

    config = os.path.join(os.fspath(path_or_id), "config.json")
    if not os.path.isfile(config):
        return None
    try:
        with open(config, encoding="utf-8") as f:
            return json.load(f).get("model_type")
    except (OSError, ValueError):
        return None


__all__ = ["EXCEPTIONS", "LegacyWeights", "find_legacy_weights", "flax_key", "read_flax_msgpack", "read_tf_h5",
           "tf_key"]
