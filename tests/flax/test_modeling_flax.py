"""The Flax core without a model: the checkpoint naming rule, outputs as pytrees, lazy imports."""

from __future__ import annotations

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from polyformers.flax.modeling import torch_key
from polyformers.outputs import FlaxBaseModelOutput, FlaxSeq2SeqLMOutput


@pytest.mark.parametrize(
    "path, key, transposed",
    [
        (("model", "encoder", "layers", "0", "fc1", "kernel"), "model.encoder.layers.0.fc1.weight", True),
        (("model", "encoder", "layers", "0", "fc1", "bias"), "model.encoder.layers.0.fc1.bias", False),
        (("model", "decoder", "layer_norm", "scale"), "model.decoder.layer_norm.weight", False),
        (("model", "shared", "embedding"), "model.shared.weight", False),
        (("final_logits_bias",), "final_logits_bias", False),
    ],
)
def test_torch_key_rule(path, key, transposed):
    assert torch_key(path) == (key, transposed)


def test_torch_key_exceptions():
    assert torch_key(("a", "kernel"), {"a.kernel": "b.weight"}) == ("b.weight", False)


def test_outputs_are_pytrees():
    import polyformers.flax  # noqa: F401  (registers the Flax outputs)

    out = FlaxSeq2SeqLMOutput(logits=jnp.ones((1, 2)), encoder_hidden_states=(jnp.zeros(1), jnp.zeros(2)))
    doubled = jax.jit(lambda o: jax.tree_util.tree_map(lambda x: x * 2, o))(out)
    assert type(doubled) is FlaxSeq2SeqLMOutput and list(doubled.keys()) == ["logits", "encoder_hidden_states"]
    np.testing.assert_array_equal(np.asarray(doubled.logits), 2 * np.ones((1, 2)))
    assert doubled.to_tuple()[0] is doubled.logits and doubled.encoder_last_hidden_state is None
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(FlaxBaseModelOutput(last_hidden_state=1))[0]]
    assert paths == ["['last_hidden_state']"]


def test_flax_classes_import_only_jax():
    code = (
        "import sys, polyformers\n"
        "assert not any(m.split('.')[0] in ('jax', 'flax', 'torch') for m in sys.modules)\n"
        "polyformers.FlaxPegasusForConditionalGeneration\n"
        "assert 'jax' in sys.modules and 'flax' in sys.modules\n"
        "assert 'torch' not in sys.modules and 'tensorflow' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
