"""Opt-in quantized inference on CPU: :func:`quantize` (``bits=4``, ``8`` or ``16``), :func:`quantize_int8`
and their layers, :class:`Int4Linear`, :class:`Int8Linear` and :class:`Bf16Linear` (16 bits: bfloat16
weights, described at the class).

4 bits (weight-only). Each run of ``group_size`` (32, 64, 128) weights of a row is stored as integers
0..15 with a scale and an offset (min-max), an eighth of float32's bytes plus the scales'; inputs,
embeddings, norms and the key/value cache stay float32. Up to :data:`INT4_KERNEL_ROWS` rows (decoding
steps, short prompts) are multiplied by polyformers' compiled kernel (:mod:`polyformers.pt.kernels`),
which reads the 4-bit weights once for every eight rows and multiplies them as integers by the inputs
rounded to 8 bits per row (one scale a row, AVX-512 VNNI), applying each group's scale and offset to the
integer sums in float32, as llama.cpp's 4-bit path does: twice the speed of the same product on float
inputs, and the rounding moves outputs by about a percent of their scale, a tenth of the 4-bit weights'
own error. Without it, one token goes to torch's own int4 CPU kernel
(``torch.ops.aten._weight_int4pack_mm_for_cpu``, in bfloat16: its float32 path is scalar and 4x slower;
the outputs move by well under a percent). More rows (prompts, encoders) are multiplied by the
dequantized weight in float32. A 4-bit model saves its packed weights (``save_pretrained``: a
``quantization_config`` in config.json, ``qweight``/``scales``/``offsets`` in safetensors) and
``from_pretrained`` of that folder, with the model's own class, builds 4-bit layers and loads them as
stored, without quantizing again; a ``quantization_config`` of another library is refused with an error.
Quality, measured by ``tests/pt/test_quantize_4bit.py``: a small decoder trained to be confident decodes
float32's greedy tokens; all-mpnet-base-v2's mean-pooled embeddings keep a cosine of about 0.96 (group 32;
0.91 with 64, 0.2 with 128) to float32's, short of 0.99: 4-bit weights without calibration do not suit
that post-norm encoder. (Choosing each group's range to minimise its squared error instead of min-max
was tried: 0.969 at group 32.)

8 bits, below: int8 weights and inputs.

Why int8. Linear layers hold nearly all of a transformer's weights and arithmetic. Decoding one token
reads every weight once, so its speed is the memory bandwidth divided by the weights' bytes, and int8
weights are a quarter of float32's; an encoder's batch is bound by arithmetic instead, which integer
kernels (VNNI) do faster than float32. Each ``nn.Linear`` becomes an :class:`Int8Linear`: its weight
rounded to int8 with one float scale per output channel (symmetric, ``max |w| / 127``). Where
polyformers' kernels are built (:mod:`polyformers.pt.kernels`), ``linear_i8`` rounds each input row to
8 bits over its own range (``x ~ low + size * u``, u in 0..255), multiplies in integers and rescales to
float32; it streams the weights once for every eight rows, with non-temporal prefetches that leave the
caches to the rest of the step. Against fbgemm's kernel: 1.0-1.8x the speed on 1-512 rows of the reduced
models' matrices, decoding the reduced MPT and GPT-J 1.10-1.22x as fast at batch 1 and 1.23-1.37x at
batch 8 (``bench/decode_speed.py``, same runs), and every row gets what it would alone. Without the
kernels, fbgemm's dynamic-quantization kernel multiplies, rounding each input with one scale per call.
(Keeping the inputs in float and converting the weights on the fly, by torch's weight-only int8 kernel
or by dequantising a layer at a time, reads the same bytes but computes too slowly to gain.)

What stays float32: embeddings (a tied output head gets its own int8 copy, the input embedding keeps
the float one), norms, biases, activations, the attention products and the key/value cache.

Outliers (``outlier_threshold``). One scale for a whole input is not enough for post-norm encoders: a few
hidden dimensions carry values 10-100x larger than the rest (in all-mpnet-base-v2, up to ~100 entering
the feed-forward output layer), so a single scale flattens every other dimension, and plain
``torch.ao.quantization.quantize_dynamic`` leaves mean-pooled embeddings at a cosine similarity of ~0.5
to the float32 ones. As in LLM.int8() (Dettmers et al., 2022), the input columns holding a value larger
than the threshold anywhere in a call are taken out of the int8 product and multiplied in float32
(their int8 weights rescaled); there are a handful per layer, so this costs little. On the 64 texts of
``bench/encoder_throughput.py``, the worst cosine of all-mpnet-base-v2's mean-pooled embeddings to
float32's is, without outlier columns / with thresholds 6, 4, 3: 0.78 / 0.996, 0.995, 0.995 with 8-bit
inputs (VNNI), and 0.45 / 0.985, 0.989, 0.991 with the 7-bit inputs of CPUs without VNNI (measured through
fbgemm, one range per call; polyformers' kernel, one range per row, had a lower error in every layer of
all-mpnet-base-v2 measured: ``tests/cli/test_search_fast.py`` gives its figures over Macbeth). LLM.int8()
uses 6; :data:`OUTLIER_THRESHOLD` is 3, for >= 0.99 on both kinds of CPU, at 1.6% of the products in
float32 (6: 0.2%). Decoders are quantized without it: pre-norm GPT-J and MPT keep their logits within
about a percent of float32's, and the search costs a decoding step of the reduced MPT of
``bench/decode_speed.py`` 8% at threshold 6 and half its speed at 3, where unit-variance normed inputs
cross the threshold in many columns.

A quantized model is for inference: it is put in eval mode, has no gradients and takes float32 inputs
only. ``save_pretrained`` writes its int8 weights and scales (``qweight``, ``scales``) with a
``quantization_config`` in config.json, and ``from_pretrained`` of that folder builds the 8-bit layers
from them without quantizing again (see :func:`quantize`).

    model = quantize_int8(GPTJForCausalLM.from_pretrained(folder))           # decoders
    model = quantize_int8(MPNetModel.from_pretrained(folder), outlier_threshold=OUTLIER_THRESHOLD)
"""

