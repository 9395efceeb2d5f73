"""Assisted decoding (``assistant_model=``) and prompt lookup decoding (``prompt_lookup_num_tokens=``)
against the reference's 4.37 release, and against plain greedy decoding.

The reference builds perturbed random tiny models (RoBERTa decoder, GPT-J, MPT, Pegasus) and, for each, a
draft: the same config with one layer, holding the model's embeddings, first layer and head. The layers the
draft lacks are scaled down in the model, so that the draft often proposes the model's own next tokens and
rounds keep several candidates; an unrelated GPT-J assistant covers the rounds that keep few. All cases run in one
subprocess (tests/pt/_generation_assisted_oracle.py); polyformers loads the saved folders and runs the
same cases. Sequences must be identical, scores equal within 1e-4; greedy cases must also equal
polyformers' greedy decoding without assistance.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import polyformers
from polyformers.pt.generation.assisted import PromptLookupCandidateGenerator, crop_cache
from polyformers.pt.cache import DynamicCache, StaticCache

from . import _generation_common as common
from ._generation_common import ATOL, PAD, PEGASUS, ROBERTA, SCORES, SOURCE, assert_matches_reference
from ._generation_common import assert_cache_holds_all_but_the_last_token
from ._generation_common import one_thread, run_reference  # noqa: F401  (one_thread: an autouse fixture)

ORACLE = Path(__file__).with_name("_generation_assisted_oracle.py")
# Three layers: their drafts keep the first one.
GPTJ = dict(common.GPTJ, n_layer=3)
MPT = dict(common.MPT, n_layers=3)
MODELS = [
    dict(name="roberta", cls="RobertaForCausalLM", config_cls="RobertaConfig", seed=0, perturb=0.1, boost={"5": 1.5},
         quiet=[".layer.1."], config=ROBERTA),
    dict(name="roberta_draft", cls="RobertaForCausalLM", config_cls="RobertaConfig", draft_of="roberta",
         config=dict(ROBERTA, num_hidden_layers=1)),
    dict(name="gptj", cls="GPTJForCausalLM", config_cls="GPTJConfig", seed=1, perturb=0.2, boost={"9": 1.5},
         quiet=[".h.1.", ".h.2."], config=GPTJ),
    dict(name="gptj_draft", cls="GPTJForCausalLM", config_cls="GPTJConfig", draft_of="gptj",
         config=dict(GPTJ, n_layer=1)),
    # An assistant of its own (not derived from the model): it disagrees often.
    dict(name="gptj_other", cls="GPTJForCausalLM", config_cls="GPTJConfig", seed=7, perturb=0.2,
         config=dict(GPTJ, n_layer=2)),
    dict(name="mpt", cls="MptForCausalLM", config_cls="MptConfig", seed=2, perturb=0.2, boost={"3": 1.5},
         quiet=[".blocks.1.", ".blocks.2."], config=MPT),
    dict(name="mpt_draft", cls="MptForCausalLM", config_cls="MptConfig", draft_of="mpt", config=dict(MPT, n_layers=1)),
    dict(name="pegasus", cls="PegasusForConditionalGeneration", config_cls="PegasusConfig", seed=3, perturb=0.1,
         boost={"1": 1.5}, quiet=["encoder.layers.1.", "decoder.layers.1."], config=PEGASUS),
    dict(name="pegasus_draft", cls="PegasusForConditionalGeneration", config_cls="PegasusConfig",
         draft_of="pegasus", config=dict(PEGASUS, encoder_layers=1, decoder_layers=1)),
]


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    one = torch.randint(10, 99, (1, 7), generator=g)
    padded = torch.randint(10, 99, (1, 8), generator=g)
    padded[0, :2] = PAD  # decoder-only prompts are padded on the left
    padded_mask = (padded != PAD).long()
    # A prompt that repeats itself, so that its n-grams recur and prompt lookup finds continuations.
    repeated = torch.tensor([[11, 12, 13, 14, 15, 16, 40, 41, 11, 12, 13, 14, 15, 16, 40, 41, 11, 12]])
    source = torch.randint(2, 60, (1, 8), generator=g)
    source[0, 6:] = PAD  # sources are padded on the right
    source_mask = (source != PAD).long()
    two = torch.randint(10, 99, (2, 5), generator=g)
    return {"one": one, "padded": padded, "padded_mask": padded_mask, "repeated": repeated, "source": source,
            "source_mask": source_mask, "two": two}


ONE = {"input_ids": "one"}
PADDED = {"input_ids": "padded", "attention_mask": "padded_mask"}
REPEATED = {"input_ids": "repeated"}
CONSTANT_3 = {"num_assistant_tokens": 3, "num_assistant_tokens_schedule": "constant"}

# name: (model, inputs, generate kwargs, assistant, assistant generation-config settings)
CASES = {
    # assisted greedy decoding
    "a_gptj": ("gptj", ONE, dict(max_new_tokens=20), "gptj_draft", {}),
    "a_gptj_scores": ("gptj", ONE, dict(max_new_tokens=20, **SCORES), "gptj_draft", {}),
    "a_gptj_padded_constant": ("gptj", PADDED, dict(max_new_tokens=16, **SCORES), "gptj_draft", CONSTANT_3),
    "a_gptj_other_eos": ("gptj", ONE, dict(max_new_tokens=15, eos_token_id=9, pad_token_id=PAD, **SCORES),
                         "gptj_other", {}),
    "a_gptj_processors": ("gptj", ONE, dict(max_new_tokens=18, repetition_penalty=1.3, no_repeat_ngram_size=2,
                                            min_new_tokens=4, eos_token_id=9, pad_token_id=PAD, **SCORES),
                          "gptj_draft", {"num_assistant_tokens": 7}),
    "a_gptj_short": ("gptj", ONE, dict(max_new_tokens=2, **SCORES), "gptj_draft", {}),
    "a_gptj_outputs": ("gptj", ONE, dict(max_new_tokens=8, output_attentions=True, output_hidden_states=True,
                                         **SCORES), "gptj_draft", {}),
    "a_mpt_padded": ("mpt", PADDED, dict(max_new_tokens=16), "mpt_draft", {}),
    "a_mpt_scores": ("mpt", ONE, dict(max_new_tokens=16, **SCORES), "mpt_draft", CONSTANT_3),
    "a_roberta_eos": ("roberta", ONE, dict(max_new_tokens=20, eos_token_id=5, pad_token_id=PAD, **SCORES),
                      "roberta_draft", {}),
    "a_pegasus": ("pegasus", SOURCE, dict(max_new_tokens=12, **SCORES), "pegasus_draft", {}),
    "a_pegasus_plain": ("pegasus", SOURCE, dict(max_new_tokens=14, no_repeat_ngram_size=2), "pegasus_draft",
                        {"num_assistant_tokens": 2}),
    # assisted sampling (speculative sampling)
    "s_gptj": ("gptj", ONE, dict(max_new_tokens=16, do_sample=True, top_k=0, **SCORES), "gptj_draft", {}),
    "s_mpt_top_k": ("mpt", ONE, dict(max_new_tokens=16, do_sample=True, top_k=10, temperature=0.8, **SCORES),
                    "mpt_draft", {}),
    "s_pegasus": ("pegasus", SOURCE, dict(max_new_tokens=10, do_sample=True, top_k=0, **SCORES), "pegasus_draft",
                  {}),
    # prompt lookup decoding
    "p_gptj": ("gptj", REPEATED, dict(max_new_tokens=20, prompt_lookup_num_tokens=4, **SCORES), None, {}),
    "p_gptj_plain": ("gptj", REPEATED, dict(max_new_tokens=20, prompt_lookup_num_tokens=10), None, {}),
    "p_roberta_eos": ("roberta", REPEATED, dict(max_new_tokens=16, prompt_lookup_num_tokens=3, eos_token_id=5,
                                                pad_token_id=PAD, **SCORES), None, {}),
    "p_mpt_padded": ("mpt", PADDED, dict(max_new_tokens=20, prompt_lookup_num_tokens=5), None, {}),
    "p_pegasus": ("pegasus", SOURCE, dict(max_new_tokens=12, prompt_lookup_num_tokens=3, **SCORES), None, {}),
    "p_gptj_sample": ("gptj", REPEATED, dict(max_new_tokens=14, prompt_lookup_num_tokens=4, do_sample=True,
                                             top_k=5, **SCORES), None, {}),
    # refused by the reference too
    "e_batch": ("gptj", {"input_ids": "two"}, dict(max_new_tokens=5), "gptj_draft", {}),
    "e_beams": ("gptj", ONE, dict(max_new_tokens=5, num_beams=2), "gptj_draft", {}),
    "e_prompt_lookup_beams": ("gptj", ONE, dict(max_new_tokens=5, num_beams=2, prompt_lookup_num_tokens=3), None,
                              {}),
}
GREEDY = [name for name, (_, _, kwargs, _, _) in CASES.items()
          if not name.startswith("e_") and not kwargs.get("do_sample")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, legacy_python):
    tensors = _tensors()
    runs = [dict(name=name, model=model, inputs=inputs, kwargs=kwargs, assistant=assistant, assistant_settings=settings)
            for name, (model, inputs, kwargs, assistant, settings) in CASES.items()]
    summary, expected, models = run_reference(tmp_path_factory.mktemp("generation_assisted"), legacy_python, tensors,
                                              MODELS, runs, oracle=ORACLE)
    return summary, expected, models, tensors


def _run(models, tensors, name, **extra):
    model, inputs, kwargs, assistant, settings = CASES[name]
    kwargs = dict(kwargs, **extra)
    helper = models[assistant] if assistant else None
    saved = {key: getattr(helper.generation_config, key) for key in settings} if helper is not None else {}
    if helper is not None:
        kwargs["assistant_model"] = helper
        for key, value in settings.items():
            setattr(helper.generation_config, key, value)
    torch.manual_seed(0)
    try:
        return models[model].generate(**{arg: tensors[key] for arg, key in inputs.items()}, **kwargs)
    finally:
        for key, value in saved.items():
            setattr(helper.generation_config, key, value)


@pytest.mark.parametrize("name", [n for n in CASES if not n.startswith("e_")])
def test_generate_matches_reference(reference, name):
    summary, expected, models, tensors = reference
    assert_matches_reference(summary, expected, name, _run(models, tensors, name))


@pytest.mark.parametrize("name", GREEDY)
def test_greedy_cases_equal_plain_greedy(reference, name):
    """Assistance changes how fast tokens come, never which: the same tokens as greedy decoding alone."""
    _, _, models, tensors = reference
    model, inputs, kwargs, _, _ = CASES[name]
    plain = {k: v for k, v in kwargs.items() if k not in ("prompt_lookup_num_tokens", "return_dict_in_generate",
                                                         "output_scores", "output_attentions",
                                                         "output_hidden_states")}
    greedy = models[model].generate(**{arg: tensors[key] for arg, key in inputs.items()}, **plain)
    result = _run(models, tensors, name)
    sequences = result if isinstance(result, torch.Tensor) else result.sequences
    assert torch.equal(sequences, greedy), name


def test_attentions_and_hidden_states_match_reference(reference):
    _, expected, models, tensors = reference
    name = "a_gptj_outputs"
    result = _run(models, tensors, name)
    for field in ("attentions", "hidden_states"):
        keys = [k for k in expected if k.startswith(f"{name}.{field}.")]
        steps = {int(k.split(".")[2]) for k in keys}
        assert len(result[field]) == len(steps) == result.sequences.shape[1] - tensors["one"].shape[1], field
        for key in keys:
            i, j = (int(part) for part in key.split(".")[2:])
            got, want = result[field][i][j], expected[key]
            assert got.shape == want.shape, (key, got.shape, want.shape)
            assert torch.allclose(got, want, atol=ATOL), key


def _counting(model):
    calls = []
    handle = model.register_forward_hook(lambda module, args, output: calls.append(1))
    return calls, handle


@pytest.mark.parametrize("name, assistant", [("a_gptj", "gptj_draft"), ("a_mpt_padded", "mpt_draft"),
                                             ("p_gptj_plain", None)])
def test_candidates_are_kept(reference, name, assistant):
    """The draft and the lookup really save forwards of the model: it runs fewer times than tokens come."""
    summary, expected, models, tensors = reference
    model = CASES[name][0]
    calls, handle = _counting(models[model])
    try:
        result = _run(models, tensors, name)
    finally:
        handle.remove()
    new = result.shape[1] - tensors[CASES[name][1]["input_ids"]].shape[1]
    assert new == CASES[name][2]["max_new_tokens"]
    assert len(calls) < new, (name, len(calls), new)
    print(name, len(calls), new)


def test_constant_schedule_caps_the_candidates(reference):
    """With num_assistant_tokens=3 and the constant schedule, no round asks the draft for more than 3."""
    _, _, models, tensors = reference
    draft = models["gptj_draft"]
    lengths = []
    handle = models["gptj"].register_forward_hook(
        lambda module, args, output: lengths.append(output.logits.shape[1]))
    try:
        _run(models, tensors, "a_gptj_padded_constant")
    finally:
        handle.remove()
    # After the prompt, each forward reads the last kept token and at most 3 candidates.
    assert max(lengths[1:]) <= 4 and max(lengths[1:]) == 4, lengths
    assert draft.generation_config.num_assistant_tokens == 5  # the settings were restored


def test_preallocated_cache_is_cropped(reference):
    """A StaticCache given to generate ends holding exactly the kept tokens but the last, rejected candidates'
    slots forgotten (zero), and decoding through it gives greedy's tokens."""
    _, expected, models, tensors = reference
    model = models["gptj"]
    ids = tensors["one"]
    cache = StaticCache(model.config, max_batch_size=1, max_cache_len=ids.shape[1] + 20)
    result = _run(models, tensors, "a_gptj", past_key_values=cache)
    assert torch.equal(result, expected["a_gptj.sequences"])
    kept = result.shape[1] - 1
    assert cache.get_seq_length() == kept
    for key, value in cache:
        assert bool(key[:, :, :kept].abs().sum(dim=(0, 1, 3)).ne(0).all())
        assert not bool(key[:, :, kept:].any()) and not bool(value[:, :, kept:].any())


