"""TF ELECTRA (Keras 3) against polyformers' PyTorch ELECTRA and the reference's own 4.37 TF classes.

One module-scoped fixture does the slow work once: perturbed PyTorch checkpoints (embeddings narrower
than the encoder, so the projection is exercised), the Keras models loaded from them, and one run of the
4.37 environment (its TF classes on the same folders with ``from_pt=True``, a ``tf_model.h5`` it writes,
its PyTorch class on a folder saved by our Keras model).
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import polyformers as P

from ._family_common import (
    ALL, ATOL, ENC, assert_common_input_mistakes_named, assert_dropout_only_in_training, assert_fit_lowers_loss,
    assert_foreign_h5_refused, assert_input_formats_agree, assert_jit_equals_eager, bare_model_calls, call_specs,
    family_tests, load_reference_h5, mlm_labels_and_head_mask, padded_batch,
)

PAD = 0
TINY = dict(
    vocab_size=99, embedding_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
    intermediate_size=37, max_position_embeddings=40, type_vocab_size=2, pad_token_id=PAD,
)
CROSS = dict(TINY, is_decoder=True, add_cross_attention=True)
B, S = 4, 9


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.RandomState(1)
    ids, mask = padded_batch(rng, 5, TINY["vocab_size"], 2, PAD)
    right = mask.copy()
    right[2] = 1
    right[2, 7:] = 0  # decoders: right padding only, so that no query row is fully masked
    types = np.zeros((B, S), dtype=np.int64)
    types[:, 5:] = 1
    mlm, head_mask = mlm_labels_and_head_mask(ids)
    return dict(
        ids=ids, mask=mask, types=types, mlm=mlm, head_mask=head_mask,
        embeds=rng.randn(B, S, TINY["embedding_size"]).astype(np.float32),
        positions=rng.randint(0, TINY["max_position_embeddings"], (B, S)),
        dec_mask=right, step=rng.randint(5, TINY["vocab_size"], (B, 1)),
        step_mask=np.concatenate([right, np.ones((B, 1), dtype=np.int64)], 1),
        enc=rng.randn(B, 5, TINY["hidden_size"]).astype(np.float32),
        enc_mask=np.array([[1, 1, 1, 0, 0]] + [[1] * 5] * 3),
        replaced=rng.randint(0, 2, (B, S)), seq3=rng.randint(0, 3, (B,)), reg=rng.randn(B).astype(np.float32),
        tok=np.where(mask == 1, rng.randint(0, 5, (B, S)), -100),
        start=np.array([1, 8, 2, 0]), end=np.array([3, 8, 5, 0]),
        mc_ids=np.stack([ids[:2], ids[2:]]), mc_mask=np.stack([mask[:2], mask[2:]]),
        mc_types=np.stack([types[:2], types[2:]]), mc_labels=np.array([0, 1]),
    )


BASE, EVERY = call_specs(token_type_ids="@types")

# name: (class without "TF", config, calls, how many of the calls the 4.37 TF class runs too: it has no
# head_mask, relative positions, untied LM head or pre-training labels)
CASES = {
    "model": ("ElectraModel", TINY, bare_model_calls(BASE, EVERY), ALL),
    "model_extras": ("ElectraModel", dict(TINY, position_embedding_type="relative_key_query"),
                     [EVERY, dict(EVERY, head_mask="@head_mask")], 0),
    # The cache is asked for explicitly: the PyTorch class ignores config.use_cache, the TF ones do not.
    "decoder": ("ElectraModel", CROSS, [
        dict(ENC, input_ids="@ids", attention_mask="@dec_mask", use_cache=True, output_attentions=True,
             output_hidden_states=True),
        dict(ENC, input_ids="@step", attention_mask="@step_mask", past_key_values="#0.past_key_values",
             use_cache=True, output_attentions=True),
    ], ALL),
    "pretraining": ("ElectraForPreTraining", TINY, [
        EVERY, dict(BASE, return_dict=False), dict(BASE, labels="@replaced"), {"input_ids": "@ids", "labels": "@replaced"},
    ], 2),
    "masked_lm": ("ElectraForMaskedLM", TINY, [
        dict(EVERY, labels="@mlm"), dict(BASE, labels="@mlm", return_dict=False),
        {"inputs_embeds": "@embeds", "attention_mask": "@mask"},
    ], ALL),
    "masked_lm_untied": ("ElectraForMaskedLM", dict(TINY, tie_word_embeddings=False), [dict(BASE, labels="@mlm")], 0),
    "seq": ("ElectraForSequenceClassification", dict(TINY, num_labels=3), [dict(EVERY, labels="@seq3")], ALL),
    "seq_regression": ("ElectraForSequenceClassification", dict(TINY, num_labels=1), [dict(BASE, labels="@reg")], ALL),
    "token": ("ElectraForTokenClassification", dict(TINY, num_labels=5), [dict(EVERY, labels="@tok")], ALL),
    "qa": ("ElectraForQuestionAnswering", TINY, [dict(EVERY, start_positions="@start", end_positions="@end")], ALL),
    "choice": ("ElectraForMultipleChoice", TINY, [
        {"input_ids": "@mc_ids", "attention_mask": "@mc_mask", "token_type_ids": "@mc_types", "labels": "@mc_labels",
         "output_attentions": True, "output_hidden_states": True},
    ], ALL),
}


world, test_matches_polyformers_pytorch, test_matches_reference_tf_classes, test_reference_pytorch_loads_our_save = \
    family_tests("tf_electra", CASES, P.ElectraConfig, TINY, _arrays, ours=("masked_lm", 2))


def test_pretraining_loss_has_the_documented_shape(world):
    """(1,), the mean binary cross-entropy over the tokens the attention mask keeps."""
    a = world["arrays"]
    out = world["tf"]["pretraining"](a["ids"], attention_mask=a["mask"], labels=a["replaced"])
    assert list(out.keys()) == ["loss", "logits"] and tuple(out.loss.shape) == (1,)
    logits, labels, keep = np.asarray(out.logits, np.float64), a["replaced"], a["mask"] == 1
    bce = np.logaddexp(0, logits) - labels * logits
    np.testing.assert_allclose(np.asarray(out.loss)[0], bce[keep].mean(), atol=ATOL)


def test_loads_reference_h5(world):
    # The generator's h5, into the generator and into the bare model.
    info, _ = load_reference_h5(world, P.TFElectraForMaskedLM, P.TFElectraModel, "electra")
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []


def test_h5_of_another_architecture_is_refused(world):
    assert_foreign_h5_refused(world, P.TFElectraModel, P.ElectraConfig(**TINY))


def test_input_formats_agree(world):
    assert_input_formats_agree(world["tf"]["token"], world["arrays"], "tok", int32_mask_and_labels=True)


def test_bad_inputs_name_the_problem(world):
    model, a = world["tf"]["pretraining"], world["arrays"]
    assert_common_input_mistakes_named(model, a["ids"], 11, 10, {"encoder_hidden_states": a["enc"]})
    with pytest.raises(IndexError, match="token_type_ids holds id 2, outside"):
        model(a["ids"], token_type_ids=a["types"] * 2)
    with pytest.raises(ValueError, match="the input needs 41 positions"):
        model(np.full((1, 41), 5))
    with pytest.raises(ValueError, match=r"inputs_embeds has shape \(4, 9, 32\), expected \(any, any, 16\)"):
        model(inputs_embeds=np.zeros((B, S, 32), np.float32))


def test_training_switches_dropout(world):
    config = P.ElectraConfig(**dict(TINY, hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.3))
    assert_dropout_only_in_training(P.TFElectraForPreTraining(config), world["arrays"]["ids"])


def test_decoder_steps_equal_the_full_pass(world):
    model, a = world["tf"]["decoder"], world["arrays"]
    enc = {"encoder_hidden_states": a["enc"], "encoder_attention_mask": a["enc_mask"]}
    ids = np.where(a["ids"] == PAD, 5, a["ids"])
    full = model(ids, **enc)
    assert len(full.past_key_values) == 2  # config.use_cache decides, as in the reference's TF class
    past, states = None, []
    for start, stop in ((0, 4), (4, 5), (5, 9)):
        step = model(ids[:, start:stop], past_key_values=past, **enc)
        past = step.past_key_values
        assert len(past[0]) == 4 and past[0][0].shape[2] == stop
        states.append(np.asarray(step.last_hidden_state))
    np.testing.assert_allclose(np.concatenate(states, 1), full.last_hidden_state, atol=ATOL)


def test_jit_compiled_forward_equals_eager(world):
    a = world["arrays"]
    assert_jit_equals_eager(world["tf"]["choice"], a["mc_ids"], a["mc_mask"], output_attentions=True)


def test_fit_trains_the_discriminator_with_labels_in_the_inputs(world):
    a = world["arrays"]
    model = P.TFElectraForPreTraining.from_pretrained(world["root"] / "pretraining")
    assert_fit_lowers_loss(model, {"input_ids": a["ids"], "attention_mask": a["mask"], "labels": a["replaced"]}, B)


def test_spec_example_pretraining_output(world, assets, tmp_path):
    """The reference's discriminator examples, unchanged but for the import and a local folder."""
    folder = tmp_path / "electra-small-discriminator"
    config = P.ElectraConfig(**dict(TINY, vocab_size=30522))
    P.TFElectraForPreTraining(config).save_pretrained(folder)
    shutil.copy(assets / "minilm" / "vocab.txt", folder / "vocab.txt")

    import tensorflow as tf
    from polyformers import AutoTokenizer, TFElectraForPreTraining

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = TFElectraForPreTraining.from_pretrained(str(folder))
    input_ids = tf.constant(tokenizer.encode("Hello, my dog is cute"))[None, :]  # Batch size 1
    outputs = model(input_ids)
    scores = outputs[0]
    assert tuple(scores.shape) == (1, 8)

    discriminator = TFElectraForPreTraining.from_pretrained(str(folder))
    sentence = "The quick brown fox jumps over the lazy dog"
    fake_sentence = "The quick brown fox fake over the lazy dog"
    fake_tokens = tokenizer.tokenize(fake_sentence, add_special_tokens=True)
    fake_inputs = tokenizer.encode(fake_sentence, return_tensors="tf")
    discriminator_outputs = discriminator(fake_inputs)
    predictions = tf.round((tf.sign(discriminator_outputs[0]) + 1) / 2)
    assert sentence and len(fake_tokens) == predictions.shape[1] == 11
    assert set(np.unique(predictions.numpy())) <= {0.0, 1.0}
    assert type(discriminator_outputs).__name__ == "TFElectraForPreTrainingOutput"
