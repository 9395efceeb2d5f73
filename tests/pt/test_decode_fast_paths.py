"""The fast decoding paths of GPT-J and MPT compute what the plain paths compute.

Stacked query/key/value projections (parameters re-pointed into one buffer, names and values kept),
in-place rotary turns, masks skipped where none is needed, a preallocated cache chosen by ``generate``,
``logits_to_keep=1``, oneDNN's matmul for several rows, and ``quantize_int8``.
"""

import functools
import math

import pytest
import torch
import torch.nn.functional as F

import polyformers
from polyformers.pt import layers as L
from polyformers.pt.cache import DynamicCache, StaticCache
from polyformers.pt.quantize import Int8Linear, quantize_int8

GPTJ = dict(vocab_size=61, n_positions=64, n_embd=32, n_layer=2, n_head=4, rotary_dim=4, pad_token_id=0,
            bos_token_id=1, eos_token_id=None)
MPT = dict(vocab_size=61, max_seq_len=64, d_model=24, n_layers=2, n_heads=3, pad_token_id=0, eos_token_id=None,
           use_cache=True)


def _model(name: str, scale: float = 0.3, seed: int = 0):
    """A tiny model with weights far from their initialisation, so next-token choices are not near-ties."""
    torch.manual_seed(seed)
    if name == "gptj":
        model = polyformers.GPTJForCausalLM(polyformers.GPTJConfig(**GPTJ))
    else:
        model = polyformers.MptForCausalLM(polyformers.MptConfig(**MPT))
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * scale)
    return model.eval()


