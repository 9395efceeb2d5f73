"""Beam sampling (``do_sample=True`` with ``num_beams > 1``) in the Flax ``generate``, on the perturbed tiny
Pegasus of test_pegasus_flax (the only Flax family with ``generate``).

The reference's 4.37 Flax ``generate`` refuses beam sampling, so the contract is its PyTorch ``beam_sample``,
which polyformers' PyTorch side reproduces token for token (tests/pt/test_generation_modes.py): processors,
then warpers, on the log-softmax; plus the beam scores, every beam starting at 0; ``2 * num_beams``
candidates drawn without replacement from the softmax of that; then the Flax beam search's hypotheses
(which, as the reference's Flax beam search, also keep an end token drawn below rank num_beams, where its
PyTorch scorer drops it). Random draws cannot match torch's, so the checks are: where the draw is forced
(the whole support drawn, or a vanishing temperature) the tokens are exact; elsewhere the draw's
distribution, reproducibility per key, scores and settings.

Each distinct setting compiles one program (seconds each), so the settings are few and shared.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from polyformers import GenerationConfig, LogitsProcessor
from polyformers import LogitsProcessorList as TorchLogitsProcessorList
from polyformers.flax.generation import FlaxLogitsProcessor, FlaxLogitsProcessorList, _checked_key, _warpers
from polyformers.outputs import FlaxBeamSearchOutput

from .test_pegasus_flax import IDS, MASK, checkpoint, model  # noqa: F401  (the perturbed checkpoint and model)

EOS, START, PAD = 1, 0, 0
# A spread distribution: every call of these settings reuses one program.
SPREAD = dict(max_new_tokens=9, num_beams=2, do_sample=True, temperature=1.5, top_k=0)


def _flax(model, key=0, ids=IDS, mask=MASK, **settings):
    return model.generate(ids, attention_mask=mask, prng_key=jax.random.PRNGKey(key), **settings)


def _log_softmax(x):
    x = np.asarray(x, dtype=np.float64)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


# ---------------------------------------------------------------------------------------------------
# Forced draws: exact tokens

BOOST, BOOSTED_AT = 0.9, 7
# The draw is forced: top_k=1 keeps 2 tokens per beam in beam methods (as the reference's warpers do), so
# with 2 beams the 4 candidates are the whole support. length_penalty=0: polyformers' PyTorch search (as the
# reference's) counts a hypothesis's length without its end token, the Flax one with it.
WHOLE_SUPPORT = dict(max_new_tokens=9, num_beams=2, do_sample=True, top_k=1, num_return_sequences=2, length_penalty=0.0)


class _FavourEnd(FlaxLogitsProcessor):
    """Adds ``BOOST`` to the end token's score when choosing the token at index ``BOOSTED_AT``: there the end
    token becomes the best candidate for the first two inputs (by margins near 0.3) and stays out of the
    best two tokens for the third (by 0.26). An end token ranked below num_beams among the candidates is
    dropped by the reference's PyTorch scorer but kept by its Flax beam search (which ours follows), so
    the exact comparison with PyTorch stays clear of that case."""

    def __call__(self, input_ids, scores, cur_len):
        return scores.at[:, EOS].add(jnp.where(cur_len == BOOSTED_AT, BOOST, 0.0))


class _TorchFavourEnd(LogitsProcessor):
    """The same for polyformers' PyTorch generate (its sequences so far are the current length)."""

    def __call__(self, input_ids, scores):
        if input_ids.shape[-1] == BOOSTED_AT:
            scores = scores.clone()
            scores[:, EOS] += BOOST
        return scores


@pytest.fixture(scope="module")
def whole_support(model):  # noqa: F811
    favour = FlaxLogitsProcessorList([_FavourEnd()])
    return [model.generate(IDS, attention_mask=MASK, prng_key=jax.random.PRNGKey(key), logits_processor=favour,
                           **WHOLE_SUPPORT) for key in range(3)]


