"""TF RoBERTa (Keras 3) against polyformers' PyTorch RoBERTa and the reference's own 4.37 TF classes.

One module-scoped fixture does the slow work once: perturbed PyTorch checkpoints, the Keras models
loaded from them, and one run of the 4.37 environment (its TF classes on the same folders with
``from_pt=True``, its ``tf_model.h5`` files, its PyTorch classes on folders saved by our Keras models).
Inputs hold real padding (right, left, a pad id inside a row): RoBERTa derives positions from it.
"""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest

import polyformers as P

from ._family_common import (
    ALL, ATOL, ENC, assert_close, assert_common_input_mistakes_named, assert_dropout_only_in_training,
    assert_fit_lowers_loss, assert_foreign_h5_refused, assert_input_formats_agree, bare_model_calls, call_specs,
    family_tests, flatten_fields, load_reference_h5, mlm_labels_and_head_mask, padded_batch,
)

PAD = 1
TINY = dict(
    vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
    max_position_embeddings=40, type_vocab_size=2, pad_token_id=PAD, bos_token_id=0, eos_token_id=2,
)
CROSS = dict(TINY, is_decoder=True, add_cross_attention=True)
B, S = 4, 9


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.RandomState(0)
    ids, mask = padded_batch(rng, 3, TINY["vocab_size"], 0, PAD)  # after left padding, positions start at PAD + 1
    ids[3, 4] = PAD  # a pad id the mask keeps
    right = mask.copy()
    right[2] = 1
    right[2, 7:] = 0  # decoders: right padding only, so that no query row is fully masked
    dec_ids = np.where(right == 1, ids, PAD)
    dec_ids[3, 4] = 7
    types = np.zeros((B, S), dtype=np.int64)
    types[:, 5:] = 1
    mlm, head_mask = mlm_labels_and_head_mask(ids)
    return dict(
        ids=ids, mask=mask, types=types, mlm=mlm, head_mask=head_mask,
        embeds=rng.randn(B, S, TINY["hidden_size"]).astype(np.float32),
        positions=rng.randint(0, TINY["max_position_embeddings"], (B, S)),
        dec_ids=dec_ids, dec_mask=right, step=rng.randint(3, TINY["vocab_size"], (B, 1)),
        step_mask=np.concatenate([right, np.ones((B, 1), dtype=np.int64)], 1),
        enc=rng.randn(B, 5, TINY["hidden_size"]).astype(np.float32),
        enc_mask=np.array([[1, 1, 1, 0, 0]] + [[1] * 5] * 3),
        seq3=rng.randint(0, 3, (B,)), reg=rng.randn(B).astype(np.float32),
        multi=rng.randint(0, 2, (B, 4)).astype(np.float32),
        tok=np.where(mask == 1, rng.randint(0, 5, (B, S)), -100),
        start=np.array([1, 8, 2, 0]), end=np.array([3, 8, 5, 0]),
        mc_ids=np.stack([ids[:2], ids[2:]]), mc_mask=np.stack([mask[:2], mask[2:]]), mc_labels=np.array([0, 1]),
    )


BASE, EVERY = call_specs(token_type_ids="@types")

# name: (class without "TF", config, calls, how many of the calls the 4.37 TF class runs too: it has no
# head_mask, relative positions, untied LM head or multi-label loss)
CASES = {
    "model": ("RobertaModel", TINY, bare_model_calls(BASE, EVERY), ALL),
    "model_extras": ("RobertaModel", dict(TINY, position_embedding_type="relative_key_query"),
                     [EVERY, dict(BASE, head_mask="@head_mask")], 0),
    "masked_lm": ("RobertaForMaskedLM", TINY, [dict(EVERY, labels="@mlm"), dict(BASE, labels="@mlm", return_dict=False),
                                               {"inputs_embeds": "@embeds", "attention_mask": "@mask"}], ALL),
    "masked_lm_untied": ("RobertaForMaskedLM", dict(TINY, tie_word_embeddings=False), [dict(BASE, labels="@mlm")], 0),
    "causal": ("RobertaForCausalLM", CROSS, [
        dict(ENC, input_ids="@dec_ids", attention_mask="@dec_mask", output_attentions=True, output_hidden_states=True),
        dict(ENC, input_ids="@step", attention_mask="@step_mask", past_key_values="#0.past_key_values",
             output_attentions=True),
        dict(ENC, input_ids="@dec_ids", attention_mask="@dec_mask", labels="@dec_ids", use_cache=False),
    ], ALL),
    "seq": ("RobertaForSequenceClassification", dict(TINY, num_labels=3), [dict(EVERY, labels="@seq3")], ALL),
    "seq_regression": ("RobertaForSequenceClassification", dict(TINY, num_labels=1), [dict(BASE, labels="@reg")], ALL),
    "seq_multi": ("RobertaForSequenceClassification",
                  dict(TINY, num_labels=4, problem_type="multi_label_classification"), [dict(BASE, labels="@multi")],
                  0),
    "token": ("RobertaForTokenClassification", dict(TINY, num_labels=5), [dict(EVERY, labels="@tok")], ALL),
    "qa": ("RobertaForQuestionAnswering", TINY, [dict(EVERY, start_positions="@start", end_positions="@end")], ALL),
    # The 4.37 TF class hands output_attentions/output_hidden_states to the wrong arguments of its main
    # layer, so it returns neither: only the first call is compared with it.
    "choice": ("RobertaForMultipleChoice", TINY, [
        {"input_ids": "@mc_ids", "attention_mask": "@mc_mask", "labels": "@mc_labels"},
        {"input_ids": "@mc_ids", "attention_mask": "@mc_mask", "output_hidden_states": True, "output_attentions": True},
    ], 1),
}