def test_returned_cache_covers_all_but_the_last_token(reference):
    _, _, models, tensors = reference
    decoder_only, seq2seq = _run(models, tensors, "a_gptj_scores"), _run(models, tensors, "a_pegasus")
    assert_cache_holds_all_but_the_last_token(decoder_only, seq2seq, tensors["source"].shape[1])


def test_crop_cache_formats():
    states = [(torch.randn(1, 2, 6, 4), torch.randn(1, 2, 6, 4), torch.randn(1, 2, 9, 4), torch.randn(1, 2, 9, 4))]
    legacy = crop_cache(tuple(states), 4)
    assert [t.shape[2] for t in legacy[0]] == [4, 4, 9, 9]
    assert torch.equal(legacy[0][0], states[0][0][:, :, :4])
    dynamic = crop_cache(DynamicCache([states[0][:2]]), 3)
    assert dynamic.get_seq_length() == 3 and torch.equal(dynamic[0][1], states[0][1][:, :, :3])


def test_prompt_lookup_candidates():
    lookup = PromptLookupCandidateGenerator(num_output_tokens=3)
    ids = torch.tensor([[5, 6, 7, 8, 9, 1, 6, 7]])
    # The bigram (6, 7) occurred first at position 1: what followed it is proposed.
    assert lookup.get_candidates(ids)[0].tolist() == [[5, 6, 7, 8, 9, 1, 6, 7, 8, 9, 1]]
    # Only the unigram (7) matches: its earlier occurrence's continuation, cut at the sequence end.
    ids = torch.tensor([[5, 7, 3, 4, 7]])
    assert lookup.get_candidates(ids)[0].tolist() == [[5, 7, 3, 4, 7, 3, 4, 7]]
    # No match: a single placeholder token 0, as in the reference.
    assert lookup.get_candidates(torch.tensor([[1, 2, 3]]))[0].tolist() == [[1, 2, 3, 0]]
    with pytest.raises(ValueError, match="prompt_lookup_num_tokens"):
        PromptLookupCandidateGenerator(num_output_tokens=0)


