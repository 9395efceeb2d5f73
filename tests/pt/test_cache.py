"""Key/value caches: the DynamicCache/StaticCache API, and decoding through them.

Decoding checks run on GPT-J and MPT alike: a prompt fed whole, token by token through a DynamicCache,
through a StaticCache, or through the older tuple format gives the same logits; a left-padded batch
with positions derived from its attention mask gives each prompt's logits alone.
"""

import re

import pytest
import torch

import polyformers
from polyformers.pt.cache import Cache, DynamicCache, StaticCache, as_cache

ATOL = 1e-5
FAMILIES = {
    "gptj": (polyformers.GPTJConfig, polyformers.GPTJForCausalLM,
             dict(vocab_size=61, n_positions=48, n_embd=32, n_layer=2, n_head=4, rotary_dim=4, pad_token_id=0,
                  bos_token_id=1, eos_token_id=2)),
    "mpt": (polyformers.MptConfig, polyformers.MptForCausalLM,
            dict(vocab_size=61, max_seq_len=48, d_model=24, n_layers=2, n_heads=3, pad_token_id=0)),
}


def _kv(batch=2, heads=3, length=4, dim=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, heads, length, dim, generator=g), torch.randn(batch, heads, length, dim, generator=g)


# ---------------------------------------------------------------------------------------------------
# DynamicCache


def test_dynamic_cache_grows_per_layer_and_reads_like_the_tuple_format():
    cache = DynamicCache()
    assert isinstance(cache, Cache) and len(cache) == 0 and cache.get_seq_length() == 0
    k0, v0 = _kv(length=3)
    keys, values = cache.update(k0, v0, 0)
    assert keys is k0 and values is v0
    k1, v1 = _kv(length=2, seed=1)
    keys, values = cache.update(k1, v1, 0)
    assert torch.equal(keys, torch.cat([k0, k1], dim=2)) and torch.equal(values, torch.cat([v0, v1], dim=2))
    cache.update(*_kv(length=5, seed=2), 1)
    assert len(cache) == 2 and cache.get_seq_length() == 5 and cache.get_seq_length(1) == 5
    assert cache.get_seq_length(7) == 0
    assert cache.get_max_length() is None and cache.get_max_cache_shape() is None
    legacy = cache.to_legacy_cache()
    assert isinstance(legacy, tuple) and len(legacy) == 2 and torch.equal(legacy[0][0], keys)
    assert torch.equal(cache[1][0], legacy[1][0]) and [len(pair) for pair in cache] == [2, 2]
    again = DynamicCache.from_legacy_cache(legacy)
    assert all(torch.equal(a, b) for pa, pb in zip(again, legacy) for a, b in zip(pa, pb))
    with pytest.raises(IndexError, match="layer_idx 2"):
        cache[2]


def test_dynamic_cache_fills_skipped_layers_with_empty_states():
    cache = DynamicCache()
    k, v = _kv(length=3)
    cache.update(k, v, 2)
    assert len(cache) == 3 and cache.get_seq_length(0) == 0 and cache.get_seq_length(2) == 3
    assert cache[0][0].shape == (2, 3, 0, 5)


def test_dynamic_cache_beam_operations():
    k, v = _kv(batch=3, length=4)
    cache = DynamicCache.from_legacy_cache(((k, v), (k + 1, v + 1)))
    cache.reorder_cache(torch.tensor([2, 2, 0]))
    assert torch.equal(cache[0][0], k[[2, 2, 0]]) and torch.equal(cache[1][1], (v + 1)[[2, 2, 0]])
    cache.batch_repeat_interleave(2)
    assert torch.equal(cache[0][0], k[[2, 2, 2, 2, 0, 0]])
    cache.batch_select_indices(torch.tensor([0, 5]))
    assert torch.equal(cache[0][1], v[[2, 0]])
    cache.crop(3)
    assert cache.get_seq_length() == 3 and torch.equal(cache[1][0], (k + 1)[[2, 0]][:, :, :3])
    cache.crop(-1)
    assert cache.get_seq_length() == 2
    cache.crop(10)
    assert cache.get_seq_length() == 2


