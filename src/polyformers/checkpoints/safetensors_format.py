"""The safetensors layout, read and written without any framework.

A file is an 8-byte little-endian header length N, N bytes of JSON (``{"__metadata__": {str: str},
name: {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}}``, offsets relative to the end
of the header), then the tensor bytes back to back. Parsing the header here lets readers report the
keys, shapes and dtypes of every shard before touching any data, and name the file and tensor when
something is wrong.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from typing import Iterable, Mapping, Optional

from .dtypes import dtype_size

CODE_TO_DTYPE = {
    "BOOL": "bool",
    "U8": "uint8",
    "I8": "int8",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "F8_E4M3FNUZ": "float8_e4m3fnuz",
    "F8_E5M2FNUZ": "float8_e5m2fnuz",
    "I16": "int16",
    "U16": "uint16",
    "F16": "float16",
    "BF16": "bfloat16",
    "I32": "int32",
    "U32": "uint32",
    "F32": "float32",
    "I64": "int64",
    "U64": "uint64",
    "F64": "float64",
    "C64": "complex64",
}
DTYPE_TO_CODE = {name: code for code, name in CODE_TO_DTYPE.items()}

# The reference implementation refuses larger headers; a bigger length field means a corrupt file.
MAX_HEADER_BYTES = 100_000_000


@dataclass(frozen=True)
class TensorEntry:
    dtype: str  # canonical name
    shape: tuple
    start: int  # absolute byte offsets in the file
    stop: int


def read_header(path: str) -> tuple[dict[str, TensorEntry], dict[str, str]]:
    """Parse and check the header of the safetensors file at ``path``: (tensors, metadata)."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise OSError(f"{path!r} is not a safetensors file: it has only {size} bytes, fewer than the 8-byte header length")
            (length,) = struct.unpack("<Q", head)
            if length > min(MAX_HEADER_BYTES, size - 8):
                raise OSError(
                    f"{path!r} is truncated or not a safetensors file: its header length field says {length} bytes "
                    f"but the file has {size - 8} bytes after it"
                )
            raw = fh.read(length)
    except FileNotFoundError as err:
        raise OSError(f"no such weights file: {path!r}") from err
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise OSError(f"{path!r} is corrupt: its safetensors header is not valid JSON ({err})") from None
    if not isinstance(header, dict):
        raise OSError(f"{path!r} is corrupt: its safetensors header is a JSON {type(header).__name__}, expected an object")

    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise OSError(f"{path!r} is corrupt: '__metadata__' is a {type(metadata).__name__}, expected an object")
    data_start = 8 + length
    tensors = {}
    for name, info in header.items():
        tensors[name] = _entry(path, name, info, data_start, size)
    # The format leaves no holes and no trailing bytes, so a header length that is off by a few
    # bytes (still valid JSON thanks to the padding) shows up here rather than as shifted weights.
    position = data_start
    for start, stop, name in sorted((e.start, e.stop, name) for name, e in tensors.items()):
        if start != position:
            raise OSError(f"{path!r} is corrupt: tensor {name!r} starts at byte {start}, expected {position} (the data must be contiguous)")
        position = stop
    if position != size:
        raise OSError(
            f"{path!r} is corrupt: its tensors end at byte {position} but the file has {size} bytes "
            "(wrong header length or trailing data)"
        )
    return tensors, dict(metadata)


def _entry(path: str, name: str, info, data_start: int, size: int) -> TensorEntry:
    try:
        code, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
        shape = tuple(int(d) for d in shape)
        begin, end = int(begin), int(end)
    except (KeyError, TypeError, ValueError):
        raise OSError(
            f"{path!r} is corrupt: tensor {name!r} has header entry {info!r}, expected "
            "{'dtype': str, 'shape': [int, ...], 'data_offsets': [begin, end]}"
        ) from None
    if code not in CODE_TO_DTYPE:
        raise OSError(f"{path!r}: tensor {name!r} has dtype {code!r}, expected one of {', '.join(CODE_TO_DTYPE)}")
    dtype = CODE_TO_DTYPE[code]
    expected = math.prod(shape) * dtype_size(dtype)
    if min(shape, default=0) < 0 or not 0 <= begin <= end or end - begin != expected:
        raise OSError(
            f"{path!r} is corrupt: tensor {name!r} ({code}, shape {list(shape)}) needs {expected} bytes "
            f"but its data_offsets are [{begin}, {end}]"
        )
    if data_start + end > size:
        raise OSError(
            f"{path!r} is truncated: tensor {name!r} ends at byte {data_start + end} but the file has only "
            f"{size} bytes"
        )
    return TensorEntry(dtype, shape, data_start + begin, data_start + end)


def build_header(entries: Iterable[tuple[str, str, tuple, int]], metadata: Optional[Mapping[str, str]]) -> bytes:
    """Length field + JSON header for ``(name, dtype, shape, nbytes)`` entries, laid out in the given order."""
    header: dict = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset = 0
    for name, dtype, shape, nbytes in entries:
        header[name] = {"dtype": DTYPE_TO_CODE[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    # Padding the header to 8 bytes keeps every tensor aligned once the largest dtypes come first.
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw
