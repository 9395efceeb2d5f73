"""Memory for weights and caches in transparent huge pages (Linux), where decoding streams them faster.

Decoding a token reads every weight once, a few hundred megabytes in 4 KiB pages: each page costs a
translation (TLB) miss, and the hardware prefetchers stop at every page boundary. In 2 MiB pages both go
away. Measured on the reduced MPT of ``bench/decode_speed.py`` (this project's 2-core machine, the same
process alternating a model whose weights are mapped from the file in 4 KiB pages with one whose weights
lie in huge pages, 48 tokens, medians of 5): float32 31.7 -> 33.7 tokens/s, int8 106.1 -> 122.5, 4-bit
123.7 -> 133.8, the same tokens. A float32 one-row product over 810 MB of matrices reads 36.4 -> 40.1 GB/s
through oneDNN.

Linux gives huge pages to anonymous memory that asks for them (``madvise(MADV_HUGEPAGE)``) when
``/sys/kernel/mm/transparent_hugepage/enabled`` is ``always`` or ``madvise`` (the usual default). torch's
own switch for this (the ``THP_MEM_ALLOC_ENABLE`` environment variable) is read once when torch starts, too
early for a library to set; so :func:`empty` maps such memory itself, and ``from_pretrained`` and the
quantized layers put their weights there. Elsewhere, or for tensors under 2 MiB, it is ``torch.empty``.
"""

from __future__ import annotations

import mmap
import sys
import threading
from typing import Optional, Sequence

import torch

HUGE_PAGE = 1 << 21
"""Bytes of a transparent huge page on x86-64 and most arm64 kernels; smaller tensors use torch's allocator."""

_AVAILABLE: Optional[bool] = None


def huge_pages_available() -> bool:
    """Whether this system gives transparent huge pages to memory that asks (Linux, THP ``always`` or
    ``madvise``)."""
    global _AVAILABLE
    if _AVAILABLE is None:
        _AVAILABLE = False
        if sys.platform.startswith("linux") and hasattr(mmap, "MADV_HUGEPAGE"):
            try:
                with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
                    setting = f.read()
                _AVAILABLE = "[always]" in setting or "[madvise]" in setting
            except OSError:
                pass
    return _AVAILABLE


def advised(shape: Sequence[int], dtype: torch.dtype) -> bool:
    """Whether :func:`empty` puts a tensor of this shape and dtype in huge pages: 2 MiB or more, on a
    system that has them."""
    return torch.Size(shape).numel() * dtype.itemsize >= HUGE_PAGE and huge_pages_available()


