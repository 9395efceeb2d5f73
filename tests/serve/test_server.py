"""``polyformers serve`` through the official ``openai`` client, on 127.0.0.1."""

from __future__ import annotations

import base64
import concurrent.futures
import json
import time
import urllib.request

import numpy as np
import openai
import pytest


def _greedy(client, prompt, max_tokens, model="gptj", **kwargs):
    return client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0, **kwargs)


def test_models_and_health(server, client):
    names = sorted(m.id for m in client.models.list())
    assert names == ["gptj", "mpnet", "mpt", "pegasus"]
    assert client.models.retrieve("mpt").id == "mpt"
    assert server.get("/health")["status"] == "ok"


@pytest.mark.parametrize("model", ["gptj", "mpt", "pegasus"])
def test_completions_streamed_and_not(client, model):
    whole = _greedy(client, "The capital of France is", 12, model=model)
    choice = whole.choices[0]
    assert whole.object == "text_completion" and whole.model == model
    assert choice.finish_reason in ("stop", "length") and choice.text
    assert whole.usage.completion_tokens <= 12 and whole.usage.prompt_tokens > 0
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens
    chunks = list(client.completions.create(model=model, prompt="The capital of France is", max_tokens=12,
                                            temperature=0, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == choice.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == \
        [choice.finish_reason]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_prompt_forms_echo_and_logprobs(client):
    tokens = [15496, 995]  # "Hello world" in GPT-2's vocabulary
    by_text = _greedy(client, "Hello world", 5, logprobs=2, echo=True)
    by_ids = _greedy(client, tokens, 5, logprobs=2, echo=True)
    assert by_text.choices[0].text == by_ids.choices[0].text
    assert by_text.choices[0].text.startswith("Hello world")
    lp = by_text.choices[0].logprobs
    assert lp.tokens[:2] == ["Hello", " world"] and lp.token_logprobs[0] is None
    assert len(lp.tokens) == 2 + 5 and all(len(t) <= 2 for t in lp.top_logprobs[1:])
    assert lp.text_offset[:3] == [0, 5, 11]
    scored = _greedy(client, "Hello world", 0, echo=True, logprobs=1)  # scoring the prompt only
    assert scored.choices[0].text == "Hello world" and scored.usage.completion_tokens == 0
    assert scored.choices[0].logprobs.token_logprobs == lp.token_logprobs[:2]
    several = _greedy(client, ["Hello world", "Once upon a time"], 4)
    assert [c.index for c in several.choices] == [0, 1]
    assert several.choices[0].text == _greedy(client, "Hello world", 4).choices[0].text


def test_n_choices_and_seed(client):
    greedy = _greedy(client, "Once upon a time", 8, n=3)
    assert sorted(c.index for c in greedy.choices) == [0, 1, 2]
    assert len({c.text for c in greedy.choices}) == 1
    assert greedy.usage.completion_tokens == sum(8 for _ in range(3)) or greedy.choices[0].finish_reason == "stop"
    sampled = [client.completions.create(model="gptj", prompt="Once upon a time", max_tokens=8, n=2, seed=11,
                                         temperature=1.0, top_p=0.9) for _ in range(2)]
    assert [c.text for c in sampled[0].choices] == [c.text for c in sampled[1].choices]


def test_stop_sequences(client):
    full = _greedy(client, "In a hole in the ground there lived", 24).choices[0].text
    stop = full[10:14]
    cut = full[: full.find(stop)]
    stopped = _greedy(client, "In a hole in the ground there lived", 24, stop=[stop, "never-there"])
    assert stopped.choices[0].text == cut and stopped.choices[0].finish_reason == "stop"
    streamed = client.completions.create(model="gptj", prompt="In a hole in the ground there lived", max_tokens=24,
                                         temperature=0, stop=stop, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == cut


def test_chat_completions(client):
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hi"}]
    whole = client.chat.completions.create(model="gptj", messages=messages, max_tokens=10, temperature=0)
    message = whole.choices[0].message
    assert whole.object == "chat.completion" and message.role == "assistant" and message.content
    # The template's rendering: "system: ...\nuser: ...\nassistant:" tokenized as GPT-2 does.
    prompt = "system: You are terse.\nuser: Say hi\nassistant:"
    assert message.content == _greedy(client, prompt, 10).choices[0].text
    chunks = list(client.chat.completions.create(model="gptj", messages=messages, max_tokens=10, temperature=0,
                                                 stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    two = client.chat.completions.create(model="gptj", messages=messages, max_tokens=5, n=2, temperature=0,
                                         logprobs=True, top_logprobs=2)
    assert [c.index for c in two.choices] == [0, 1]
    assert len(two.choices[0].logprobs.content) == two.usage.completion_tokens // 2


def test_chat_errors(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="mpt", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert err.value.body["param"] == "model" and "chat template" in err.value.body["message"]
    with pytest.raises(openai.BadRequestError) as err:  # the template's raise_exception
        client.chat.completions.create(model="gptj", messages=[{"role": "tool", "content": "x",
                                                                "tool_call_id": "1"}], max_tokens=3)
    assert err.value.body["param"] == "messages" and "unsupported role tool" in err.value.body["message"]


def test_embeddings_match_the_pipeline(client, serve_checkpoints):
    from polyformers import pipeline

    texts = ["A man is eating food.", "A cheetah chases its prey.", "short"]
    got = client.embeddings.create(model="mpnet", input=texts)
    vectors = np.array([d.embedding for d in got.data], dtype=np.float32)
    expected = pipeline("sentence-similarity", model=str(serve_checkpoints["mpnet"])).encode(texts)
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert got.usage.prompt_tokens == got.usage.total_tokens > 3
    raw = client.embeddings.with_raw_response.create(model="mpnet", input="short", encoding_format="base64")
    packed = json.loads(raw.text)["data"][0]["embedding"]
    np.testing.assert_allclose(np.frombuffer(base64.b64decode(packed), dtype="<f4"), expected[2], atol=1e-5)
    ids = client.embeddings.create(model="mpnet", input=[[0, 2027, 2], [0, 2]])
    assert len(ids.data) == 2 and ids.usage.prompt_tokens == 5


def test_sixteen_concurrent_clients(client):
    """16 threads at once, mixed prompts, lengths and streaming: each gets what it gets alone."""
    prompts = [f"Story number {i}: once upon a time" + " there was" * (i % 5) for i in range(16)]
    lengths = [4 + 3 * (i % 6) for i in range(16)]
    alone = [_greedy(client, p, m).choices[0].text for p, m in zip(prompts, lengths)]

    def ask(i):
        if i % 2:
            stream = client.completions.create(model="gptj", prompt=prompts[i], max_tokens=lengths[i],
                                               temperature=0, stream=True)
            return "".join(c.choices[0].text for c in stream)
        return _greedy(client, prompts[i], lengths[i]).choices[0].text

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(ask, range(16), timeout=60))
    assert answers == alone
    assert time.monotonic() - started < 60


def _error(server, path, body, status=400):
    code, answer = server.post(path, body)
    assert code == status, answer
    assert set(answer["error"]) == {"message", "type", "param", "code"}
    return answer["error"]


def test_bad_requests(server):
    assert _error(server, "/v1/completions", b'{"model": "gptj", "prompt": ')["code"] == "invalid_json"
    assert _error(server, "/v1/completions", {"model": "nope", "prompt": "x"})["param"] == "model"
    assert _error(server, "/v1/embeddings", {"model": "gptj", "input": "x"})["param"] == "model"
    assert _error(server, "/v1/completions", {"model": "mpnet", "prompt": "x"})["param"] == "model"
    long = "hello " * 1100
    error = _error(server, "/v1/completions", {"model": "gptj", "prompt": long, "max_tokens": 1})
    assert (error["param"], error["code"]) == ("prompt", "context_length_exceeded")
    error = _error(server, "/v1/completions", {"model": "gptj", "prompt": "hi", "max_tokens": 5000})
    assert (error["param"], error["code"]) == ("max_tokens", "context_length_exceeded")
    error = _error(server, "/v1/chat/completions", {"model": "gptj", "messages": [{"role": "user", "content": long}]})
    assert error["param"] == "messages"
    for field, value in [("temperature", 3), ("top_p", 0), ("n", 0), ("max_tokens", -1), ("max_tokens", "ten"),
                         ("stop", ["a", "b", "c", "d", "e"]), ("logprobs", 9), ("presence_penalty", 2.5),
                         ("stream", "yes"), ("seed", 1.5), ("logit_bias", {"99999999": 1}), ("prompt", [[]]),
                         ("frobnicate", 1)]:
        body = {"model": "gptj", "prompt": "hi", field: value}
        assert _error(server, "/v1/completions", body)["param"] == field, (field, value)
    assert _error(server, "/v1/completions", {"model": "gptj", "prompt": [1, 99999999]})["param"] == "prompt"
    assert _error(server, "/v1/embeddings", {"model": "mpnet", "input": "x", "encoding_format": "hex"})["param"] \
        == "encoding_format"
    assert _error(server, "/v1/chat/completions", {"model": "gptj", "messages": []})["param"] == "messages"
    assert _error(server, "/v1/nowhere", {}, status=404)["code"] == "not_found"


def test_disconnect_frees_the_slot(server):
    """A streaming client that goes away mid-generation stops its sequence at once."""
    import httpx

    before = server.get("/health")["models"]["gptj"]
    body = {"model": "gptj", "prompt": "Hello", "max_tokens": 1000, "temperature": 0, "stream": True}
    with httpx.Client(timeout=30) as http:
        with http.stream("POST", server.url + "/v1/completions", json=body) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")
    deadline = time.monotonic() + 2.0
    while True:
        now = server.get("/health")["models"]["gptj"]
        if now["running"] == 0:
            break
        assert time.monotonic() < deadline, "the disconnected request kept its slot"
        time.sleep(0.02)
    assert now["cancelled"] == before["cancelled"] + 1
    assert now["generated_tokens"] - before["generated_tokens"] < 1000


# -- a server with an API key, one slot and a two-request queue, keys and values in bfloat16 ---------------


@pytest.fixture(scope="module")
def strict_server(serve_checkpoints):
    from .conftest import ServerProcess

    proc = ServerProcess(["--model", f"tiny={serve_checkpoints['gptj']}", "--api-key", "sesame",
                          "--max-batch", "1", "--max-queue", "2", "--kv-cache-dtype", "bfloat16"])
    yield proc
    proc.kill()


def test_kv_cache_dtype_bfloat16_reaches_the_slots(strict_server, serve_checkpoints):
    """The served greedy tokens and their log-probabilities are generate's with a bfloat16 StaticCache, and
    the log-probabilities not the float32 cache's."""
    import torch

    from polyformers import AutoTokenizer, GPTJForCausalLM, StaticCache

    model = GPTJForCausalLM.from_pretrained(serve_checkpoints["gptj"]).eval()
    tokenizer = AutoTokenizer.from_pretrained(serve_checkpoints["gptj"])
    ids = tokenizer("Once upon a time", add_special_tokens=False)["input_ids"]
    logprobs = {}
    for dtype in (torch.bfloat16, torch.float32):
        cache = StaticCache(model.config, max_batch_size=1, max_cache_len=len(ids) + 6, dtype=dtype)
        with torch.inference_mode():
            out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=6, do_sample=False, pad_token_id=0,
                                 past_key_values=cache, output_scores=True, return_dict_in_generate=True)
        tokens = out.sequences[0, len(ids):]
        logprobs[dtype] = [float(torch.log_softmax(step[0].double(), -1)[t]) for step, t in zip(out.scores, tokens)]
    client = openai.OpenAI(base_url=strict_server.url + "/v1", api_key="sesame", max_retries=0, timeout=60)
    served = client.completions.create(model="tiny", prompt=ids, max_tokens=6, temperature=0, logprobs=1).choices[0]
    assert served.text == tokenizer.decode(tokens, skip_special_tokens=True)
    np.testing.assert_allclose(served.logprobs.token_logprobs, logprobs[torch.bfloat16], rtol=0, atol=1e-5)
    assert np.abs(np.subtract(served.logprobs.token_logprobs, logprobs[torch.float32])).max() > 1e-5


def test_api_key(strict_server):
    url = strict_server.url + "/v1"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url, api_key="wrong", max_retries=0).models.list()
    code, answer = strict_server.post("/v1/completions", {"model": "tiny", "prompt": "hi"})
    assert code == 401 and answer["error"]["code"] == "invalid_api_key"
    good = openai.OpenAI(base_url=url, api_key="sesame", max_retries=0)
    assert good.completions.create(model="tiny", prompt="hi", max_tokens=2).usage.completion_tokens == 2


def test_queue_full_gets_429(strict_server):
    import httpx

    headers = {"Authorization": "Bearer sesame"}
    client = openai.OpenAI(base_url=strict_server.url + "/v1", api_key="sesame", max_retries=0, timeout=60)
    # Four long choices through one slot, one after another, hold it for seconds (leaving the block below
    # disconnects them); the request counts as waiting while some of its choices wait.
    body = {"model": "tiny", "prompt": "Hello", "max_tokens": 1000, "temperature": 0, "stream": True, "n": 4}
    with httpx.Client(timeout=60) as http, concurrent.futures.ThreadPoolExecutor(1) as pool:
        client.completions.create(model="tiny", prompt="Hi", max_tokens=1)  # the client's start-up, paid now
        with http.stream("POST", strict_server.url + "/v1/completions", json=body, headers=headers) as running:
            lines = running.iter_lines()  # kept: a collected iterator would close the stream (a disconnect)
            next(lines)
            waiting = pool.submit(strict_server.post, "/v1/completions", {"model": "tiny", "prompt": "Hi",
                                                                           "max_tokens": 2}, headers)
            deadline = time.monotonic() + 10
            while strict_server.get("/health")["models"]["tiny"]["waiting"] < 4:  # 3 choices and "Hi"
                assert time.monotonic() < deadline
                time.sleep(0.01)
            with pytest.raises(openai.RateLimitError) as err:
                client.completions.create(model="tiny", prompt="Hi", max_tokens=2)
            assert err.value.status_code == 429 and err.value.body["code"] == "rate_limit_exceeded"
        status, answer = waiting.result(timeout=30)
        assert status == 200 and answer["usage"]["completion_tokens"] == 2


def test_sigterm_finishes_in_flight_requests_and_exits_0(strict_server):
    import httpx

    body = {"model": "tiny", "prompt": "Hello", "max_tokens": 150, "temperature": 0, "stream": True}
    with httpx.Client(timeout=60) as http:
        with http.stream("POST", strict_server.url + "/v1/completions", json=body,
                         headers={"Authorization": "Bearer sesame"}) as response:
            lines = response.iter_lines()
            first = next(lines)
            assert first.startswith("data: ")
            strict_server.proc.send_signal(15)
            rest = [line for line in lines if line]
    assert rest[-1] == "data: [DONE]"
    last = json.loads(rest[-2][len("data: "):])
    assert last["choices"][0]["finish_reason"] == "length"
    assert strict_server.proc.wait(30) == 0
    with pytest.raises(OSError):
        urllib.request.urlopen(strict_server.url + "/health", timeout=2)
