"""The fixed-shape state the decoding loops share: writes into the sequence buffer and the preallocated cache,
and the per-step record of attentions and hidden states.

Every loop keeps its state at one shape, which is what ``tf.function(jit_compile=True)`` needs: the
sequences live in a ``(rows, max_length)`` buffer filled with padding, and the self-attention cache is
preallocated with ``max_length - 1`` slots per layer. Slot ``j`` holds token ``j``'s keys and values once
that token has been fed; the slots not yet written are masked out. A decoder layer appends the new token's
keys after all the slots, so each step's attention mask is the filled slots plus the new token, and the new
keys are then written into their own slot. Eagerly a loop stops as soon as nothing is left to decide and the
sequences are cut to the generated length; in a graph (XLA) they keep ``max_length`` columns, the unused ones
holding ``pad_token_id``, as the reference's TF ``generate`` does there. Attentions and hidden states
(``output_attentions`` / ``output_hidden_states``) are collected eagerly only, as in the reference.
"""

from __future__ import annotations

import tensorflow as tf


def _write_column(buffer, column, values):
    """``buffer`` (..., length) with ``values`` (...) written at index ``column`` of its last axis."""
    at = tf.range(buffer.shape[-1]) == column
    return tf.where(at, tf.cast(values, buffer.dtype)[..., None], buffer)


def _write(buffer, update, start):
    """``buffer`` with ``update`` written at ``start`` (one index per axis), a fixed-shape update XLA keeps
    in place."""
    from tensorflow.compiler.tf2xla.python import xla  # the op XLA lowers to an in-place update

    return xla.dynamic_update_slice(buffer, tf.cast(update, buffer.dtype), tf.stack(start))


def _last_logits(outputs):
    return tf.cast(outputs.logits[:, -1, :], tf.float32)


def _slot_cache(cache, present, position, pick=None):
    """``cache`` with the keys and values of the token just fed (the last entries of ``present``, of the rows
    ``pick`` when given) written into slot ``position``."""
    at = [0, 0, position, 0]

    def newest(t):
        t = t[:, :, -1:]
        return t if pick is None else tf.gather(t, pick, axis=0)

    return tuple(
        (_write(old[0], newest(new[0]), at), _write(old[1], newest(new[1]), at)) + tuple(old[2:])
        for old, new in zip(cache, present)
    )


class _Trace:
    """The attentions and hidden states of each step, when ``return_dict_in_generate`` comes with
    ``output_attentions`` / ``output_hidden_states``: per step, one tensor per layer as the model returns them
    for the token(s) fed, with the attention weights over the positions so far (the reference's layout, not
    the preallocated cache's). Like the reference's TF ``generate``, they are collected eagerly only: inside
    a compiled function the asked-for fields are empty tuples."""

    def __init__(self, config, eager: bool):
        wanted = bool(config.return_dict_in_generate)
        self.asked_attentions = wanted and bool(config.output_attentions)
        self.asked_hidden_states = wanted and bool(config.output_hidden_states)
        self.attentions = self.asked_attentions and eager
        self.hidden_states = self.asked_hidden_states and eager
        self._attentions, self._hidden_states = [], []

    def add(self, outputs, position, pick=None):
        """Note a forward pass; ``position``: the index of the single token fed (None for the prompt);
        ``pick``: the rows to keep (contrastive search keeps the chosen candidates)."""
        def rows(t):
            return t if pick is None else tf.gather(t, pick, axis=0)

        if self.attentions:
            layers = tuple(rows(a) for a in outputs.attentions)
            if position is not None:  # the filled slots, then the token itself
                p = int(position)
                layers = tuple(tf.concat([a[..., :p], a[..., -1:]], axis=-1) for a in layers)
            self._attentions.append(layers)
        if self.hidden_states:
            self._hidden_states.append(tuple(rows(h) for h in outputs.hidden_states))

    def fields(self, steps: int) -> dict:
        return {
            "attentions": tuple(self._attentions[:steps]) if self.asked_attentions else None,
            "hidden_states": tuple(self._hidden_states[:steps]) if self.asked_hidden_states else None,
        }