from __future__ import annotations

import contextlib
import numbers
import threading
import warnings
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from . import kernels, memory

OUTLIER_THRESHOLD = 3.0
"""The ``outlier_threshold`` for post-norm encoders (BERT-style, MPNet); see the module docstring."""

# The bound C++ operator, without the Python wrapper that looks for fake script objects among the
# arguments of every call (1 us, where a decoding step makes ~50 calls of ~80 us).
_linear_dynamic = getattr(torch.ops.quantized.linear_dynamic.default, "_op",
                          torch.ops.quantized.linear_dynamic.default)


_KERNEL_OPS: dict = {}


def _kernel_op(name: str):
    """The overload of polyformers' operator ``name`` (``linear_i4``, ``linear_i8``), looked up once: the
    layers call it on every decoding step."""
    op = _KERNEL_OPS.get(name)
    if op is None:
        op = _KERNEL_OPS[name] = getattr(kernels.ops(), name).default
    return op


def _has_vnni() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return any(flag in f.read() for flag in (" avx512_vnni", " avx_vnni"))
    except OSError:
        return False


_REDUCE_RANGE: Optional[bool] = None


def _reduce_range() -> bool:
    # Without VNNI, fbgemm's 8-bit products are summed in pairs into int16 and can saturate, unless the
    # inputs keep to 7 bits ("reduce_range"), as torch's own dynamic quantization does by default.
    global _REDUCE_RANGE
    if _REDUCE_RANGE is None:
        _REDUCE_RANGE = not _has_vnni()
    return _REDUCE_RANGE


_SENTINELS = torch.tensor([1.0, -1.0])


def _pack(weight: torch.Tensor, scales: torch.Tensor, bias: Optional[torch.Tensor]):
    """fbgemm's prepacked form of int8 ``weight`` (out, in) with per-row ``scales``."""
    zero_points = torch.zeros(weight.shape[0], dtype=torch.long)
    with warnings.catch_warnings():
        # torch marks its quantized tensor type as deprecated; it is still how its int8 kernels take weights.
        warnings.simplefilter("ignore", UserWarning)
        quantized = torch._make_per_channel_quantized_tensor(weight, scales.double(), zero_points, 0)
        return torch.ops.quantized.linear_prepack(quantized, bias)


