"""Weights in transparent huge pages (``polyformers.pt.memory``): where the memory comes from, that it is
advised (the kernel's own view, ``/proc/self/smaps``), and that from_pretrained and the quantized layers
put their large weights there with the same values."""

from __future__ import annotations

import gc

import pytest
import torch

from polyformers import MptConfig, MptForCausalLM
from polyformers.pt import memory
from polyformers.pt.quantize import quantize


def _mapping(address: int) -> dict:
    """The fields of the /proc/self/smaps entry holding ``address``."""
    entry = None
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and ":" not in head:
                start, end = (int(part, 16) for part in head.split("-"))
                entry = {} if start <= address < end else None
            elif entry is not None and ":" in head:
                entry[head.rstrip(":")] = line.split(":", 1)[1].strip()
            if entry is not None and "VmFlags" in entry:
                return entry
    return entry or {}


def test_huge_pages_are_available_where_linux_offers_them():
    with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
        setting = f.read()
    assert memory.huge_pages_available() == ("[always]" in setting or "[madvise]" in setting)


def test_large_tensors_lie_in_advised_huge_pages_and_small_ones_in_torchs_memory():
    big = memory.empty((1024, 1536), torch.float32)  # 6 MiB
    assert big.shape == (1024, 1536) and big.dtype == torch.float32 and big.is_contiguous()
    big.fill_(1.5)
    assert float(big.sum()) == 1.5 * big.numel()
    small = memory.empty((100, 100), torch.float32)
    # torch's own memory: exactly its bytes (a mapping of empty() holds a huge page more, for alignment).
    # (Not the flags of the mapping holding it: in the whole suite's processes torch's heap was once found
    # advised, by code other than this module, which advises only the memory it maps.)
    assert small.shape == (100, 100) and small.untyped_storage().nbytes() == 100 * 100 * 4
    if memory.huge_pages_available():
        assert big.untyped_storage().nbytes() == 1024 * 1536 * 4 + memory.HUGE_PAGE
        assert big.data_ptr() % memory.HUGE_PAGE == 0
        fields = _mapping(big.data_ptr())
        assert "hg" in fields["VmFlags"].split(), fields  # madvise(MADV_HUGEPAGE) took
    copy = memory.in_huge_pages(big)
    assert torch.equal(copy, big) and copy.data_ptr() != big.data_ptr()
    assert memory.in_huge_pages(small) is small
    for dtype in (torch.bfloat16, torch.int8, torch.uint8):  # views of other element sizes
        t = memory.empty((3, 1 << 20), dtype)
        assert t.dtype == dtype and t.shape == (3, 1 << 20)
    # zeros: a fresh mapping (zero as the system hands it over) where advised, torch.zeros otherwise
    for shape, mapped in (((3, 1 << 20), True), ((100, 100), False)):
        zeros = memory.zeros(shape, torch.float32)
        assert zeros.shape == shape and zeros.is_contiguous() and not zeros.any()
        extra = memory.HUGE_PAGE if mapped and memory.huge_pages_available() else 0
        assert zeros.untyped_storage().nbytes() == zeros.numel() * 4 + extra


def test_the_memory_goes_back_when_the_tensor_is_freed():
    def mapped() -> int:
        with open("/proc/self/maps") as f:
            return sum(1 for _ in f)

    before = mapped()
    tensors = [memory.empty((1 << 20,), torch.float32) for _ in range(8)]
    for t in tensors:
        t.zero_()
    assert mapped() >= before + (8 if memory.huge_pages_available() else 0)
    del tensors, t
    gc.collect()
    assert mapped() <= before + 1


def test_loaded_and_quantized_weights_lie_in_huge_pages(tmp_path, monkeypatch):
    torch.manual_seed(0)
    config = MptConfig(vocab_size=16384, d_model=256, n_heads=4, n_layers=2, max_seq_len=64)
    model = MptForCausalLM(config).eval()
    model.save_pretrained(tmp_path)
    loaded = MptForCausalLM.from_pretrained(tmp_path).eval()
    want = dict(model.state_dict())
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, want[name]), name
        nbytes = tensor.numel() * tensor.element_size()
        if memory.huge_pages_available() and nbytes >= memory.HUGE_PAGE:  # the 16 MiB embedding
            assert "hg" in _mapping(tensor.data_ptr())["VmFlags"].split(), name
    ids = torch.randint(0, 16384, (1, 5))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
        for bits in (4, 8, 16):
            quantized = quantize(MptForCausalLM.from_pretrained(tmp_path).eval(), bits=bits)
            head = quantized.lm_head
            stored = {4: lambda: head._kernel[1], 8: lambda: head._rows[0], 16: lambda: head.weight}[bits]()
            assert stored.numel() * stored.element_size() >= memory.HUGE_PAGE  # 2-8 MiB: moved
            if memory.huge_pages_available():
                assert "hg" in _mapping(stored.data_ptr())["VmFlags"].split(), bits
            with monkeypatch.context() as patch:  # the same layers in torch's memory: the same logits
                patch.setattr(memory, "_AVAILABLE", False)
                plain = quantize(MptForCausalLM.from_pretrained(tmp_path).eval(), bits=bits)
            assert torch.equal(quantized(ids).logits, plain(ids).logits), bits