# ---------------------------------------------------------------------------------------------------
# StaticCache


def _config(**kwargs):
    return polyformers.GPTJConfig(**dict(FAMILIES["gptj"][2], n_embd=15, n_head=3, rotary_dim=2, **kwargs))


def test_static_cache_writes_in_place_at_cache_position():
    cache = StaticCache(_config(), max_batch_size=2, max_cache_len=8, dtype=torch.float32)
    assert len(cache) == 2 and cache.get_max_length() == 8 and cache.get_max_cache_shape() == 8
    buffer = cache[0][0]
    assert buffer.shape == (2, 3, 8, 5) and cache.get_seq_length() == 0
    k, v = _kv(length=3)
    keys, values = cache.update(k, v, 0, {"cache_position": torch.arange(3)})
    assert keys is buffer and torch.equal(keys[:, :, :3], k) and not keys[:, :, 3:].any()
    k2, v2 = _kv(length=1, seed=1)
    keys, values = cache.update(k2, v2, 0, {"cache_position": torch.tensor([3])})
    assert torch.equal(values[:, :, 3:4], v2) and cache.get_seq_length() == 4 and cache.get_seq_length(1) == 0
    # Without a cache position, states go right after those written so far.
    cache.update(k2 + 1, v2 + 1, 0)
    assert torch.equal(cache[0][0][:, :, 4:5], k2 + 1) and cache.get_seq_length() == 5
    assert cache.get_mask_sizes(1) == (8, 0)
    cache.reorder_cache(torch.tensor([1, 1]))
    assert torch.equal(cache[0][0][0], cache[0][0][1]) and cache[0][0] is buffer
    cache.crop(2)
    assert cache.get_seq_length() == 2 and not cache[0][0][:, :, 2:].any()
    cache.reset()
    assert cache.get_seq_length() == 0 and not cache[0][0].any()


def test_static_cache_allocates_lazily_in_the_models_dtype():
    cache = StaticCache(_config(), max_batch_size=2, max_cache_len=6)
    assert cache.get_seq_length() == 0
    k, v = _kv(length=2)
    cache.update(k.half(), v.half(), 1)
    assert cache.dtype == torch.float16 and cache[0][0].dtype == torch.float16 and cache.get_seq_length(1) == 2


def test_static_cache_refuses_mismatched_states_and_arguments():
    cache = StaticCache(_config(), max_batch_size=2, max_cache_len=6, dtype=torch.float32)
    k, v = _kv(batch=3, length=2)
    with pytest.raises(ValueError, match="max_batch_size"):
        cache.update(k, v, 0)
    k, v = _kv(length=2)
    with pytest.raises(ValueError, match="dtype=torch.float16"):
        cache.update(k.half(), v.half(), 0)
    with pytest.raises(ValueError, match="max_cache_len=6"):
        cache.update(*_kv(length=7), 0)
    with pytest.raises(ValueError, match="'max_cache_len'.*positive int.*0"):
        StaticCache(_config(), max_batch_size=1, max_cache_len=0)
    with pytest.raises(ValueError, match="'max_batch_size'.*-1"):
        StaticCache(_config(), max_batch_size=-1, max_cache_len=4)


def test_as_cache_accepts_every_format_and_names_bad_ones():
    assert as_cache(None, use_cache=False) == (None, False)
    cache, legacy = as_cache(None, use_cache=True)
    assert isinstance(cache, DynamicCache) and not legacy
    given = DynamicCache()
    assert as_cache(given, use_cache=False) == (given, False)
    cache, legacy = as_cache((_kv(),), use_cache=True)
    assert legacy and cache.get_seq_length() == 4
    with pytest.raises(TypeError, match="past_key_values must be a Cache.*given str"):
        as_cache("cache", use_cache=True)
    with pytest.raises(TypeError, match=r"past_key_values\[0\]"):
        as_cache((torch.zeros(2),), use_cache=True)