def empty(shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised contiguous CPU tensor, in memory advised into huge pages when :func:`advised`
    (see the module docstring); ``torch.empty`` otherwise. The memory is returned to the system when the
    last tensor viewing it is freed."""
    shape = tuple(int(n) for n in shape)
    if not advised(shape, dtype):
        return torch.empty(shape, dtype=dtype)
    return _view(_map(torch.Size(shape).numel() * dtype.itemsize), shape, dtype)


def _map(nbytes: int) -> torch.UntypedStorage:
    """The storage of a fresh anonymous mapping for ``nbytes`` from a 2 MiB boundary, its whole huge pages
    advised. The mapping is unmapped when the storage is freed."""
    # One huge page more than needed, to start on a 2 MiB boundary (mmap aligns to 4 KiB only). Only the
    # whole huge pages are advised: the tail stays in small pages, so that no partly used 2 MiB page is
    # made resident (untouched pages, the slack included, take no memory).
    region = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    raw = torch.frombuffer(region, dtype=torch.uint8)  # holds `region` open for as long as it lives
    start = -raw.data_ptr() % HUGE_PAGE
    try:
        region.madvise(mmap.MADV_HUGEPAGE, start, nbytes // HUGE_PAGE * HUGE_PAGE)
    except OSError:  # the kernel refused the advice: ordinary pages, still correct
        pass
    return raw.untyped_storage()


def _view(storage: torch.UntypedStorage, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """The tensor of ``shape`` and ``dtype`` in ``storage`` (from :func:`_map`), from its 2 MiB boundary."""
    raw = torch.empty(0, dtype=torch.uint8).set_(storage)
    start = -raw.data_ptr() % HUGE_PAGE
    return raw[start:start + torch.Size(shape).numel() * dtype.itemsize].view(dtype).view(shape)


REUSE_LIMIT = 256 << 20
"""Bytes of the mappings that :func:`zeros` keeps for reuse, in use or not. A buffer that would take the kept
ones past this is mapped afresh and goes back to the system when freed."""

_kept: list[torch.UntypedStorage] = []  # made by zeros(), to be used again once no tensor views them
_kept_lock = threading.Lock()


def _idle(storage: torch.UntypedStorage) -> bool:
    # Tensors viewing a storage each hold a reference to it; only the kept storage object refers to it when
    # no tensor does. (torch counts them for its own memory pools the same way.) Without that count, a
    # storage is never taken for idle, and nothing is reused.
    use_count = getattr(torch._C, "_storage_Use_Count", None)
    return use_count is not None and use_count(storage._cdata) == 1


def zeros(shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """A contiguous CPU tensor of zeros, like :func:`empty` in huge pages when :func:`advised`.

    A fresh mapping is zero as the system hands it over, but in a virtual machine each first touch of its
    pages can cost far more than the zeros: the reduced MPT's batch-8 cache of ``bench/decode_speed.py`` (24
    buffers, 126 MB) took 17-68 ms a ``generate`` to fault in, against ~10 ms for ``torch.zeros`` in memory
    glibc had already mapped. So these mappings are kept (up to :data:`REUSE_LIMIT` bytes in all) and, once
    no tensor views one any more, a buffer of the same size takes it again, zeroed in place. (In fresh pages
    ``zero_()`` would only add to the faults: 29-95 ms for that cache.) :func:`release_kept` unmaps the
    idle ones."""
    if not advised(shape, dtype):
        return torch.zeros(tuple(int(n) for n in shape), dtype=dtype)
    shape = tuple(int(n) for n in shape)
    nbytes = torch.Size(shape).numel() * dtype.itemsize
    with _kept_lock:
        for storage in _kept:
            if storage.nbytes() == nbytes + HUGE_PAGE and _idle(storage):
                return _view(storage, shape, dtype).zero_()
        storage = _map(nbytes)
        if sum(s.nbytes() for s in _kept) + storage.nbytes() > REUSE_LIMIT:
            _kept[:] = [s for s in _kept if not _idle(s)]  # make room: unmap the idle ones of other sizes
        if sum(s.nbytes() for s in _kept) + storage.nbytes() <= REUSE_LIMIT:
            _kept.append(storage)
    return _view(storage, shape, dtype)


def release_kept() -> int:
    """Unmaps the mappings kept by :func:`zeros` that no tensor views any more; returns their bytes."""
    with _kept_lock:
        idle = [_idle(s) for s in _kept]
        freed = sum(s.nbytes() for s, free in zip(_kept, idle) if free)
        _kept[:] = [s for s, free in zip(_kept, idle) if not free]
    return freed


def in_huge_pages(tensor: torch.Tensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """``tensor.to(dtype)`` (its own dtype by default), copied in one pass into memory from :func:`empty`
    when :func:`advised`; on another device, or too small to gain, just ``tensor.to(dtype)`` (``tensor``
    itself when the dtype is its own)."""
    dtype = tensor.dtype if dtype is None else dtype
    if tensor.device.type != "cpu" or not advised(tensor.shape, dtype):
        return tensor.to(dtype)
    return empty(tensor.shape, dtype).copy_(tensor)


__all__ = ["HUGE_PAGE", "REUSE_LIMIT", "advised", "empty", "huge_pages_available", "in_huge_pages", "release_kept",
           "zeros"]
