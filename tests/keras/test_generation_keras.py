"""TFRobertaForCausalLM.generate against polyformers' PyTorch generate, eagerly and under XLA (beam search
and logits processors: test_beam_keras.py), its generation_config.json and its errors.

The ground truth is our PyTorch RobertaForCausalLM on the same perturbed checkpoint: greedy tokens must
be identical, for a left-padded batch whose rows need the attention mask and RoBERTa's padding-aware
positions. Sampling has no cross-framework oracle, so it is checked for what it promises: the same seed
gives the same tokens, every token lies in the top-k of the model's scores at its step, and a nucleus
that can hold one token only degenerates to greedy decoding.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import torch

import polyformers as P

from ._family_common import perturbed_pt

PAD, EOS = 1, 2
TINY = dict(
    vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
    max_position_embeddings=40, type_vocab_size=2, pad_token_id=PAD, bos_token_id=0, eos_token_id=EOS,
    is_decoder=True,
)
NEW = 12
# Row 1 is left-padded by two, row 2 by four: their positions and masks differ from row 0's.
PROMPTS = np.array([
    [0, 11, 12, 13, 14, 15],
    [PAD, PAD, 0, 21, 22, 23],
    [PAD, PAD, PAD, PAD, 0, 31],
])
MASK = (PROMPTS != PAD).astype(np.int64)


def perturbed_decoder(folder):
    """The tiny RoBERTa decoder of the Keras generation tests, with perturbed random weights, saved to
    ``folder``. Seed 1: a draw whose greedy, beam and contrastive continuations vary (tiny random models
    often repeat one token)."""
    return perturbed_pt("RobertaForCausalLM", P.RobertaConfig(**TINY), folder, seed=1)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tf_generation")
    return perturbed_decoder(folder), P.TFRobertaForCausalLM.from_pretrained(folder)


def _pt_greedy(pt, **settings):
    with torch.no_grad():
        return pt.generate(torch.as_tensor(PROMPTS), attention_mask=torch.as_tensor(MASK), **settings).numpy()


def _tf(model, **settings):
    return model.generate(tf.constant(PROMPTS), attention_mask=tf.constant(MASK), **settings)


def test_greedy_equals_pytorch(models):
    pt, tf_model = models
    expected = _pt_greedy(pt, max_new_tokens=NEW, eos_token_id=None)
    assert expected.shape == (3, PROMPTS.shape[1] + NEW)
    assert len(np.unique(expected[:, PROMPTS.shape[1]:])) >= 6, "a degenerate model would prove little"
    ours = _tf(tf_model, max_new_tokens=NEW, eos_token_id=None)
    assert ours.dtype == tf.int64
    np.testing.assert_array_equal(ours.numpy(), expected)


def test_greedy_under_xla_equals_pytorch(models):
    pt, tf_model = models
    compiled = tf.function(tf_model.generate, jit_compile=True)
    # Two eos ids: rows end at different steps, the loop keeps its shapes and pads the ended rows.
    eos = [int(t) for t in _pt_greedy(pt, max_new_tokens=NEW, eos_token_id=None)[[0, 1], [9, 11]]]
    expected = _pt_greedy(pt, max_new_tokens=NEW, eos_token_id=eos)
    ours = compiled(tf.constant(PROMPTS), attention_mask=tf.constant(MASK), max_new_tokens=NEW, eos_token_id=eos)
    ours = ours.numpy()
    assert ours.shape == (3, PROMPTS.shape[1] + NEW)  # XLA keeps max_length columns, padded after the end
    np.testing.assert_array_equal(ours[:, : expected.shape[1]], expected)
    assert (ours[:, expected.shape[1]:] == PAD).all()
    assert len({list(row).index(PAD, PROMPTS.shape[1]) if PAD in row[PROMPTS.shape[1]:] else len(row)
                for row in ours}) > 1, "rows should end at different steps"


def test_eos_stops_and_pads(models):
    pt, tf_model = models
    free = _pt_greedy(pt, max_new_tokens=NEW, eos_token_id=None)
    stop = int(free[0, PROMPTS.shape[1] + 2])  # row 0 ends after three new tokens
    expected = _pt_greedy(pt, max_new_tokens=NEW, eos_token_id=stop)
    ours = _tf(tf_model, max_new_tokens=NEW, eos_token_id=stop).numpy()
    np.testing.assert_array_equal(ours, expected)
    row = ours[0, PROMPTS.shape[1]:]
    end = list(row).index(stop)
    assert end <= 2 and (row[end + 1:] == PAD).all()
    # Every row ending early cuts the eager output short of max_length.
    ends = sorted({int(t) for t in free[:, PROMPTS.shape[1]]})
    short = _tf(tf_model, max_new_tokens=NEW, eos_token_id=ends).numpy()
    np.testing.assert_array_equal(short, _pt_greedy(pt, max_new_tokens=NEW, eos_token_id=ends))
    assert short.shape == (3, PROMPTS.shape[1] + 1)


def test_max_length_counts_the_prompt(models):
    pt, tf_model = models
    ours = _tf(tf_model, max_length=PROMPTS.shape[1] + 4, eos_token_id=None).numpy()
    np.testing.assert_array_equal(ours, _pt_greedy(pt, max_length=PROMPTS.shape[1] + 4, eos_token_id=None))


def _top_k_sets(model, sequences, start, k):
    """Per generated position, the k best next tokens of the model given everything before it, from one
    pass over the whole sequence with the positions incremental decoding gives: fairseq's numbering in
    the prompt, then each new token's index after the padding index (padding included, as the cache
    length counts it)."""
    mask = np.concatenate([MASK, np.ones((len(MASK), sequences.shape[1] - MASK.shape[1]), np.int64)], 1)
    positions = np.where(MASK == 1, np.cumsum(MASK, 1) + PAD, PAD)
    after = PAD + 1 + np.arange(MASK.shape[1], sequences.shape[1])
    positions = np.concatenate([positions, np.broadcast_to(after, (len(MASK), len(after)))], 1)
    logits = model(sequences, attention_mask=mask, position_ids=positions, use_cache=False).logits.numpy()
    return np.argsort(-logits, axis=-1)[:, start - 1:-1, :k]


def test_sampling_is_seeded_and_stays_in_the_top_k(models):
    _, tf_model = models
    settings = dict(do_sample=True, top_k=4, temperature=1.5, max_new_tokens=NEW, eos_token_id=None)
    first = _tf(tf_model, seed=[7, 3], **settings).numpy()
    again = _tf(tf_model, seed=[7, 3], **settings).numpy()
    np.testing.assert_array_equal(first, again)
    others = [_tf(tf_model, seed=s, **settings).numpy() for s in (1, 2)]
    assert any((o != first).any() for o in others), "different seeds should draw different tokens"
    start = PROMPTS.shape[1]
    for sample in [first, *others]:
        allowed = _top_k_sets(tf_model, sample, start, 4)
        drawn = sample[:, start:]
        assert all(drawn[r, t] in allowed[r, t] for r in range(3) for t in range(NEW))
    greedy = _tf(tf_model, max_new_tokens=NEW, eos_token_id=None).numpy()
    assert (first != greedy).any(), "sampling at temperature 1.5 among 4 tokens should leave the greedy path"


def test_sampling_under_xla(models):
    _, tf_model = models
    compiled = tf.function(tf_model.generate, jit_compile=True)
    settings = dict(do_sample=True, top_k=5, top_p=0.9, max_new_tokens=NEW, eos_token_id=None,
                    num_return_sequences=2)
    first = compiled(tf.constant(PROMPTS), attention_mask=tf.constant(MASK), seed=[5, 5], **settings).numpy()
    again = compiled(tf.constant(PROMPTS), attention_mask=tf.constant(MASK), seed=[5, 5], **settings).numpy()
    np.testing.assert_array_equal(first, again)
    assert first.shape == (6, PROMPTS.shape[1] + NEW)
    np.testing.assert_array_equal(first[::2, : PROMPTS.shape[1]], PROMPTS)  # copies of a prompt are neighbours
    np.testing.assert_array_equal(first[1::2, : PROMPTS.shape[1]], PROMPTS)
    allowed = _top_k_sets(tf_model, first[::2], PROMPTS.shape[1], 5)
    drawn = first[::2, PROMPTS.shape[1]:]
    assert all(drawn[r, t] in allowed[r, t] for r in range(3) for t in range(NEW))


def test_a_nucleus_of_one_token_is_greedy(models):
    _, tf_model = models
    greedy = _tf(tf_model, max_new_tokens=NEW, eos_token_id=None).numpy()
    for warp in (dict(top_p=0.01, top_k=0), dict(top_k=1, temperature=0.5)):
        sampled = _tf(tf_model, do_sample=True, seed=3, max_new_tokens=NEW, eos_token_id=None, **warp).numpy()
        np.testing.assert_array_equal(sampled, greedy, err_msg=str(warp))


def test_scores_and_output_record(models):
    _, tf_model = models
    out = _tf(tf_model, max_new_tokens=4, eos_token_id=None, return_dict_in_generate=True, output_scores=True)
    assert type(out).__name__ == "TFGreedySearchDecoderOnlyOutput"
    assert list(out.keys()) == ["sequences", "scores"]
    assert len(out.scores) == 4 and tuple(out.scores[0].shape) == (3, TINY["vocab_size"])
    chosen = np.stack([np.argmax(s.numpy(), -1) for s in out.scores], 1)
    np.testing.assert_array_equal(chosen, out.sequences.numpy()[:, PROMPTS.shape[1]:])


def test_cross_attention_cache_equals_full_passes(tmp_path):
    """With encoder states, the cross-attention keys computed once in the prompt pass and kept in the
    cache give the tokens that full passes over the growing sequence (no cache) choose."""
    tf.keras.utils.set_random_seed(4)
    config = P.RobertaConfig(**dict(TINY, add_cross_attention=True, initializer_range=0.3))
    model = P.TFRobertaForCausalLM(config).build_model()
    rng = np.random.RandomState(0)
    enc = rng.randn(3, 5, TINY["hidden_size"]).astype(np.float32)
    enc_mask = np.array([[1, 1, 1, 0, 0], [1] * 5, [1, 1, 0, 0, 0]])
    ours = model.generate(tf.constant(PROMPTS), attention_mask=tf.constant(MASK), encoder_hidden_states=enc,
                          encoder_attention_mask=enc_mask, max_new_tokens=6, eos_token_id=None).numpy()
    sequences = PROMPTS.copy()
    base = np.where(MASK == 1, np.cumsum(MASK, 1) + PAD, PAD)
    for step in range(6):
        length = sequences.shape[1]
        mask = np.concatenate([MASK, np.ones((3, step), np.int64)], 1)
        positions = np.concatenate([base, np.broadcast_to(PAD + 1 + np.arange(PROMPTS.shape[1], length), (3, step))], 1)
        logits = model(sequences, attention_mask=mask, position_ids=positions, encoder_hidden_states=enc,
                       encoder_attention_mask=enc_mask, use_cache=False).logits.numpy()
        sequences = np.concatenate([sequences, logits[:, -1].argmax(-1)[:, None]], 1)
    assert len(np.unique(sequences[:, PROMPTS.shape[1]:])) >= 4
    np.testing.assert_array_equal(ours, sequences)


def test_bad_settings_name_the_problem(models):
    _, tf_model = models
    with pytest.raises(ValueError, match="typical_p: not supported by TFRobertaForCausalLM.generate, given 0.5"):
        _tf(tf_model, do_sample=True, typical_p=0.5)
    for bad, message in [
        (dict(num_beams=0), "'num_beams': expected .*given 0"),
        (dict(max_new_tokens=0), "'max_new_tokens': expected .*given 0"),
        (dict(max_new_tokens=-3), "'max_new_tokens': expected .*given -3"),
        (dict(do_sample=True, top_p=0.0), r"'top_p': expected a number in \(0, 1\], given 0.0"),
        (dict(do_sample=True, top_p=1.5), r"'top_p': expected a number in \(0, 1\], given 1.5"),
        (dict(do_sample=True, temperature=0.0), "'temperature': expected a number > 0 when do_sample=True, given 0.0"),
        (dict(num_beams=2, num_return_sequences=3), "'num_return_sequences': expected at most num_beams=2, given 3"),
        (dict(repetition_penalty=0.0), "'repetition_penalty': expected a number > 0"),
        (dict(bad_words_ids=[[]]), "'bad_words_ids': expected a non-empty list of non-empty lists"),
    ]:
        with pytest.raises(ValueError, match=message):
            _tf(tf_model, **bad)
    with pytest.raises(ValueError, match=r"bad_words_ids: token ids \[120\] are outside the model's vocabulary of 99"):
        _tf(tf_model, max_new_tokens=2, bad_words_ids=[[120]])
    with pytest.raises(ValueError, match=r"neither generation settings nor inputs .*\['atention_mask'\]"):
        tf_model.generate(tf.constant(PROMPTS), atention_mask=tf.constant(MASK))
    with pytest.raises(ValueError, match="max_length: must exceed the prompt's 6 tokens"):
        _tf(tf_model, max_length=6)
    with pytest.raises(ValueError, match="input_ids: expected integer token ids"):
        tf_model.generate(tf.constant(PROMPTS, tf.float32))
    with pytest.raises(ValueError, match="seed: expected an int or two ints"):
        _tf(tf_model, do_sample=True, seed=[1, 2, 3], max_new_tokens=2)
    with pytest.raises(ValueError, match="'num_return_sequences': greedy decoding"):
        _tf(tf_model, num_return_sequences=2)
    assert not P.TFRobertaForMaskedLM(P.RobertaConfig(**dict(TINY, is_decoder=False))).can_generate()


def test_generation_config_json_round_trip(models, tmp_path):
    """save_pretrained writes generation_config.json, from_pretrained reads it, and its settings are the
    defaults of generate: the same tokens as the PyTorch model given the same folder."""
    pt, tf_model = models
    defaults = P.GenerationConfig(max_new_tokens=5, num_beams=2, num_return_sequences=2, eos_token_id=EOS,
                                  pad_token_id=PAD, bos_token_id=0, no_repeat_ngram_size=1)
    tf_model.generation_config = defaults
    try:
        tf_model.save_pretrained(tmp_path / "tf")
    finally:
        tf_model.generation_config = None  # back to the one derived from the model config
    assert P.GenerationConfig.from_pretrained(tmp_path / "tf") == defaults
    loaded = P.TFRobertaForCausalLM.from_pretrained(tmp_path / "tf")
    assert loaded.generation_config == defaults
    ours = loaded.generate(tf.constant(PROMPTS), attention_mask=tf.constant(MASK)).numpy()
    assert ours.shape[0] == 6 and ours.shape[1] <= PROMPTS.shape[1] + 5
    np.testing.assert_array_equal(ours, P.RobertaForCausalLM.from_pretrained(tmp_path / "tf").generate(
        torch.as_tensor(PROMPTS), attention_mask=torch.as_tensor(MASK)).numpy())
    # A folder written by the PyTorch class: its generation_config.json reaches the TF class too.
    pt.generation_config = P.GenerationConfig(max_new_tokens=3, eos_token_id=None, pad_token_id=PAD)
    try:
        pt.save_pretrained(tmp_path / "pt")
    finally:
        pt.generation_config = None
    assert P.TFRobertaForCausalLM.from_pretrained(tmp_path / "pt").generate(
        tf.constant(PROMPTS), attention_mask=tf.constant(MASK)).shape == (3, PROMPTS.shape[1] + 3)
    # Without the file, the settings come from the model config.
    (tmp_path / "pt" / "generation_config.json").unlink()
    assert P.TFRobertaForCausalLM.from_pretrained(tmp_path / "pt").generation_config.max_new_tokens is None
