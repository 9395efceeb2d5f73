"""Request validation: every refusal is OpenAI's error object naming the field."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from polyformers.serve import protocol as P


def _refused(parse, body) -> P.APIError:
    with pytest.raises(P.APIError) as err:
        parse(body)
    assert err.value.status == 400 and set(err.value.body()["error"]) == {"message", "type", "param", "code"}
    return err.value


def test_completion_defaults_and_forms():
    req = P.parse_completion({"model": "m", "prompt": "hi"})
    assert (req.n, req.stream, req.echo, req.params.max_tokens, req.params.temperature) == (1, False, False, 16, 1.0)
    assert not req.max_tokens_given
    assert P.parse_completion({"model": "m", "prompt": [1, 2]}).prompts == [[1, 2]]
    assert P.parse_completion({"model": "m", "prompt": [[1], [2, 3]]}).prompts == [[1], [2, 3]]
    assert P.parse_completion({"model": "m", "prompt": ["a", "b"]}).prompts == ["a", "b"]
    req = P.parse_completion({"model": "m", "prompt": "x", "stop": "\n", "logprobs": 2, "echo": True,
                              "max_tokens": 3.0, "stream": True, "stream_options": {"include_usage": True}})
    assert req.params.stop == ["\n"] and req.params.prompt_logprobs and req.params.max_tokens == 3
    assert req.include_usage


@pytest.mark.parametrize("field,value", [
    ("temperature", -0.1), ("temperature", "hot"), ("top_p", 1.5), ("n", 129), ("n", True), ("max_tokens", 0),
    ("stop", 3), ("stop", ["a"] * 5), ("logprobs", 6), ("frequency_penalty", -3), ("seed", "x"),
    ("logit_bias", {"a": 1}), ("logit_bias", {"1": 101}), ("best_of", 3), ("suffix", "tail"), ("echo", 1),
    ("stream_options", {"include_usage": True}), ("prompt", []), ("prompt", {"text": "x"}), ("prompt", [1, "a"]),
    ("whatever", 1),
])
def test_completion_refusals_name_the_field(field, value):
    assert _refused(P.parse_completion, {"model": "m", "prompt": "hi", field: value}).param == field


def test_required_fields():
    assert _refused(P.parse_completion, {"prompt": "hi"}).param == "model"
    assert _refused(P.parse_completion, {"model": "m"}).param == "prompt"
    assert _refused(P.parse_chat, {"model": "m"}).param == "messages"
    assert _refused(P.parse_embedding, {"model": "m"}).param == "input"


def test_chat_messages():
    req = P.parse_chat({"model": "m", "messages": [
        {"role": "system", "content": "s"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": None}], "max_completion_tokens": 5, "logprobs": True, "top_logprobs": 2})
    assert req.messages[1] == {"role": "user", "content": "ab"} and req.messages[2]["content"] == ""
    assert req.params.max_tokens == 5 and req.max_tokens_param == "max_completion_tokens" and req.params.logprobs == 2
    assert P.parse_chat({"model": "m", "messages": [{"role": "user", "content": "x"}]}).params.max_tokens is None
    bad = [{"role": "robot", "content": "x"}]
    assert _refused(P.parse_chat, {"model": "m", "messages": bad}).param == "messages[0].role"
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]
    assert _refused(P.parse_chat, {"model": "m", "messages": image}).param == "messages[0].content[0]"
    one = [{"role": "user", "content": "x"}]
    assert _refused(P.parse_chat, {"model": "m", "messages": one, "tools": [{"type": "function"}]}).param == "tools"
    assert _refused(P.parse_chat, {"model": "m", "messages": one, "top_logprobs": 2}).param == "top_logprobs"
    assert _refused(P.parse_chat, {"model": "m", "messages": one, "response_format": {"type": "json_object"}}) \
        .param == "response_format"


def test_context_limits():
    assert P.check_length(10, 5, 100, prompt_param="prompt") == 5
    assert P.check_length(10, None, 100, prompt_param="prompt") == 90
    assert P.check_length(90, 16, 100, prompt_param="prompt", max_tokens_given=False) == 10
    err = pytest.raises(P.APIError, P.check_length, 95, 10, 100, prompt_param="prompt").value
    assert (err.param, err.code) == ("max_tokens", "context_length_exceeded")
    err = pytest.raises(P.APIError, P.check_length, 101, 1, 100, prompt_param="messages").value
    assert (err.param, err.code) == ("messages", "context_length_exceeded")


def test_embedding_encodings():
    vectors = np.array([[0.5, -1.25, 3.0]], dtype=np.float32)
    assert P.embedding_data(vectors, "float")[0]["embedding"] == [0.5, -1.25, 3.0]
    packed = P.embedding_data(vectors, "base64")[0]["embedding"]
    assert np.array_equal(np.frombuffer(base64.b64decode(packed), dtype="<f4"), vectors[0])
    req = P.parse_embedding({"model": "m", "input": [[1, 2], [3]], "encoding_format": "base64"})
    assert req.inputs == [[1, 2], [3]] and req.encoding_format == "base64"
    assert _refused(P.parse_embedding, {"model": "m", "input": ""}).param == "input"
    assert _refused(P.parse_embedding, {"model": "m", "input": "x", "dimensions": 8}).param == "dimensions"
