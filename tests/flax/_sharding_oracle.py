"""The reference side of the loss check in tests/flax/test_sharding.py; runs in the 4.37 environment.

Loads the reference's FlaxPegasusForConditionalGeneration from a folder polyformers saved and computes
the training loss of one batch as the reference's Flax summarisation example does: decoder inputs from
the module's shift_tokens_right, the labels' padding mask as decoder_attention_mask (given to the model
too), label-smoothed cross-entropy minus the smoothed targets' entropy, summed over kept tokens and
divided by their count. Job (JSON on stdin): {"folder", "inputs" (npz), "smoothing": [..]}; prints JSON.
"""

import json
import runpy
import sys
from pathlib import Path

import numpy as np

# By path: tests/ on sys.path would let tests/flax shadow the flax package.
flax_from_pt = runpy.run_path(str(Path(__file__).resolve().parents[1] / "_legacy_flax.py"))["flax_from_pt"]


def main() -> None:
    job = json.loads(sys.stdin.read())
    import jax
    import jax.numpy as jnp
    import optax
    from flax.training.common_utils import onehot
    from transformers import FlaxPegasusForConditionalGeneration
    from transformers.models.pegasus.modeling_flax_pegasus import shift_tokens_right

    model = flax_from_pt(FlaxPegasusForConditionalGeneration, job["folder"])
    config = model.config
    data = dict(np.load(job["inputs"]))
    labels = data["labels"]
    decoder_input_ids = np.asarray(shift_tokens_right(labels, config.pad_token_id, config.decoder_start_token_id))
    decoder_attention_mask = (labels != config.pad_token_id).astype(np.int32)

    def loss_fn(logits, labels, padding_mask, label_smoothing_factor):
        vocab_size = logits.shape[-1]
        confidence = 1.0 - label_smoothing_factor
        low_confidence = (1.0 - confidence) / (vocab_size - 1)
        normalizing_constant = -(
            confidence * jnp.log(confidence) + (vocab_size - 1) * low_confidence * jnp.log(low_confidence + 1e-20)
        )
        soft_labels = onehot(labels, vocab_size, on_value=confidence, off_value=low_confidence)
        loss = optax.softmax_cross_entropy(logits, soft_labels) - normalizing_constant
        loss = (loss * padding_mask).sum()
        return loss / padding_mask.sum()

    call = jax.jit(lambda params, **batch: model(**batch, params=params, train=False)[0])
    logits = call(model.params, input_ids=data["input_ids"], attention_mask=data["attention_mask"],
                  decoder_input_ids=decoder_input_ids, decoder_attention_mask=decoder_attention_mask)
    losses = {str(s): float(loss_fn(logits, labels, decoder_attention_mask, s)) for s in job["smoothing"]}
    print(json.dumps({"losses": losses, "decoder_input_ids": decoder_input_ids.tolist()}))


if __name__ == "__main__":
    main()