def test_whole_support_drawn_matches_pytorch(checkpoint, model, whole_support):  # noqa: F811
    """With the whole support drawn the result does not depend on the key, and equals polyformers' PyTorch
    beam sampling, hence 4.37's: both beams start at score 0, so the first step takes the best token twice,
    where beam search expands two distinct tokens."""
    assert isinstance(whole_support[0], FlaxBeamSearchOutput)
    ours, scores = np.asarray(whole_support[0].sequences), np.asarray(whole_support[0].scores)
    assert ours.shape == (6, 10) and scores.shape == (6,)
    for other in whole_support[1:]:
        np.testing.assert_array_equal(np.asarray(other.sequences), ours)
    # Hypotheses end at the boosted step and at max_length.
    assert (ours[:, BOOSTED_AT] == EOS).any() and (ours[:, -1] == EOS).any()
    with torch.no_grad():
        for seed in (0, 1):
            torch.manual_seed(seed)
            theirs = checkpoint[1].generate(torch.tensor(IDS, dtype=torch.long), attention_mask=torch.tensor(MASK),
                                            logits_processor=TorchLogitsProcessorList([_TorchFavourEnd()]),
                                            return_dict_in_generate=True, output_scores=True, **WHOLE_SUPPORT)
            padded = np.full(ours.shape, PAD)
            padded[:, : theirs.sequences.shape[1]] = theirs.sequences.numpy()
            np.testing.assert_array_equal(ours, padded)
            np.testing.assert_allclose(scores, theirs.sequences_scores.numpy(), atol=1e-4)
    searched = model.generate(IDS, attention_mask=MASK, max_new_tokens=9, num_beams=2, num_return_sequences=2,
                              logits_processor=FlaxLogitsProcessorList([_FavourEnd()]))
    assert not np.array_equal(ours, np.asarray(searched.sequences))


def test_vanishing_temperature_draws_the_best_candidates(model, whole_support):  # noqa: F811
    """At temperature 1e-3 the draw is the best 2 * num_beams candidates by score (the Gumbel noise is
    negligible against score gaps multiplied by 1000). The beams start level, so these are the best two
    tokens once per beam, which the whole-support draw above takes too: the same sequences for any key, and
    the same scores divided by the temperature (every score is a sum of log-probabilities / temperature)."""
    favour = FlaxLogitsProcessorList([_FavourEnd()])
    settings = dict(WHOLE_SUPPORT, top_k=50, temperature=1e-3)
    expected = whole_support[0]
    for key in (0, 1, 2):
        out = model.generate(IDS, attention_mask=MASK, prng_key=jax.random.PRNGKey(key), logits_processor=favour,
                             **settings)
        np.testing.assert_array_equal(np.asarray(out.sequences), np.asarray(expected.sequences))
        np.testing.assert_allclose(np.asarray(out.scores) * 1e-3, np.asarray(expected.scores), rtol=1e-4)


# ---------------------------------------------------------------------------------------------------
# Keys, programs, jit


def test_same_key_same_sequences_other_keys_differ(model):  # noqa: F811
    first = np.asarray(_flax(model, 0, **SPREAD).sequences)
    np.testing.assert_array_equal(np.asarray(_flax(model, 0, **SPREAD).sequences), first)
    others = [np.asarray(_flax(model, key, **SPREAD).sequences) for key in (1, 2, 3)]
    assert any(not np.array_equal(first, other) for other in others)
    assert first.shape == (3, 10) and (first[:, 0] == START).all()


def test_compiles_once_and_runs_under_jit(model):  # noqa: F811
    _flax(model, 0, **SPREAD)
    sizes = {key: fn._cache_size() for key, fn in model._compiled_generate.items()}
    again = _flax(model, 5, ids=IDS + 1, **SPREAD)  # new inputs and key: no new program, no new trace
    assert {key: fn._cache_size() for key, fn in model._compiled_generate.items()} == sizes
    assert np.asarray(again.sequences).shape == (3, 10)

    # Inside the caller's jit (the key a traced argument), the same draws as the cached program.
    jitted = jax.jit(lambda ids, mask, k: model.generate(ids, attention_mask=mask, prng_key=k, **SPREAD).sequences)
    np.testing.assert_array_equal(np.asarray(jitted(IDS, MASK, jax.random.PRNGKey(7))),
                                  np.asarray(_flax(model, 7, **SPREAD).sequences))


# ---------------------------------------------------------------------------------------------------
# The draw's distribution


