"""SavedModel export: a model written with ``export`` (or ``save_pretrained(saved_model=True)``) and read
back with ``tf.saved_model.load`` answers its serving signature with the live model's outputs, for
inputs of a batch size and length that were never traced before export."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import polyformers as P

PAD = 1
SMALL = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
             max_position_embeddings=40, type_vocab_size=2, pad_token_id=PAD)
CASES = {
    "roberta_seq": ("TFRobertaForSequenceClassification", P.RobertaConfig, dict(SMALL, num_labels=3)),
    "roberta_causal": ("TFRobertaForCausalLM", P.RobertaConfig, dict(SMALL, is_decoder=True)),
    "roberta_choice": ("TFRobertaForMultipleChoice", P.RobertaConfig, SMALL),
    "mpnet_qa": ("TFMPNetForQuestionAnswering", P.MPNetConfig, SMALL),
    "electra_pretraining": ("TFElectraForPreTraining", P.ElectraConfig, dict(SMALL, embedding_size=16)),
}


def _inputs(rank: int, names, batch: int, length: int) -> dict:
    rng = np.random.RandomState(batch * 100 + length)
    shape = (batch, 2, length) if rank == 3 else (batch, length)
    ids = rng.randint(3, SMALL["vocab_size"], shape).astype(np.int32)
    mask = np.ones(shape, np.int32)
    mask[-1, ..., length - 2:] = 0  # the last row right-padded
    ids[mask == 0] = PAD
    found = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros(shape, np.int32)}
    return {name: found[name] for name in names}


def _model(name):
    cls_name, config_cls, config = CASES[name]
    tf.keras.utils.set_random_seed(0)
    return getattr(P, cls_name)(config_cls(**config)).build_model()


@pytest.mark.parametrize("name", list(CASES))
def test_reloaded_savedmodel_gives_the_same_outputs(tmp_path, name):
    model = _model(name)
    model.export(tmp_path / name)
    reloaded = tf.saved_model.load(str(tmp_path / name))
    serve = reloaded.signatures["serving_default"]
    spec = model.input_signature
    assert sorted(serve.structured_input_signature[1]) == sorted(spec)
    rank = len(next(iter(spec.values())).shape)
    for batch, length in ((2, 7), (3, 4)):  # neither is the dummy input the model was built with
        inputs = _inputs(rank, spec, batch, length)
        live = model(**inputs, return_dict=True)
        expected = {k: np.asarray(v) for k, v in live.items() if tf.is_tensor(v)}
        got = {k: v.numpy() for k, v in serve(**{k: tf.constant(v) for k, v in inputs.items()}).items()}
        assert sorted(got) == sorted(expected), name
        for key, value in expected.items():
            np.testing.assert_allclose(got[key], value, atol=1e-5, err_msg=f"{name}: {key}")
        again = reloaded.serve(inputs)  # the endpoint itself, called with the dict
        first = next(iter(expected))
        np.testing.assert_allclose(again[first].numpy(), expected[first], atol=1e-5)


def test_save_pretrained_writes_a_savedmodel_beside_the_weights(tmp_path):
    model = _model("roberta_seq")
    model.save_pretrained(tmp_path, saved_model=True, version=3)
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "config.json").exists()
    assert (tmp_path / "saved_model" / "3" / "saved_model.pb").exists()
    reloaded = tf.saved_model.load(str(tmp_path / "saved_model" / "3"))
    inputs = _inputs(2, model.input_signature, 2, 5)
    got = reloaded.signatures["serving_default"](**{k: tf.constant(v) for k, v in inputs.items()})["logits"]
    np.testing.assert_allclose(got.numpy(), model(**inputs).logits, atol=1e-5)
    # The safetensors beside it still load as usual.
    loaded = P.TFRobertaForSequenceClassification.from_pretrained(tmp_path)
    np.testing.assert_allclose(loaded(**inputs).logits, model(**inputs).logits, atol=1e-6)


def test_custom_input_signature_and_bad_ones(tmp_path):
    model = _model("roberta_seq")
    ids_only = {"input_ids": tf.TensorSpec((None, None), tf.int32, name="input_ids")}
    model.export(tmp_path / "ids_only", input_signature=ids_only)
    serve = tf.saved_model.load(str(tmp_path / "ids_only")).signatures["serving_default"]
    ids = _inputs(2, ["input_ids"], 2, 6)["input_ids"]
    np.testing.assert_allclose(serve(input_ids=tf.constant(ids))["logits"].numpy(), model(ids).logits, atol=1e-5)
    with pytest.raises(TypeError, match="input_signature: expected a dict of tf.TensorSpec"):
        model.export(tmp_path / "bad", input_signature=[tf.TensorSpec((None, None), tf.int32)])
    with pytest.raises(ValueError, match="signatures: custom SavedModel signatures are not supported"):
        model.save_pretrained(tmp_path / "sig", saved_model=True, signatures=serve)
