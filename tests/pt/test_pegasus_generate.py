"""Pegasus generate() against the reference's 4.37 release, token for token.

The reference builds perturbed random tiny Pegasus models (seq2seq and decoder-only, with a random
``final_logits_bias`` that makes the end-of-sequence token come up within a few steps, but not always),
saves them, and runs every case in one subprocess; polyformers loads the folders and runs the same cases.
Sequences and beam indices must be identical, scores equal within 1e-4.
"""

from __future__ import annotations

import pytest
import torch

import polyformers
from polyformers.outputs import BaseModelOutput

from ._generation_common import PEGASUS as TINY, SCORES, assert_matches_reference
from ._generation_common import one_thread, run_reference  # noqa: F401  (one_thread: an autouse fixture)

PAD, EOS, START = 0, 1, 0
# ``eos_bias``: a random final_logits_bias with the end token raised by that much (the causal model, which
# has no such bias, gets its end token's output row scaled by it instead).
MODELS = [
    dict(name="s2s", cls="PegasusForConditionalGeneration", config=TINY, seed=0, eos_bias=2.5),
    dict(name="s2s_scaled", cls="PegasusForConditionalGeneration", config=dict(TINY, scale_embedding=True, d_model=24,
         decoder_layers=1), seed=1, eos_bias=2.0),
    dict(name="causal", cls="PegasusForCausalLM", config=TINY, seed=2, eos_bias=1.5),
]
MODELS = [dict(spec, config_cls="PegasusConfig", perturb=0.1) for spec in MODELS]


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    source = torch.randint(2, TINY["vocab_size"], (2, 7), generator=g)
    padded = torch.randint(2, TINY["vocab_size"], (3, 9), generator=g)
    padded_mask = torch.ones_like(padded)
    for row, length in enumerate((9, 6, 3)):  # right padding, as the tokenizer pads sources
        padded[row, length:] = PAD
        padded_mask[row, length:] = 0
    prompt = torch.randint(2, TINY["vocab_size"], (2, 5), generator=g)
    prefix = torch.randint(2, TINY["vocab_size"], (3, 2), generator=g)
    prefix[:, 0] = START
    head_mask = torch.ones(2, 4)
    head_mask[0, 1], head_mask[1, 2] = 0.0, 0.5
    return {"source": source, "padded": padded, "padded_mask": padded_mask, "prompt": prompt, "prefix": prefix,
            "head_mask": head_mask, "cross_head_mask": head_mask.flip(0)}


PADDED = {"input_ids": "padded", "attention_mask": "padded_mask"}
SOURCE = {"input_ids": "source"}
N = dict(max_new_tokens=10)
BEAM = dict(num_beams=3, max_new_tokens=8)