def _best_two_distribution(weights, draws):
    """Exact law of the best two of ``draws`` candidates drawn one at a time without replacement, each in
    proportion to its weight among those left, from two copies (two level beams) of each token's weight.
    Tokens are indexed best first; returns {(best, second): probability}."""
    items = [token for token in range(len(weights)) for _ in range(2)]
    law = {}
    for order in itertools.permutations(range(len(items)), draws):
        p, left = 1.0, 2 * sum(weights)
        for item in order:
            p *= weights[items[item]] / left
            left -= weights[items[item]]
        best, second = sorted(items[i] for i in order)[:2]
        law[best, second] = law.get((best, second), 0.0) + p
    return law


def test_first_step_draw_follows_the_warped_distribution(model):  # noqa: F811
    """One new token (the end token banned by min_length, no forced end), 2 beams, temperature 2 and
    top_k=5 on N copies of one input, each row drawing independently. The 4 candidates are drawn from
    2 level beams x 5 tokens; the two returned beams are the two best drawn. Their law is computed
    exactly from the model's warped probabilities (all ordered draws enumerated), and the observed
    frequencies of the best token (each of the 5) and of "both beams took the same token" must lie within
    4.5 standard errors. The same check rejects drawing with replacement or from one beam only: their
    laws are many standard errors away (asserted too, so the check keeps its power)."""
    n, temperature, top_k = 4000, 2.0, 5
    ids, mask = np.repeat(IDS[:1], n, axis=0), np.repeat(MASK[:1], n, axis=0)
    out = _flax(model, 11, ids=ids, mask=mask, max_new_tokens=1, num_beams=2, do_sample=True, min_length=2,
                forced_eos_token_id=None, temperature=temperature, top_k=top_k, num_return_sequences=2)
    drawn = np.asarray(out.sequences)[:, 1].reshape(n, 2)

    logits = model(IDS[:1], attention_mask=MASK[:1], decoder_input_ids=np.array([[START]])).logits[0, -1]
    log_probs = _log_softmax(logits)
    log_probs[EOS] = -np.inf
    tokens = np.argsort(-log_probs)[:top_k]
    weights = np.exp((log_probs[tokens] - log_probs[tokens[0]]) / temperature)
    law = _best_two_distribution(list(weights), 4)

    assert np.isin(drawn, tokens).all()
    index = {int(t): i for i, t in enumerate(tokens)}
    best = np.array([index[int(t)] for t in drawn[:, 0]])
    second = np.array([index[int(t)] for t in drawn[:, 1]])
    assert (best <= second).all()  # returned best first

    def within(observed, p, label):
        se = np.sqrt(p * (1 - p) / n)
        assert abs(observed - p) <= 4.5 * se + 1e-12, f"{label}: observed {observed:.4f}, expected {p:.4f} (se {se:.4f})"

    expected_best = [sum(p for (b, _), p in law.items() if b == t) for t in range(top_k)]
    for t in range(top_k):
        within(np.mean(best == t), expected_best[t], f"best token #{t}")
    expected_same = sum(p for (b, s), p in law.items() if b == s)
    within(np.mean(best == second), expected_same, "both beams the same token")

    # Power: with replacement, both beams share a token far more often; from one beam, never.
    probs = weights / weights.sum()
    with_replacement_same = sum(
        np.prod(probs[list(draw)]) for draw in itertools.product(range(top_k), repeat=4)
        if sorted(draw)[0] == sorted(draw)[1]
    )
    se = np.sqrt(expected_same * (1 - expected_same) / n)
    assert abs(with_replacement_same - expected_same) > 10 * se and expected_same > 10 * se


# ---------------------------------------------------------------------------------------------------
# num_return_sequences, length_penalty, early_stopping


def _warped_sum(model, sequences, temperature, max_length):
    """Sum of the warped log-probabilities (log-softmax / temperature; the forced end token at
    ``max_length - 1`` scores 0) of each sequence's generated tokens, and their count (end token included)."""
    rows = sequences.shape[0] // IDS.shape[0]
    ids, mask = np.repeat(IDS, rows, axis=0), np.repeat(MASK, rows, axis=0)
    log_probs = _log_softmax(model(ids, attention_mask=mask, decoder_input_ids=sequences[:, :-1]).logits)
    sums, lengths = [], []
    for row, sequence in enumerate(sequences):
        end = int(np.argmax(sequence[1:] == EOS)) + 1
        assert sequence[end] == EOS
        steps = [log_probs[row, i - 1, sequence[i]] / temperature for i in range(1, end + 1) if i != max_length - 1]
        sums.append(sum(steps))
        lengths.append(end)
    return np.array(sums), np.array(lengths)


