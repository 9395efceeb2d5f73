"""Finding and reading the weights of a checkpoint, one tensor at a time.

Every framework's ``from_pretrained`` asks :func:`find_weights` for a :class:`WeightsReader` and pulls
tensors by PyTorch key name, so a checkpoint is never held twice in memory: safetensors shards are
memory-mapped, and a ``pytorch_model.bin`` is loaded with torch's mmap and its safe unpickler.
"""

from __future__ import annotations

import difflib
import json
import os
import posixpath
import threading
import zipfile
from typing import Iterator, Mapping, Optional, Sequence

import numpy as np

from .arrays import torch_to_numpy
from .dtypes import canonical_dtype, to_numpy_dtype
from .files import cached_file, pop_hub_kwargs
from .safetensors_format import read_header

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
WEIGHTS_NAME = "pytorch_model.bin"
WEIGHTS_INDEX_NAME = "pytorch_model.bin.index.json"
TF2_WEIGHTS_NAME = "tf_model.h5"
FLAX_WEIGHTS_NAME = "flax_model.msgpack"

FRAMEWORKS = ("pt", "np")


def add_variant(filename: str, variant: Optional[str] = None) -> str:
    """``model.safetensors`` -> ``model.fp16.safetensors``: the variant goes before the last extension."""
    if not variant:
        return filename
    stem, dot, ext = filename.rpartition(".")
    return f"{stem}.{variant}.{ext}" if dot else f"{filename}.{variant}"


def find_weights(
    path_or_id: str | os.PathLike,
    *,
    variant: Optional[str] = None,
    use_safetensors: Optional[bool] = None,
    **hub_kwargs,
) -> "WeightsReader":
    """Open the weights of a checkpoint folder or Hub repository.

    Looks for, in order, a sharded safetensors index, ``model.safetensors``, a sharded
    ``pytorch_model.bin`` index and ``pytorch_model.bin`` (each with ``variant`` inserted before the
    extension when given), and fetches every shard an index names. As in ``from_pretrained``,
    ``use_safetensors=True`` accepts only safetensors and ``False`` only ``pytorch_model.bin``.
    ``hub_kwargs`` are the options of :func:`~polyformers.checkpoints.files.cached_file`
    (``cache_dir``, ``revision``, ``token``, ``subfolder``, ...).
    """
    hub = pop_hub_kwargs(hub_kwargs)
    if hub_kwargs:
        raise TypeError(f"find_weights() got unexpected keyword arguments: {', '.join(sorted(hub_kwargs))}")
    candidates = []
    if use_safetensors is not False:
        candidates += [(add_variant(SAFE_WEIGHTS_INDEX_NAME, variant), True), (add_variant(SAFE_WEIGHTS_NAME, variant), False)]
    if not use_safetensors:
        candidates += [(add_variant(WEIGHTS_INDEX_NAME, variant), True), (add_variant(WEIGHTS_NAME, variant), False)]
    for filename, sharded in candidates:
        path = cached_file(path_or_id, filename, missing_ok=True, **hub)
        if path is None:
            continue
        if not sharded:
            return WeightsReader([path])
        weight_map = _read_index(path)
        shards = []
        for shard in dict.fromkeys(weight_map.values()):
            shard_path = cached_file(path_or_id, shard, missing_ok=True, **hub)
            if shard_path is None:
                raise OSError(f"the index {path!r} names the shard {shard!r}, which is missing from {os.fspath(path_or_id)!r}")
            shards.append(shard_path)
        return WeightsReader(shards, index_file=path, weight_map=weight_map)

    looked_for = ", ".join(name for name, _ in candidates)
    legacy = [
        name for name in (TF2_WEIGHTS_NAME, FLAX_WEIGHTS_NAME) if cached_file(path_or_id, name, missing_ok=True, **hub)
    ]
    hint = f"; legacy TF/Flax weights found ({', '.join(legacy)}); reading them is not supported yet" if legacy else ""
    raise OSError(f"no weights found in {os.fspath(path_or_id)!r}: looked for {looked_for}{hint}")


def _read_index(path: str) -> dict[str, str]:
    try:
        with open(path, encoding="utf-8") as fh:
            index = json.load(fh)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise OSError(f"the weights index {path!r} is not valid JSON ({err})") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise OSError(f"the weights index {path!r} has no 'weight_map' object mapping tensor names to shard files")
    for shard in set(weight_map.values()):
        # Shards live next to the index; a path that climbs out of the folder is a forged index.
        parts = shard.replace("\\", "/").split("/")
        if posixpath.isabs(shard.replace("\\", "/")) or ".." in parts or not shard:
            raise OSError(f"the weights index {path!r} names the shard {shard!r}, expected a file name next to the index")
    return weight_map


