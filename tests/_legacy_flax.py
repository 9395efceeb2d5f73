"""Flax helpers for the scripts that run in the 4.37 reference environment (tests/flax/oracle_flax.py,
tests/flax/_sharding_oracle.py, tests/pipelines/_legacy_oracle.py), which load this file by path.
Imports nothing at module level."""


def flax_from_pt(cls, folder):
    """``cls.from_pretrained(folder, from_pt=True)`` without 4.37's eager random initialisation (minutes on
    two cores; from_pt with _do_init=False fails in 4.37): every parameter comes from the checkpoint, so
    zeros of the right shapes do instead."""
    import jax
    import jax.numpy as jnp

    eager_init = cls.init_weights

    def zeros_init(self, rng, input_shape, params=None):
        if params is not None:
            return eager_init(self, rng, input_shape, params)
        shapes = jax.eval_shape(lambda key: eager_init(self, key, input_shape), rng)
        return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    cls.init_weights = zeros_init
    try:
        return cls.from_pretrained(folder, from_pt=True)
    finally:
        cls.init_weights = eager_init