def _prompt(batch=2, length=6, seed=1):
    return torch.randint(3, 61, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(params=["gptj", "mpt"])
def name(request):
    return request.param


# ---------------------------------------------------------------------------------------------------
# Stacked projections


def test_stacking_keeps_parameters_names_and_values_and_costs_no_copy(tmp_path):
    model = _model("gptj")
    attn = model.transformer.h[0].attn
    params = [attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = _prompt()
    with torch.no_grad():
        logits = model(ids).logits
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)
    assert [attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight] == params  # the same Parameter objects
    row = params[0].shape[1] * params[0].element_size()
    base = params[0].data_ptr()
    assert [p.data_ptr() for p in params] == [base, base + 32 * row, base + 64 * row]
    assert params[0].untyped_storage().data_ptr() == params[2].untyped_storage().data_ptr()
    model.save_pretrained(tmp_path)
    again = polyformers.GPTJForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.allclose(again(ids).logits, logits, atol=1e-5)


def test_stacking_follows_replaced_parameters_and_gradients_reach_each_projection():
    model = _model("gptj")
    ids = _prompt()
    with torch.no_grad():
        model(ids)
        model.double()  # new storage for every parameter: the next call stacks again
        expected = model(ids).logits
    assert expected.dtype == torch.float64
    separate = torch.cat([F.linear(torch.ones(1, 32, dtype=torch.float64), p) for p in (
        model.transformer.h[1].attn.q_proj.weight, model.transformer.h[1].attn.k_proj.weight,
        model.transformer.h[1].attn.v_proj.weight)], dim=-1)
    with torch.no_grad():
        stacked = L.stacked_linear(torch.ones(1, 32, dtype=torch.float64), model.transformer.h[1].attn.q_proj,
                                   model.transformer.h[1].attn.k_proj, model.transformer.h[1].attn.v_proj)
    assert torch.allclose(stacked, separate)
    model.float().train()
    loss = model(ids, labels=ids).loss
    loss.backward()
    grads = [p.grad for p in (model.transformer.h[0].attn.q_proj.weight, model.transformer.h[0].attn.k_proj.weight)]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_gradients_through_the_in_place_rotation_match_the_reference(tmp_path):
    import transformers

    torch.manual_seed(0)
    reference = transformers.GPTJForCausalLM(transformers.GPTJConfig(**GPTJ))
    with torch.no_grad():
        for param in reference.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    reference.save_pretrained(tmp_path)
    ours = polyformers.GPTJForCausalLM.from_pretrained(tmp_path)
    ids = _prompt()
    reference(ids, labels=ids).loss.backward()
    ours(ids, labels=ids).loss.backward()
    theirs = dict(reference.named_parameters())
    for key, param in ours.named_parameters():
        assert torch.allclose(param.grad, theirs[key].grad, atol=1e-5), key


# ---------------------------------------------------------------------------------------------------
# Primitives


def test_rotate_pairs_matches_the_rotation_written_out():
    table = L.RotaryTable(8, length=4)
    positions = torch.tensor([[0, 3, 9]])  # 9 is past the table: it grows
    rotation = table(positions)
    assert table.table.shape[0] >= 10 and rotation.shape == (1, 3, 4)
    x = torch.randn(1, 3, 2, 8)
    angles = positions[..., None].float() / 10000 ** (torch.arange(0, 8, 2).float() / 8)
    cos, sin = angles.cos().repeat_interleave(2, -1)[:, :, None], angles.sin().repeat_interleave(2, -1)[:, :, None]
    for dtype, tolerance in ((torch.float32, 1e-6), (torch.bfloat16, 2e-2)):
        got = x.to(dtype, copy=True)
        given = got.float().clone()
        turned = torch.stack((-given[..., 1::2], given[..., ::2]), dim=-1).flatten(-2)
        L.rotate_pairs_(got, rotation[:, :, None])
        assert torch.allclose(got.float(), given * cos + turned * sin, atol=tolerance, rtol=tolerance), dtype


def test_masks_are_skipped_only_where_they_change_nothing():
    positions = torch.arange(5)
    mask = L.decoder_self_attention_mask(None, positions, 5, torch.float32)
    assert mask.bias is None and mask.is_causal and mask.key_length == 5
    step = L.decoder_self_attention_mask(torch.ones(2, 6), torch.tensor([5]), 6, torch.float32)
    assert step.bias is None and not step.is_causal
    padded = L.decoder_self_attention_mask(torch.tensor([[0, 1, 1, 1, 1, 1]] * 2), torch.tensor([5]), 6, torch.float32)
    assert padded.bias is not None and padded.bias.shape == (2, 1, 1, 6) and padded.bias[0, 0, 0, 0] < -1e30
    later = L.decoder_self_attention_mask(None, torch.arange(3, 5), 5, torch.float32)
    assert later.bias is not None and not later.is_causal
    q, k, v = torch.randn(3, 1, 2, 5, 4).unbind(0)
    explicit = L.cached_causal_mask(None, positions, 5, torch.float32)
    assert torch.allclose(L.attend(q, k, v, is_causal=True)[0], L.attend(q, k, v, explicit)[0], atol=1e-6)
    weights = L.attend(q, k, v, is_causal=True, need_weights=True)
    assert torch.allclose(weights[0], L.attend(q, k, v, explicit)[0], atol=1e-6) and weights[1][0, 0, 0, 1] == 0


def test_onednn_linear_equals_torch_linear_and_leaves_gradients_to_it():
    layer = L.Linear(16, 24)
    x = torch.randn(3, 5, 16)
    with torch.no_grad():
        assert torch.allclose(layer(x), F.linear(x, layer.weight, layer.bias), atol=1e-5)
        assert torch.allclose(layer(x[:1, :1]), F.linear(x[:1, :1], layer.weight, layer.bias), atol=1e-6)
    layer(x).sum().backward()
    assert torch.allclose(layer.weight.grad, x.reshape(-1, 16).sum(0).expand(24, 16), atol=1e-4)


# ---------------------------------------------------------------------------------------------------
# generate


def test_generate_decodes_through_a_static_cache_with_last_logits_only(name, monkeypatch):
    model = _model(name)
    ids = _prompt()
    with torch.no_grad():
        expected = model.generate(ids, max_new_tokens=8, do_sample=False, past_key_values=DynamicCache())
    seen = []
    forward = type(model).forward

    @functools.wraps(forward)
    def spy(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        seen.append((type(kwargs["past_key_values"]), kwargs.get("logits_to_keep"), out.logits.shape[1]))
        return out

    monkeypatch.setattr(type(model), "forward", spy)
    assert torch.equal(model.generate(ids, max_new_tokens=8, do_sample=False), expected)
    assert seen and all(step == (StaticCache, 1, 1) for step in seen)
    seen.clear()
    out = model.generate(ids, max_new_tokens=3, do_sample=False, return_dict_in_generate=True)
    assert isinstance(out.past_key_values, DynamicCache) and torch.equal(out.sequences, expected[:, :9])
    model.generate(ids, max_new_tokens=3, num_beams=2, do_sample=False)
    assert seen and all(cache is not StaticCache for cache, _, _ in seen)


def test_generate_matches_the_reference_with_a_left_padded_batch(name, tmp_path):
    import transformers

    ours = _model(name)
    ours.save_pretrained(tmp_path)
    reference = getattr(transformers, type(ours).__name__).from_pretrained(tmp_path).eval()
    ids = _prompt(batch=3, length=7)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    mask[2, :5] = 0
    ids = ids.masked_fill(mask == 0, 0)
    kwargs = dict(attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        assert torch.equal(ours.generate(ids, **kwargs), reference.generate(ids, **kwargs))


# 4.37 ignores resid_pdrop and emb_pdrop: attn_config.attn_pdrop drops the attention and both residuals.
@pytest.mark.parametrize("dropout", [dict(attn_config=dict(attn_pdrop=0.5))])
def test_mpt_dropouts_act_in_training_only(dropout):
    torch.manual_seed(0)
    model = polyformers.MptForCausalLM(polyformers.MptConfig(**MPT, **dropout)).eval()
    ids = _prompt()
    with torch.no_grad():
        plain = model(ids).logits
        assert torch.equal(model(ids).logits, plain)
        model.train()
        dropped = [model(ids).logits for _ in range(2)]
    assert not torch.allclose(dropped[0], plain) and not torch.allclose(dropped[0], dropped[1])


# ---------------------------------------------------------------------------------------------------
# int8


def _trained(name: str):
    """A tiny model trained until each token decides the next one, as a trained model's confident choices
    do (random weights make every choice a near-tie, which any rounding may flip)."""
    model = _model(name, scale=0.0).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(150):
        start = torch.randint(3, 61, (16, 1), generator=generator)
        sequences = (start + 7 * torch.arange(24)) % 58 + 3
        loss = model(sequences, labels=sequences).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def test_int8_greedy_tokens_match_float32_and_logits_stay_close(name):
    model = _trained(name)
    quantized = _model(name, scale=0.0)  # quantize after loading: the trained weights first
    quantized.load_state_dict(model.state_dict())
    quantize_int8(quantized)
    assert not any(isinstance(m, torch.nn.Linear) for m in quantized.modules())
    assert isinstance(quantized.lm_head, Int8Linear)
    ids = _prompt(batch=4, length=5, seed=2)
    with torch.no_grad():
        expected = model.generate(ids, max_new_tokens=16, do_sample=False)
        got = quantized.generate(ids, max_new_tokens=16, do_sample=False)
        reference_logits, logits = model(expected).logits, quantized(expected).logits
    assert torch.equal(got, expected)
    error = (logits - reference_logits).norm() / reference_logits.norm()
    assert error < 0.03, float(error)
    if name == "gptj":  # the three projections ran as one int8 matmul
        attn = quantized.transformer.h[0].attn
        stack = attn.q_proj._part[0]
        assert attn.k_proj._part == (stack, 32, 64) and stack.out_features == 96 and attn.q_proj._packed is None
        weight, scales, _ = attn.v_proj.unpack()
        assert weight.dtype == torch.int8 and weight.shape == (32, 32)
        original = model.transformer.h[0].attn.v_proj.weight
        assert torch.allclose(weight.float() * scales[:, None], original, atol=scales.max().item())


def test_int8_logits_stay_close_with_random_weights(name):
    model = _model(name)
    quantized = quantize_int8(_model(name))
    ids = _prompt(batch=3, length=12, seed=3)
    with torch.no_grad():
        expected, got = model(ids).logits, quantized(ids).logits
    assert (got - expected).norm() / expected.norm() < 0.05


def test_int8_quantization_refuses_what_it_cannot_do(tmp_path):
    quantized = quantize_int8(_model("mpt"))
    state = quantized.state_dict()  # what save_pretrained writes: int8 weights and their scales, no float copy
    assert state["lm_head.qweight"].dtype == torch.int8 and not any(k.endswith("lm_head.weight") for k in state)
    with pytest.raises(ValueError, match=r"float32 weights on the CPU, given torch.float16"):
        quantize_int8(_model("gptj").half())
    with pytest.raises(TypeError, match="expected a torch.nn.Module, given str"):
        quantize_int8("model")
    with pytest.raises(TypeError, match="float32 input, given torch.float64"):
        quantized.lm_head(torch.ones(1, 24, dtype=torch.float64))


def test_int8_layer_alone_and_stacked_agree():
    torch.manual_seed(0)
    linears = [torch.nn.Linear(16, n) for n in (8, 12)]
    layers = [Int8Linear.from_linear(lin) for lin in linears]
    x = torch.randn(4, 16)
    alone = torch.cat([layer(x) for layer in layers], dim=-1)
    stack = Int8Linear.stack(layers)
    assert Int8Linear.stack(layers) is stack
    assert torch.allclose(stack(x), alone, atol=1e-5) and torch.allclose(layers[1](x), alone[:, 8:], atol=1e-5)
    exact = torch.cat([lin(x) for lin in linears], dim=-1).detach()
    assert (alone - exact).norm() / exact.norm() < 0.03
    assert math.isclose(stack.in_features, 16) and "out_features=20" in repr(stack)


def test_the_loops_stopping_check_says_what_the_criteria_say():
    from polyformers.pt.generation.stopping import (EosTokenCriteria, MaxLengthCriteria, StoppingCriteria,
                                                    StoppingCriteriaList)

    asked = []

    class Counting(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            asked.append(input_ids.shape[-1])
            return torch.zeros(input_ids.shape[0], dtype=torch.bool)

    ids = torch.tensor([[5, 7, 2], [5, 7, 9]])
    for criteria, expected in [
        (StoppingCriteriaList([MaxLengthCriteria(4)]), None),  # nothing done: no tensor at all
        (StoppingCriteriaList([MaxLengthCriteria(3)]), [True, True]),
        (StoppingCriteriaList([MaxLengthCriteria(4), EosTokenCriteria(2)]), [True, False]),
        (StoppingCriteriaList([MaxLengthCriteria(3), EosTokenCriteria(2), Counting()]), [True, True]),
        (StoppingCriteriaList([Counting()]), [False, False]),
        (StoppingCriteriaList(), None),
    ]:
        done = criteria.rows_done(ids, None)
        assert (done is None) == (expected is None)
        if expected is not None:
            assert done.tolist() == expected
        assert criteria(ids, None).tolist() == (expected or [False, False])  # the call, as before
    assert asked == [3, 3, 3, 3]  # every criterion is asked, even where the length already says done
