"""Int8 dynamic quantization for CPU inference.

Every ``nn.Linear`` becomes an :class:`Int8DynamicLinear`: int8 weights with one scale per output channel,
and an input quantized to 8 bits at each call with one scale for the call (PyTorch's fbgemm / x86 dynamic
kernels). Linear layers hold nearly all of an encoder's arithmetic, so that is where the speed-up comes
from; embeddings, norms, the attention product and activations stay in float32.

One scale for a whole input is not enough for post-norm encoders: a few hidden dimensions carry values
10-100x larger than the rest (in all-mpnet-base-v2, up to ~100 entering the feed-forward output layer), so
a single scale flattens every other dimension, and plain ``torch.ao.quantization.quantize_dynamic`` leaves
mean-pooled embeddings at a cosine similarity of ~0.5 to the float32 ones. As in LLM.int8() (Dettmers et
al., 2022), the input columns holding such outliers are taken out of the int8 product and multiplied in
float32; there are a handful per layer, so this costs little.

The result is for inference: it cannot be trained, saved with ``save_pretrained`` or have weights re-tied.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

# Inputs whose magnitude exceeds this anywhere in a call are multiplied in float32. LLM.int8() uses 6; with
# the 7-bit inputs below, all-mpnet-base-v2's mean-pooled embeddings need 3 for a cosine >= 0.99 to float32
# on every text of the benchmark (6: 0.983, 4: 0.990, 3: 0.992 at worst), at ~2% of the products in float32.
OUTLIER_THRESHOLD = 3.0


class Int8DynamicLinear(nn.Module):
    """``y = x W^T + b`` with W in int8 (per output channel) and x quantized per call, except the input
    columns that hold an outlier (``|x| > threshold``), which are multiplied in float32."""

    def __init__(self, linear: nn.Linear, threshold: float = OUTLIER_THRESHOLD):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.threshold = threshold
        weight = linear.weight.detach().float()
        scale = (weight.abs().amax(dim=1) / 127).clamp_min(torch.finfo(torch.float32).tiny)
        zero_points = torch.zeros(self.out_features, dtype=torch.long)
        bias = None if linear.bias is None else linear.bias.detach().float()
        with warnings.catch_warnings():
            # PyTorch announces that its quantized tensors will move to another package; they are the only
            # way into its int8 CPU kernels today.
            warnings.simplefilter("ignore", UserWarning)
            quantized = torch.quantize_per_channel(weight, scale.double(), zero_points, 0, torch.qint8)
            self._packed = torch.ops.quantized.linear_prepack(quantized, bias)
        # The int8 values once more, unpacked, for the few outlier columns.
        self.register_buffer("weight_int8", quantized.int_repr(), persistent=False)
        self.register_buffer("weight_scale", scale, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"input must have {self.in_features} features in its last dimension, got {tuple(x.shape)}")
        flat = x.reshape(-1, self.in_features).float()
        if flat.shape[0] == 0:
            return x.new_zeros(*x.shape[:-1], self.out_features)
        outliers = (flat.abs().amax(dim=0) > self.threshold).nonzero().squeeze(1)
        inliers = flat.index_fill(1, outliers, 0.0) if outliers.numel() else flat
        # reduce_range: 7-bit inputs, which the fbgemm kernels need to avoid saturating on CPUs without VNNI.
        out = torch.ops.quantized.linear_dynamic(inliers, self._packed, reduce_range=True)
        if outliers.numel():
            columns = self.weight_int8[:, outliers].float() * self.weight_scale[:, None]
            out = out + flat[:, outliers] @ columns.t()
        return out.view(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, threshold={self.threshold}"


def quantize_int8_dynamic(model: nn.Module, inplace: bool = False, threshold: float = OUTLIER_THRESHOLD) -> nn.Module:
    """An int8 dynamically quantized ``model`` for CPU inference: every ``nn.Linear`` becomes an
    :class:`Int8DynamicLinear`. ``inplace=False`` leaves ``model`` as it is and returns a quantized copy.

    Outputs are close to, not equal to, the float32 ones; ``bench/encoder_throughput.py`` measures the
    cosine similarity of mean-pooled all-mpnet-base-v2 embeddings and the speed.

        from polyformers.pt.quantization import quantize_int8_dynamic
        model = quantize_int8_dynamic(MPNetModel.from_pretrained(path).eval())
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    dtypes = sorted({str(p.dtype) for p in model.parameters() if p.is_floating_point()} - {"torch.float32"})
    if dtypes:
        raise ValueError(f"model must be float32 to be quantized, got parameters of dtype {dtypes}")
    devices = sorted({p.device.type for p in model.parameters()} - {"cpu"})
    if devices:
        raise ValueError(f"int8 dynamic quantization runs on the CPU, got parameters on {devices}")
    if model.training:
        raise ValueError("model must be in eval mode (call model.eval() first): a quantized model cannot be trained")
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0, got {threshold!r}")
    if not inplace:
        model = copy.deepcopy(model)
    replacements = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is nn.Linear
    ]
    for parent, name, child in replacements:
        setattr(parent, name, Int8DynamicLinear(child, threshold))
    return model
