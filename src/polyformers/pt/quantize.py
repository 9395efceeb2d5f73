"""Opt-in int8 inference on CPU: :func:`quantize_int8` and its layer, :class:`Int8Linear`.

Why int8. Linear layers hold nearly all of a transformer's weights and arithmetic. Decoding one token
reads every weight once, so its speed is the memory bandwidth divided by the weights' bytes, and int8
weights are a quarter of float32's; an encoder's batch is bound by arithmetic instead, which fbgemm's
integer kernels (VNNI) do faster than float32. Each ``nn.Linear`` becomes an :class:`Int8Linear`: its
weight rounded to int8 with one float scale per output channel (symmetric, ``max |w| / 127``), multiplied
by fbgemm's dynamic-quantization kernel, which rounds each input to 8 bits with one scale per call,
multiplies in integers and rescales to float32. (Keeping the inputs in float and converting the weights
on the fly, by torch's weight-only int8 kernel or by dequantising a layer at a time, reads the same
bytes but computes too slowly to gain: ``bench/decode_speed.py`` measures all three.)

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
inputs (VNNI), and 0.45 / 0.985, 0.989, 0.991 with the 7-bit inputs of CPUs without VNNI. LLM.int8()
uses 6; :data:`OUTLIER_THRESHOLD` is 3, for >= 0.99 on both kinds of CPU, at 1.6% of the products in
float32 (6: 0.2%). Decoders are quantized without it: pre-norm GPT-J and MPT keep their logits within
about a percent of float32's, and the search costs a decoding step of the reduced MPT of
``bench/decode_speed.py`` 8% at threshold 6 and half its speed at 3, where unit-variance normed inputs
cross the threshold in many columns.

A quantized model is for inference: it is put in eval mode, has no gradients, cannot be saved (quantize
after loading) and takes float32 inputs only.

    model = quantize_int8(GPTJForCausalLM.from_pretrained(folder))           # decoders
    model = quantize_int8(MPNetModel.from_pretrained(folder), outlier_threshold=OUTLIER_THRESHOLD)
"""

from __future__ import annotations

import numbers
import warnings
from typing import Optional

import torch
from torch import nn

OUTLIER_THRESHOLD = 3.0
"""The ``outlier_threshold`` for post-norm encoders (BERT-style, MPNet); see the module docstring."""

# The bound C++ operator, without the Python wrapper that looks for fake script objects among the
# arguments of every call (1 us, where a decoding step makes ~50 calls of ~80 us).
_linear_dynamic = getattr(torch.ops.quantized.linear_dynamic.default, "_op",
                          torch.ops.quantized.linear_dynamic.default)


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


def _pack(weight: torch.Tensor, scales: torch.Tensor, bias: Optional[torch.Tensor]):
    """fbgemm's prepacked form of int8 ``weight`` (out, in) with per-row ``scales``."""
    zero_points = torch.zeros(weight.shape[0], dtype=torch.long)
    with warnings.catch_warnings():
        # torch marks its quantized tensor type as deprecated; it is still how its int8 kernels take weights.
        warnings.simplefilter("ignore", UserWarning)
        quantized = torch._make_per_channel_quantized_tensor(weight, scales.double(), zero_points, 0)
        return torch.ops.quantized.linear_prepack(quantized, bias)


