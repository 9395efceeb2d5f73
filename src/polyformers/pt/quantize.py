"""Opt-in int8 weights for faster decoding on CPU: :func:`quantize_int8`.

Decoding one token reads every weight once, so its speed is the memory bandwidth divided by the bytes
of the weights; int8 weights are a quarter of float32's. Each ``nn.Linear`` becomes an
:class:`Int8Linear`: its weight rounded to int8 with one float scale per output channel (symmetric,
``max |w| / 127``), multiplied by fbgemm's dynamic-quantization kernel, which rounds each input to
8 bits with one scale per call, multiplies in integers and rescales to float32. (Keeping the inputs in
float and converting the weights on the fly, by torch's weight-only int8 kernel or by dequantising a
layer at a time, reads the same bytes but computes too slowly to gain: ``bench/decode_speed.py``
measures all three.) Embeddings and norms stay float32.

A quantized model is for inference: it has no gradients and cannot be saved; quantize after loading.
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch
from torch import nn


def _has_vnni() -> bool:
    # Without VNNI, fbgemm's 8-bit products are summed in pairs into int16 and can saturate, unless the
    # inputs keep to 7 bits ("reduce_range"), as torch's own dynamic quantization does by default.
    try:
        with open("/proc/cpuinfo") as f:
            return any(flag in f.read() for flag in (" avx512_vnni", " avx_vnni"))
    except OSError:
        return False


_REDUCE_RANGE: Optional[bool] = None


def _reduce_range() -> bool:
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
    """A linear layer with int8 weights and one scale per output channel (see the module docstring).

    Several ``Int8Linear`` reading the same input can be stacked into one (:meth:`stack`, as
    ``layers.stacked_linear`` does): each then keeps only its rows' place in the stack.
    """

    def __init__(self, weight: torch.Tensor, scales: torch.Tensor, bias: Optional[torch.Tensor] = None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self._packed = _pack(weight, scales, bias)
        self._part = None  # (stacked Int8Linear, first row, end row) once stacked

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Int8Linear":
        weight = linear.weight.detach().float()
        scales = weight.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / 127
        quantized = torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8)
        bias = None if linear.bias is None else linear.bias.detach().float().clone()
        return cls(quantized, scales, bias)

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
        stack = Int8Linear(
            torch.cat([weight for weight, _, _ in parts]), torch.cat([scales for _, scales, _ in parts]),
            None if biases[0] is None else torch.cat(biases),
        )
        start = 0
        for layer in layers:
            layer._packed, layer._part = None, (stack, start, start + layer.out_features)
            start += layer.out_features
        return stack

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._part is not None:
            stack, start, end = self._part
            return stack(x)[..., start:end]
        if x.dtype != torch.float32:
            raise TypeError(f"Int8Linear: expected a float32 input, given {x.dtype}")
        return torch.ops.quantized.linear_dynamic(x, self._packed, _reduce_range())

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        raise RuntimeError(
            f"{prefix.rstrip('.') or 'model'}: an int8-quantized model cannot be saved or give a state_dict; save "
            "the float model and call quantize_int8 after loading it"
        )


def quantize_int8(model: nn.Module) -> nn.Module:
    """Replace, in place, every ``nn.Linear`` of a float32 PyTorch ``model`` by an :class:`Int8Linear`
    (int8 weights, per-channel scales) and return the model, for faster CPU inference.

    Greedy decoding usually picks the same tokens as in float32; logits move by about a percent. The
    float weights of the replaced layers are released (a head tied to the input embeddings keeps the
    embedding in float32). Gradients, saving and other dtypes are not available afterwards.

        model = GPTJForCausalLM.from_pretrained(folder)
        quantize_int8(model).generate(input_ids, max_new_tokens=32)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"quantize_int8: expected a torch.nn.Module, given {type(model).__name__}")
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
    replaced: dict[int, Int8Linear] = {}  # a layer reachable twice becomes one Int8Linear
    for parent, name, linear in linears:
        if id(linear) not in replaced:
            replaced[id(linear)] = Int8Linear.from_linear(linear)
        setattr(parent, name, replaced[id(linear)])
    model.eval()
    model.requires_grad_(False)
    return model


__all__ = ["Int8Linear", "quantize_int8"]
