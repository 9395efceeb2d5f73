"""Writing weights as safetensors, sharded like the reference, crash-safe.

Every framework's ``save_pretrained`` ends here with PyTorch key names, so there is one on-disk
format. Tensors are streamed to disk one at a time (no shard-sized buffer), each file is written
under a temporary name and renamed into place, and the index is renamed last: a save that dies
half-way leaves the previous checkpoint readable.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import numpy as np

from .arrays import is_torch_tensor, numpy_raw_bytes, torch_raw_bytes
from .dtypes import canonical_dtype, dtype_size
from .safetensors_format import DTYPE_TO_CODE, build_header
from .weights import add_variant

_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*([A-Za-z]*)\s*$")


def parse_size(size: int | str) -> int:
    """Bytes in ``size``: an int, or a string such as "5GB" (10**9 bytes), "500MB" or "5GiB" (2**30 bytes).

    As in the reference, a lowercase final "b" in a decimal unit means bits: "5Gb" is 5 * 10**9 / 8 bytes.
    """
    if isinstance(size, bool) or not isinstance(size, (int, str)):
        raise TypeError(f"size must be an int or a string such as '5GB', got {type(size).__name__} {size!r}")
    if isinstance(size, int):
        value = size
    else:
        match = _SIZE.match(size)
        unit = match.group(2).upper() if match else None
        if unit not in _UNITS:
            raise ValueError(
                f"size {size!r} is not in a valid format: expected a number followed by one of "
                "B, KB, MB, GB, TB, KiB, MiB, GiB, TiB (for example '5GB')"
            )
        value = float(match.group(1)) * _UNITS[unit]
        if match.group(2).endswith("b") and unit in ("KB", "MB", "GB", "TB"):
            value /= 8
        value = int(value)
    if value <= 0:
        raise ValueError(f"size must be positive, got {size!r}")
    return value


@dataclass
class _Entry:
    key: str
    dtype: str
    shape: tuple
    nbytes: int
    value: Any
    framework: str


def _entry(key, value, framework: str) -> _Entry:
    if not isinstance(key, str):
        raise TypeError(f"state keys must be strings, got {type(key).__name__} {key!r}")
    if framework == "pt":
        if not is_torch_tensor(value):
            raise TypeError(f"state[{key!r}] is a {type(value).__name__}, expected a torch.Tensor (framework='pt')")
        if value.is_meta:
            raise ValueError(f"state[{key!r}] is on the meta device and has no data to save")
        shape = tuple(value.shape)
    else:
        if is_torch_tensor(value):
            raise TypeError(f"state[{key!r}] is a torch.Tensor, expected a numpy array (framework='np')")
        value = np.asarray(value)  # jax and TF arrays convert without a torch round trip
        shape = value.shape
    try:
        dtype = canonical_dtype(value.dtype)
    except ValueError:
        dtype = None
    if dtype not in DTYPE_TO_CODE:
        raise TypeError(
            f"state[{key!r}] has dtype {value.dtype}, which safetensors cannot store; expected one of "
            f"{', '.join(DTYPE_TO_CODE.values())}"
        )
    return _Entry(key, dtype, shape, math.prod(shape) * dtype_size(dtype), value, framework)


def _memory_region(entry: _Entry):
    """(device, first byte, end byte) of the memory the value reads, or None when it reads none."""
    if entry.nbytes == 0:
        return None
    value = entry.value
    if entry.framework == "pt":
        extent = sum((n - 1) * step for n, step in zip(value.shape, value.stride())) + 1
        start = value.data_ptr()
        return str(value.device), start, start + extent * value.element_size()
    byte_bounds = getattr(np.lib, "array_utils", np).byte_bounds
    low, high = byte_bounds(value)
    return "cpu", low, high


def _refuse_shared_memory(entries: list[_Entry]) -> None:
    # safetensors has no way to say "same storage": a tied weight would be written twice and come
    # back untied, so callers must save one name per tensor.
    regions = sorted((r, e.key) for e in entries if (r := _memory_region(e)) is not None)
    holder = None  # (region, key) reaching furthest on the current device
    for region, key in regions:
        if holder is not None and holder[0][0] == region[0] and region[1] < holder[0][2]:
            raise ValueError(
                f"state[{holder[1]!r}] and state[{key!r}] share memory; safetensors stores every tensor "
                "separately, so save tied weights under one name only (or pass copies)"
            )
        if holder is None or holder[0][0] != region[0] or region[2] > holder[0][2]:
            holder = (region, key)


def _plan_shards(entries: list[_Entry], limit: int) -> list[list[_Entry]]:
    # The reference's greedy rule: keep the given order, start a new shard when the next tensor
    # would push a non-empty one over the limit (a tensor bigger than the limit gets its own).
    shards: list[list[_Entry]] = [[]]
    size = 0
    for entry in entries:
        if shards[-1] and size + entry.nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += entry.nbytes
    return shards


def _write_tensor(fh, entry: _Entry) -> None:
    raw = torch_raw_bytes(entry.value) if entry.framework == "pt" else numpy_raw_bytes(entry.value)
    fh.write(memoryview(raw))


def _write_shard(path: str, entries: list[_Entry], metadata: Mapping[str, str]) -> None:
    # Largest dtypes first, as the reference implementation does, so every tensor starts aligned.
    ordered = sorted(entries, key=lambda e: (-dtype_size(e.dtype), e.key))
    with open(path, "xb") as fh:
        fh.write(build_header(((e.key, e.dtype, e.shape, e.nbytes) for e in ordered), metadata))
        for entry in ordered:
            _write_tensor(fh, entry)
        fh.flush()
        os.fsync(fh.fileno())


def _write_text(path: str, text: str) -> None:
    with open(path, "x", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def _temp_path(directory: str, name: str) -> str:
    # Hidden and suffixed so no reader or stale-file sweep ever mistakes it for a weights file.
    return os.path.join(directory, f".{name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def save_weights(
    state: Mapping[str, Any],
    save_directory: str | os.PathLike,
    *,
    max_shard_size: int | str = "5GB",
    metadata: Optional[Mapping[str, str]] = None,
    framework: str = "pt",
    prefix: str = "model",
    variant: Optional[str] = None,
) -> list[str]:
    """Write ``state`` (name -> torch tensor for ``framework="pt"``, numpy-convertible array for "np").

    One ``{prefix}.safetensors`` when everything fits in ``max_shard_size``, otherwise
    ``{prefix}-00001-of-0000N.safetensors`` shards plus ``{prefix}.safetensors.index.json``. Files
    of an earlier save in the same folder that this save does not overwrite are removed. Returns the
    paths written, index last.
    """
    if framework not in ("pt", "np"):
        raise ValueError(f"framework must be 'pt' or 'np', got {framework!r}")
    metadata = {"format": "pt"} if metadata is None else dict(metadata)
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"safetensors metadata must map str to str, got {key!r}: {value!r}")
    limit = parse_size(max_shard_size)
    directory = os.fspath(save_directory)
    if os.path.isfile(directory):
        raise OSError(f"save_directory {directory!r} is a file, expected a folder")
    os.makedirs(directory, exist_ok=True)

    entries = [_entry(key, value, framework) for key, value in state.items()]
    _refuse_shared_memory(entries)
    shards = _plan_shards(entries, limit)

    single_name = add_variant(f"{prefix}.safetensors", variant)
    stem = single_name[: -len(".safetensors")]
    index_name = add_variant(f"{prefix}.safetensors.index.json", variant)
    if len(shards) == 1:
        names = [single_name]
    else:
        names = [f"{stem}-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]

    temps: list[tuple[str, str]] = []  # (temporary path, final name)
    try:
        for name, shard in zip(names, shards):
            temps.append((_temp_path(directory, name), name))
            _write_shard(temps[-1][0], shard, metadata)
        if len(shards) > 1:
            index = {
                "metadata": {"total_size": sum(e.nbytes for e in entries)},
                "weight_map": {e.key: name for name, shard in zip(names, shards) for e in shard},
            }
            temps.append((_temp_path(directory, index_name), index_name))
            _write_text(temps[-1][0], json.dumps(index, indent=2, sort_keys=True) + "\n")
    except BaseException:
        for temp, _ in temps:
            _remove(temp)
        raise

    written = []
    for temp, name in temps:
        os.replace(temp, os.path.join(directory, name))
        written.append(os.path.join(directory, name))

    # Readers prefer the index, so when going back to one file the index must go before the shards.
    stale = [] if len(shards) > 1 else [index_name]
    if len(shards) > 1:
        stale.append(single_name)
    shard_pattern = re.compile(re.escape(stem) + r"-\d{5}-of-\d{5}\.safetensors")
    stale += sorted(f for f in os.listdir(directory) if shard_pattern.fullmatch(f) and f not in names)
    for name in stale:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            _remove(path)
    return written