class Int8Linear(nn.Module):
    """``y = x W^T + b`` with W in int8 (one scale per output channel) and x rounded to 8 bits per call;
    with ``outlier_threshold``, the input columns holding a larger value are multiplied in float32 (see
    the module docstring).

    Several ``Int8Linear`` reading the same input can be stacked into one (:meth:`stack`, as
    ``layers.stacked_linear`` does): each then keeps only its rows' place in the stack.
    """

    def __init__(self, weight: torch.Tensor, scales: torch.Tensor, bias: Optional[torch.Tensor] = None,
                 outlier_threshold: Optional[float] = None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.outlier_threshold = outlier_threshold
        self._packed = _pack(weight, scales, bias)
        self._reduce_range = _reduce_range()
        # The outlier columns are taken from the int8 weight as it is, unpacked.
        self._unpacked = None if outlier_threshold is None else (weight, scales)
        self._part = None  # (stacked Int8Linear, first row, end row) once stacked

    @classmethod
    def from_linear(cls, linear: nn.Linear, outlier_threshold: Optional[float] = None) -> "Int8Linear":
        weight = linear.weight.detach().float()
        scales = weight.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / 127
        quantized = torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8)
        bias = None if linear.bias is None else linear.bias.detach().float().clone()
        return cls(quantized, scales, bias, outlier_threshold)

    def unpack(self) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """(int8 weight, per-row scales, float bias or None)."""
        if self._part is not None:
            stack, start, end = self._part
            weight, scales, bias = stack.unpack()
            return weight[start:end], scales[start:end], None if bias is None else bias[start:end]
        quantized, bias = torch.ops.quantized.linear_unpack(self._packed)
        return quantized.int_repr(), quantized.q_per_channel_scales().float(), bias

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
        stack = Int8Linear(
            torch.cat([weight for weight, _, _ in parts]), torch.cat([scales for _, scales, _ in parts]),
            None if biases[0] is None else torch.cat(biases), thresholds.pop(),
        )
        start = 0
        for layer in layers:
            layer._packed, layer._unpacked = None, None
            layer._part = (stack, start, start + layer.out_features)
            start += layer.out_features
        return stack

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._part is not None:
            stack, start, end = self._part
            return stack(x)[..., start:end]
        if x.dtype != torch.float32 or x.shape[-1] != self.in_features:
            raise self._wrong_input(x)
        if self.outlier_threshold is None:
            return _linear_dynamic(x, self._packed, self._reduce_range)
        return self._with_outliers(x)

    def _wrong_input(self, x: torch.Tensor) -> Exception:
        if x.dtype != torch.float32:
            return TypeError(f"Int8Linear: expected a float32 input, given {x.dtype}")
        return ValueError(f"Int8Linear: expected an input of {self.in_features} features in its last dimension, "
                          f"given shape {tuple(x.shape)}")

    def _with_outliers(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        if flat.shape[0] == 0:
            return _linear_dynamic(x, self._packed, self._reduce_range)
        outliers = (flat.abs().amax(dim=0) > self.outlier_threshold).nonzero().squeeze(1)
        if not outliers.numel():
            return _linear_dynamic(x, self._packed, self._reduce_range)
        out = _linear_dynamic(flat.index_fill(1, outliers, 0.0), self._packed, self._reduce_range)
        weight, scales = self._unpacked
        columns = weight[:, outliers].float() * scales[:, None]
        out.addmm_(flat[:, outliers], columns.t())
        return out.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        threshold = "" if self.outlier_threshold is None else f", outlier_threshold={self.outlier_threshold}"
        return f"in_features={self.in_features}, out_features={self.out_features}{threshold}"

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        raise RuntimeError(
            f"{prefix.rstrip('.') or 'model'}: an int8-quantized model cannot be saved or give a state_dict; save "
            "the float model and call quantize_int8 after loading it"
        )


def quantize_int8(model: nn.Module, outlier_threshold: Optional[float] = None) -> nn.Module:
    """Replace, in place, every ``nn.Linear`` of a float32 PyTorch ``model`` by an :class:`Int8Linear`
    (int8 weights, per-channel scales) and return the model, in eval mode, for faster CPU inference.

    ``outlier_threshold``: None (decoders) or a number > 0, above which an input column is multiplied in
    float32; :data:`OUTLIER_THRESHOLD` for post-norm encoders (see the module docstring).

    Greedy decoding usually picks the same tokens as in float32; logits move by about a percent. The
    float weights of the replaced layers are released, so ``copy.deepcopy`` the model first to keep a
    float32 one. Gradients, saving and other dtypes are not available afterwards.

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
    linears = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
               if isinstance(child, nn.Linear)]
    for parent, name, linear in linears:
        if linear.weight.dtype != torch.float32 or linear.weight.device.type != "cpu":
            raise ValueError(
                f"quantize_int8: expected float32 weights on the CPU, given {linear.weight.dtype} on "
                f"{linear.weight.device} in {name!r}; load with dtype=torch.float32"
            )
    threshold = None if outlier_threshold is None else float(outlier_threshold)
    replaced: dict[int, Int8Linear] = {}  # a layer reachable twice becomes one Int8Linear
    for parent, name, linear in linears:
        if id(linear) not in replaced:
            replaced[id(linear)] = Int8Linear.from_linear(linear, threshold)
        setattr(parent, name, replaced[id(linear)])
    model.eval()
    model.requires_grad_(False)
    return model


__all__ = ["Int8Linear", "OUTLIER_THRESHOLD", "quantize_int8"]
