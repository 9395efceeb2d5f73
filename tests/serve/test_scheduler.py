"""Continuous batching in-process: what each request gets does not depend on what else is in the batch."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from polyformers.serve.models import load_served_model
from polyformers.serve.protocol import SamplingParams
from polyformers.serve.scheduler import GenerationRequest, QueueFull

PROMPTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog and keeps running until the end of the long road, where",
    "A",
    "One two three four five six seven eight nine ten eleven twelve",
    "x y",
    "In a hole in the ground there lived a hobbit. Not a nasty, dirty, wet hole",
    "Once upon a time",
]
MAX_TOKENS = [20, 7, 33, 15, 1, 26, 12]


class Collector:
    def __init__(self):
        self.events = []
        self.done = threading.Event()

    def __call__(self, event):
        self.events.append(event)
        if event.finish_reason is not None or event.error is not None:
            self.done.set()

    @property
    def text(self) -> str:
        return "".join(e.text for e in self.events)


def _reference(served, ids, max_tokens):
    """``generate`` on the prompt alone, greedy, cut after the first end-of-sequence token."""
    model = served.model
    if served.kind == "seq2seq":
        out = model.generate(torch.tensor([ids]), max_new_tokens=max_tokens, do_sample=False, num_beams=1)[0, 1:]
    else:
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=max_tokens, do_sample=False, pad_token_id=0)[0, len(ids):]
    out = out.tolist()
    for i, token in enumerate(out):
        if token in served.scheduler.eos:
            return out[: i + 1]
    return out


def _run_mixed(served, stops=None, stagger=0.01):
    tok = served.tokenizer
    requests = []
    for i, (prompt, m) in enumerate(zip(PROMPTS, MAX_TOKENS)):
        ids = tok(prompt, add_special_tokens=served.kind == "seq2seq")["input_ids"]
        params = SamplingParams(max_tokens=m, temperature=0.0, stop=(stops or {}).get(i, []))
        collector = Collector()
        request = GenerationRequest([ids], params, 1, collector)
        served.scheduler.submit(request)
        requests.append((ids, m, request, collector))
        time.sleep(stagger * (i % 3))  # some arrive together, some while others are decoding
    for *_, collector in requests:
        assert collector.done.wait(60)
    return requests


@pytest.mark.parametrize("family,int8", [("gptj", False), ("mpt", False), ("pegasus", False),
                                         ("gptj", True), ("mpt", True), ("pegasus", True)])
def test_greedy_equals_generate_alone(serve_checkpoints, family, int8):
    served = load_served_model(family, str(serve_checkpoints[family]), max_batch=4, prefill_chunk=16, int8=int8)
    if int8:  # --int8 rounds each row on its own range, so a batch cannot change a request's tokens
        assert {m.per_row for m in served.model.modules() if type(m).__name__ == "Int8Linear"} == {True}
    try:
        requests = _run_mixed(served)
        assert served.scheduler.max_running > 1  # requests really shared the batch
        for ids, m, request, collector in requests:
            seq = request.sequences[0]
            expected = _reference(served, ids, m)
            assert seq.output_ids == expected, f"prompt {served.tokenizer.decode(ids)!r}"
            ended_by_eos = expected[-1] in served.scheduler.eos
            assert collector.events[-1].finish_reason == ("stop" if ended_by_eos else "length")
            text = served.tokenizer.decode(expected[:-1] if ended_by_eos else expected, skip_special_tokens=True,
                                           clean_up_tokenization_spaces=False)
            assert collector.text == text
    finally:
        served.scheduler.stop()


def test_stop_strings_end_only_their_request(serve_checkpoints):
    served = load_served_model("gptj", str(serve_checkpoints["gptj"]), max_batch=3)
    try:
        plain = _run_mixed(served)
        texts = [c.text for *_, c in plain]
        # A stop string from the middle of request 0's and 3's greedy texts.
        stops = {0: [texts[0][8:12]], 3: ["zzz-never", texts[3][5:9]]}
        stopped = _run_mixed(served, stops=stops)
        for i, (*_, collector) in enumerate(stopped):
            if i in stops:
                cut = min(texts[i].find(s) for s in stops[i] if s in texts[i])
                assert collector.text == texts[i][:cut]
                assert collector.events[-1].finish_reason == "stop"
            else:
                assert collector.text == texts[i]
    finally:
        served.scheduler.stop()


def test_choices_share_the_prefill_and_seeds_repeat(serve_checkpoints):
    served = load_served_model("gptj", str(serve_checkpoints["gptj"]), max_batch=4)
    try:
        ids = served.tokenizer("Once upon a time")["input_ids"]

        def run(params, n):
            collector = Collector()
            request = GenerationRequest([ids], params, n, collector)
            served.scheduler.submit(request)
            deadline = time.monotonic() + 60
            while not all(s.finished for s in request.sequences):
                assert time.monotonic() < deadline
                time.sleep(0.01)
            return [s.output_ids for s in request.sequences]

        greedy = run(SamplingParams(max_tokens=10, temperature=0.0), 3)
        assert greedy[0] == greedy[1] == greedy[2] == _reference(served, ids, 10)
        sampled = run(SamplingParams(max_tokens=10, temperature=1.0, seed=7), 2)
        assert sampled == run(SamplingParams(max_tokens=10, temperature=1.0, seed=7), 2)
        assert sampled[0] != sampled[1]  # each choice draws its own tokens
        assert run(SamplingParams(max_tokens=10, temperature=0.8, top_p=0.5, seed=3, frequency_penalty=1.0,
                                  presence_penalty=0.5, logit_bias={50256: -100}), 1)[0]
    finally:
        served.scheduler.stop()


def test_cancel_frees_the_slot_and_queue_bounds(serve_checkpoints):
    served = load_served_model("gptj", str(serve_checkpoints["gptj"]), max_batch=1, max_queue=1)
    try:
        ids = served.tokenizer("Hello")["input_ids"]
        long = Collector()
        first = GenerationRequest([ids], SamplingParams(max_tokens=1000, temperature=0.0), 1, long)
        served.scheduler.submit(first)
        while not long.events:
            time.sleep(0.005)
        waiting = Collector()
        served.scheduler.submit(GenerationRequest([ids], SamplingParams(max_tokens=3, temperature=0.0), 1, waiting))
        with pytest.raises(QueueFull):
            served.scheduler.submit(GenerationRequest([ids], SamplingParams(max_tokens=3), 1, Collector()))
        first.cancel()
        assert waiting.done.wait(10)  # the single slot went to the waiting request
        assert len(first.sequences[0].output_ids) < 1000
        assert first.sequences[0].slot is None
    finally:
        served.scheduler.stop()
