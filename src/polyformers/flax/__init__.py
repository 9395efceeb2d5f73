"""Flax (linen) models: the reference's ``Flax*`` classes, on JAX.

Importing this package makes the Flax output classes JAX pytrees, so ``jax.jit`` of ``encode``,
``decode``, ``__call__`` or ``generate`` can return them; the model files import Flax, this file
imports only JAX.
"""

import jax

from .. import outputs as _outputs


def _register_outputs() -> None:
    # A ModelOutput holds only the fields that are set; its keys travel as static data so that a
    # compiled function returns the same record (same keys, same order) it built while tracing.
    def flatten_with_keys(output):
        keys = tuple(output.keys())
        return [(jax.tree_util.DictKey(k), output[k]) for k in keys], keys

    def flatten(output):
        keys = tuple(output.keys())
        return [output[k] for k in keys], keys

    def unflatten(cls, keys, children):
        record = cls()
        for key, child in zip(keys, children):
            record[key] = child
        return record

    for name in _outputs.__all__:
        if name.startswith("Flax"):
            cls = getattr(_outputs, name)
            jax.tree_util.register_pytree_with_keys(cls, flatten_with_keys, lambda k, c, cls=cls: unflatten(cls, k, c),
                                                    flatten)


_register_outputs()