def test_with_huge_pages_no_loaded_weight_keeps_a_page_of_the_file_mapped(tmp_path, monkeypatch):
    # Mapped, a small weight would keep its page of the file resident as long as it lives, and the page
    # cache may hold the file in pages of up to 2 MiB: with huge pages, from_pretrained reads every weight.
    # Without them, the small and large weights alike are views of the mapped file (nothing copied).
    torch.manual_seed(0)
    model = MptForCausalLM(MptConfig(vocab_size=16384, d_model=256, n_heads=4, n_layers=2, max_seq_len=64))
    model.save_pretrained(tmp_path)
    path = str(tmp_path / "model.safetensors")

    def mapped_file() -> bool:
        with open("/proc/self/maps") as f:
            return any(line.rstrip().endswith(path) for line in f)

    for available in (True, False):
        monkeypatch.setattr(memory, "_AVAILABLE", available and memory.huge_pages_available())
        loaded = MptForCausalLM.from_pretrained(tmp_path).eval()
        for name, tensor in loaded.state_dict().items():
            assert torch.equal(tensor, model.state_dict()[name]), name
        assert mapped_file() == (not memory.huge_pages_available()), available
        del loaded
        gc.collect()


def test_a_static_caches_buffers_lie_in_huge_pages_and_start_at_zero():
    """``generate``'s preallocated key/value cache: each layer's buffer from ``memory.empty`` where it is
    large enough, zeroed; a small one in torch's memory."""
    from polyformers.pt.cache import StaticCache

    config = MptConfig(d_model=256, n_heads=4, n_layers=2, max_seq_len=4096)
    for batch, length, huge in ((2, 1024, True), (1, 16, False)):  # 2 MiB a buffer; 16 KiB
        cache = StaticCache(config, max_batch_size=batch, max_cache_len=length, dtype=torch.float32)
        for buffer in (*cache.key_cache, *cache.value_cache):
            assert buffer.shape == (batch, 4, length, 64) and not buffer.any()
            nbytes = buffer.numel() * 4
            if huge and memory.huge_pages_available():
                assert buffer.untyped_storage().nbytes() == nbytes + memory.HUGE_PAGE
                assert buffer.data_ptr() % memory.HUGE_PAGE == 0
                assert "hg" in _mapping(buffer.data_ptr())["VmFlags"].split()
            else:
                assert buffer.untyped_storage().nbytes() == nbytes


def test_zeros_takes_back_a_mapping_once_no_tensor_views_it(monkeypatch):
    """``memory.zeros`` keeps its mappings (up to ``REUSE_LIMIT`` bytes) and gives one out again, zeroed,
    only when no tensor, nor any view of one, still uses it; ``release_kept`` unmaps the idle ones."""
    if not memory.huge_pages_available():
        pytest.skip("this system gives no transparent huge pages: memory.zeros is torch.zeros")
    monkeypatch.setattr(memory, "_kept", [])
    shape = (3, 1 << 20)  # 12 MiB: advised
    first = memory.zeros(shape, torch.float32)
    first.fill_(7.0)
    address = first.data_ptr()
    view = first[1:].view(-1)[5:]  # a view outlives the tensor: the mapping is still in use
    del first
    gc.collect()
    second = memory.zeros(shape, torch.float32)
    assert second.data_ptr() != address and not second.any()
    assert float(view[0]) == 7.0  # untouched by the new buffer
    del view
    gc.collect()
    third = memory.zeros(shape, torch.float32)  # the first mapping is idle now: taken again, zeroed
    assert third.data_ptr() == address and not third.any() and third.shape == shape
    assert memory.zeros((1 << 20,), torch.float32).data_ptr() not in (address, second.data_ptr())  # another size
    assert len(memory._kept) == 3
    del second, third
    gc.collect()
    assert memory.release_kept() == 2 * (12 << 20) + (4 << 20) + 3 * memory.HUGE_PAGE
    assert memory._kept == []
    # Beyond the limit, a buffer is mapped afresh and not kept; kept ones of other sizes that are idle make room.
    monkeypatch.setattr(memory, "REUSE_LIMIT", (12 << 20) + memory.HUGE_PAGE)
    held = memory.zeros(shape, torch.float32)
    other = memory.zeros((1 << 20,), torch.float32)
    assert len(memory._kept) == 1 and not other.any()
    del held
    gc.collect()
    other2 = memory.zeros((2, 1 << 20), torch.float32)  # the idle 12 MiB mapping is unmapped to keep this one
    assert len(memory._kept) == 1 and memory._kept[0].nbytes() == (8 << 20) + memory.HUGE_PAGE
    del other, other2


def test_a_static_cache_reuses_the_buffers_of_one_freed_before(monkeypatch):
    from polyformers.pt.cache import StaticCache

    if not memory.huge_pages_available():
        pytest.skip("this system gives no transparent huge pages: memory.zeros is torch.zeros")
    monkeypatch.setattr(memory, "_kept", [])
    config = MptConfig(d_model=256, n_heads=4, n_layers=2, max_seq_len=4096)
    cache = StaticCache(config, max_batch_size=2, max_cache_len=1024, dtype=torch.float32)
    states = torch.randn(2, 4, 3, 64)
    for layer in range(2):
        cache.update(states, states, layer)
    addresses = {t.data_ptr() for t in (*cache.key_cache, *cache.value_cache)}
    del cache
    gc.collect()
    again = StaticCache(config, max_batch_size=2, max_cache_len=1024, dtype=torch.float32)
    assert {t.data_ptr() for t in (*again.key_cache, *again.value_cache)} == addresses
    assert not any(t.any() for t in (*again.key_cache, *again.value_cache))  # the old states are gone