def torch_uint8():
    import torch

    return torch.uint8


class _SafetensorsShard:
    def __init__(self, path: str):
        self.path = path
        self.tensors, self.metadata = read_header(path)
        self._torch_handle = None
        self._file = None
        self._file_lock = threading.Lock()  # numpy reads seek a shared handle

    def keys(self):
        return self.tensors.keys()

    def shape(self, key):
        return self.tensors[key].shape

    def dtype(self, key):
        return self.tensors[key].dtype

    def get(self, key, framework, mapped=True):
        if framework == "np":
            return self._get_numpy(key)
        if not mapped:
            import torch

            from .dtypes import to_torch_dtype

            entry = self.tensors[key]
            buffer = torch.empty(entry.stop - entry.start, dtype=torch.uint8)
            self._read_into(key, buffer.numpy())
            return buffer.view(to_torch_dtype(entry.dtype)).reshape(entry.shape)
        if self._torch_handle is None:
            from safetensors import safe_open

            try:
                self._torch_handle = safe_open(self.path, framework="pt")
            except Exception as err:  # the Rust error type carries no file name
                raise OSError(f"cannot open {self.path!r} as safetensors: {err}") from err
        try:
            return self._torch_handle.get_tensor(key)
        except Exception as err:
            raise OSError(f"cannot read tensor {key!r} from {self.path!r}: {err}") from err

    def read_into(self, key, out) -> None:
        """The tensor ``key`` into the torch tensor ``out`` (its shape; any dtype): straight from the file
        when ``out`` is contiguous and of the stored dtype, with no copy in between and no page mapped."""
        from .dtypes import to_torch_dtype

        entry = self.tensors[key]
        if out.is_contiguous() and out.dtype == to_torch_dtype(entry.dtype) and out.device.type == "cpu":
            self._read_into(key, out.view(-1).view(torch_uint8()).numpy())
        else:
            out.copy_(self.get(key, "pt", mapped=False))

    def _get_numpy(self, key):
        entry = self.tensors[key]
        buffer = np.empty(entry.stop - entry.start, dtype=np.uint8)
        self._read_into(key, buffer)
        return buffer.view(to_numpy_dtype(entry.dtype)).reshape(entry.shape)

    def _read_into(self, key, buffer: np.ndarray) -> None:
        """The bytes of ``key`` into ``buffer`` by a plain file read: the result owns its memory and
        outlives close(), and no page of the file is mapped into the process."""
        entry = self.tensors[key]
        with self._file_lock:
            if self._file is None:
                self._file = open(self.path, "rb")
            self._file.seek(entry.start)
            got = self._file.readinto(buffer)
        if got != buffer.size:
            raise OSError(f"{self.path!r} is truncated: tensor {key!r} needs bytes {entry.start}..{entry.stop}, got {got} bytes")

    def close(self):
        if self._torch_handle is not None:
            self._torch_handle.__exit__(None, None, None)
            self._torch_handle = None
        if self._file is not None:
            self._file.close()
            self._file = None


class _TorchPickleShard:
    """A ``pytorch_model.bin``: a pickled state dict, read with torch's weights-only unpickler."""

    metadata = {"format": "pt"}  # a torch pickle always holds PyTorch names and layouts

    def __init__(self, path: str):
        import pickle

        try:
            import torch
        except ImportError as err:
            raise ImportError(f"{path!r} is a PyTorch pickle; reading it needs torch installed") from err

        self.path = path
        # mmap needs the zip layout of torch >= 1.6; older pickles are read into memory.
        mmap = zipfile.is_zipfile(path)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except pickle.UnpicklingError as err:
            # torch's message is mostly advice to disable the check; keep the line naming the culprit.
            lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
            reason = next((line for line in lines if "unsupported" in line.lower()), lines[0])
            if "global" in reason.lower():
                raise OSError(
                    f"refused to load {path!r}: unpickling it would execute code ({reason}). Only plain "
                    "state dicts of tensors are read; convert the file to safetensors where you trust its origin."
                ) from None
            raise OSError(
                f"cannot read {path!r} as a PyTorch checkpoint: the weights-only unpickler refused it ({reason}); "
                "the file is corrupt or uses pickle features that are not allowed"
            ) from None
        except Exception as err:
            raise OSError(f"cannot read {path!r} as a PyTorch checkpoint: {type(err).__name__}: {err}") from err
        if not isinstance(state, Mapping):
            raise OSError(f"{path!r} holds a {type(state).__name__}, expected a state dict of tensors")
        for key, value in state.items():
            if not isinstance(key, str) or not isinstance(value, torch.Tensor):
                raise OSError(
                    f"{path!r} entry {key!r} is a {type(value).__name__}, expected a tensor under a string key"
                )
        self.tensors = dict(state)

    def keys(self):
        return self.tensors.keys()

    def shape(self, key):
        return tuple(self.tensors[key].shape)

    def dtype(self, key):
        return canonical_dtype(self.tensors[key].dtype)

    def get(self, key, framework, mapped=True):
        tensor = self.tensors[key]
        if framework == "np":
            return torch_to_numpy(tensor)
        # torch maps the whole zip, so a private copy still reads through the mapping.
        return tensor if mapped else tensor.clone()

    def read_into(self, key, out) -> None:
        out.copy_(self.tensors[key])

    def close(self):
        self.tensors = {}


