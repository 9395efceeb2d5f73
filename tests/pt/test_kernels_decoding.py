"""polyformers' kernels for a decoding step's small operations (``kernels/attention.cpp``,
``kernels/pointwise.cpp``): one query's attention over a cache and GELU, each against torch's function in
float64, the layers' choice between them and torch's, whole decoders' tokens and logits with and without
them, and the operators' errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from polyformers.pt import kernels
from polyformers.pt import layers as L


@pytest.fixture(autouse=True)
def _built():
    assert kernels.available(), kernels.why_not()


def _exact_attention(q, k, v, bias, scale):
    scores = q.double() @ k.double().transpose(-1, -2) * scale
    if bias is not None:
        scores = scores + bias.double()
    return torch.softmax(scores, dim=-1) @ v.double()


@pytest.mark.parametrize("keys", [1, 5, 16, 17, 40, 300])
@pytest.mark.parametrize("dim", [64, 24, 256, 32, 128])  # 24: a vector of 16 and a masked tail; 32-128 in registers
def test_one_query_attention_over_a_cache_slice(keys, dim):
    torch.manual_seed(keys * dim)
    batch, heads = 3, 4
    # As a decoding step has them: the query permuted out of a fused projection, keys and values a slice of
    # a preallocated cache, an ALiBi-like bias per head broadcast over the batch.
    fused = torch.randn(batch, 1, 3 * heads * dim)
    query = fused.view(batch, 1, 3, heads, dim).permute(2, 0, 3, 1, 4)[0]
    cache = torch.randn(2, batch, heads, keys + 7, dim)
    key, value = cache[0, :, :, :keys], cache[1, :, :, :keys]
    scale = 1 / math.sqrt(dim)
    for bias in (None, torch.randn(1, heads, 1, keys), torch.randn(batch, 1, 1, keys), torch.randn(keys)):
        got = kernels.ops().attend_one(query, key, value, bias, scale)
        want = _exact_attention(query, key, value, bias, scale)
        assert got.shape == (batch, heads, 1, dim) and got.is_contiguous()
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
        if bias is None or bias.dim() == 4:  # torch's kernel takes no 1-D bias
            torch.testing.assert_close(got, F.scaled_dot_product_attention(query, key, value, bias, scale=scale),
                                       rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dim", [64, 24])
def test_storing_the_new_key_and_value_while_attending_is_storing_then_attending(dim):
    """``attend_one_storing`` writes a step's key and value into the cache at its slot (each head by the thread
    that reads it) and attends: the same buffers and the same bits as a copy and ``attend_one``."""
    torch.manual_seed(dim)
    batch, heads, length = 3, 4, 11
    fused = torch.randn(batch, 1, 3 * heads * dim)
    query, new_key, new_value = fused.view(batch, 1, 3, heads, dim).permute(2, 0, 3, 1, 4)
    bias = torch.randn(1, heads, 1, 9)
    for slot in (8, 3):  # the last attended slot, as in decoding, and one inside
        keys, values = torch.randn(2, batch, heads, length, dim)
        keys_then, values_then = keys.clone(), values.clone()
        got = kernels.ops().attend_one_storing(query, keys[:, :, :9], values[:, :, :9], new_key, new_value, slot,
                                               bias, 0.3)
        keys_then[:, :, slot:slot + 1] = new_key
        values_then[:, :, slot:slot + 1] = new_value
        assert torch.equal(keys, keys_then) and torch.equal(values, values_then)
        want = kernels.ops().attend_one(query, keys_then[:, :, :9], values_then[:, :, :9], bias, 0.3)
        assert torch.equal(got, want)
    for call, message in [
        (lambda: kernels.ops().attend_one_storing(query, keys[:, :, :9], values[:, :, :9], new_key, new_value, 9,
                                                  None, 0.3), "slot: expected 0 <= slot < 9, given 9"),
        (lambda: kernels.ops().attend_one_storing(query, torch.randn(batch, heads, dim, 9).transpose(2, 3),
                                                  values[:, :, :9], new_key, new_value, 2, None, 0.3),
         "key and value: expected the cache's buffers"),
        (lambda: kernels.ops().attend_one_storing(query, keys[:, :, :9], values[:, :, :9], new_key[:, :2],
                                                  new_value, 2, None, 0.3),
         "attend_one_storing: new_key: expected shape (3, 4, 1,"),
    ]:
        with pytest.raises(RuntimeError) as caught:
            call()
        assert message in str(caught.value), (message, str(caught.value)[:300])


def test_masked_keys_weigh_nothing_and_a_fully_masked_query_matches_torch():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, 1, 32), torch.randn(2, 3, 9, 32), torch.randn(2, 3, 9, 32)
    low = torch.finfo(torch.float32).min
    for fill in (low, float("-inf")):
        bias = torch.zeros(2, 3, 1, 9)
        bias[..., 4:] = fill  # keys 4.. masked
        bias[1, 2] = fill  # one query sees no key
        got = kernels.ops().attend_one(q, k, v, bias, 0.2)
        want = F.scaled_dot_product_attention(q, k, v, bias, scale=0.2)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got[0], _exact_attention(q[0], k[0, :, :4], v[0, :, :4], None, 0.2).float(),
                                   rtol=1e-5, atol=1e-5)
    # The dtype's minimum everywhere: every key weighs the same (torch's kernel and the reference agree).
    uniform = kernels.ops().attend_one(q, k, v, torch.full((1, 1, 1, 9), low), 0.2)
    torch.testing.assert_close(uniform, v.mean(dim=2, keepdim=True), rtol=1e-5, atol=1e-5)


def test_attend_takes_the_kernel_only_for_one_query_without_gradients():
    q, k, v = torch.randn(1, 2, 1, 8), torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8)
    assert L._one_query(q, k, v, None, 0.0, False)
    assert not L._one_query(torch.randn(1, 2, 3, 8), k, v, None, 0.0, False)  # a prompt: torch's kernel
    assert not L._one_query(q, k, v, None, 0.1, False)  # dropout
    assert not L._one_query(q, k, v, None, 0.0, True)  # causal, one query: torch's top-left alignment
    assert not L._one_query(q.double(), k.double(), v.double(), None, 0.0, False)
    assert not L._one_query(q, k, torch.randn(1, 2, 6, 4), None, 0.0, False)  # values of another width
    assert not L._one_query(q.requires_grad_(), k, v, None, 0.0, False)
    with torch.no_grad():
        assert L._one_query(q, k, v, None, 0.0, False)
    with kernels.switched_off():
        assert not L._one_query(q.detach(), k, v, None, 0.0, False)
    # Both paths of attend give the same context.
    bias = torch.randn(1, 2, 1, 6)
    with torch.no_grad():
        ours, _ = L.attend(q, k, v, bias, scale=0.3)
        with kernels.switched_off():
            torchs, _ = L.attend(q, k, v, bias, scale=0.3)
    torch.testing.assert_close(ours, torchs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_against_the_exact_function(approximate):
    x = torch.cat([torch.linspace(-30, 30, 200_001), torch.randn(100_003) * 4,
                   torch.tensor([0.0, -0.0, 1e-30, -1e-30])])
    got = kernels.ops().gelu(x, approximate)
    exact = F.gelu(x.double(), approximate=approximate)
    assert got.shape == x.shape and got.dtype == torch.float32
    # torch's own float32 GELU is within about 1e-6 (and, like this one, of no better relative precision where
    # the function nears zero: float32's 1 + erf(z) for z << 0 keeps an absolute error of ~1e-7)
    assert (got.double() - exact).abs().max() < 1e-6
    assert (got.double() - exact).abs().max() <= 2 * (F.gelu(x, approximate=approximate).double() - exact).abs().max()
    special = kernels.ops().gelu(torch.tensor([float("inf"), float("-inf"), float("nan")]), approximate)
    torch.testing.assert_close(special, F.gelu(torch.tensor([float("inf"), float("-inf"), float("nan")]),
                                               approximate=approximate), equal_nan=True)
    # a strided view, an empty tensor, a 3-D decoding-step tensor
    wide = torch.randn(5, 40)
    torch.testing.assert_close(kernels.ops().gelu(wide.t(), approximate), F.gelu(wide.t(), approximate=approximate),
                               rtol=1e-5, atol=1e-6)
    assert kernels.ops().gelu(torch.empty(0, 3), approximate).shape == (0, 3)
    step = torch.randn(1, 1, 4096)
    torch.testing.assert_close(L.gelu(step, approximate), F.gelu(step, approximate=approximate), rtol=1e-5, atol=1e-6)


def test_gelu_with_gradients_stays_on_torchs_function():
    x = torch.randn(10, requires_grad=True)
    L.gelu(x).sum().backward()
    reference = x.detach().clone().requires_grad_()
    F.gelu(reference).sum().backward()
    assert torch.equal(x.grad, reference.grad)
    for name in ("gelu", "gelu_new", "gelu_pytorch_tanh"):
        assert L.get_activation(name)(x).grad_fn is not None


def test_greedy_choice_is_torchs_argmax():
    from polyformers.pt.generation.greedy import greedy_choice

    torch.manual_seed(0)
    for shape in [(1, 50368), (8, 50368), (3, 17), (2, 1), (5, 33)]:
        scores = torch.randn(shape)
        assert torch.equal(kernels.ops().argmax_rows(scores), scores.argmax(-1)), shape
        assert torch.equal(greedy_choice(scores), scores.argmax(-1))
    # ties (the first wins), NaN (counts as the maximum, the first one), a row of -inf, a strided view
    scores = torch.randn(6, 100)
    scores[0, [3, 60, 99]] = 1e9
    scores[1, [7, 50]] = float("nan")
    scores[2] = float("-inf")
    scores[3] = 5.0
    scores[4, 99] = float("inf")
    scores[5, 0] = float("nan")
    assert torch.equal(kernels.ops().argmax_rows(scores), scores.argmax(-1))
    assert torch.equal(kernels.ops().argmax_rows(scores.t().contiguous().t()), scores.argmax(-1))
    assert torch.equal(greedy_choice(scores.double()), scores.double().argmax(-1))  # torch's path
    with pytest.raises(RuntimeError, match=r"argmax_rows: x: expected a 2-D float32 CPU tensor with at least one"):
        kernels.ops().argmax_rows(torch.randn(2, 0))


def _tiny(family):
    from polyformers import (GPTJConfig, GPTJForCausalLM, MptConfig, MptForCausalLM, PegasusConfig,
                             PegasusForConditionalGeneration)

    torch.manual_seed(0)
    if family == "gptj":
        model = GPTJForCausalLM(GPTJConfig(vocab_size=97, n_positions=64, n_embd=64, n_layer=2, n_head=4, rotary_dim=8,
                                                    bos_token_id=1, eos_token_id=2, pad_token_id=0))
    elif family == "mpt":
        model = MptForCausalLM(MptConfig(vocab_size=97, d_model=64, n_heads=4, n_layers=2, max_seq_len=64,
                                         use_cache=True, bos_token_id=1, eos_token_id=2, pad_token_id=0))
    else:
        model = PegasusForConditionalGeneration(PegasusConfig(
            vocab_size=97, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=96, decoder_ffn_dim=96, max_position_embeddings=64,
            decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


@pytest.mark.parametrize("family", ["gptj", "mpt", "pegasus"])
def test_decoders_give_the_same_tokens_and_scores_with_and_without_the_kernels(family):
    model = _tiny(family)
    ids = torch.tensor([[5, 9, 14, 3, 22, 8], [7, 7, 31, 40, 2, 11]])
    settings = dict(max_new_tokens=12, min_new_tokens=12, do_sample=False, output_scores=True,
                    return_dict_in_generate=True)
    settings["attention_mask"] = torch.ones_like(ids)
    with torch.profiler.profile() as profile:
        ours = model.generate(ids, **settings)
    called = {event.name for event in profile.events()}
    expected = {"polyformers::attend_one", "polyformers::gelu", "polyformers::argmax_rows"}
    assert expected <= called, sorted(name for name in called if "polyformers" in name)
    with kernels.switched_off():
        torchs = model.generate(ids, **settings)
    assert torch.equal(ours.sequences, torchs.sequences)
    for a, b in zip(ours.scores, torchs.scores):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_the_operators_name_the_argument_the_expected_and_the_given():
    ops = kernels.ops()
    q, k = torch.randn(1, 2, 1, 8), torch.randn(1, 2, 5, 8)
    cases = [
        (lambda: ops.attend_one(torch.randn(2, 1, 8), k, k, None, 1.0), "query: expected (batch, heads, 1, dim)"),
        (lambda: ops.attend_one(q.double(), k, k, None, 1.0), "query: expected a 4-D float32 CPU tensor"),
        (lambda: ops.attend_one(q, torch.randn(1, 3, 5, 8), k, None, 1.0), "key: expected shape (1, 2, 5, 8)"),
        (lambda: ops.attend_one(q, k, torch.randn(1, 2, 4, 8), None, 1.0), "value: expected shape (1, 2, 5, 8)"),
        (lambda: ops.attend_one(q, k, k, torch.zeros(1, 2, 1, 5, dtype=torch.bool), 1.0),
         "bias: expected a float32 tensor"),
        (lambda: ops.attend_one(q, k, k, torch.zeros(1, 2, 1, 4), 1.0), "expand"),
        (lambda: ops.gelu(torch.randn(3).double(), "none"), "gelu: x: expected a float32 CPU tensor"),
        (lambda: ops.gelu(torch.randn(3), "sigmoid"), "approximate: expected 'none' or 'tanh', given 'sigmoid'"),
    ]
    for call, message in cases:
        with pytest.raises(RuntimeError) as caught:
            call()
        assert message in str(caught.value), (message, str(caught.value)[:300])


def test_the_operators_trace_for_torch_compile():
    """Each operator has a fake (shape-only) implementation that agrees with it (``torch.library.opcheck``),
    so a ``fullgraph`` compile of code calling the kernels traces instead of failing."""
    from polyformers.pt.generation.greedy import greedy_choice
    from polyformers.pt.quantize import Int4Linear

    ops = kernels.ops()
    layer = Int4Linear.from_linear(torch.nn.Linear(64, 32), 32)
    _, packed, pairs = layer._kernel
    for op, args in [
        (ops.linear_i4.default, (torch.randn(3, 64), packed, pairs, None, 64, 32)),
        (ops.linear_bf16.default, (torch.randn(3, 64), torch.randn(32, 64).bfloat16(), torch.randn(32))),
        (ops.linear_f32.default, (torch.randn(3, 64), torch.randn(32, 64), torch.randn(32))),
        (ops.linear_i8.default, (torch.randn(3, 64), kernels.pack_i8(torch.ones(32, 64, dtype=torch.int8))[0],
                                 torch.ones(32), torch.full((32,), 64.0), None, 64, 32)),
        (ops.attend_one.default, (torch.randn(2, 3, 1, 16), torch.randn(2, 3, 5, 16), torch.randn(2, 3, 5, 16),
                                  torch.randn(1, 3, 1, 5), 0.25)),
        (ops.attend_one_storing.default, (torch.randn(2, 3, 1, 16), torch.randn(2, 3, 5, 16),
                                          torch.randn(2, 3, 5, 16), torch.randn(2, 3, 1, 16),
                                          torch.randn(2, 3, 1, 16), 4, torch.randn(1, 3, 1, 5), 0.25)),
        (ops.gelu.default, (torch.randn(4, 5), "tanh")),
        (ops.argmax_rows.default, (torch.randn(4, 50),)),
    ]:
        torch.library.opcheck(op, args)

    def step(query, key, value, bias, x):
        context, _ = L.attend(query, key, value, bias)
        return context, L.gelu(x), greedy_choice(x), layer(x)

    args = (torch.randn(1, 2, 1, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 1, 5),
            torch.randn(3, 64))
    compiled = torch.compile(step, fullgraph=True, backend="eager")
    with torch.no_grad():
        for got, want in zip(compiled(*args), step(*args)):
            assert torch.equal(got, want)
