"""TF MPNet (Keras 3) against polyformers' PyTorch MPNet and the reference's own 4.37 TF classes.

One module-scoped fixture does the slow work once: perturbed PyTorch checkpoints, the Keras models
loaded from them, and one run of the 4.37 environment (its TF classes on the same folders with
``from_pt=True``, a ``tf_model.h5`` it writes, its PyTorch class on a folder saved by our Keras model).
Inputs hold real padding (MPNet numbers positions after it) and one sequence long enough to reach the
logarithmic relative-position buckets.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

import polyformers as P

from ._family_common import (
    ALL, assert_dropout_only_in_training, assert_fit_lowers_loss, assert_foreign_h5_refused, assert_jit_equals_eager,
    assert_same_outputs, bare_model_calls, call_specs, family_tests, load_reference_h5, mlm_labels_and_head_mask,
    padded_batch,
)

PAD = 1
TINY = dict(
    vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
    max_position_embeddings=40, relative_attention_num_buckets=32, pad_token_id=PAD,
)
B, S = 4, 9


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.RandomState(2)
    ids, mask = padded_batch(rng, 3, TINY["vocab_size"], 0, PAD)  # after left padding, positions start at PAD + 1
    ids[3, 4] = PAD  # a pad id the mask keeps
    long_ids = rng.randint(3, TINY["vocab_size"], (2, 36))
    long_mask = np.ones((2, 36), dtype=np.int64)
    long_mask[1, 20:] = 0
    long_ids[long_mask == 0] = PAD
    mlm, head_mask = mlm_labels_and_head_mask(ids)
    return dict(
        ids=ids, mask=mask, mlm=mlm, head_mask=head_mask, long_ids=long_ids, long_mask=long_mask,
        embeds=rng.randn(B, S, TINY["hidden_size"]).astype(np.float32),
        positions=rng.randint(0, TINY["max_position_embeddings"], (B, S)),
        seq3=rng.randint(0, 3, (B,)), reg=rng.randn(B).astype(np.float32),
        tok=np.where(mask == 1, rng.randint(0, 5, (B, S)), -100),
        start=np.array([1, 8, 2, 0]), end=np.array([3, 8, 5, 0]),
        mc_ids=np.stack([ids[:2], ids[2:]]), mc_mask=np.stack([mask[:2], mask[2:]]), mc_labels=np.array([0, 1]),
    )


BASE, EVERY = call_specs()

# name: (class without "TF", config, calls, how many of the calls the 4.37 TF class runs too: it has no
# head_mask)
CASES = {
    "model": ("MPNetModel", TINY, bare_model_calls(
        BASE, EVERY, {"input_ids": "@long_ids", "attention_mask": "@long_mask", "output_attentions": True}), ALL),
    "model_head_mask": ("MPNetModel", TINY, [dict(EVERY, head_mask="@head_mask")], 0),
    "masked_lm": ("MPNetForMaskedLM", TINY, [
        dict(EVERY, labels="@mlm"), dict(BASE, labels="@mlm", return_dict=False),
        {"inputs_embeds": "@embeds", "attention_mask": "@mask"},
    ], ALL),
    "seq": ("MPNetForSequenceClassification", dict(TINY, num_labels=3), [dict(EVERY, labels="@seq3")], ALL),
    "seq_regression": ("MPNetForSequenceClassification", dict(TINY, num_labels=1), [dict(BASE, labels="@reg")], ALL),
    # With return_dict=False the 4.37 TF class also returns the output of a pooler that its PyTorch
    # counterpart lacks (so, loaded from PyTorch, random): only the first call is compared with it.
    "token": ("MPNetForTokenClassification", dict(TINY, num_labels=5), [
        dict(EVERY, labels="@tok"), dict(BASE, labels="@tok", return_dict=False),
    ], 1),
    "qa": ("MPNetForQuestionAnswering", TINY, [
        dict(EVERY, start_positions="@start", end_positions="@end"), dict(BASE, return_dict=False),
    ], ALL),
    "choice": ("MPNetForMultipleChoice", TINY, [
        {"input_ids": "@mc_ids", "attention_mask": "@mc_mask", "labels": "@mc_labels", "output_attentions": True,
         "output_hidden_states": True},
    ], ALL),
}


# The reference's TF heads carry a pooler of their own: the h5 it saves holds weights our heads do not use.
world, test_matches_polyformers_pytorch, test_matches_reference_tf_classes, test_reference_pytorch_loads_our_save = \
    family_tests("tf_mpnet", CASES, P.MPNetConfig, TINY, _arrays, ours=("token", len(CASES["token"][2])))


def test_relative_buckets_equal_the_pytorch_ones():
    from polyformers.keras.models.mpnet import relative_position_bucket
    from polyformers.pt.models.mpnet import relative_position_bucket as reference

    offsets = np.arange(-3000, 3001)
    ours = np.asarray(relative_position_bucket(offsets))
    np.testing.assert_array_equal(ours, reference(torch.as_tensor(offsets)).numpy())
    assert set(np.unique(ours)) == set(range(32)) - {16}  # offset 0 is never "after the query"


def test_loads_reference_h5(world):
    info, bare_info = load_reference_h5(world, P.TFMPNetForMaskedLM, P.TFMPNetModel, "mpnet")
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []  # its unused pooler is expected
    assert bare_info["missing_keys"] == []  # the reference's head kept the pooler the bare model needs


def test_h5_of_another_architecture_is_refused(world):
    assert_foreign_h5_refused(world, P.TFMPNetModel, P.MPNetConfig(**TINY))


def test_input_formats_agree(world):
    model, a = world["tf"]["qa"], world["arrays"]
    positions = {"start_positions": a["start"], "end_positions": a["end"]}
    keywords = model(input_ids=a["ids"], attention_mask=a["mask"], **positions)
    as_list = model([a["ids"], a["mask"]], **positions)
    as_dict = model({"input_ids": a["ids"], "attention_mask": a["mask"], **positions})
    positional = model(a["ids"], a["mask"], **positions)
    int32 = model(a["ids"].astype(np.int32), attention_mask=a["mask"].astype(np.int32),
                  start_positions=a["start"].astype(np.int32), end_positions=a["end"].astype(np.int32))
    assert_same_outputs(keywords, (as_list, as_dict, positional, int32), ["loss", "start_logits", "end_logits"])


def test_bad_inputs_name_the_problem(world):
    model, a = world["tf"]["token"], world["arrays"]
    with pytest.raises(ValueError, match="list of 10 inputs, expected at most 9"):
        model([a["ids"]] * 10)
    with pytest.raises(ValueError, match=r"unknown input name\(s\) \['token_type_ids'\]"):
        model({"input_ids": a["ids"], "token_type_ids": a["ids"] * 0})
    with pytest.raises(ValueError, match=r"\['labels'\] both"):
        model({"input_ids": a["ids"], "labels": a["tok"]}, labels=a["tok"])
    with pytest.raises(TypeError, match="input_ids must hold integer ids"):
        model(a["ids"].astype(np.float32))
    with pytest.raises(ValueError, match="at most 38 non-padding tokens fit"):
        model(np.full((1, 39), 5))
    with pytest.raises(ValueError, match="relative_attention_num_buckets must be at least 32"):
        P.TFMPNetModel(P.MPNetConfig(**dict(TINY, relative_attention_num_buckets=16)))


def test_training_switches_dropout(world):
    config = P.MPNetConfig(**dict(TINY, hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.3))
    assert_dropout_only_in_training(P.TFMPNetForTokenClassification(config), world["arrays"]["ids"])


def test_jit_compiled_forward_equals_eager(world):
    a = world["arrays"]
    assert_jit_equals_eager(world["tf"]["model"], a["long_ids"], a["long_mask"], output_attentions=True,
                            output_hidden_states=True)


def test_fit_trains_with_labels_in_the_inputs(world):
    a = world["arrays"]
    model = P.TFMPNetForTokenClassification.from_pretrained(world["root"] / "token")
    assert_fit_lowers_loss(model, {"input_ids": a["ids"], "attention_mask": a["mask"], "labels": a["tok"]}, B)


@pytest.fixture(scope="module")
def mpnet_base(assets, tmp_path_factory):
    """A local stand-in for microsoft/mpnet-base: MPNet's real tokenizer files and a tiny random model
    over its vocabulary."""
    folder = tmp_path_factory.mktemp("mpnet-base")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(assets / "mpnet" / name, folder / name)
    P.TFMPNetModel(P.MPNetConfig(**dict(TINY, vocab_size=30527))).save_pretrained(folder)
    return str(folder)


def test_spec_example_token_classification(mpnet_base):
    from polyformers import AutoTokenizer, TFMPNetForTokenClassification
    import tensorflow as tf

    tokenizer = AutoTokenizer.from_pretrained(mpnet_base)
    model = TFMPNetForTokenClassification.from_pretrained(mpnet_base)
    inputs = tokenizer(
        "HuggingFace is a company based in Paris and New York", add_special_tokens=False, return_tensors="tf"
    )
    logits = model(**inputs).logits
    predicted_token_class_ids = tf.math.argmax(logits, axis=-1)
    # Note that tokens are classified rather then input words which means that
    # there might be more predicted token classes than words.
    # Multiple token classes might account for the same word
    predicted_tokens_classes = [model.config.id2label[t] for t in predicted_token_class_ids[0].numpy().tolist()]

    labels = predicted_token_class_ids
    loss = tf.math.reduce_mean(model(**inputs, labels=labels).loss)

    assert len(predicted_tokens_classes) == inputs["input_ids"].shape[1]
    assert set(predicted_tokens_classes) <= {"LABEL_0", "LABEL_1"}
    assert float(loss) > 0


def test_spec_example_question_answering(mpnet_base):
    from polyformers import AutoTokenizer, TFMPNetForQuestionAnswering
    import tensorflow as tf

    tokenizer = AutoTokenizer.from_pretrained(mpnet_base)
    model = TFMPNetForQuestionAnswering.from_pretrained(mpnet_base)
    question, text = "Who was Jim Henson?", "Jim Henson was a nice puppet"
    inputs = tokenizer(question, text, return_tensors="tf")
    outputs = model(**inputs)
    answer_start_index = int(tf.math.argmax(outputs.start_logits, axis=-1)[0])
    answer_end_index = int(tf.math.argmax(outputs.end_logits, axis=-1)[0])
    predict_answer_tokens = inputs.input_ids[0, answer_start_index : answer_end_index + 1]

    # target is "nice puppet"
    target_start_index = tf.constant([14])
    target_end_index = tf.constant([15])
    outputs = model(**inputs, start_positions=target_start_index, end_positions=target_end_index)
    loss = tf.math.reduce_mean(outputs.loss)

    assert predict_answer_tokens.shape[0] == max(0, answer_end_index - answer_start_index + 1)
    assert np.isfinite(float(loss)) and float(loss) > 0