def test_reference_refuses_the_same_settings(reference):
    summary, _, _, _ = reference
    assert "batch_size = 1" in summary["e_batch"]["error"]
    assert "Greedy Search and Sample" in summary["e_beams"]["error"]
    assert "Greedy Search and Sample" in summary["e_prompt_lookup_beams"]["error"]


@pytest.fixture(scope="module")
def small_vocabulary_assistant():
    torch.manual_seed(0)
    config = polyformers.GPTJConfig(**dict(GPTJ, vocab_size=50, n_layer=1))
    return polyformers.GPTJForCausalLM(config).eval()


@pytest.mark.parametrize("settings, argument, message", [
    (dict(input_ids="two"), "input_ids", "batch_size = 1"),
    (dict(num_beams=2), "num_beams", "greedy search and sampling"),
    (dict(num_beams=2, prompt_lookup_num_tokens=3, assistant=None), "num_beams", "prompt_lookup_num_tokens"),
    (dict(penalty_alpha=0.6, top_k=4), "penalty_alpha", "contrastive"),
    (dict(force_words_ids=[[5]], num_beams=2), "force_words_ids", "force_words_ids"),
    (dict(do_sample=True, num_return_sequences=2), "num_return_sequences", "has to be 1"),
    (dict(use_cache=False), "use_cache", "use_cache=True"),
    (dict(assistant="small"), "assistant_model", "vocab_size=50"),
    (dict(assistant="pegasus"), "assistant_model", "encoder-decoder"),
    (dict(prompt_lookup_num_tokens=0, assistant=None), "prompt_lookup_num_tokens", "given 0"),
    (dict(schedule="sometimes"), "num_assistant_tokens_schedule", "sometimes"),
])
def test_bad_settings_are_named(reference, small_vocabulary_assistant, settings, argument, message):
    _, _, models, tensors = reference
    settings = dict(settings)
    ids = tensors[settings.pop("input_ids", "one")]
    name = settings.pop("assistant", "gptj_draft")
    assistant = small_vocabulary_assistant if name == "small" else models[name] if name else None
    schedule = settings.pop("schedule", None)
    if schedule is not None:
        assistant.generation_config.num_assistant_tokens_schedule = schedule
    try:
        with pytest.raises(ValueError, match=argument) as caught:
            models["gptj"].generate(ids, max_new_tokens=4, assistant_model=assistant, **settings)
    finally:
        if schedule is not None:
            assistant.generation_config.num_assistant_tokens_schedule = "heuristic"
    assert message in str(caught.value)