class Int8Linear(nn.Module):
    """``y = x W^T + b`` with W in int8 (one scale per output channel) and x rounded to 8 bits per row by
    polyformers' kernel (or per call by fbgemm's, where the kernels are not built); with
    ``outlier_threshold``, the input columns holding a larger value are multiplied in float32 (see the
    module docstring).

    Several ``Int8Linear`` reading the same input can be stacked into one (:meth:`stack`, as
    ``layers.stacked_linear`` does): each then keeps only its rows' place in the stack.
    """

    quantized = True  # PreTrainedModel.tie_weights leaves a quantized output layer untied

    def __init__(self, weight: torch.Tensor, scales: torch.Tensor, bias: Optional[torch.Tensor] = None,
                 outlier_threshold: Optional[float] = None, per_row: bool = False):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        if per_row and outlier_threshold is not None:
            raise ValueError(f"Int8Linear: per_row=True takes outlier_threshold=None, given {outlier_threshold!r}")
        self.outlier_threshold = outlier_threshold
        self.per_row = per_row
        self._reduce_range = _reduce_range()
        self._packed = self._bias = self._row_sums = self._unpacked = None
        self._rows = None  # polyformers' kernel: (packed weight, scales, row sums, bias)
        if kernels.available() and weight.shape[1] <= kernels.MAX_INT8_FEATURES:
            packed, sums = kernels.pack_i8(weight)
            packed = memory.in_huge_pages(packed)  # streamed once a token: see polyformers.pt.memory
            kernels.hold(packed)  # (the kernel keeps it in the caches where all such weights fit)
            bias = None if bias is None else bias.float().contiguous()
            self._rows = (packed, scales.float().contiguous(), sums, bias)
        elif per_row:
            # Two input columns of zero weights hold the +1/-1 that pin the kernel's range (see _per_row).
            sentinels = torch.zeros(weight.shape[0], 2, dtype=torch.int8)
            self._packed = _pack(torch.cat([weight, sentinels], 1), scales, None)
            self._bias = bias
            self._row_sums = (weight.float() * scales[:, None]).sum(1)  # of the weight the kernel multiplies by
        else:
            self._packed = _pack(weight, scales, bias)
        if outlier_threshold is not None and self._rows is None:
            self._unpacked = (weight, scales)  # fbgemm's packing hides the outlier columns
        self._part = None  # (stacked Int8Linear, first row, end row) once stacked

    @classmethod
    def from_linear(cls, linear: nn.Linear, outlier_threshold: Optional[float] = None,
                    per_row: bool = False) -> "Int8Linear":
        weight = linear.weight.detach().float()
        scales = weight.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / 127
        quantized = torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8)
        bias = None if linear.bias is None else linear.bias.detach().float().clone()
        return cls(quantized, scales, bias, outlier_threshold, per_row)

    def unpack(self) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """(int8 weight, per-row scales, float bias or None)."""
        if self._part is not None:
            stack, start, end = self._part
            weight, scales, bias = stack.unpack()
            return weight[start:end], scales[start:end], None if bias is None else bias[start:end]
        if self._rows is not None:
            packed, scales, _, bias = self._rows
            return kernels.unpack_i8(packed, self.out_features, self.in_features), scales, bias
        quantized, bias = torch.ops.quantized.linear_unpack(self._packed)
        weight = quantized.int_repr()
        if self.per_row:
            weight, bias = weight[:, :self.in_features], self._bias
        return weight, quantized.q_per_channel_scales().float(), bias

    @staticmethod
    def stack(layers) -> "Int8Linear":
        """One layer computing ``torch.cat([layer(x) for layer in layers], -1)``; the layers give their
        weights up to it (made once, then found again)."""
        first = layers[0]._part
        if first is not None:
            stack, start = first[0], 0
            if all(layer._part == (stack, start, start := start + layer.out_features) for layer in layers) \
                    and start == stack.out_features:
                return stack
        parts = [layer.unpack() for layer in layers]
        biases = [bias for _, _, bias in parts]
        if any(bias is None for bias in biases) and not all(bias is None for bias in biases):
            raise ValueError("Int8Linear.stack: expected every layer with a bias or none, given a mix")
        thresholds = {layer.outlier_threshold for layer in layers}
        if len(thresholds) > 1:
            raise ValueError(f"Int8Linear.stack: expected one outlier_threshold, given {sorted(thresholds, key=str)}")
        per_row = {layer.per_row for layer in layers}
        if len(per_row) > 1:
            raise ValueError("Int8Linear.stack: expected layers all per_row or none, given a mix")
        stack = Int8Linear(
            torch.cat([weight for weight, _, _ in parts]), torch.cat([scales for _, scales, _ in parts]),
            None if biases[0] is None else torch.cat(biases), thresholds.pop(), per_row.pop(),
        )
        start = 0
        for layer in layers:
            layer._packed = layer._unpacked = layer._rows = None
            layer._bias = layer._row_sums = None
            layer._part = (stack, start, start + layer.out_features)
            start += layer.out_features
        return stack

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._part is not None:
            stack, start, end = self._part
            return stack(x)[..., start:end]
        if x.dtype != torch.float32 or x.dim() == 0 or x.shape[-1] != self.in_features:
            raise self._wrong_input(x)
        if self.outlier_threshold is not None:
            return self._with_outliers(x)
        if self._rows is not None:
            return self._product(x)
        if self.per_row:
            return self._per_row(x)
        return _linear_dynamic(x, self._packed, self._reduce_range)

    def _product(self, x: torch.Tensor) -> torch.Tensor:
        """The int8 product of ``x`` (float32, in_features last), without outlier columns."""
        if self._rows is None:
            return _linear_dynamic(x, self._packed, self._reduce_range)
        packed, scales, sums, bias = self._rows
        out = _kernel_op("linear_i8")(x.reshape(-1, self.in_features), packed, scales, sums, bias,
                                      self.in_features, self.out_features)
        return out.view(x.shape[:-1] + (self.out_features,))

    def _per_row(self, x: torch.Tensor) -> torch.Tensor:
        """The product with every row of ``x`` rounded to 8 bits on its own range, so that a row's result
        does not depend on the other rows of the call (a batch of sequences decodes as each would alone).

        fbgemm takes one range per call, the span of all its inputs. Each row is mapped affinely onto
        [-1, 1] (``x = center + half * u``), and two extra input columns holding +1 and -1 (with zero
        weights) make [-1, 1] the span of every call, whatever its rows: each row is rounded as it would be
        alone. ``x W^T = half * (u W^T) + center * (row sums of W)`` then undoes the mapping."""
        flat = x.reshape(-1, self.in_features)
        if flat.shape[0] == 0:
            return x.new_empty(*x.shape[:-1], self.out_features)
        if flat.shape[0] == 1:  # one token (decoding): the whole-tensor reduction is 3x faster
            low, high = (t.view(1, 1) for t in torch.aminmax(flat))
        else:
            low, high = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
        half = (high - low).mul_(0.5).clamp_min_(torch.finfo(torch.float32).tiny)
        center = low.add_(half)
        unit = torch.empty(flat.shape[0], self.in_features + 2, dtype=flat.dtype)
        torch.sub(flat, center, out=unit[:, :self.in_features])
        unit[:, :self.in_features].div_(half).clamp_(-1.0, 1.0)
        unit[:, self.in_features:] = _SENTINELS
        product = _linear_dynamic(unit, self._packed, self._reduce_range)
        if self._bias is None:
            out = torch.addcmul(product.mul_(half), center, self._row_sums)
        else:
            out = torch.addcmul(self._bias, center, self._row_sums).addcmul_(product, half)
        return out.view(*x.shape[:-1], self.out_features)

    def _wrong_input(self, x: torch.Tensor) -> Exception:
        if x.dtype != torch.float32:
            return TypeError(f"Int8Linear: expected a float32 input, given {x.dtype}")
        return ValueError(f"Int8Linear: expected an input of {self.in_features} features in its last dimension, "
                          f"given shape {tuple(x.shape)}")

    def _with_outliers(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        if flat.shape[0] == 0:
            return self._product(x)
        outliers = (flat.abs().amax(dim=0) > self.outlier_threshold).nonzero().squeeze(1)
        if not outliers.numel():
            return self._product(x)
        out = self._product(flat.index_fill(1, outliers, 0.0))
        if self._rows is not None:
            packed, scales, _, _ = self._rows
            # (packed: panels, columns / 4, 32 rows, 4) -> the chosen columns' weights, (columns, rows)
            picked = packed[:, torch.div(outliers, 4, rounding_mode="floor"), :, outliers % 4]
            weight = picked.reshape(outliers.numel(), -1)[:, :self.out_features].t()
        else:
            weight, scales = self._unpacked
            weight = weight[:, outliers]
        columns = weight.float() * scales[:, None]
        out.addmm_(flat[:, outliers], columns.t())
        return out.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        threshold = "" if self.outlier_threshold is None else f", outlier_threshold={self.outlier_threshold}"
        per_row = ", per_row=True" if self.per_row else ""
        return f"in_features={self.in_features}, out_features={self.out_features}{threshold}{per_row}"

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        # What a saved 8-bit folder holds (see quantize): the int8 weight, its per-row scales, the bias.
        weight, scales, bias = self.unpack()
        destination[prefix + "qweight"] = weight.contiguous()
        destination[prefix + "scales"] = scales.contiguous()
        if bias is not None:
            destination[prefix + "bias"] = bias.contiguous()


class _StoredInt8(nn.Module):
    """The place of an :class:`Int8Linear` while an 8-bit folder loads (built on the meta device, filled by
    the checkpoint); :func:`finish_quantized` then puts the layer made from it in its place."""

    def __init__(self, in_features: int, out_features: int, bias: bool):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("qweight", torch.empty(out_features, in_features, dtype=torch.int8, device="meta"))
        self.register_buffer("scales", torch.empty(out_features, dtype=torch.float32, device="meta"))
        self.bias = nn.Parameter(torch.empty(out_features, device="meta"), requires_grad=False) if bias else None


def quantize_int8(model: nn.Module, outlier_threshold: Optional[float] = None, per_row: bool = False) -> nn.Module:
    """Replace, in place, every ``nn.Linear`` of a float32 PyTorch ``model`` by an :class:`Int8Linear`
    (int8 weights, per-channel scales) and return the model, in eval mode, for faster CPU inference.

    ``outlier_threshold``: None (decoders) or a number > 0, above which an input column is multiplied in
    float32; :data:`OUTLIER_THRESHOLD` for post-norm encoders (see the module docstring).

    ``per_row``: round each input row (token) to 8 bits on its own range instead of one range per call,
    so that a sequence's int8 products do not depend on what else is in its batch (``polyformers serve
    --int8`` asks for it). polyformers' kernel rounds every row on its own range anyway; fbgemm's path (no
    kernels) then costs a few element-wise operations per layer. With ``outlier_threshold`` None only.

    Greedy decoding usually picks the same tokens as in float32; logits move by about a percent. The
    float weights of the replaced layers are released, so ``copy.deepcopy`` the model first to keep a
    float32 one. Gradients and other dtypes are not available afterwards; ``save_pretrained`` writes the
    int8 weights, which ``from_pretrained`` loads as they are (see :func:`quantize`).

        model = GPTJForCausalLM.from_pretrained(folder)
        quantize_int8(model).generate(input_ids, max_new_tokens=32)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"quantize_int8: expected a torch.nn.Module, given {type(model).__name__}")
    if outlier_threshold is not None and (
        isinstance(outlier_threshold, bool) or not isinstance(outlier_threshold, numbers.Real)
        or not outlier_threshold > 0
    ):
        raise ValueError(
            f"quantize_int8: outlier_threshold: expected None or a number > 0, given {outlier_threshold!r}"
        )
    if "fbgemm" not in torch.backends.quantized.supported_engines:
        raise RuntimeError(
            "quantize_int8 needs torch's fbgemm int8 kernels (x86 CPUs); this build supports "
            f"{torch.backends.quantized.supported_engines}"
        )
    if not isinstance(per_row, bool):
        raise TypeError(f"quantize_int8: per_row: expected a bool, given {per_row!r}")
    if per_row and outlier_threshold is not None:
        raise ValueError(f"quantize_int8: per_row=True takes outlier_threshold=None, given {outlier_threshold!r}")
    threshold = None if outlier_threshold is None else float(outlier_threshold)
    replace_linears(model, "quantize_int8", lambda linear: Int8Linear.from_linear(linear, threshold, per_row))
    config = getattr(model, "config", None)
    if config is not None:
        config.quantization_config = {"quant_method": QUANT_METHOD, "bits": 8, "outlier_threshold": threshold,
                                      "per_row": per_row}
    return model


# ------------------------------------------------------------------------------------------------------
# 4-bit weight-only, and quantize(model, bits=...)

GROUP_SIZES = (32, 64, 128)
"""The group sizes of 4-bit quantization: one scale and one offset per this many weights of a row."""

DEFAULT_GROUP_SIZE = 32  # all-mpnet-base-v2 keeps a cosine of 0.96 to float32 at 32, 0.91 at 64

QUANT_METHOD = "polyformers"
"""``quantization_config["quant_method"]`` of a folder saved by a model that :func:`quantize` made."""


def _int4_pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """(out, in) integers 0..15 -> (out, in / 2) uint8, column 2j in the low nibble, 2j + 1 in the high."""
    q = q.to(torch.uint8)
    return q[:, 0::2] | (q[:, 1::2] << 4)


def _int4_unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`_int4_pack_nibbles`, as int32 (what torch's packing wants)."""
    low, high = packed & 15, packed >> 4
    return torch.stack([low, high], dim=-1).view(packed.shape[0], -1).to(torch.int32)


class Int4Linear(nn.Module):
    """``y = x W^T + b`` with W in 4 bits: each run of ``group_size`` weights of a row is stored as integers
    0..15 with one float scale and one float offset, ``w = (q - 8) * scale + offset`` (min-max, asymmetric).
    Inputs and outputs are float32; up to :data:`INT4_KERNEL_ROWS` rows are multiplied by polyformers'
    kernel, inputs rounded to 8 bits per row (or, without it, one row by torch's int4 CPU kernel,
    ``_weight_int4pack_mm_for_cpu``, in bfloat16), more rows by the dequantized weight in float32.

    State (what ``save_pretrained`` writes): ``qweight`` (out, in / 2) uint8, two weights a byte, the even
    column in the low nibble; ``scales`` and ``offsets`` (out, in / group_size) float32; ``bias``. This
    layout is ours and portable; the kernels' own packing (the scales and offsets in bfloat16, which holds
    them exactly when :meth:`from_linear` made them), is made from it when the layer is built or loaded
    (:meth:`pack`), never saved.
    """

    quantized = True  # PreTrainedModel.tie_weights leaves a quantized output layer untied

    def __init__(self, in_features: int, out_features: int, group_size: int = DEFAULT_GROUP_SIZE,
                 bias: bool = True, device=None):
        super().__init__()
        _check_group_size("Int4Linear", group_size, in_features)
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        groups = in_features // group_size
        self.register_buffer("qweight", torch.empty(out_features, in_features // 2, dtype=torch.uint8, device=device))
        self.register_buffer("scales", torch.empty(out_features, groups, dtype=torch.float32, device=device))
        self.register_buffer("offsets", torch.empty(out_features, groups, dtype=torch.float32, device=device))
        self.bias = nn.Parameter(torch.empty(out_features, device=device), requires_grad=False) if bias else None
        self._kernel = None  # ("rows", packed, pairs) or ("torch", packed, scales-and-zeros, padded rows) once packed

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int = DEFAULT_GROUP_SIZE) -> "Int4Linear":
        weight = linear.weight.detach().float()
        out_features, in_features = weight.shape
        layer = cls(in_features, out_features, group_size, bias=linear.bias is not None)
        groups = weight.reshape(out_features, in_features // group_size, group_size)
        low, high = groups.amin(dim=-1), groups.amax(dim=-1)
        # Scales and offsets are kept to bfloat16's values, the precision the kernel reads them in, so that
        # every path multiplies by the same weights.
        scales = ((high - low) / 15).clamp(min=1e-30).bfloat16().float()
        offsets = (low + 8 * scales).bfloat16().float()  # the value of q = 8: w = (q - 8) * scale + offset
        q = torch.round((groups - offsets[..., None]) / scales[..., None] + 8).clamp(0, 15)
        layer.qweight = _int4_pack_nibbles(q.reshape(out_features, in_features))
        layer.scales, layer.offsets = scales, offsets
        if linear.bias is not None:
            layer.bias = nn.Parameter(linear.bias.detach().float().clone(), requires_grad=False)
        return layer.pack()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        # Weights loaded into a packed layer (``load_state_dict`` of another checkpoint): the kernel's
        # packing is made again from them, else the layer would go on multiplying by the old ones. (A layer
        # not packed yet, loading from a folder, is packed by finish_quantized.)
        if self._kernel is not None and all(t.device.type == "cpu" for t in (self.qweight, self.scales, self.offsets)):
            self.pack()

    def pack(self) -> "Int4Linear":
        """Build the kernel's packed weight from ``qweight``, ``scales`` and ``offsets`` (after loading)."""
        for name in ("qweight", "scales", "offsets"):
            tensor = getattr(self, name)
            if tensor.device.type != "cpu":
                raise ValueError(f"Int4Linear: expected {name} on the CPU, given {tensor.device} (never loaded?)")
        self.scales, self.offsets = self.scales.float(), self.offsets.float()
        if self.bias is not None and self.bias.dtype != torch.float32:
            self.bias = nn.Parameter(self.bias.detach().float(), requires_grad=False)
        q = _int4_unpack_nibbles(self.qweight)
        if kernels.available():
            self._kernel = ("rows", *map(memory.in_huge_pages, kernels.pack_i4(q, self.scales, self.offsets)))
            kernels.hold(*self._kernel[1:])  # (the kernel keeps them in the caches where they all fit)
            return self
        scales, offsets = self.scales, self.offsets
        pad = -self.out_features % 16  # the kernel wants a multiple of 16 rows
        if pad:
            q = torch.cat([q, q.new_full((pad, self.in_features), 8)])
            scales = torch.cat([scales, scales.new_zeros(pad, scales.shape[1])])
            offsets = torch.cat([offsets, offsets.new_zeros(pad, offsets.shape[1])])
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
        scale_and_zeros = torch.stack([scales.t(), offsets.t()], dim=-1).to(torch.bfloat16).contiguous()
        self._kernel = ("torch", packed, scale_and_zeros, pad)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel, shape, width = self._kernel, x.shape, self.in_features
        if (kernel is not None and kernel[0] == "rows" and x.dtype == torch.float32 and shape and shape[-1] == width
                and 0 < x.numel() <= INT4_KERNEL_ROWS * width):
            # A decoding step: polyformers' kernel, with as little as possible around it (48 calls a token).
            out = _kernel_op("linear_i4")(x.reshape(-1, width), kernel[1], kernel[2], self.bias, width,
                                          self.out_features)
            return out.view(shape[:-1] + (self.out_features,))
        if kernel is None:
            raise RuntimeError("Int4Linear: not packed; call pack() after assigning its weights")
        if x.dtype != torch.float32:
            raise TypeError(f"Int4Linear: expected a float32 input, given {x.dtype}")
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"Int4Linear: expected an input of {self.in_features} features in its last "
                             f"dimension, given shape {tuple(x.shape)}")
        flat = x.reshape(-1, self.in_features)
        if flat.shape[0] != 1 or self._kernel[0] != "torch":
            # More rows than the kernels take (prompts, encoders; torch's int4 kernel takes time in
            # proportion to the rows): the weight is dequantized for the call and multiplied in float32.
            return F.linear(x, self.dequantized_weight(), self.bias)
        _, packed, scale_and_zeros, pad = self._kernel
        # Its vectorised path works in bfloat16 (float32 inputs take a scalar path, 4x slower): the token
        # and the dequantized weights are rounded to 8 bits of mantissa, well under the 4-bit error.
        out = _int4_mm(flat.to(torch.bfloat16), packed, self.group_size, scale_and_zeros).float()
        if pad:
            out = out[:, :self.out_features]
        if self.bias is not None:
            out = out + self.bias
        return out.view(*x.shape[:-1], self.out_features)

    def dequantized_weight(self) -> torch.Tensor:
        """The float32 (out, in) weight the layer multiplies by."""
        q = _int4_unpack_nibbles(self.qweight).float().view(self.out_features, -1, self.group_size)
        return ((q - 8) * self.scales[..., None] + self.offsets[..., None]).view(self.out_features, self.in_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, group_size={self.group_size}, "
                f"bias={self.bias is not None}")


def packed_bytes(model: nn.Module) -> int:
    """Bytes of the weights of ``model``'s int8 and 4-bit layers that polyformers' kernels read (packed)."""
    total, stacks = 0, set()
    for module in model.modules():
        if isinstance(module, Int8Linear) and module._part is not None:  # (its weights lie in the stack)
            module = module._part[0]
            if id(module) in stacks:
                continue
            stacks.add(id(module))
        if isinstance(module, Int8Linear) and module._rows is not None:
            tensors = module._rows[:1]
        elif isinstance(module, Int4Linear) and module._kernel is not None and module._kernel[0] == "rows":
            tensors = module._kernel[1:]
        else:
            continue
        total += sum(t.numel() * t.element_size() for t in tensors)
    return total


_decoding: dict = {}  # id of a model within decoding_weights blocks -> [how many blocks, its packed bytes]
_decoding_lock = threading.Lock()


@contextlib.contextmanager
def decoding_weights(model: nn.Module):
    """Within the block, ``model``'s packed weights are among those the kernels read again and again
    (:func:`polyformers.pt.kernels.begin_reading`): ``generate`` and the server's decoding loop run in it.
    A model within several such blocks at once (a ``generate`` inside one, two threads) counts once."""
    key = id(model)
    with _decoding_lock:
        entry = _decoding.get(key)
        if entry is None:
            entry = _decoding[key] = [0, packed_bytes(model)]  # (no packed bytes without the kernels)
            if entry[1]:
                kernels.begin_reading(entry[1])
        entry[0] += 1
    try:
        yield
    finally:
        with _decoding_lock:
            entry[0] -= 1
            if not entry[0]:
                del _decoding[key]
                if entry[1]:
                    kernels.end_reading(entry[1])


INT4_KERNEL_ROWS = 64
"""Int4Linear multiplies up to this many rows by polyformers' kernel, eight at a time (one pass over the
4-bit weights each), and more by its dequantized weight: dequantizing a matrix costs as much as about
ten passes of the kernel, and the float32 product then runs at the machine's matmul rate."""

_int4_mm = getattr(torch.ops.aten._weight_int4pack_mm_for_cpu.default, "_op",
                   torch.ops.aten._weight_int4pack_mm_for_cpu.default)


# ------------------------------------------------------------------------------------------------------
# 16-bit weights

_mkldnn_enabled, _set_mkldnn_enabled = torch._C._get_mkldnn_enabled, torch._C._set_mkldnn_enabled


class Bf16Linear(nn.Module):
    """``y = x W^T + b`` with W stored in bfloat16 and multiplied in bfloat16: the inputs are rounded to
    bfloat16, the products summed in float32 and the sum rounded to bfloat16 once, as under autocast
    (torch's CPU matmul has no float32 output for bfloat16 operands); inputs, outputs and the bias stay
    float32.

    Half of float32's bytes per weight. Two kernels, by the number of rows:

    - one to eight rows (decoding steps, bound by reading the weights): polyformers' compiled kernel
      (:mod:`polyformers.pt.kernels`), which reads the weights once for all the rows and returns the
      float32 sum unrounded. One row was first left to torch's own vectorized bfloat16 matrix-vector
      kernel (oneDNN's product of one row with a bfloat16 matrix reads it no faster than float32 ones, so
      the call ran with oneDNN switched off): on a 2-core AMD EPYC both read one row at the same rate
      (per layer, one thread, 18-22 GB/s), on a 2-core Xeon (AMX, 480 MB of L3) torch's reads 19-28 GB/s
      and ours 28-55, and the reduced MPT decodes 29 -> 55 tokens/s. Without the kernels, one row still
      takes torch's matrix-vector kernel with oneDNN off for the call (``torch.backends.mkldnn``, restored
      after it; the switch is process-wide: a float32 matmul of another thread at that instant takes
      torch's BLAS path instead of oneDNN, with the same values up to the order of the sums), and 2-8
      rows oneDNN, as for:
    - more rows (prompts, encoders): oneDNN, whose AVX512-BF16 kernels (see :func:`has_native_bf16`) run
      about twice float32's matmul rate.

    All sum in float32 (torch's kernels round the sum to bfloat16 once), so the output is the exact
    product of the rounded operands within one bfloat16 step (2**-8 relative). Rounding the weights and
    the inputs to bfloat16's 8 significant bits moves each output by a few parts in a thousand;
    all-mpnet-base-v2's mean-pooled embeddings keep a cosine of 0.9999 to float32's
    (``tests/pt/test_quantize_bf16.py``).
    The state dict keeps the layer's ``weight`` (bfloat16) and ``bias`` under their usual names, so
    ``save_pretrained`` writes a checkpoint that loads anywhere; loading it gives float32 layers.
    """

    quantized = True  # PreTrainedModel.tie_weights leaves a 16-bit output layer untied from its embedding

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor] = None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.weight = nn.Parameter(memory.in_huge_pages(weight.detach(), torch.bfloat16), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().float().clone(), requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Bf16Linear":
        return cls(linear.weight, linear.bias)

    @staticmethod
    def stack(layers) -> "Bf16Linear":
        """One layer computing ``torch.cat([layer(x) for layer in layers], -1)`` (``layers.stacked_linear``).
        The layers' weights and biases become views of its rows, so the stack costs no memory of its own;
        made once, then found again while the layers still hold those views."""
        cached = layers[0].__dict__.get("_stack")
        if cached is not None and cached[0] == Bf16Linear._where(layers):
            return cached[1]
        biases = [layer.bias for layer in layers]
        if any(bias is None for bias in biases) and not all(bias is None for bias in biases):
            raise ValueError("Bf16Linear.stack: expected every layer with a bias or none, given a mix")
        stack = Bf16Linear(torch.cat([layer.weight for layer in layers]),
                           None if biases[0] is None else torch.cat(biases))
        start = 0
        for layer in layers:
            end = start + layer.out_features
            layer.weight.data = stack.weight.data[start:end]
            if layer.bias is not None:
                layer.bias.data = stack.bias.data[start:end]
            start = end
        layers[0].__dict__["_stack"] = (Bf16Linear._where(layers), stack)
        return stack

    @staticmethod
    def _where(layers) -> tuple:
        return tuple((layer.weight.data_ptr(), None if layer.bias is None else layer.bias.data_ptr())
                     for layer in layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32:
            raise TypeError(f"Bf16Linear: expected float32 inputs, given {x.dtype}")
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"Bf16Linear: expected an input of {self.in_features} features in its last dimension, "
                             f"given shape {tuple(x.shape)}")
        x = x.to(torch.bfloat16)
        rows = x.numel() // self.in_features
        if 0 < rows <= kernels.MAX_ROWS and kernels.available():
            # polyformers' kernel: the weights read once for all the rows (see the class docstring)
            y = kernels.ops().linear_bf16(x.reshape(rows, self.in_features).float(), self.weight, self.bias)
            return y.view(*x.shape[:-1], self.out_features)
        if rows == 1 and _mkldnn_enabled():
            _set_mkldnn_enabled(False)  # torch's matrix-vector kernel (see the class docstring)
            try:
                y = F.linear(x, self.weight)
            finally:
                _set_mkldnn_enabled(True)
        else:
            y = F.linear(x, self.weight)
        # float32's sum of the bias and the bfloat16 product: widened, then added in place, which gives the
        # same bits as one mixed-type add at twice its speed (0.85 vs 1.63 ms for a search batch's 1280 x 3072)
        return y.float() if self.bias is None else y.float().add_(self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (oneDNN's AVX512-BF16 or AMX kernels): only there are
    16-bit weights faster than float32 ones on batches. (One row, a decoding step, runs torch's own kernel,
    which reads half float32's bytes whatever the answer.)"""
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _check_group_size(where: str, group_size, in_features: Optional[int] = None) -> None:
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size not in GROUP_SIZES:
        raise ValueError(f"{where}: group_size: expected one of {GROUP_SIZES}, given {group_size!r}")
    if in_features is not None and in_features % group_size:
        raise ValueError(f"{where}: group_size: expected a divisor of in_features, given group_size={group_size} "
                         f"for in_features={in_features}")


def _linears(model: nn.Module):
    return [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
            if isinstance(child, nn.Linear)]


def replace_linears(model: nn.Module, where: str, make) -> nn.Module:
    """Replace every ``nn.Linear`` of a float32 CPU ``model`` by ``make(linear)`` (a layer reachable twice
    becomes one), and return the model in eval mode without gradients."""
    linears = _linears(model)
    for _, name, linear in linears:
        if linear.weight.dtype != torch.float32 or linear.weight.device.type != "cpu":
            raise ValueError(f"{where}: expected float32 weights on the CPU, given {linear.weight.dtype} on "
                             f"{linear.weight.device} in {name!r}; load with dtype=torch.float32")
    replaced: dict = {}
    for parent, name, linear in linears:
        if id(linear) not in replaced:
            replaced[id(linear)] = make(linear)
        setattr(parent, name, replaced[id(linear)])
    model.eval()
    model.requires_grad_(False)
    return model


def quantize(model: nn.Module, bits: int = 4, group_size: Optional[int] = None,
             outlier_threshold: Optional[float] = None) -> nn.Module:
    """Replace, in place, every ``nn.Linear`` of a float32 PyTorch ``model`` by a quantized layer and
    return the model, in eval mode.

    ``bits=4``: weight-only 4 bits (:class:`Int4Linear`), ``group_size`` weights of a row sharing a scale
    and an offset (32, 64 or 128; default :data:`DEFAULT_GROUP_SIZE`); inputs and everything else stay
    float32. Such a model keeps its settings in ``config.quantization_config`` and ``save_pretrained``
    writes the 4-bit weights; ``from_pretrained`` of that folder (with the same class) builds the 4-bit
    layers and loads them as they are, without quantizing again.

    ``bits=8``: :func:`quantize_int8` (int8 weights per output channel, 8-bit inputs); ``group_size``
    must be None and ``outlier_threshold`` is passed on. Saved and loaded as the 4-bit ones are: the int8
    weights (``qweight``) and per-row ``scales``, with ``outlier_threshold`` and ``per_row`` in the
    ``quantization_config``.

    ``bits=16``: bfloat16 weights (:class:`Bf16Linear`), float32 inputs and outputs; ``group_size`` and
    ``outlier_threshold`` must be None. ``save_pretrained`` writes the bfloat16 weights under their usual
    names (a plain checkpoint; ``from_pretrained`` loads it as float32).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"quantize: model: expected a torch.nn.Module, given {type(model).__name__}")
    if isinstance(bits, bool) or bits not in (4, 8, 16):
        raise ValueError(f"quantize: bits: expected 4, 8 or 16, given {bits!r}")
    if bits == 16:
        for name, value in (("group_size", group_size), ("outlier_threshold", outlier_threshold)):
            if value is not None:
                raise ValueError(f"quantize: {name}: expected None with bits=16, given {value!r}")
        return replace_linears(model, "quantize", lambda linear: Bf16Linear.from_linear(linear))
    if bits == 8:
        if group_size is not None:
            raise ValueError(f"quantize: group_size: expected None with bits=8 (one scale per output channel), "
                             f"given {group_size!r}")
        return quantize_int8(model, outlier_threshold)
    if outlier_threshold is not None:
        raise ValueError(f"quantize: outlier_threshold: expected None with bits=4 (inputs stay float32), "
                         f"given {outlier_threshold!r}")
    group_size = DEFAULT_GROUP_SIZE if group_size is None else group_size
    _check_group_size("quantize", group_size)
    for _, name, linear in _linears(model):
        if linear.in_features % group_size:
            raise ValueError(f"quantize: group_size: expected a divisor of every layer's in_features, given "
                             f"group_size={group_size} for {name!r} with in_features={linear.in_features}")
    replace_linears(model, "quantize", lambda linear: Int4Linear.from_linear(linear, group_size))
    config = getattr(model, "config", None)
    if config is not None:
        config.quantization_config = {"quant_method": QUANT_METHOD, "bits": 4, "group_size": group_size}
    return model


def _quantization_settings(config) -> Optional[dict]:
    """The 4- or 8-bit settings of a config saved by a quantized model, or None; an error for a config
    that asks for a quantization polyformers does not load."""
    settings = getattr(config, "quantization_config", None)
    if settings is None:
        return None
    if not isinstance(settings, dict):
        settings = settings.to_dict() if hasattr(settings, "to_dict") else dict(vars(settings))
    method, bits = settings.get("quant_method"), settings.get("bits")
    if method != QUANT_METHOD or bits not in (4, 8) or isinstance(bits, bool):
        raise ValueError(f"quantization_config: expected quant_method={QUANT_METHOD!r} with bits=4 or 8 (saved by "
                         f"polyformers.pt.quantize.quantize), given quant_method={method!r}, bits={bits!r}")
    if bits == 4:
        _check_group_size("quantization_config", settings.get("group_size"))
        return settings
    threshold, per_row = settings.get("outlier_threshold"), settings.get("per_row", False)
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, numbers.Real)
                                  or not threshold > 0):
        raise ValueError(f"quantization_config: outlier_threshold: expected None or a number > 0, given {threshold!r}")
    if not isinstance(per_row, bool) or (per_row and threshold is not None):
        raise ValueError(f"quantization_config: per_row: expected a bool, False with an outlier_threshold, given "
                         f"per_row={per_row!r}, outlier_threshold={threshold!r}")
    return settings


def prepare_quantized(model: nn.Module, settings: dict) -> None:
    """Before loading a quantized folder: every ``nn.Linear`` of ``model`` (built on the meta device)
    becomes an empty 4-bit layer (:class:`Int4Linear`) or the place of an 8-bit one, whose state the
    checkpoint then fills."""
    replaced: dict[int, nn.Module] = {}
    for parent, name, linear in _linears(model):
        if id(linear) not in replaced:
            if settings["bits"] == 4:
                replaced[id(linear)] = Int4Linear(linear.in_features, linear.out_features, settings["group_size"],
                                                  bias=linear.bias is not None, device="meta")
            else:
                replaced[id(linear)] = _StoredInt8(linear.in_features, linear.out_features, linear.bias is not None)
        setattr(parent, name, replaced[id(linear)])


def finish_quantized(model: nn.Module) -> None:
    """After loading a quantized folder: pack every :class:`Int4Linear` and build every 8-bit layer from
    its stored weights; an error names a layer the checkpoint did not hold."""
    settings = model.config.quantization_config
    for name, module in list(model.named_modules()):
        if isinstance(module, (Int4Linear, _StoredInt8)):
            names = ("qweight", "scales", "offsets") if isinstance(module, Int4Linear) else ("qweight", "scales")
            if any(getattr(module, n).device.type == "meta" for n in names) or (
                    module.bias is not None and module.bias.device.type == "meta"):
                bits = 4 if isinstance(module, Int4Linear) else 8
                raise ValueError(f"{name}: the checkpoint holds no {bits}-bit weights ({', '.join(names)}, bias) "
                                 "for this layer, though its config has a quantization_config")
        if isinstance(module, Int4Linear):
            module.pack()
    built: dict[int, Int8Linear] = {}
    for parent, name, stored in [(p, n, c) for p in model.modules() for n, c in p.named_children()
                                 if isinstance(c, _StoredInt8)]:
        if id(stored) not in built:
            bias = None if stored.bias is None else stored.bias.detach().float()
            built[id(stored)] = Int8Linear(stored.qweight, stored.scales.float(), bias,
                                           settings.get("outlier_threshold"), settings.get("per_row", False))
        setattr(parent, name, built[id(stored)])
    model.requires_grad_(False)


__all__ = ["Bf16Linear", "DEFAULT_GROUP_SIZE", "GROUP_SIZES", "Int4Linear", "Int8Linear", "OUTLIER_THRESHOLD",
           "has_native_bf16", "quantize", "quantize_int8", "replace_linears"]
