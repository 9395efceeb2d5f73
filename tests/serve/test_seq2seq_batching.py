"""Pegasus under continuous batching: every running sequence advances in one decoder forward per step,
on per-slot storage, and each request still gets what ``generate`` gives for its prompt alone."""

from __future__ import annotations

import time

import pytest
import torch

from polyformers.serve.models import load_served_model
from polyformers.serve.protocol import SamplingParams
from polyformers.serve.scheduler import GenerationRequest

from .collector import Collector

# Lengths from 2 to 40-odd tokens, so the encoder states of the rows differ widely in length.
PROMPTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog and keeps running until the end of the long road, where "
    "the river turns west and the old mill stands by the bridge",
    "A",
    "One two three four five six seven eight nine ten eleven twelve",
    "x y",
    "In a hole in the ground there lived a hobbit. Not a nasty, dirty, wet hole",
    "Once upon a time",
    "It was the best of times, it was the worst of times",
    "Summer",
]
# 300 is beyond the context (128 positions): that request ends when the decoder's positions run out.
MAX_TOKENS = [20, 7, 33, 15, 1, 26, 12, 300, 9]


@pytest.fixture(scope="module")
def served(serve_checkpoints):
    # Fewer slots than requests: requests wait, join the running batch and leave it at token boundaries.
    served = load_served_model("pegasus", str(serve_checkpoints["pegasus"]), max_batch=3, max_queue=16)
    rows = []
    layer = served.model.get_decoder().layers[0]
    # Every decoder forward (a prefill's first step or a batched step) passes this norm once: its batch
    # size says how many rows that forward computed.
    hook = layer.encoder_attn_layer_norm.register_forward_hook(lambda module, args, out: rows.append(out.shape[0]))
    served.decoder_rows = rows
    yield served
    hook.remove()
    served.scheduler.stop()


def _ids(served, prompt):
    return served.tokenizer(prompt)["input_ids"]


def _reference(served, ids, max_tokens):
    """``generate`` on the prompt alone, greedy, cut after the first end-of-sequence token."""
    budget = min(max_tokens, served.context - 1)  # the decoder's positions: the start token and the outputs
    with torch.no_grad():
        out = served.model.generate(torch.tensor([ids]), max_new_tokens=budget, do_sample=False, num_beams=1)
    out = out[0, 1:].tolist()
    for i, token in enumerate(out):
        if token in served.scheduler.eos:
            return out[: i + 1]
    return out


@pytest.fixture(scope="module")
def references(served):
    return [_reference(served, _ids(served, p), m) for p, m in zip(PROMPTS, MAX_TOKENS)]


def _text(served, tokens):
    ended_by_eos = bool(tokens) and tokens[-1] in served.scheduler.eos
    return served.tokenizer.decode(tokens[:-1] if ended_by_eos else tokens, skip_special_tokens=True,
                                   clean_up_tokenization_spaces=False)


def _submit_all(served, stops=None, stagger=0.01):
    requests = []
    for i, (prompt, m) in enumerate(zip(PROMPTS, MAX_TOKENS)):
        params = SamplingParams(max_tokens=m, temperature=0.0, stop=(stops or {}).get(i, []))
        collector = Collector()
        request = GenerationRequest([_ids(served, prompt)], params, 1, collector)
        served.scheduler.submit(request)
        requests.append((request, collector))
        time.sleep(stagger * (i % 3))  # some arrive together, some while others are decoding
    for _, collector in requests:
        assert collector.done.wait(120)
    return requests


def test_references_are_not_trivial(served, references):
    # The perturbed weights give varied tokens per prompt, so the comparisons below can fail; request 7
    # runs until the decoder's positions are used up.
    assert len({tuple(r) for r in references}) == len(references)
    assert any(len(set(r)) > 3 for r in references)
    assert len(references[7]) == served.context - 1 or references[7][-1] in served.scheduler.eos


def test_greedy_equals_generate_alone_in_one_forward_per_step(served, references):
    rows = served.decoder_rows
    rows.clear()
    steps_before = served.scheduler.steps
    requests = _submit_all(served)
    steps = served.scheduler.steps - steps_before
    # One decoder forward per prefill (one row) and one per step for all the running sequences together.
    assert len(rows) == len(PROMPTS) + steps
    assert max(rows) == 3  # all three slots decoded in the same forward
    assert served.scheduler.max_running == 3
    for i, ((request, collector), expected) in enumerate(zip(requests, references)):
        seq = request.sequences[0]
        assert seq.output_ids == expected, f"request {i}: {PROMPTS[i]!r}"
        ended_by_eos = expected[-1] in served.scheduler.eos
        assert collector.events[-1].finish_reason == ("stop" if ended_by_eos else "length"), f"request {i}"
        assert collector.text == _text(served, expected), f"request {i}"
        assert seq.slot is None
    assert served.scheduler.runner.free_slots == 3


def test_stop_strings_end_only_their_request(served, references):
    texts = [_text(served, r) for r in references]
    candidates = [i for i, t in enumerate(texts) if len(t.strip()) >= 8]
    assert len(candidates) >= 2
    first, second = candidates[0], candidates[-1]
    stops = {first: [texts[first][3:7]], second: ["zzz-never", texts[second][4:8]]}
    requests = _submit_all(served, stops=stops)
    for i, (request, collector) in enumerate(requests):
        if i in stops:
            cut = min(texts[i].find(s) for s in stops[i] if s in texts[i])
            assert collector.text == texts[i][:cut], f"request {i}"
            assert collector.events[-1].finish_reason == "stop"
        else:
            assert collector.text == texts[i], f"request {i}"
            assert request.sequences[0].output_ids == references[i]
    assert served.scheduler.runner.free_slots == 3


def test_choices_share_the_encoder_states(served, references):
    # n = 3 greedy choices of one prompt: prefilled once, copied to two more slots, decoded together.
    collector = Collector()
    request = GenerationRequest([_ids(served, PROMPTS[5])], SamplingParams(max_tokens=26, temperature=0.0), 3,
                                collector)
    served.scheduler.submit(request)
    deadline = time.monotonic() + 60
    while not all(s.finished for s in request.sequences):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert [s.output_ids for s in request.sequences] == [references[5]] * 3


def test_cancelled_request_frees_its_slot_for_the_others(served, references):
    runner = served.scheduler.runner
    long = Collector()
    leaving = GenerationRequest([_ids(served, PROMPTS[1])], SamplingParams(max_tokens=100, temperature=0.0), 1,
                                long)
    served.scheduler.submit(leaving)
    deadline = time.monotonic() + 60
    while len(long.events) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.002)
    # Four more requests than the two slots left: they wait, and the cancelled one's slot goes to them.
    others = []
    for i in (0, 3, 6, 8):
        collector = Collector()
        request = GenerationRequest([_ids(served, PROMPTS[i])], SamplingParams(max_tokens=MAX_TOKENS[i],
                                                                                temperature=0.0), 1, collector)
        served.scheduler.submit(request)
        others.append((i, request, collector))
    leaving.cancel()
    served.scheduler.wake()
    for i, request, collector in others:
        assert collector.done.wait(60)
        assert request.sequences[0].output_ids == references[i], f"request {i}"
    assert leaving.sequences[0].slot is None
    assert len(leaving.sequences[0].output_ids) < 100
    assert long.events[-1].finish_reason is None  # a cancelled request gets no ending of its own
    deadline = time.monotonic() + 10
    while runner.free_slots != 3:
        assert time.monotonic() < deadline
        time.sleep(0.01)