def test_streamer_receives_every_kept_token(reference):
    """A round may keep several tokens: the streamer gets each round's tokens, in order, after the prompt."""
    from polyformers.pt.streamers import BaseStreamer

    class Collect(BaseStreamer):
        def __init__(self):
            self.chunks, self.ended = [], False

        def put(self, value):
            self.chunks.append(value.reshape(-1).tolist())

        def end(self):
            self.ended = True

    _, expected, models, tensors = reference
    streamer = Collect()
    result = _run(models, tensors, "a_gptj", streamer=streamer)
    assert streamer.ended and streamer.chunks[0] == tensors["one"][0].tolist()
    assert sum(streamer.chunks[1:], []) == result[0, tensors["one"].shape[1]:].tolist()
    assert max(len(chunk) for chunk in streamer.chunks[1:]) > 1


@pytest.mark.parametrize("settings, argument", [
    (dict(prompt_lookup_num_tokens=0), "prompt_lookup_num_tokens"),
    (dict(prompt_lookup_num_tokens=2.5), "prompt_lookup_num_tokens"),
    (dict(num_assistant_tokens=0), "num_assistant_tokens"),
    (dict(num_assistant_tokens="many"), "num_assistant_tokens"),
])
def test_generation_config_checks_the_fields(settings, argument):
    with pytest.raises(ValueError, match=argument):
        polyformers.GenerationConfig(**settings)
    config = polyformers.GenerationConfig(prompt_lookup_num_tokens=4, num_assistant_tokens=7.0)
    assert (config.prompt_lookup_num_tokens, config.num_assistant_tokens) == (4, 7.0)