# ---------------------------------------------------------------------------------------------------
# Decoding through the caches


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    config_cls, model_cls, kwargs = FAMILIES[request.param]
    torch.manual_seed(0)
    model = model_cls(config_cls(**kwargs)).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.2)
    return request.param, model


def _left_padded(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 61, (3, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    mask[2, :5] = 0
    return ids.masked_fill(mask == 0, 0), mask


def _decode(model, ids, mask, cache, prefill: int):
    """Logits of every position of ``ids``: ``prefill`` tokens at once, then one token per call, the way
    a generation loop drives the model (through prepare_inputs_for_generation)."""
    logits = []
    cache_position = None
    for end in range(prefill, ids.shape[1] + 1):
        inputs = model.prepare_inputs_for_generation(
            ids[:, :end], past_key_values=cache, attention_mask=mask[:, :end], cache_position=cache_position,
            use_cache=True,
        )
        with torch.no_grad():
            out = model(**inputs)
        logits.append(out.logits)
        cache = out.past_key_values
        cache_position = torch.tensor([end])
    return torch.cat(logits, dim=1), cache


def _full(model, ids, mask):
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, position_ids=positions).logits


def test_step_by_step_decoding_matches_a_full_forward(family):
    _, model = family
    ids, mask = _left_padded()
    full = _full(model, ids, mask)
    real = mask.bool()
    dynamic, cache = _decode(model, ids, mask, DynamicCache(), prefill=3)
    assert isinstance(cache, DynamicCache) and cache.get_seq_length() == ids.shape[1]
    assert torch.allclose(dynamic[real], full[real], atol=ATOL)
    static_cache = StaticCache(model.config, max_batch_size=3, max_cache_len=12)
    static, cache = _decode(model, ids, mask, static_cache, prefill=3)
    assert cache is static_cache and cache.get_seq_length() == ids.shape[1]
    assert torch.allclose(static[real], full[real], atol=ATOL)


def test_static_cache_tail_never_leaks_into_attention(family):
    _, model = family
    ids, mask = _left_padded(1)
    cache = StaticCache(model.config, max_batch_size=3, max_cache_len=16, dtype=torch.float32)
    for keys, values in cache:
        keys.fill_(1e4)
        values.fill_(-1e4)
    logits, _ = _decode(model, ids, mask, cache, prefill=4)
    real = mask.bool()
    assert torch.allclose(logits[real], _full(model, ids, mask)[real], atol=ATOL)


def test_left_padded_batch_equals_each_prompt_alone(family):
    _, model = family
    ids, mask = _left_padded(2)
    batch = _full(model, ids, mask)
    for row in range(ids.shape[0]):
        alone = ids[row:row + 1, mask[row].bool()]
        with torch.no_grad():
            expected = model(input_ids=alone).logits[0]
        assert torch.allclose(batch[row, mask[row].bool()], expected, atol=ATOL)


def test_tuple_cache_in_gives_tuple_cache_out(family):
    _, model = family
    ids, _ = _left_padded(3)
    with torch.no_grad():
        first = model(input_ids=ids[:, :4], use_cache=True)
        legacy = first.past_key_values.to_legacy_cache()
        step = model(input_ids=ids[:, 4:5], past_key_values=legacy)
        again = model(input_ids=ids[:, 4:5], past_key_values=DynamicCache.from_legacy_cache(legacy))
    assert isinstance(step.past_key_values, tuple) and len(step.past_key_values) == 2
    assert step.past_key_values[0][0].shape[2] == 5
    assert torch.equal(step.logits, again.logits)
    assert torch.equal(step.past_key_values[1][1], again.past_key_values[1][1])


def test_prepare_inputs_for_generation_feeds_only_unseen_tokens(family):
    name, model = family
    ids, mask = _left_padded(4)
    assert model.can_generate() and model._supports_cache_class
    first = model.prepare_inputs_for_generation(ids, past_key_values=DynamicCache(), attention_mask=mask)
    assert torch.equal(first["input_ids"], ids) and torch.equal(first["cache_position"], torch.arange(7))
    reads_positions = name != "mpt"  # ALiBi's MPT derives none, as the reference's MPT does not
    if reads_positions:
        assert first["position_ids"][2].tolist() == [1, 1, 1, 1, 1, 0, 1]
    else:
        assert first["position_ids"] is None
    with torch.no_grad():
        cache = model(**first).past_key_values
    longer = torch.cat([ids, torch.full((3, 1), 5)], dim=1)
    longer_mask = torch.cat([mask, torch.ones(3, 1, dtype=mask.dtype)], dim=1)
    step = model.prepare_inputs_for_generation(longer, past_key_values=cache, attention_mask=longer_mask,
                                               use_cache=True, logits_to_keep=1)
    assert step["input_ids"].tolist() == [[5], [5], [5]]
    if reads_positions:
        assert step["position_ids"].tolist() == [[7], [5], [2]]
    else:
        assert step["position_ids"] is None
    assert step["cache_position"].tolist() == [7]
    assert step["logits_to_keep"] == 1 and step["use_cache"] is True
    embeds = torch.randn(3, 7, model.config.hidden_size)
    with_embeds = model.prepare_inputs_for_generation(ids, past_key_values=DynamicCache(), inputs_embeds=embeds)
    assert with_embeds["inputs_embeds"] is embeds and with_embeds["input_ids"] is None
    with torch.no_grad():
        out = model(**step)
    assert out.logits.shape == (3, 1, model.config.vocab_size)


def test_reorder_cache_for_beam_search(family):
    _, model = family
    ids, _ = _left_padded(5)
    with torch.no_grad():
        cache = model(input_ids=ids, use_cache=True).past_key_values
    legacy = cache.to_legacy_cache()
    beam = torch.tensor([2, 0, 0])
    reordered = type(model)._reorder_cache(legacy, beam)
    assert torch.equal(reordered[1][0], legacy[1][0][beam])
    assert type(model)._reorder_cache(cache, beam) is cache and torch.equal(cache[1][0], legacy[1][0][beam])


def test_bad_decoding_arguments_are_named(family):
    _, model = family
    ids, mask = _left_padded()
    with pytest.raises(TypeError, match="past_key_values must be a Cache"):
        model(input_ids=ids, past_key_values="cache")
    for bad in (torch.ones(3, 9), torch.ones(3, 6), torch.ones(2, 7), torch.ones(3, 1, 7, 7)):
        expected = r"attention_mask must have shape \(3, 7\).*got " + re.escape(str(tuple(bad.shape)))
        with pytest.raises(ValueError, match=expected):
            model(input_ids=ids, attention_mask=bad)
    with torch.no_grad():
        cache = model(input_ids=ids[:, :4], use_cache=True).past_key_values
    with pytest.raises(ValueError, match=r"\(3, 5\).*got \(3, 1\)"):  # the mask must cover cached positions too
        model(input_ids=ids[:, 4:5], past_key_values=cache, attention_mask=mask[:, 4:5])
    static = StaticCache(model.config, max_batch_size=3, max_cache_len=10)
    with pytest.raises(ValueError, match=r"\(batch, at most 10\).*got \(3, 11\)"):
        model(input_ids=ids, past_key_values=static, attention_mask=torch.ones(3, 11))
    with pytest.raises(ValueError, match="logits_to_keep"):
        model(input_ids=ids, logits_to_keep=-1)
    with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
        model(attention_mask=mask)


# ---------------------------------------------------------------------------------------------------
# Greedy decoding against the reference's own generate()


def _greedy(model, ids, mask, cache, new_tokens: int) -> torch.Tensor:
    """Greedy decoding driven only by the model's generation interface (prepare_inputs_for_generation,
    forward with a cache and logits_to_keep=1)."""
    cache_position = None
    for _ in range(new_tokens):
        inputs = model.prepare_inputs_for_generation(ids, past_key_values=cache, attention_mask=mask,
                                                     cache_position=cache_position, use_cache=True,
                                                     logits_to_keep=1)
        with torch.no_grad():
            out = model(**inputs)
        assert out.logits.shape[1] == 1
        ids = torch.cat([ids, out.logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        cache = out.past_key_values
        cache_position = inputs["cache_position"][-1:] + 1
    return ids


def test_greedy_tokens_match_the_reference_generate(family, tmp_path):
    import transformers

    name, _ = family
    config_cls, model_cls, kwargs = FAMILIES[name]
    reference_cls = getattr(transformers, model_cls.__name__)
    torch.manual_seed(1)
    reference = reference_cls(transformers.AutoConfig.for_model(name, **kwargs)).eval()
    with torch.no_grad():
        for param in reference.parameters():
            param.add_(torch.randn_like(param) * 0.3)
    reference.save_pretrained(tmp_path)
    ours = model_cls.from_pretrained(tmp_path)
    ids, mask = _left_padded(6)
    with torch.no_grad():
        expected = reference.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False,
                                      pad_token_id=0, eos_token_id=None)
    assert torch.equal(_greedy(ours, ids, mask, DynamicCache(), 6), expected)
    static = StaticCache(ours.config, max_batch_size=3, max_cache_len=ids.shape[1] + 6)
    assert torch.equal(_greedy(ours, ids, mask, static, 6), expected)


@pytest.mark.parametrize("bad, error, message", [
    (61, IndexError, r"input_ids holds id 61, outside \[0, 61\) \(the vocab_size=61\)"),
    (-2, IndexError, r"input_ids holds id -2, outside \[0, 61\)"),
    (2.0, TypeError, r"input_ids must hold integer ids, got dtype torch.float32"),
])
def test_bad_ids_in_a_prompt_or_a_decoding_step_name_the_argument(family, bad, error, message):
    # The embedding lookup checks the ids (no check of its own in the hot path); its errors become these.
    _, model = family
    assert model.config.vocab_size == 61
    ids, mask = _left_padded(5)
    with torch.no_grad():
        cache = model(input_ids=ids, attention_mask=mask, use_cache=True).past_key_values
        step_mask = torch.cat([mask, torch.ones(3, 1, dtype=mask.dtype)], dim=1)
        step = dict(input_ids=torch.tensor([[4], [bad], [5]]), past_key_values=cache, attention_mask=step_mask)
        for inputs in (dict(input_ids=torch.tensor([[4, bad, 5]])), step):
            with pytest.raises(error, match=message):
                model(**inputs)


def test_mpt_decoding_steps_take_alibi_from_a_table_with_the_same_values():
    from polyformers.pt import layers as L

    config_cls, model_cls, kwargs = FAMILIES["mpt"]
    body = model_cls(config_cls(**kwargs)).eval().transformer
    ids = torch.tensor([[5, 6]])
    with torch.no_grad():
        body(input_ids=ids, use_cache=True)  # the slopes
    for key_length in (1, 7, 256, 300, 700):  # the table grows past 256 slots, then doubles
        row = body._last_query_alibi(key_length)
        expected = L.alibi_bias(body._slopes, torch.tensor([key_length - 1]), key_length)
        assert row.shape == expected.shape == (1, kwargs["n_heads"], 1, key_length)
        assert torch.equal(row, expected)
    assert body._alibi_table.shape[-1] == 1024  # 256, then 512 for 300 slots, then 1024 for 700
