"""Continuous batching in-process: what each request gets does not depend on what else is in the batch."""

from __future__ import annotations

import time

import pytest
import torch

from polyformers.pt import quantize
from polyformers.pt.cache import StaticCache
from polyformers.serve.models import load_served_model
from polyformers.serve.protocol import SamplingParams
from polyformers.serve.scheduler import GenerationRequest, QueueFull

from .collector import Collector

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
NEAR_TIE = 1e-2  # a margin between the two best scores under which int8 rounding may swap them


def _reference(served, ids, max_tokens, gaps=None):
    """``generate`` on the prompt alone, greedy, cut after the first end-of-sequence token; ``gaps``, a
    list, receives each step's margin between the two best scores."""
    model = served.model
    if served.kind == "seq2seq":
        out = model.generate(torch.tensor([ids]), max_new_tokens=max_tokens, do_sample=False, num_beams=1,
                             output_scores=True, return_dict_in_generate=True)
        tokens = out.sequences[0, 1:]
    else:
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=max_tokens, do_sample=False, pad_token_id=0, output_scores=True,
                             return_dict_in_generate=True)
        tokens = out.sequences[0, len(ids):]
    if gaps is not None:
        gaps.extend(float(top[0] - top[1]) for top in (scores[0].topk(2).values for scores in out.scores))
    out = tokens.tolist()
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
    if int8:  # --int8 rounds each row on its own range, so that the batch does not set a request's rounding
        assert {m.per_row for m in served.model.modules() if type(m).__name__ == "Int8Linear"} == {True}
    try:
        requests = _run_mixed(served)
        assert served.scheduler.max_running > 1  # requests really shared the batch
        if int8:  # the decoding loop counts the served model's packed weights as those the kernels read again
            assert quantize._decoding[id(served.model)][1] == quantize.packed_bytes(served.model) > 0
        compared = total = 0
        for ids, m, request, collector in requests:
            seq = request.sequences[0]
            gaps = []
            expected = _reference(served, ids, m, gaps)
            if int8:
                # Each row is rounded to 8 bits on its own, but the float work around the int8 products
                # (attention over a padded batch) sums in another order, and a value moved by one float
                # step can round to the next 8-bit level: scores move by ~1e-3. So the tokens may part
                # only where the request alone had a near-tie.
                got = seq.output_ids
                part = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), None)
                compared, total = compared + (len(expected) if part is None else part), total + len(expected)
                if part is not None:
                    assert gaps[part] < NEAR_TIE, (f"prompt {served.tokenizer.decode(ids)!r}: token {part} differs "
                                                   f"with a margin of {gaps[part]:.2e}")
                    continue
            assert seq.output_ids == expected, f"prompt {served.tokenizer.decode(ids)!r}"
            ended_by_eos = expected[-1] in served.scheduler.eos
            assert collector.events[-1].finish_reason == ("stop" if ended_by_eos else "length")
            text = served.tokenizer.decode(expected[:-1] if ended_by_eos else expected, skip_special_tokens=True,
                                           clean_up_tokenization_spaces=False)
            assert collector.text == text
        assert compared >= 0.5 * total, (compared, total)  # int8: most tokens were compared
    finally:
        served.scheduler.stop()
    assert id(served.model) not in quantize._decoding  # the loop ended: the model no longer counts


@pytest.mark.parametrize("family", ["gptj", "mpt"])
def test_a_bfloat16_cache_serves_what_generate_gives_alone_with_one(serve_checkpoints, family):
    served = load_served_model(family, str(serve_checkpoints[family]), max_batch=4, prefill_chunk=16,
                               kv_cache_dtype="bfloat16")
    cache = served.scheduler.runner.cache
    try:
        requests = _run_mixed(served)
        assert served.scheduler.max_running > 1
        assert cache.key_cache[0].dtype == torch.bfloat16 and next(served.model.parameters()).dtype == torch.float32
        for ids, m, request, _ in requests:
            alone = StaticCache(served.model.config, max_batch_size=1, max_cache_len=len(ids) + m,
                                dtype=torch.bfloat16)
            out = served.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                        max_new_tokens=m, do_sample=False, pad_token_id=0, past_key_values=alone)
            expected = out[0, len(ids):].tolist()
            ends = [i for i, token in enumerate(expected) if token in served.scheduler.eos]
            expected = expected[: ends[0] + 1] if ends else expected
            assert request.sequences[0].output_ids == expected, f"prompt {served.tokenizer.decode(ids)!r}"
    finally:
        served.scheduler.stop()


def test_a_bfloat16_cache_needs_float32_or_bfloat16_states(serve_checkpoints):
    with pytest.raises(ValueError, match="kv_cache_dtype: expected 'auto' or 'bfloat16', given 'int8'"):
        load_served_model("mpt", str(serve_checkpoints["mpt"]), kv_cache_dtype="int8")
    with pytest.raises(ValueError, match="mpt: kv_cache_dtype 'bfloat16' needs float32 or bfloat16 states, the "
                                         "model computes in torch.float16"):
        load_served_model("mpt", str(serve_checkpoints["mpt"]), dtype="float16", kv_cache_dtype="bfloat16")


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


@pytest.mark.parametrize("mode", ["raw", "processed"])
def test_logprobs_are_of_the_chosen_distribution(serve_checkpoints, mode):
    """``raw``: the model's log-softmax; ``processed``: after logit_bias and penalties (and, sampling, the
    temperature and top_p), recomputed here from a plain forward over prompt + output at each step."""
    from polyformers.pt.generation import TopPLogitsWarper

    served = load_served_model("gptj", str(serve_checkpoints["gptj"]), max_batch=2, logprobs_mode=mode)
    try:
        ids = served.tokenizer("Once upon a time")["input_ids"]
        biased = 1000
        settings = [
            dict(temperature=0.0, logit_bias={biased: 3.0}, frequency_penalty=1.5, presence_penalty=0.5),
            dict(temperature=0.05, top_p=0.6, seed=5, logit_bias={biased: 3.0}, frequency_penalty=1.0),
        ]
        for setting in settings:
            params = SamplingParams(max_tokens=4, logprobs=3, **setting)
            collector = Collector()
            request = GenerationRequest([ids], params, 1, collector)
            served.scheduler.submit(request)
            assert collector.done.wait(60)
            output = request.sequences[0].output_ids
            entries = [e for event in collector.events for e in event.logprobs]
            assert len(entries) == len(output) == 4
            with torch.no_grad():
                logits = served.model(torch.tensor([ids + output])).logits[0, len(ids) - 1:-1].float()
            for step, (token, entry) in enumerate(zip(output, entries)):
                row = logits[step].clone()
                if mode == "processed":
                    row[biased] += 3.0
                    counts = torch.bincount(torch.tensor(output[:step], dtype=torch.long), minlength=row.numel())
                    row -= setting["frequency_penalty"] * counts + setting.get("presence_penalty", 0.0) * (counts > 0)
                    if setting["temperature"]:
                        row = TopPLogitsWarper(setting["top_p"])(None, (row / setting["temperature"])[None])[0]
                want = torch.log_softmax(row, dim=-1).clamp_min(-9999.0)
                assert entry.logprob == pytest.approx(float(want[token]), abs=1e-4)
                best = torch.topk(want, 3).values.tolist()
                assert sorted(entry.top.values(), reverse=True) == pytest.approx(best, abs=1e-4)
        if mode == "processed":  # the sharp, narrow nucleus leaves impossible tokens among the top 3
            assert -9999.0 in entries[0].top.values()
    finally:
        served.scheduler.stop()
