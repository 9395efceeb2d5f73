"""A bfloat16 StaticCache of a float32 model: keys and values rounded as they are stored, read by the
attention kernel as they are (``kernels/attention.cpp``) and by every other path widened to float32. The
decoding is the float32 model's with its keys and values rounded to bfloat16, bit for bit: the same as a
float32 cache that rounds what it stores, through the compiled step and the Python blocks alike."""

from __future__ import annotations

import pytest
import torch

from polyformers.pt import fused, kernels
from polyformers.pt.cache import StaticCache

from .test_fused import _Counter, _model


@pytest.fixture(autouse=True)
def _built():
    assert kernels.available(), kernels.why_not()


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int16)


@pytest.mark.parametrize("dim", [64, 24, 128])  # in registers, a vector and a masked tail, eight vectors
def test_the_kernel_reads_bfloat16_keys_and_values_as_their_float32_values(dim):
    ops = kernels.ops()
    torch.manual_seed(0)
    query = torch.randn(2, 3, 1, dim)
    key, value = torch.randn(2, 3, 37, dim).bfloat16(), torch.randn(2, 3, 37, dim).bfloat16()
    bias = torch.randn(1, 3, 1, 37)
    got = ops.attend_one(query, key, value, bias, 0.3)
    assert torch.equal(got, ops.attend_one(query, key.float(), value.float(), bias, 0.3))
    # storing: each new key and value rounded as torch rounds them (NaN, infinities, ties, overflow included)
    new_key, new_value = torch.randn(2, 3, 1, dim) * 100, torch.randn(2, 3, 1, dim)
    new_key[0, 0, 0, :5] = torch.tensor([float("nan"), float("inf"), -float("inf"), 3.4e38, 1.00390625])
    new_value[1, 2, 0, :2] = torch.tensor([1.0 + 2**-8, 1.0 + 3 * 2**-8])  # ties to even, down and up
    keys, values = key.clone(), value.clone()
    ops.attend_one_storing(query, keys, values, new_key, new_value, 5, bias, 0.3)
    want_keys, want_values = key.clone(), value.clone()
    want_keys[:, :, 5:6], want_values[:, :, 5:6] = new_key.bfloat16(), new_value.bfloat16()
    assert torch.equal(_bits(keys), _bits(want_keys)) and torch.equal(_bits(values), _bits(want_values))
    # storing, then attending over what was stored
    new_key[0, 0, 0, :5] = 0.5
    keys = key.clone()
    got = ops.attend_one_storing(query, keys, value.clone(), new_key, new_value, 36, bias, 0.3)
    want_keys[:, :, 36:37], want_values[:, :, 36:37] = new_key.bfloat16(), new_value.bfloat16()
    want_keys[:, :, 5:6], want_values[:, :, 5:6] = key[:, :, 5:6], value[:, :, 5:6]
    assert torch.equal(got, ops.attend_one(query, want_keys, want_values, bias, 0.3))
    torch.library.opcheck(torch.ops.polyformers.attend_one_storing,
                          (query, key.clone(), value.clone(), new_key, new_value, 2, bias, 0.3))


def test_the_kernel_names_mismatched_or_unsupported_cache_dtypes():
    ops = kernels.ops()
    query = torch.randn(1, 2, 1, 16)
    key = torch.randn(1, 2, 4, 16).bfloat16()
    with pytest.raises(RuntimeError, match=r"attend_one: value: expected the key's dtype \(BFloat16\), given Float"):
        ops.attend_one(query, key, key.float(), None, 0.25)
    with pytest.raises(RuntimeError, match="attend_one: key: expected a 4-D float32 or bfloat16 CPU tensor, "
                                           "given Half"):
        ops.attend_one(query, key.half(), key.half(), None, 0.25)
    with pytest.raises(RuntimeError, match="attend_one_storing: new_key: expected a 4-D float32 CPU tensor, "
                                           "given BFloat16"):
        ops.attend_one_storing(query, key, key.clone(), query.bfloat16(), query, 1, None, 0.25)


class _Rounding(StaticCache):
    """A float32 cache holding what a bfloat16 one holds. Not a StaticCache exactly, so the model runs its
    Python blocks over it (fused.py takes no subclass)."""

    def update(self, key_states, value_states, layer_idx, cache_kwargs=None):
        rounded = (key_states.bfloat16().float(), value_states.bfloat16().float())
        return super().update(*rounded, layer_idx, cache_kwargs)


