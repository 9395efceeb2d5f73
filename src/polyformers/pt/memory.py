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
    nbytes = torch.Size(shape).numel() * dtype.itemsize
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
    return raw[start:start + nbytes].view(dtype).view(shape)


def zeros(shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """A contiguous CPU tensor of zeros, like :func:`empty` in huge pages when :func:`advised`. Such memory is a
    fresh anonymous mapping, which the system fills with zeros as each page is first touched: nothing writes
    it twice. (Zeroing it again costs more than the zeros themselves: 24 buffers of 5.3 MiB took 29-95 ms
    with ``zero_()``, against 10 ms for ``torch.zeros`` in memory the allocator had already mapped.)"""
    if not advised(shape, dtype):
        return torch.zeros(tuple(int(n) for n in shape), dtype=dtype)
    return empty(shape, dtype)


def in_huge_pages(tensor: torch.Tensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """``tensor.to(dtype)`` (its own dtype by default), copied in one pass into memory from :func:`empty`
    when :func:`advised`; on another device, or too small to gain, just ``tensor.to(dtype)`` (``tensor``
    itself when the dtype is its own)."""
    dtype = tensor.dtype if dtype is None else dtype
    if tensor.device.type != "cpu" or not advised(tensor.shape, dtype):
        return tensor.to(dtype)
    return empty(tensor.shape, dtype).copy_(tensor)


__all__ = ["HUGE_PAGE", "advised", "empty", "huge_pages_available", "in_huge_pages", "zeros"]
