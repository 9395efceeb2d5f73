"""polyformers' compiled kernels (``polyformers.pt.kernels``, ``rows.cpp``): built and loaded here, each
against torch's path for the same layer (the library fallback) and against the exact product, the build's
failure and switch falling back to torch's kernels, and the operators' errors."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from polyformers.pt import kernels
from polyformers.pt.quantize import Int4Linear, Int8Linear


def test_the_kernels_build_and_load_on_this_machine():
    # CI's machines have AVX-512 and a C++ compiler: there the kernels must be used, never skipped.
    flags = kernels._cpu_flags()
    if all(flag in flags for flag in kernels._REQUIRED_FLAGS):
        assert kernels.available(), kernels.why_not()
        path = kernels.build()
        assert path.exists() and kernels.build() == path  # cached: the second call builds nothing
        assert not [p for p in path.parent.iterdir() if p.name.startswith("tmp")]  # no partial builds left
    else:
        assert not kernels.available() and "lacks" in kernels.why_not()


@pytest.mark.parametrize("group_size", [32, 64, 128])
@pytest.mark.parametrize("out_features", [3, 8, 70])
@pytest.mark.parametrize("in_features", [256, 96])  # 96: a step of 64 half filled
def test_int4_kernel_gives_the_dequantized_weights_product(group_size, out_features, in_features):
    assert kernels.available(), kernels.why_not()
    if in_features % group_size:
        return
    torch.manual_seed(out_features)
    linear = torch.nn.Linear(in_features, out_features)
    with torch.no_grad():
        linear.weight.mul_(torch.rand(out_features, 1) * 3)  # rows of different scales
    layer = Int4Linear.from_linear(linear, group_size)
    with kernels.switched_off():
        fallback = Int4Linear.from_linear(linear, group_size)
    assert layer._kernel[0] == "rows" and fallback._kernel[0] == "torch"
    weight = layer.dequantized_weight()
    assert torch.equal(weight, fallback.dequantized_weight())
    for rows in (1, 2, 3, 5, 8, 9, 64, 65):
        x = torch.randn(rows, in_features)
        exact = F.linear(x.double(), weight.double(), linear.bias.detach().double())
        y = layer(x)
        if rows <= 64:
            # The inputs rounded to 8 bits per row: the product with the rounded inputs, so within half a
            # step times the row's absolute weights of the exact one.
            step = x.abs().amax(1, keepdim=True) / 127
            rounded = torch.round(x / step) * step
            torch.testing.assert_close(y, F.linear(rounded, weight, linear.bias.detach()), rtol=1e-4, atol=1e-4)
            bound = step.double() / 2 * weight.double().abs().sum(1) + 1e-4
            assert ((y.double() - exact).abs() <= bound).all(), rows
        else:  # the dequantized weight in float32
            torch.testing.assert_close(y.double(), exact, rtol=1e-5, atol=1e-5)
        by_torch = fallback(x)  # one row: torch's kernel, in bfloat16; more: the dequantized weight
        assert ((by_torch.double() - exact).abs() <= 0.01 * exact.abs().amax(1, keepdim=True) + 1e-3).all(), rows
    # three dimensions, as the models call it
    x = torch.randn(2, 3, in_features)
    torch.testing.assert_close(layer(x), layer(x.reshape(6, in_features)).reshape(2, 3, out_features))


@pytest.mark.parametrize("out_features,in_features", [(5, 16), (70, 100), (33, 1030)])
def test_float32_kernel_gives_the_product_and_layers_take_it_for_a_few_rows(out_features, in_features):
    from torch.profiler import ProfilerActivity, profile

    from polyformers.pt import layers as L

    assert kernels.available(), kernels.why_not()
    torch.manual_seed(in_features)
    weight, bias = torch.randn(out_features, in_features), torch.randn(out_features)
    for rows in (1, 2, 3, 7, 8, 9, 17):
        x = torch.randn(rows, in_features)
        for b in (bias, None):
            want = F.linear(x.double(), weight.double(), None if b is None else b.double())
            got = kernels.ops().linear_f32(x, weight, b)
            # float32 sums in another order than torch's: an error of the same size as torch's own
            torchs = float((F.linear(x, weight, b).double() - want).abs().max())
            assert float((got.double() - want).abs().max()) <= 4 * torchs + 1e-6, rows
    layer = L.Linear(in_features, out_features)
    for shape, taken in [((1, 1, in_features), True), ((2, 4, in_features), True), ((3, 3, in_features), False)]:
        x = torch.randn(*shape)
        with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
            got = layer(x)
        assert ("polyformers::linear_f32" in {e.key for e in prof.key_averages()}) == taken, shape
        torch.testing.assert_close(got, F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)
    x = torch.randn(1, in_features, requires_grad=True)  # gradients: torch's product
    layer(x).sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape


def _rounded_per_row(x: torch.Tensor) -> torch.Tensor:
    """float32 x as linear_i8 rounds it, in the same float32 steps: each row onto 256 levels between its
    minimum and its maximum; returned in float64."""
    low, high = x.amin(1, keepdim=True), x.amax(1, keepdim=True)
    size = torch.where(high > low, (high - low) / 255, torch.ones_like(low))
    low = torch.where((low < 0) & (high > 0), -torch.round(-low / size) * size, low)  # zero on a level
    u = torch.round((x - low) * (1 / size)).clamp(0, 255)
    return low.double() + u.double() * size.double()


@pytest.mark.parametrize("out_features", [5, 32, 70])  # panels of 32 rows: part of one, one, three
@pytest.mark.parametrize("in_features", [64, 100, 16])  # 100: a quad of four columns half filled
@pytest.mark.parametrize("bias", [True, False])
def test_int8_kernel_gives_the_product_of_the_rounded_inputs(out_features, in_features, bias):
    assert kernels.available(), kernels.why_not()
    torch.manual_seed(out_features + in_features)
    linear = torch.nn.Linear(in_features, out_features, bias=bias)
    with torch.no_grad():
        linear.weight.mul_(torch.rand(out_features, 1) * 3)  # rows of different scales
    layer = Int8Linear.from_linear(linear)
    with kernels.switched_off():
        fallback = Int8Linear.from_linear(linear)
    assert layer._rows is not None and fallback._rows is None
    weight, scales, b = layer.unpack()
    fb_weight, fb_scales, fb_bias = fallback.unpack()
    assert torch.equal(weight, fb_weight) and torch.equal(scales, fb_scales)
    assert (b is None and fb_bias is None) or torch.equal(b, fb_bias)
    dequantized = weight.double() * scales.double()[:, None]
    bias64 = None if b is None else b.double()
    for rows in (1, 2, 3, 4, 5, 8, 9, 17, 64):
        x = torch.randn(rows, in_features) * torch.rand(rows, 1) * 4 + torch.randn(rows, 1)
        y = layer(x)
        # the exact product with the inputs rounded as the kernel rounds them (integer sums are exact)
        want = F.linear(_rounded_per_row(x), dequantized, bias64)
        torch.testing.assert_close(y.double(), want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
        # and within half a rounding step per input of the exact product with the int8 weights
        exact = F.linear(x.double(), dequantized, bias64)
        size = (x.amax(1) - x.amin(1)).double()[:, None] / 255
        assert ((y.double() - exact).abs() <= size / 2 * dequantized.abs().sum(1) + 1e-4).all(), rows
        # fbgemm's path: one range for the whole call, so coarser for the narrow rows
        spread = float((x.amax() - x.amin()) / 255)
        assert ((fallback(x).double() - exact).abs() <= spread * dequantized.abs().sum(1) + 1e-3).all(), rows
        # each row as it would be alone
        assert torch.equal(torch.cat([layer(row[None]) for row in x]), y)
    assert layer(torch.randn(0, in_features)).shape == (0, out_features)
    x = torch.randn(2, 3, in_features)  # three dimensions, as the models call it
    assert torch.equal(layer(x), layer(x.reshape(6, in_features)).reshape(2, 3, out_features))
    constant = torch.full((1, in_features), -0.75)  # a constant row is held exactly by its low end
    torch.testing.assert_close(layer(constant).double(), F.linear(constant.double(), dequantized, bias64))


def test_int8_rows_through_the_tile_unit_are_the_vnni_kernels_bits():
    """Where the CPU has AMX (and Linux grants it), linear_i8 takes 2+ rows through the tile unit: the same
    integer sums, so the same bits as the VNNI kernel, over column counts with and without a last part of
    under 64 and more rows than one tile holds."""
    assert kernels.available(), kernels.why_not()
    has_amx = "amx_int8" in kernels._cpu_flags() and "amx_tile" in kernels._cpu_flags()
    assert kernels.int8_tiles() == has_amx  # on by default where the CPU has them
    ops = kernels.ops()
    torch.manual_seed(1)
    try:
        for in_features, out_features in [(64, 32), (100, 50), (16, 1), (1030, 70), (4096, 40)]:
            q = torch.randint(-127, 128, (out_features, in_features), dtype=torch.int8)
            packed, sums = kernels.pack_i8(q)
            scales, bias = torch.rand(out_features) + 0.1, torch.randn(out_features)
            for rows in (2, 3, 8, 16, 17, 40, 70):
                x = torch.randn(rows, in_features) * 3
                assert kernels.int8_tiles(True) == has_amx
                tiles = ops.linear_i8(x, packed, scales, sums, bias, in_features, out_features)
                assert kernels.int8_tiles(False) is False
                vnni = ops.linear_i8(x, packed, scales, sums, bias, in_features, out_features)
                assert torch.equal(tiles, vnni), (in_features, out_features, rows)
                want = F.linear(_rounded_per_row(x), q.double() * scales.double()[:, None], bias.double())
                torch.testing.assert_close(vnni.double(), want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
    finally:
        kernels.int8_tiles(True)


def test_int8_layers_wider_than_the_kernel_takes_use_fbgemm():
    linear = torch.nn.Linear(kernels.MAX_INT8_FEATURES + 1, 2)
    layer = Int8Linear.from_linear(linear)
    assert layer._rows is None and layer._packed is not None
    x = torch.randn(1, kernels.MAX_INT8_FEATURES + 1)
    with torch.no_grad():
        assert float((layer(x) - linear(x)).abs().max()) < 0.05 * float(linear(x).abs().max()) + 0.05
    narrow = Int8Linear.from_linear(torch.nn.Linear(kernels.MAX_INT8_FEATURES, 2))
    assert narrow._rows is not None


def test_int8_packing_round_trips_and_finds_outlier_columns():
    torch.manual_seed(0)
    q = torch.randint(-127, 128, (37, 70), dtype=torch.int8)
    packed, sums = kernels.pack_i8(q)
    assert packed.shape == (2, 20, 32, 4) and packed.dtype == torch.int8  # 70 columns padded to 80
    assert torch.equal(kernels.unpack_i8(packed, 37, 70), q)
    assert torch.equal(sums, q.sum(1).float())
    linear = torch.nn.Linear(70, 37)
    x = torch.randn(4, 70)
    x[:, [3, 41, 69]] *= 40
    with torch.no_grad():
        layer = Int8Linear.from_linear(linear, outlier_threshold=3.0)
        with kernels.switched_off():
            fallback = Int8Linear.from_linear(linear, outlier_threshold=3.0)
        want = linear(x)
        for got in (layer(x), fallback(x)):
            assert float((got - want).norm() / want.norm()) < 0.01


def _run(code: str, *args, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)], capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=300)


def test_a_failed_build_falls_back_to_torchs_kernels_with_a_warning(tmp_path):
    done = _run("""
        import warnings, torch
        from polyformers.pt import kernels
        from polyformers.pt.quantize import Int4Linear
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert not kernels.available()
        print("WARNED", *[str(w.message)[:200] for w in caught])
        layer = Int4Linear.from_linear(torch.nn.Linear(64, 16), 32)
        assert layer._kernel[0] == "torch"
        x = torch.randn(3, 64)
        torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.dequantized_weight(), layer.bias))
        print("WHY", kernels.why_not()[:200])
    """, CXX="false", POLYFORMERS_KERNEL_CACHE=str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "compiling rows.cpp, attention.cpp, pointwise.cpp, blocks.cpp failed (false exited 1)" in done.stdout
    assert "WARNED polyformers kernels unavailable, using torch's" in done.stdout
    assert not list(tmp_path.iterdir())  # the failed build left no file behind


def test_float32_layers_take_the_kernels_once_built_and_never_build_them(tmp_path):
    # ready() (asked by layers.attend and layers.gelu) loads a build that exists and never starts one: a
    # model's first forward does not wait for a compiler.
    assert kernels.available(), kernels.why_not()
    built = kernels.build()
    done = _run("""
        import shutil, sys, torch
        from polyformers.pt import kernels, layers as L
        assert not kernels.ready() and not kernels.ready()  # looked once, nothing built
        with torch.profiler.profile() as profile:
            L.gelu(torch.randn(4))
        assert not [e.name for e in profile.events() if e.name.startswith("polyformers::")]
        print("FILES", sorted(p.name for p in kernels.cache_dir().iterdir()) if kernels.cache_dir().exists() else [])
        # a build of this machine appears (the set-up, another process): the next process takes it
        kernels.cache_dir().mkdir(parents=True, exist_ok=True)
        shutil.copy(sys.argv[1], kernels.library_path())
    """, built, POLYFORMERS_KERNEL_CACHE=str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "FILES []" in done.stdout
    done = _run("""
        import torch
        from polyformers.pt import kernels, layers as L
        assert kernels.ready()
        with torch.profiler.profile() as profile:
            L.gelu(torch.randn(4))
        assert "polyformers::gelu" in [e.name for e in profile.events()]
    """, POLYFORMERS_KERNEL_CACHE=str(tmp_path))
    assert done.returncode == 0, done.stderr


def test_the_environment_switches_them_off_without_a_warning():
    done = _run("""
        import warnings
        warnings.simplefilter("error")
        from polyformers.pt import kernels
        assert not kernels.available()
        print(kernels.why_not())
    """, POLYFORMERS_KERNELS="0")
    assert done.returncode == 0, done.stderr
    assert "switched off by POLYFORMERS_KERNELS=0" in done.stdout


def test_the_operators_name_the_argument_the_expected_and_the_given():
    assert kernels.available(), kernels.why_not()
    ops = kernels.ops()
    layer = Int4Linear.from_linear(torch.nn.Linear(64, 16), 32)
    _, packed, pairs = layer._kernel
    q8, sums = kernels.pack_i8(torch.ones(16, 64, dtype=torch.int8))
    scales = torch.ones(16)
    x = torch.randn(2, 64)
    cases = [
        (lambda: ops.linear_i4(x.double(), packed, pairs, None, 64, 16), "x: expected a 2-D float32 CPU tensor"),
        (lambda: ops.linear_i4(torch.randn(2, 32), packed, pairs, None, 64, 16), "x: expected 64 features, given 32"),
        (lambda: ops.linear_i4(x, packed.float(), pairs, None, 64, 16), "weight: expected a contiguous uint8"),
        (lambda: ops.linear_i4(x, packed, pairs.float(), None, 64, 16), "scale_offset: expected a contiguous bfloat16"),
        (lambda: ops.linear_i4(x, packed, pairs, torch.zeros(15), 64, 16),
         "bias: expected a contiguous float32 vector of 16"),
        (lambda: ops.linear_i4(x, packed, pairs, None, 64, 40),
         "weight: expected a contiguous uint8 tensor of shape (3, 2, 4, 16, 4)"),
        (lambda: ops.linear_i4(x, packed, torch.cat([pairs, pairs[:, :1]], 1), None, 64, 16),  # 3 groups of 64
         "scale_offset: expected a contiguous bfloat16 tensor of shape (1, groups, 2, 16), groups dividing 2, "
         "given BFloat16 [1, 3, 2, 16]"),
        (lambda: ops.linear_i4(x, packed, pairs, None, 0, 16),
         "expected in_features and out_features > 0, given 0 and 16"),
        (lambda: ops.linear_bf16(x, torch.randn(16, 64), None), "weight: expected a contiguous 2-D BFloat16 tensor"),
        (lambda: ops.linear_i8(x, q8, scales, sums, None, 64, 40),
         "weight: expected a contiguous int8 tensor of shape (2, 16, 32, 4), given Char [1, 16, 32, 4]"),
        (lambda: ops.linear_i8(x, q8.float(), scales, sums, None, 64, 16), "weight: expected a contiguous int8"),
        (lambda: ops.linear_i8(x, q8, scales[:15], sums, None, 64, 16),
         "scales: expected a contiguous float32 vector of 16, given Float [15]"),
        (lambda: ops.linear_i8(x, q8, scales, sums.double(), None, 64, 16),
         "sums: expected a contiguous float32 vector of 16, given Double"),
        (lambda: ops.linear_i8(torch.randn(2, 60), q8, scales, sums, None, 64, 16),
         "x: expected 64 features, given 60"),
        (lambda: ops.linear_i8(x, q8, scales, sums, None, 70000, 16),
         "expected in_features in 1..65536 and out_features > 0, given 70000 and 16"),
        (lambda: ops.linear_bf16(x, torch.randn(16, 32).bfloat16(), None), "x: expected 32 features, given 64"),
        (lambda: ops.linear_f32(x, torch.randn(16, 64).double(), None), "weight: expected a contiguous 2-D Float"),
        (lambda: ops.linear_f32(x, torch.randn(16, 64), torch.zeros(3)), "bias: expected a contiguous float32 vector"),
    ]
    for call, message in cases:
        with pytest.raises(RuntimeError) as caught:
            call()
        assert message in str(caught.value), (message, str(caught.value)[:300])


def test_the_quantized_kernels_keep_the_weights_in_the_caches_only_where_they_all_fit(monkeypatch):
    """The int8 and 4-bit kernels prefetch into the caches while the packed weights alive take at most half
    the last-level cache, else non-temporally (rows.cpp's set_keep_weights): the same products either way."""
    import gc

    assert kernels.available(), kernels.why_not()
    if os.path.exists("/sys/devices/system/cpu/cpu0/cache/index0/size"):
        assert kernels.last_level_cache_bytes() >= 1 << 20
    gc.collect()
    base = kernels._held
    torch.manual_seed(0)
    linear = torch.nn.Linear(1024, 512)
    x = torch.randn(3, 1024)
    int4, int8 = Int4Linear.from_linear(linear, 32), Int8Linear.from_linear(linear)
    packed = sum(t.numel() * t.element_size() for t in (*int4._kernel[1:], int8._rows[0]))
    assert kernels._held == base + packed
    monkeypatch.setattr(kernels, "_cache_bytes", 2 * (base + packed))  # they fit in half of it
    kernels._update()
    assert kernels.keeping_weights()
    kept = int4(x), int8(x)
    monkeypatch.setattr(kernels, "_cache_bytes", 2 * (base + packed) - 1)  # one byte too many
    kernels._update()
    assert not kernels.keeping_weights()
    assert torch.equal(int4(x), kept[0]) and torch.equal(int8(x), kept[1])
    monkeypatch.setattr(kernels, "_cache_bytes", 2 * base + packed)  # int8's weights freed: the rest fits
    del int8
    gc.collect()
    assert kernels._held == base + packed - 1024 * 512 and kernels.keeping_weights()
    monkeypatch.undo()
    kernels._update()


def test_generate_keeps_its_own_models_weights_in_the_caches_whatever_else_is_alive(monkeypatch):
    """Within ``generate``, the packed weights that count are the decoding model's (another model alive in the
    process, too large for the cache, does not send this one's prefetches past it); after it, all of them."""
    import polyformers
    from polyformers.pt.quantize import decoding_weights, packed_bytes, quantize

    assert kernels.available(), kernels.why_not()
    config = polyformers.MptConfig(vocab_size=64, d_model=64, n_layers=2, n_heads=4, max_seq_len=32,
                                   bos_token_id=None, eos_token_id=None, pad_token_id=None)
    torch.manual_seed(0)
    small = quantize(polyformers.MptForCausalLM(config).eval(), bits=4)
    large = Int8Linear.from_linear(torch.nn.Linear(1024, 2048))
    nbytes = packed_bytes(small)
    layers = [m for m in small.modules() if isinstance(m, Int4Linear)]
    assert nbytes == sum(t.numel() * t.element_size() for m in layers for t in m._kernel[1:]) > 0
    assert packed_bytes(torch.nn.Sequential(large)) == 1024 * 2048
    before = kernels._in_use, kernels._loops
    with decoding_weights(small):  # a generate within the block counts the model once, not twice
        assert kernels._in_use == before[0] + nbytes
        with decoding_weights(small), decoding_weights(torch.nn.Sequential(large)):
            assert kernels._in_use == before[0] + nbytes + 1024 * 2048 and kernels._loops == before[1] + 2
    assert (kernels._in_use, kernels._loops) == before
    monkeypatch.setattr(kernels, "_cache_bytes", 2 * nbytes + 1024)  # the small model fits; with the large not
    kernels._update()
    seen = []
    hook = small.transformer.blocks[0].register_forward_hook(lambda *a: seen.append(kernels.keeping_weights()))
    ids = torch.tensor([[1, 2, 3]])
    try:
        with torch.inference_mode():
            out = small.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False)
            assert seen and all(seen) and not kernels.keeping_weights(), seen
            seen.clear()
            monkeypatch.setattr(kernels, "_cache_bytes", 1024)  # nothing fits: the same tokens, streamed
            again = small.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False)
            assert seen and not any(seen) and torch.equal(again, out), seen
    finally:
        hook.remove()
    monkeypatch.undo()
    kernels._update()