def _open_shard(path: str):
    return _SafetensorsShard(path) if path.endswith(".safetensors") else _TorchPickleShard(path)


class WeightsReader:
    """Read-only access to the tensors of one checkpoint, possibly split over several files.

    ``get(key, framework="pt")`` returns a torch tensor, ``framework="np"`` a numpy array, one key at
    a time. Torch tensors (and numpy arrays from a ``pytorch_model.bin``) are views of the
    memory-mapped file, and two calls for the same key may share memory: copy before modifying one
    in place. numpy arrays from safetensors are fresh copies.
    """

    def __init__(
        self,
        files: str | os.PathLike | Sequence[str | os.PathLike],
        *,
        index_file: Optional[str] = None,
        weight_map: Optional[Mapping[str, str]] = None,
    ):
        if isinstance(files, (str, os.PathLike)):
            files = [files]
        self.files = tuple(os.fspath(f) for f in files)
        self.index_file = index_file
        self._closed = False
        self._shards = []
        try:
            for path in self.files:
                self._shards.append(_open_shard(path))
            self._where = self._locate(weight_map or {})
        except BaseException:
            self.close()
            raise

    def _locate(self, weight_map: Mapping[str, str]) -> dict:
        by_name = {os.path.basename(shard.path): shard for shard in self._shards}
        where = {}
        for key, shard_name in weight_map.items():
            shard = by_name.get(os.path.basename(shard_name))
            if shard is None or key not in shard.tensors:
                raise OSError(f"the index {self.index_file!r} puts tensor {key!r} in {shard_name!r}, but that shard has no such tensor")
            where[key] = shard
        for shard in self._shards:
            for key in shard.keys():
                other = where.setdefault(key, shard)
                if other is not shard and key not in weight_map:
                    raise OSError(f"tensor {key!r} is in both {other.path!r} and {shard.path!r}, and no index says which to use")
        return where

    @property
    def metadata(self) -> dict:
        """The header metadata of the first file, such as ``{"format": "pt"}``."""
        return dict(self._shards[0].metadata) if self._shards else {}

    def keys(self) -> list[str]:
        return list(self._where)

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, key) -> bool:
        return key in self._where

    def _shard(self, key):
        if self._closed:
            raise ValueError(f"the weights reader of {', '.join(map(repr, self.files))} is closed")
        try:
            return self._where[key]
        except KeyError:
            close = difflib.get_close_matches(str(key), self._where, n=3)
            hint = f"; close matches: {', '.join(map(repr, close))}" if close else ""
            raise KeyError(f"no tensor {key!r} in {', '.join(map(repr, self.files))}{hint}") from None

    def shape(self, key: str) -> tuple:
        return tuple(self._shard(key).shape(key))

    def dtype(self, key: str) -> str:
        """The canonical dtype name of ``key``: "float32", "bfloat16", "int64", ..."""
        return self._shard(key).dtype(key)

    def get(self, key: str, framework: str = "pt", *, mapped: bool = True):
        """The tensor ``key``. ``mapped=False`` (torch only) returns a tensor with memory of its own, read
        with plain file reads, for callers that will copy or convert it: pages of a mapped file stay
        resident for as long as any tensor of that file lives, so a copy of a mapped view costs twice."""
        if framework not in FRAMEWORKS:
            raise ValueError(f"framework must be one of {', '.join(map(repr, FRAMEWORKS))}, got {framework!r}")
        return self._shard(key).get(key, framework, mapped)

    def read_into(self, key: str, out) -> None:
        """The tensor ``key`` copied into the torch tensor ``out`` of its shape (cast to ``out``'s dtype),
        read from a safetensors file straight into ``out``'s memory where the dtypes agree."""
        if tuple(out.shape) != self.shape(key):
            raise ValueError(f"read_into {key!r}: out has shape {tuple(out.shape)}, the tensor {self.shape(key)}")
        self._shard(key).read_into(key, out)

    def close(self) -> None:
        self._closed = True
        for shard in self._shards:
            shard.close()

    def __enter__(self) -> "WeightsReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"WeightsReader({len(self._where) if hasattr(self, '_where') else 0} tensors in {list(self.files)!r})"