def test_return_sequences_length_penalty_and_early_stopping(model):  # noqa: F811
    base = dict(max_new_tokens=9, num_beams=3, do_sample=True, temperature=1.5, num_return_sequences=2,
                length_penalty=0.5)
    changed = False
    for key in (0, 1, 2):
        runs = {stop: _flax(model, key, early_stopping=stop, **base) for stop in (False, True, "never")}
        for stop, out in runs.items():
            sequences, scores = np.asarray(out.sequences), np.asarray(out.scores)
            assert sequences.shape == (6, 10) and scores.shape == (6,)
            assert (scores.reshape(3, 2)[:, 0] >= scores.reshape(3, 2)[:, 1]).all(), stop  # best first per input
            if key:
                continue
            # Finished hypotheses score their summed warped log-probabilities / length ** length_penalty.
            sums, lengths = _warped_sum(model, sequences, 1.5, 10)
            np.testing.assert_allclose(scores, sums / lengths.astype(np.float64) ** 0.5, rtol=1e-4, atol=1e-4,
                                       err_msg=str(stop))
        # The draws do not depend on early_stopping, only when the search stops: a later stop keeps the best
        # of more hypotheses (True stops once num_beams have ended, "never" looks furthest ahead).
        true, false, never = (np.asarray(runs[s].scores) for s in (True, False, "never"))
        assert (false >= true - 1e-5).all() and (never >= false - 1e-5).all()
        changed |= not np.allclose(true, false) or not np.allclose(false, never)
    assert changed


# ---------------------------------------------------------------------------------------------------
# Bad settings


@pytest.mark.parametrize("settings, pattern", [
    (dict(temperature=0.0), r"'temperature'.*> 0.*given 0\.0"),
    (dict(temperature=-1.0), r"'temperature'.*> 0.*given -1\.0"),
    (dict(top_p=1.5), r"top_p.*\(0, 1\].*1\.5"),
    (dict(top_p=0.0), r"top_p.*\(0, 1\].*0\.0"),
    (dict(top_k=-1), r"'top_k'.*>= 0.*given -1"),
    (dict(num_return_sequences=3), r"num_return_sequences.*at most num_beams=2.*3"),
])
def test_bad_settings(model, settings, pattern):  # noqa: F811
    with pytest.raises(ValueError, match=pattern):
        model.generate(IDS, attention_mask=MASK, max_new_tokens=3, num_beams=2, do_sample=True, **settings)


def test_beam_warpers_keep_a_token_besides_the_end_tokens():
    """As the reference's beam methods: top_k and top_p keep at least 2 tokens per beam (the end tokens
    plus one when ``eos_token_id`` is a list), so that a beam can always go on; plain sampling keeps 1."""
    scores = jnp.array([[5.0, 1.0, 0.5, 0.0, -1.0]])

    def kept(**settings):
        warpers = _warpers(GenerationConfig(do_sample=True, **settings))
        return [int(np.isfinite(np.asarray(w(None, scores, 1))).sum()) for w in warpers]

    assert kept(num_beams=2, top_k=1, top_p=0.1, eos_token_id=1) == [2, 2]
    assert kept(num_beams=2, top_k=1, top_p=0.1, eos_token_id=[1, 2]) == [3, 3]
    assert kept(num_beams=1, top_k=1, top_p=0.1, eos_token_id=1) == [1, 1]


def test_prng_key_checked(model):  # noqa: F811
    with pytest.raises(ValueError, match=r"prng_key must be a JAX random key .*got int"):
        model.generate(IDS, max_new_tokens=3, num_beams=2, do_sample=True, prng_key=3)
    with pytest.raises(ValueError, match=r"prng_key must be a JAX random key .*shape \(2,\), int64"):
        model.generate(IDS, max_new_tokens=3, num_beams=2, do_sample=True, prng_key=np.array([0, 1]))
    typed, raw = jax.random.key(3), jax.random.PRNGKey(3)  # typed (jax.random.key) and raw keys are both accepted
    assert _checked_key(typed) is typed and _checked_key(raw) is raw