# name: (model, inputs, generate kwargs, seed)
CASES = {
    "greedy": ("s2s", SOURCE, N, 0),
    "greedy_padded": ("s2s", PADDED, dict(N, **SCORES), 0),
    "greedy_padded_default_mask": ("s2s", {"input_ids": "padded"}, N, 0),
    "greedy_max_length_forced_eos": ("s2s", PADDED, dict(max_length=6, **SCORES), 0),
    "greedy_other_forced_eos": ("s2s", PADDED, dict(max_length=7, forced_eos_token_id=7), 0),
    "greedy_no_forced_eos": ("s2s", PADDED, dict(max_length=7, forced_eos_token_id=None), 0),
    "greedy_min_length": ("s2s", PADDED, dict(N, min_length=8, **SCORES), 0),
    "greedy_no_repeat_ngram": ("s2s", PADDED, dict(N, max_new_tokens=14, no_repeat_ngram_size=2, **SCORES), 0),
    "greedy_head_masks": ("s2s", dict(PADDED, head_mask="head_mask", decoder_head_mask="cross_head_mask",
                                      cross_attn_head_mask="head_mask"), dict(N, **SCORES), 0),
    "greedy_decoder_prefix": ("s2s", dict(PADDED, decoder_input_ids="prefix"), N, 0),
    "greedy_scaled": ("s2s_scaled", PADDED, dict(N, **SCORES), 0),
    "beam": ("s2s", PADDED, dict(BEAM, **SCORES), 0),
    "beam_penalty_early_return": ("s2s", PADDED, dict(BEAM, length_penalty=0.6, early_stopping=True,
                                                      num_return_sequences=2, **SCORES), 0),
    "beam_long_never": ("s2s", SOURCE, dict(BEAM, max_new_tokens=12, length_penalty=-0.5, early_stopping="never",
                                            num_return_sequences=3, **SCORES), 0),
    "beam_min_length_ngram": ("s2s", PADDED, dict(BEAM, min_length=6, no_repeat_ngram_size=2,
                                                  forced_eos_token_id=None), 0),
    "beam_scaled": ("s2s_scaled", PADDED, dict(BEAM, num_beams=4, num_return_sequences=2, **SCORES), 0),
    "sample": ("s2s", PADDED, dict(N, do_sample=True, top_k=0, **SCORES), 11),
    "sample_top_k_temperature": ("s2s", PADDED, dict(N, do_sample=True, top_k=8, temperature=0.8,
                                                     num_return_sequences=2), 12),
    "sample_top_p_ngram": ("s2s", SOURCE, dict(N, do_sample=True, top_p=0.8, no_repeat_ngram_size=2,
                                               min_length=5, **SCORES), 13),
    "beam_sample": ("s2s", PADDED, dict(BEAM, do_sample=True, top_k=10, **SCORES), 14),
    "greedy_everything": ("s2s", PADDED, dict(max_new_tokens=4, output_attentions=True, output_hidden_states=True,
                                              **SCORES), 0),
    "beam_everything": ("s2s", PADDED, dict(BEAM, max_new_tokens=4, output_attentions=True, **SCORES), 0),
    "causal_greedy": ("causal", {"input_ids": "prompt"}, dict(N, **SCORES), 0),
    "causal_beam": ("causal", {"input_ids": "prompt"}, dict(BEAM, num_return_sequences=2, length_penalty=1.5,
                                                            **SCORES), 0),
    "causal_sample": ("causal", {"input_ids": "prompt"}, dict(N, do_sample=True, min_length=9,
                                                              no_repeat_ngram_size=3), 15),
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, legacy_python):
    tensors = _tensors()
    runs = [dict(name=name, model=model, inputs=inputs, kwargs=kwargs, seed=seed)
            for name, (model, inputs, kwargs, seed) in CASES.items()]
    summary, expected, models = run_reference(tmp_path_factory.mktemp("pegasus_generate"), legacy_python, tensors,
                                              MODELS, runs)
    return summary, expected, models, tensors


@pytest.mark.parametrize("name", list(CASES))
def test_generate_matches_reference(reference, name):
    summary, expected, models, tensors = reference
    model, inputs, kwargs, seed = CASES[name]
    torch.manual_seed(seed)
    result = models[model].generate(**{arg: tensors[key] for arg, key in inputs.items()}, **kwargs)
    assert_matches_reference(summary, expected, name, result)


def test_cases_exercise_what_they_claim(reference):
    """The random models must make the settings matter: some sequences stop early, some run to the end."""
    _, expected, _, _ = reference
    greedy = expected["greedy_padded.sequences"]
    early = (greedy[:, 1:-1] == EOS).any(dim=1)  # the last token may be the forced one
    assert early.any() and not early.all(), greedy
    running = ~early  # rows that reach max_length end with the forced token
    assert (expected["greedy_max_length_forced_eos.sequences"][running, -1] == EOS).all()
    assert (expected["greedy_other_forced_eos.sequences"][running, -1] == 7).all()
    assert not torch.equal(expected["greedy_min_length.sequences"], expected["greedy_padded.sequences"][:, :11])
    # Without an attention mask, the pad tokens of the sources are masked all the same.
    assert torch.equal(expected["greedy_padded_default_mask.sequences"], greedy)


def test_encoder_outputs_and_cache_reuse(reference):
    """generate() from precomputed encoder_outputs, and without the cache, gives the same tokens."""
    _, expected, models, tensors = reference
    model = models["s2s"]
    ids, mask = tensors["padded"], tensors["padded_mask"]
    with torch.no_grad():
        encoded = model.get_encoder()(input_ids=ids, attention_mask=mask)
    assert isinstance(encoded, BaseModelOutput)
    from_encoder = model.generate(encoder_outputs=encoded, attention_mask=mask, max_new_tokens=10)
    assert torch.equal(from_encoder, expected["greedy_padded.sequences"])
    uncached = model.generate(ids, attention_mask=mask, num_beams=3, max_new_tokens=8, use_cache=False)
    assert torch.equal(uncached, expected["beam.sequences"])
    assert model.can_generate() and not polyformers.PegasusModel(model.config).can_generate()
    assert model.get_decoder() is model.model.decoder and model.get_encoder() is model.model.encoder