@pytest.mark.parametrize("rows", [1, 8])  # the one-row pass, and eight rows (on the tile unit where there is one)
def test_on_intel_cpus_the_quantized_kernels_prefetch_into_the_caches_whatever_fits(rows):
    """Where non-temporal prefetches halve the weights' rate (Intel), the int8 and 4-bit kernels prefetch into
    the caches even when the weights would not fit; elsewhere as ``set_keep_weights`` says. No value moves."""
    assert kernels.available(), kernels.why_not()
    ops = kernels.ops()
    intel = kernels._cpu_vendor() == "GenuineIntel"
    torch.manual_seed(3)
    linear = torch.nn.Linear(1024, 96)
    layers = Int8Linear.from_linear(linear), Int4Linear.from_linear(linear, 32)
    x = torch.randn(rows, 1024)
    outputs = {}
    try:
        for vendor_intel in (True, False):
            ops.set_intel_prefetch(vendor_intel)
            for keep in (True, False):
                ops.set_keep_weights(keep)
                assert ops.weights_into_caches() == (keep or vendor_intel)
                outputs[vendor_intel, keep] = [layer(x) for layer in layers]
    finally:
        ops.set_intel_prefetch(intel)
        ops.set_keep_weights(kernels.keeping_weights())
    assert ops.weights_into_caches() == (intel or kernels.keeping_weights())
    first = outputs[True, True]
    for other in outputs.values():
        assert all(torch.equal(a, b) for a, b in zip(first, other))
    torch.testing.assert_close(first[0], linear(x), rtol=0.05, atol=0.05)


@pytest.mark.parametrize("rows", [1, 3, 8])  # the one-row pass, and passes of 2-8 rows
def test_the_intel_prefetches_are_on_for_intel_cpus_and_move_no_value(rows):
    assert kernels.available(), kernels.why_not()
    ops = kernels.ops()
    torch.manual_seed(2)
    x = torch.randn(rows, 1000)  # rows of 15 prefetched steps of 64 and a tail
    for weight in (torch.randn(70, 1000), torch.randn(70, 1000).bfloat16()):
        op = ops.linear_f32 if weight.dtype == torch.float32 else ops.linear_bf16
        try:
            ops.set_intel_prefetch(True)
            ahead = op(x, weight, None)
            ops.set_intel_prefetch(False)
            plain = op(x, weight, None)
        finally:
            ops.set_intel_prefetch(kernels._cpu_vendor() == "GenuineIntel")
        assert torch.equal(ahead, plain)
        torch.testing.assert_close(plain.double(), x.double() @ weight.double().T, rtol=1e-5, atol=1e-4)
    # (the kernels need AVX-512 VNNI, which only these two make; and /proc/cpuinfo names them so)
    assert kernels._cpu_vendor() in ("GenuineIntel", "AuthenticAMD")
