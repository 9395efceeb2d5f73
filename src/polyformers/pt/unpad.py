"""Padding-free inference for the encoders: the token-wise work runs on the real tokens only.

A padded batch of sentences of mixed lengths spends most of an encoder's time on padding: every linear
layer, layer norm and feed-forward runs on ``batch * longest`` positions. A padding position that the
attention mask hides never influences a real token (its key is masked out), so an encoder may drop it:
the real tokens are packed into one ``(tokens, hidden)`` matrix for the linear layers, and are spread back
into the padded ``(batch, heads, length, head_dim)`` layout only around the attention product itself.
The real tokens' states are those of the padded computation up to float rounding.

What changes is the padded positions' states. The reference computes them (each padding position attends
to its row's real tokens) although nothing downstream should read them; here they are not computed and
are returned as zeros, in the last hidden state and in every layer's hidden states after the embeddings.
Pooling that uses the attention mask (mean pooling, the first token of right-padded rows, losses whose
labels are -100 at padding) gives the same results. Because the padded positions' values differ, the
mode is opt-in, per model, with :func:`skip_padding`.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from . import layers as L


class Packing:
    """Where the real tokens of a padded (batch, length) layout are, to move states between that layout
    and the packed (tokens, ...) one. Real tokens keep their batch-major, left-to-right order."""

    def __init__(self, keep: torch.Tensor):
        self.batch, self.length = keep.shape
        self.rows, self.columns = keep.nonzero(as_tuple=True)

    @classmethod
    def from_additive_mask(cls, mask: Optional[torch.Tensor]) -> Optional["Packing"]:
        """The packing of a key-only 0 / dtype-min mask of shape (batch, 1, 1, length), or None when there
        is no such mask (query-dependent and fractional masks keep the padded path) or nothing is padded."""
        if mask is None or mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[2] != 1:
            return None
        mask = mask[:, 0, 0, :]
        keep = mask == 0
        if bool(keep.all()) or not bool((keep | (mask == torch.finfo(mask.dtype).min)).all()):
            return None
        return cls(keep)

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, length, ...) -> (tokens, ...)."""
        return x[self.rows, self.columns]

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        """(tokens, ...) -> (batch, length, ...), zeros at the padding positions."""
        out = x.new_zeros(self.batch, self.length, *x.shape[1:])
        out[self.rows, self.columns] = x
        return out

    def split_heads(self, x: torch.Tensor, num_heads: int) -> torch.Tensor:
        """Packed (tokens, heads * dim) -> padded (batch, heads, length, dim), for attention."""
        return L.split_heads(self.unpack(x), num_heads)

    def merge_heads(self, x: torch.Tensor) -> torch.Tensor:
        """Padded (batch, heads, length, dim) attention output -> packed (tokens, heads * dim)."""
        return x.transpose(1, 2)[self.rows, self.columns].flatten(1)


def skip_padding(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Make ``model``'s encoder skip the padding positions at inference (see the module's docstring).

    The packed path is taken when the model is in eval mode and a forward has a 0/1 ``attention_mask``
    of shape (batch, sequence) that hides some positions, no ``head_mask``, ``output_attentions=False``,
    and the model is not a decoder; otherwise the forward is the usual padded one. Padded positions'
    hidden states are zeros. Returns ``model``; ``enabled=False`` restores the reference's behaviour.

        model = skip_padding(MPNetModel.from_pretrained(path).eval())
    """
    encoders = [m for m in model.modules() if hasattr(m, "skip_padding")]
    if not encoders:
        raise ValueError(
            f"skip_padding needs a model with an encoder that can skip padding (ELECTRA, RoBERTa, MPNet), "
            f"got {type(model).__name__}"
        )
    for encoder in encoders:
        encoder.skip_padding = bool(enabled)
    return model
