"""16-bit weights (``quantize(model, bits=16)``, :class:`Bf16Linear`): the layer against its rounded weights,
in batches (oneDNN), one to eight rows (polyformers' kernel, against torch's path: for one row, torch's
matrix-vector kernel, oneDNN switched off around it),
stacked projections, greedy tokens of a small decoder trained to be confident, the real all-mpnet-base-v2's
embeddings, saving and loading, and errors."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

import polyformers
from polyformers.pt import kernels
from polyformers.pt.quantize import Bf16Linear, has_native_bf16, quantize

from .test_mpnet_real import SENTENCES
from .test_quantize_4bit import PROMPTS, _greedy, _mean_pooled, _tiny_gptj, _tiny_mpt, trained  # noqa: F401
from .test_quantize_4bit import assert_each_refused


@contextlib.contextmanager
def _onednn(enabled: bool):
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = enabled
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


@pytest.mark.parametrize("rows", [1, 5, 12])  # polyformers' kernel (1-8 rows), oneDNN (more)
def test_the_layer_multiplies_bfloat16_rounded_inputs_and_weights(rows):
    torch.manual_seed(0)
    linear = torch.nn.Linear(96, 40)
    x = torch.randn(rows, 96) * 3
    layer = Bf16Linear.from_linear(linear)
    assert layer.weight.dtype == torch.bfloat16 and layer.bias.dtype == torch.float32
    y = layer(x)
    assert y.dtype == torch.float32
    product = y - linear.bias.detach()
    # The product of the rounded inputs and weights (exact in float32 but for the order of the sums),
    # within one bfloat16 step (2**-8 relative) of the exact value.
    exact = x.bfloat16().double() @ linear.weight.detach().bfloat16().double().T
    assert ((product - exact).abs() <= 2 ** -8 * exact.abs() + 1e-6).all()
    unbiased = Bf16Linear(linear.weight)(x)
    if rows <= kernels.MAX_ROWS and kernels.available():
        # float32's sum, unrounded
        torch.testing.assert_close(unbiased.double(), exact, rtol=1e-5, atol=1e-5)
        assert not torch.equal(unbiased, unbiased.bfloat16().float())
    else:
        assert torch.equal(unbiased, unbiased.bfloat16().float())  # oneDNN rounds the sum once
    torch.testing.assert_close(y, unbiased + linear.bias.detach(), rtol=0, atol=1e-5)
    # ... and the rounding is real: float32's own product differs.
    assert (y - linear(x).detach()).abs().max() > 1e-4


def test_the_kernel_agrees_with_torchs_path_for_one_to_eight_rows():
    assert kernels.available(), kernels.why_not()
    torch.manual_seed(5)
    layer = Bf16Linear.from_linear(torch.nn.Linear(200, 70))
    for rows in range(1, kernels.MAX_ROWS + 1):
        x = torch.randn(rows, 200)
        y = layer(x)
        with kernels.switched_off():
            by_torch = layer(x)
        # torch's rounds its sum to bfloat16: within one step of it
        assert ((y - by_torch).abs() <= 2 ** -8 * (y - layer.bias).abs() + 1e-5).all(), rows
        # each row as it would be alone (the same kernel: the same sums, in the same order)
        alone = torch.cat([layer(x[i:i + 1]) for i in range(rows)])
        torch.testing.assert_close(y, alone, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape", [(96,), (1, 96), (1, 1, 96)])
@pytest.mark.parametrize("onednn", [True, False])
@pytest.mark.parametrize("ours", [True, False])
def test_one_row_takes_polyformers_kernel_or_torchs_matrix_vector_kernel_within_the_same_contract(shape, onednn,
                                                                                                  ours):
    assert kernels.available(), kernels.why_not()
    torch.manual_seed(3)
    linear = torch.nn.Linear(96, 300)
    layer = Bf16Linear.from_linear(linear)
    x = torch.randn(shape) * 3
    with _onednn(onednn), contextlib.nullcontext() if ours else kernels.switched_off():
        y = layer(x)
        # the switch around torch's kernel leaves oneDNN as it was
        assert torch.backends.mkldnn.enabled is onednn
    assert y.shape == (*shape[:-1], 300) and y.dtype == torch.float32
    if ours:
        kernel = kernels.ops().linear_bf16(x.reshape(1, 96).bfloat16().float(), layer.weight, layer.bias)
        assert torch.equal(y.reshape(1, 300), kernel)
    else:
        with _onednn(False):
            kernel = F.linear(x.bfloat16(), layer.weight)
        assert torch.equal(y, kernel.float() + linear.bias.detach())
    # the same contract as the batches': the rounded operands' product within one bfloat16 step
    product = y - linear.bias.detach()
    exact = x.bfloat16().float() @ linear.weight.detach().bfloat16().float().T
    assert ((product - exact).abs() <= 2 ** -8 * exact.abs() + 1e-6).all()
    # ... and within one step of the row's product in a batch (oneDNN where the CPU has bfloat16)
    batch = torch.cat([x.reshape(1, 96), torch.randn(11, 96)])
    in_batch = layer(batch)[0] - linear.bias.detach()
    assert ((product.reshape(300) - in_batch).abs() <= 2 ** -7 * exact.abs().reshape(300) + 1e-6).all()


def test_one_row_runs_outside_onednn_and_batches_in_it(capfd):
    layer = Bf16Linear.from_linear(torch.nn.Linear(96, 300))
    calls = {}
    for name, x in (("one row", torch.randn(1, 1, 96)), ("few rows", torch.randn(5, 96)),
                    ("batch", torch.randn(12, 96))):
        capfd.readouterr()
        with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):  # oneDNN prints each call
            layer(x)
        calls[name] = capfd.readouterr().out.count(",exec,cpu,matmul,")
    assert calls["one row"] == 0  # polyformers' kernel, or torch's matrix-vector kernel
    assert calls["few rows"] == (0 if kernels.available() else calls["batch"])  # polyformers' kernel
    assert calls["batch"] == (1 if has_native_bf16() else 0)


@pytest.mark.parametrize("family", [_tiny_gptj, _tiny_mpt])  # MPT ties its head to the embedding
def test_outputs_stay_close_and_stacked_projections_agree(family):
    torch.manual_seed(1)
    model = family().eval()
    ids = torch.randint(0, 40, (3, 12))
    with torch.no_grad():
        reference = model(ids).logits
        quantized = quantize(copy.deepcopy(model), bits=16)
        logits = quantized(ids).logits
    layers = [m for m in quantized.modules() if isinstance(m, Bf16Linear)]
    assert layers and not any(isinstance(m, torch.nn.Linear) for m in quantized.modules())
    assert isinstance(quantized.lm_head, Bf16Linear)
    embedding = quantized.get_input_embeddings().weight
    assert embedding.dtype == torch.float32  # a tied head got its own 16-bit copy
    assert (logits - reference).abs().max() < 0.02 * reference.abs().max()
    if family is _tiny_gptj:  # q, k and v run as one stacked 16-bit layer, equal to the three alone
        attn = quantized.transformer.h[0].attn
        assert "_stack" in attn.q_proj.__dict__
        x = torch.randn(2, 7, 64)
        stack = attn.q_proj.__dict__["_stack"][1]
        stacked = stack(x)
        # The layers' weights are views of the stack's rows: no second copy.
        assert attn.q_proj.weight.data_ptr() == stack.weight.data_ptr()
        assert attn.v_proj.weight.untyped_storage().data_ptr() == stack.weight.untyped_storage().data_ptr()
        torch.testing.assert_close(stacked, torch.cat([attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)], -1),
                                   rtol=1e-5, atol=1e-5)


def test_greedy_tokens_equal_float32s(trained):  # noqa: F811
    model, _ = trained
    quantized = quantize(copy.deepcopy(model), bits=16)
    assert isinstance(quantized.transformer.h[0].mlp.fc_in, Bf16Linear)
    assert torch.equal(_greedy(quantized, PROMPTS), _greedy(model, PROMPTS))  # 4 rows a step: oneDNN
    for prompt in PROMPTS:  # one row a step: torch's matrix-vector kernel
        assert torch.equal(_greedy(quantized, prompt[None]), _greedy(model, prompt[None]))


@pytest.mark.parametrize("family", [_tiny_gptj, _tiny_mpt])
def test_save_writes_bfloat16_weights_that_load_as_float32(tmp_path, family):
    torch.manual_seed(2)
    model = family().eval()
    quantized = quantize(copy.deepcopy(model), bits=16)
    quantized.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        dtypes = {key: f.get_tensor(key).dtype for key in f.keys()}
    assert dtypes[next(k for k in dtypes if k.endswith("fc_in.weight") or k.endswith("up_proj.weight"))] \
        == torch.bfloat16
    assert "quantization_config" not in quantized.config.to_dict() or \
        quantized.config.to_dict()["quantization_config"] is None
    loaded = type(model).from_pretrained(tmp_path).eval()
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    ids = torch.randint(0, 40, (2, 10))
    with torch.no_grad():
        expected = quantized(ids).logits
        logits = loaded(ids).logits
    # The reloaded float32 model multiplies the same (rounded) weights by unrounded inputs.
    assert (logits - expected).abs().max() < 0.02 * expected.abs().max()
    for name, module in quantized.named_modules():
        if isinstance(module, Bf16Linear) and name != "lm_head":
            assert torch.equal(loaded.get_submodule(name).weight, module.weight.float()), name


def test_errors_name_the_argument():
    model = _tiny_gptj()
    assert_each_refused(model, [
        (dict(bits=12), r"bits: expected 4, 8 or 16, given 12"),
        (dict(bits=16, group_size=32), r"group_size: expected None with bits=16, given 32"),
        (dict(bits=16, outlier_threshold=3), r"outlier_threshold: expected None with bits=16, given 3"),
    ])
    with pytest.raises(ValueError, match=r"expected float32 weights on the CPU, given torch.bfloat16"):
        quantize(_tiny_gptj().to(torch.bfloat16), bits=16)
    assert isinstance(model.lm_head, torch.nn.Linear)  # nothing was replaced by a refused call
    layer = Bf16Linear.from_linear(torch.nn.Linear(8, 4))
    with pytest.raises(TypeError, match=r"expected float32 inputs, given torch.float64"):
        layer(torch.randn(2, 8, dtype=torch.float64))
    # as many numbers as one row, in the wrong shape
    with pytest.raises(ValueError, match=r"expected an input of 8 features in its last dimension, given shape "
                                         r"\(2, 4\)"):
        layer(torch.randn(2, 4))
    assert torch.backends.mkldnn.enabled


def test_real_mpnet_bf16_embeddings_keep_float32s(assets):
    import transformers

    folder = assets / "mpnet"
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    batch = dict(tokenizer(SENTENCES, padding=True, return_tensors="pt"))
    model = polyformers.MPNetModel.from_pretrained(folder)
    expected = _mean_pooled(model, batch)
    cosine = F.cosine_similarity(_mean_pooled(quantize(model, bits=16), batch), expected, dim=-1)
    print(f"bf16 weights: cosine to float32 min {float(cosine.min()):.6f}")
    assert cosine.min() >= 0.9995