world, test_matches_polyformers_pytorch, test_matches_reference_tf_classes, test_reference_pytorch_loads_our_save = \
    family_tests("tf_roberta", CASES, P.RobertaConfig, TINY, _arrays, ours=("masked_lm", 2))


def test_loads_reference_h5(world):
    load_reference_h5(world, P.TFRobertaForMaskedLM, P.TFRobertaModel, "roberta")


def test_h5_of_another_architecture_is_refused(world):
    assert_foreign_h5_refused(world, P.TFRobertaModel, P.RobertaConfig(**TINY))


def test_input_formats_agree(world):
    assert_input_formats_agree(world["tf"]["masked_lm"], world["arrays"], "mlm", int32_mask_and_labels=False)


def test_bad_inputs_name_the_problem(world):
    model, a = world["tf"]["model"], world["arrays"]
    assert_common_input_mistakes_named(model, a["ids"], 15, 13, {"labels": a["ids"]})
    with pytest.raises(ValueError, match=r"\['attention_mask'\] both"):
        model({"input_ids": a["ids"], "attention_mask": a["mask"]}, attention_mask=a["mask"])
    with pytest.raises(IndexError, match="input_ids holds id 99, outside"):
        model(np.full((1, 3), 99))
    with pytest.raises(ValueError, match=r"attention_mask has shape \(4, 8\), expected \(4, 9\)"):
        model(a["ids"], attention_mask=a["mask"][:, :8])


def test_training_switches_dropout(world):
    config = P.RobertaConfig(**dict(TINY, hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.3))
    assert_dropout_only_in_training(P.TFRobertaForMaskedLM(config), world["arrays"]["ids"])


def test_decoder_steps_equal_the_full_pass(world):
    model, a = world["tf"]["causal"], world["arrays"]
    ids = a["ids"][:, :] * 0 + a["dec_ids"]
    ids = np.where(ids == PAD, 5, ids)  # no padding: the step sees every earlier token
    enc = {"encoder_hidden_states": a["enc"], "encoder_attention_mask": a["enc_mask"]}
    full = model(ids, **enc, use_cache=False)
    assert "past_key_values" not in full
    past = None
    logits = []
    for start, stop in ((0, 5), (5, 6), (6, 9)):
        step = model(ids[:, start:stop], past_key_values=past, use_cache=True, **enc)
        past = step.past_key_values
        assert len(past) == 2 and len(past[0]) == 4 and past[0][0].shape[2] == stop
        logits.append(np.asarray(step.logits))
    np.testing.assert_allclose(np.concatenate(logits, 1), full.logits, atol=ATOL)


def test_jit_compiled_forward_equals_eager(world):
    import tensorflow as tf

    model, a = world["tf"]["causal"], world["arrays"]
    args = dict(attention_mask=a["dec_mask"], encoder_hidden_states=a["enc"], output_attentions=True)

    @tf.function(jit_compile=True)
    def forward(ids):
        return model(ids, **args)

    eager = model(a["dec_ids"], **args)
    compiled = forward(tf.constant(a["dec_ids"]))
    assert list(compiled.keys()) == list(eager.keys())
    for key in ("logits", "attentions", "cross_attentions", "past_key_values"):
        assert_close(flatten_fields(eager, [key]), flatten_fields(compiled, [key]), f"jit {key}")


def test_fit_trains_with_labels_in_the_inputs(world):
    a = world["arrays"]
    model = P.TFRobertaForSequenceClassification.from_pretrained(world["root"] / "seq")
    assert_fit_lowers_loss(model, {"input_ids": a["ids"], "attention_mask": a["mask"], "labels": a["seq3"]}, B)


def test_same_classes_run_on_the_jax_backend(world):
    """The layers use keras.ops only, so KERAS_BACKEND=jax runs the same model to the same outputs."""
    import sys

    folder, out = world["root"] / "masked_lm", world["root"] / "jax_logits.npy"
    code = (
        "import sys, numpy as np, keras, polyformers as P\n"
        "assert keras.backend.backend() == 'jax'\n"
        "m = P.TFRobertaForMaskedLM.from_pretrained(sys.argv[1])\n"
        "a = np.load(sys.argv[2])\n"
        "np.save(sys.argv[3], np.asarray(m(a['ids'], attention_mask=a['mask'], token_type_ids=a['types']).logits))\n"
    )
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", code, str(folder), str(world["root"] / "inputs.npz"), str(out)],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    a = world["arrays"]
    expected = world["tf"]["masked_lm"](a["ids"], attention_mask=a["mask"], token_type_ids=a["types"]).logits
    np.testing.assert_allclose(np.load(out), expected, atol=ATOL)