def _decode(model, prompt, mask, cache, steps: int = 5, feed=None):
    """Prefill, then greedy steps through ``cache`` as ``generate`` calls the model (or feeding the tokens
    ``feed`` gives): every step's logits."""
    length, ids, logits = prompt.shape[1], prompt, []
    with torch.inference_mode():
        for step in range(steps + 1):
            position = torch.arange(length) if step == 0 else torch.tensor([length + step - 1])
            out = model(ids, past_key_values=cache, attention_mask=mask, cache_position=position)
            logits.append(out.logits[:, -1])
            ids = out.logits[:, -1].argmax(-1, keepdim=True) if feed is None else feed[step]
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
    return logits


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("kind", ["fp32", "int8"])
@pytest.mark.parametrize("family", ["mpt", "gptj"])
def test_a_bfloat16_cache_decodes_as_float32_with_rounded_keys_and_values(family, kind, batch, monkeypatch):
    model = _model(kind, seed=4, family=family)
    torch.manual_seed(5)
    prompt = torch.randint(0, 120, (batch, 6))
    mask = torch.ones_like(prompt)
    if batch > 1:
        mask[0, :2] = 0  # a left-padded row
    config, size = model.config, dict(max_batch_size=batch, max_cache_len=14)
    counter = _Counter(monkeypatch)
    cache = StaticCache(config, **size, dtype=torch.bfloat16)
    got = _decode(model, prompt, mask, cache)
    assert counter.taken == 5  # every step took the compiled blocks
    rounding = _Rounding(config, **size, dtype=torch.float32)
    want = _decode(model, prompt, mask, rounding)
    assert counter.taken == 5
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    for a, b in zip(cache.key_cache + cache.value_cache, rounding.key_cache + rounding.value_cache):
        assert a.dtype == torch.bfloat16 and torch.equal(a.float(), b)
    # half the bytes of a float32 cache, and close to its outputs (fed the same tokens), though not the same
    full = StaticCache(config, **size, dtype=torch.float32)
    exact = _decode(model, prompt, mask, full, feed=[step.argmax(-1, keepdim=True) for step in got])
    assert cache.key_cache[0].nbytes * 2 == full.key_cache[0].nbytes
    spread = max(float(b.abs().max()) for b in exact)
    error = max(float((a - b).abs().max()) for a, b in zip(got, exact))
    # (int8 layers round each input row to 8 bits over its range: a small change can move a value a step)
    assert 0 < error < (0.01 if kind == "fp32" else 0.05) * spread, (error, spread)


@pytest.mark.parametrize("family", ["mpt", "gptj"])
def test_generate_takes_a_bfloat16_cache_through_the_compiled_step(family, monkeypatch):
    model = _model("int8", seed=6, family=family)
    prompt = torch.randint(0, 120, (2, 5))
    mask = torch.ones_like(prompt)
    mask[1, :2] = 0
    counter = _Counter(monkeypatch)
    settings = dict(attention_mask=mask, max_new_tokens=9, min_new_tokens=9, do_sample=False)
    with torch.inference_mode():
        cache = StaticCache(model.config, max_batch_size=2, max_cache_len=14, dtype=torch.bfloat16)
        got = model.generate(prompt, past_key_values=cache, **settings)
        assert counter.taken == 8
        fused.ENABLED = False
        try:
            want = model.generate(prompt, past_key_values=_Rounding(model.config, 2, 14, dtype=torch.float32),
                                  **settings)
        finally:
            fused.ENABLED = True
    assert got.shape == (2, 14) and torch.equal(got, want)
    assert cache.get_seq_length() == 13  # the last token is returned, not fed back


def test_a_bfloat16_cache_takes_float32_states_and_refuses_half_ones():
    from .test_cache import _config, _kv

    cache = StaticCache(_config(), max_batch_size=2, max_cache_len=6, dtype=torch.bfloat16)
    k, v = _kv(length=2)
    got_k, got_v = cache.update(k, v, 0)
    assert got_k.dtype == torch.bfloat16 and torch.equal(_bits(got_k[:, :, :2]), _bits(k.bfloat16()))
    assert torch.equal(_bits(got_v[:, :, :2]), _bits(v.bfloat16()))
    with pytest.raises(ValueError, match=r"holds torch.bfloat16 states but the model produced torch.float16"):
        cache.update(k.half(), v.half(), 1)
