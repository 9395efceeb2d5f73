"""The OpenAI wire format: request validation, error objects and response bodies.

Everything a client sends is checked here, before a model sees it, and a bad value becomes an
:class:`APIError` whose body is OpenAI's ``{"error": {"message", "type", "param", "code"}}`` naming the
offending field. Nothing here touches a model or a framework: the scheduler and the routes import it.
"""

from __future__ import annotations

import base64
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import numpy as np

# Limits as the OpenAI API documents them.
MAX_STOP_SEQUENCES = 4
MAX_N = 128
MAX_LOGPROBS = 5  # completions: alternatives per token
MAX_TOP_LOGPROBS = 20  # chat completions
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # the legacy completions endpoint's documented default


class APIError(Exception):
    """A request the server refuses, with the HTTP status and OpenAI's error fields."""

    def __init__(self, message: str, *, status: int = 400, type: str = "invalid_request_error",
                 param: Optional[str] = None, code: Optional[str] = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str = "invalid_request_error", param: Optional[str] = None,
               code: Optional[str] = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def invalid(param: str, message: str, code: Optional[str] = None) -> APIError:
    return APIError(message, param=param, code=code)


# ----------------------------------------------------------------------------------------------------
# Field readers: each returns the value or raises an APIError naming the field.

_MISSING = object()


def _type_name(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object",
            type(None): "null"}.get(type(value), type(value).__name__)


def _get_int(body: dict, name: str, default, lo: Optional[int] = None, hi: Optional[int] = None):
    value = body.get(name, default)
    if value is None:
        return default
    # JSON has one number type: 3.0 is accepted as 3, as OpenAI does; a boolean is not a number.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(name, f"{value!r} is not of type 'integer' - '{name}'", "invalid_type")
    if lo is not None and value < lo:
        raise invalid(name, f"{value} is less than the minimum of {lo} - '{name}'", "invalid_value")
    if hi is not None and value > hi:
        raise invalid(name, f"{value} is greater than the maximum of {hi} - '{name}'", "invalid_value")
    return value


def _get_number(body: dict, name: str, default: float, lo: float, hi: float, *, open_lo: bool = False) -> float:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise invalid(name, f"{value!r} is not of type 'number' - '{name}'", "invalid_type")
    if value < lo or (open_lo and value <= lo):
        bound = "greater than" if open_lo else "at least"
        raise invalid(name, f"{value} is too small: '{name}' must be {bound} {lo}", "invalid_value")
    if value > hi:
        raise invalid(name, f"{value} is greater than the maximum of {hi} - '{name}'", "invalid_value")
    return float(value)


def _get_bool(body: dict, name: str, default: bool) -> bool:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise invalid(name, f"{value!r} is not of type 'boolean' - '{name}'", "invalid_type")
    return value


def _get_str(body: dict, name: str, default=None) -> Optional[str]:
    value = body.get(name, default)
    if value is not None and not isinstance(value, str):
        raise invalid(name, f"{value!r} is not of type 'string' - '{name}'", "invalid_type")
    return value


def _get_stop(body: dict) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise invalid("stop", f"{stop!r} is not valid under any of the given schemas - 'stop': expected a string "
                      "or an array of strings", "invalid_type")
    if len(stop) > MAX_STOP_SEQUENCES:
        raise invalid("stop", f"'stop' holds {len(stop)} sequences; at most {MAX_STOP_SEQUENCES} are allowed",
                      "invalid_value")
    return [s for s in stop if s]


def _get_logit_bias(body: dict) -> dict[int, float]:
    bias = body.get("logit_bias")
    if bias is None:
        return {}
    if not isinstance(bias, dict):
        raise invalid("logit_bias", f"{bias!r} is not of type 'object' - 'logit_bias'", "invalid_type")
    out = {}
    for key, value in bias.items():
        try:
            token = int(key)
        except (TypeError, ValueError):
            raise invalid("logit_bias", f"logit_bias: key {key!r} is not a token id", "invalid_value") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not -100 <= value <= 100:
            raise invalid("logit_bias", f"logit_bias[{key}]: expected a number in [-100, 100], given {value!r}",
                          "invalid_value")
        out[token] = float(value)
    return out


def _get_stream_options(body: dict, stream: bool) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not stream:
        raise invalid("stream_options", "stream_options is only allowed when 'stream' is true", "invalid_value")
    if not isinstance(options, dict) or set(options) - {"include_usage", "include_obfuscation"}:
        raise invalid("stream_options", f"stream_options: expected {{'include_usage': bool}}, given {options!r}",
                      "invalid_value")
    return _get_bool(options, "include_usage", False)


def _check_known(body: dict, known: set, endpoint: str) -> None:
    for name in body:
        if name not in known:
            raise invalid(name, f"Unrecognized request argument supplied: {name} ({endpoint})",
                          "unknown_parameter")


def _require_model(body: dict) -> str:
    model = body.get("model", _MISSING)
    if model is _MISSING or model is None:
        raise invalid("model", "you must provide a model parameter", "missing_required_parameter")
    if not isinstance(model, str):
        raise invalid("model", f"{model!r} is not of type 'string' - 'model'", "invalid_type")
    return model


# ----------------------------------------------------------------------------------------------------
# Requests


@dataclass
class SamplingParams:
    """How one request's tokens are chosen and when its choices end (shared by its choices)."""

    max_tokens: Optional[int] = None  # None: until the context is full
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    stop: list = field(default_factory=list)
    seed: Optional[int] = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict = field(default_factory=dict)
    logprobs: Optional[int] = None  # alternatives per token to report; None: no log-probabilities
    prompt_logprobs: bool = False  # also for the prompt (completions with echo)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass
class CompletionRequest:
    model: str
    prompts: list  # each a str or a list of token ids
    n: int
    stream: bool
    include_usage: bool
    echo: bool
    params: SamplingParams
    max_tokens_given: bool


@dataclass
class ChatRequest:
    model: str
    messages: list  # {"role", "content"} with the content flattened to a string
    n: int
    stream: bool
    include_usage: bool
    params: SamplingParams
    max_tokens_given: bool
    max_tokens_param: str
    logprobs: bool


@dataclass
class EmbeddingRequest:
    model: str
    inputs: list  # each a str or a list of token ids
    encoding_format: str


_COMMON = {"model", "n", "stream", "stream_options", "temperature", "top_p", "stop", "seed", "presence_penalty",
           "frequency_penalty", "logit_bias", "user", "max_tokens"}
_COMPLETION_FIELDS = _COMMON | {"prompt", "echo", "logprobs", "best_of", "suffix"}
_CHAT_FIELDS = _COMMON | {"messages", "logprobs", "top_logprobs", "max_completion_tokens", "response_format",
                          "tools", "tool_choice", "parallel_tool_calls", "store", "metadata", "service_tier",
                          "modalities", "reasoning_effort", "prediction", "audio", "functions", "function_call"}
_EMBEDDING_FIELDS = {"model", "input", "encoding_format", "dimensions", "user"}


def _sampling(body: dict) -> SamplingParams:
    return SamplingParams(
        temperature=_get_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_get_number(body, "top_p", 1.0, 0.0, 1.0, open_lo=True),
        stop=_get_stop(body),
        seed=_get_int(body, "seed", None, -(2**63), 2**63 - 1),
        presence_penalty=_get_number(body, "presence_penalty", 0.0, -2.0, 2.0),
        frequency_penalty=_get_number(body, "frequency_penalty", 0.0, -2.0, 2.0),
        logit_bias=_get_logit_bias(body),
    )


def _token_list(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(t, int) and not isinstance(t, bool)
                                                           for t in value)


def _texts_or_tokens(value, name: str) -> list:
    """A string, a list of strings, a list of token ids, or a list of lists of token ids -> a list of
    items, each a string or a list of ids."""
    if isinstance(value, str):
        return [value]
    if _token_list(value):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(v, str) for v in value) or all(_token_list(v) for v in value):
            return list(value)
    if isinstance(value, list) and not value:
        raise invalid(name, f"'{name}' is an empty array; give at least one input", "invalid_value")
    raise invalid(name, f"'{name}' must be a string, an array of strings, an array of token ids or an array of "
                  f"arrays of token ids; given {_type_name(value)}", "invalid_type")


def _model_and_inputs(body: dict, fields, endpoint: str, name: str) -> tuple:
    """Check the body's field names, then return its model and its required field ``name`` (texts or token ids)."""
    _check_known(body, fields, endpoint)
    model = _require_model(body)
    if body.get(name) is None:
        article = "an" if name[0] in "aeiou" else "a"
        raise invalid(name, f"you must provide {article} {name} parameter", "missing_required_parameter")
    return model, _texts_or_tokens(body[name], name)


def parse_completion(body: dict) -> CompletionRequest:
    model, prompts = _model_and_inputs(body, _COMPLETION_FIELDS, "completions", "prompt")
    params = _sampling(body)
    n = _get_int(body, "n", 1, 1, MAX_N)
    best_of = _get_int(body, "best_of", None, 1, MAX_N)
    if best_of is not None and best_of != n:
        raise invalid("best_of", f"best_of={best_of} differs from n={n}: ranking extra candidates is not supported; "
                      "leave best_of out or equal to n", "unsupported_value")
    if _get_str(body, "suffix"):
        raise invalid("suffix", "suffix (insertion) is not supported by this model", "unsupported_value")
    stream = _get_bool(body, "stream", False)
    logprobs = _get_int(body, "logprobs", None, 0, MAX_LOGPROBS)
    echo = _get_bool(body, "echo", False)
    params.logprobs = logprobs
    params.prompt_logprobs = echo and logprobs is not None
    max_tokens = _get_int(body, "max_tokens", None, 0)
    params.max_tokens = COMPLETIONS_DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens
    if params.max_tokens == 0 and not echo:
        raise invalid("max_tokens", "max_tokens=0 is only allowed with echo (scoring the prompt)", "invalid_value")
    _get_str(body, "user")
    return CompletionRequest(model=model, prompts=prompts, n=n, stream=stream,
                             include_usage=_get_stream_options(body, stream), echo=echo, params=params,
                             max_tokens_given=max_tokens is not None)


_ROLES = {"system", "user", "assistant", "tool", "developer", "function"}


def _message_content(message: dict, i: int) -> str:
    content = message.get("content")
    if content is None:
        if message.get("role") == "assistant":
            return ""
        raise invalid(f"messages[{i}].content", f"messages[{i}]: 'content' is required", "missing_required_parameter")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else _type_name(part)
                raise invalid(f"messages[{i}].content[{j}]", f"messages[{i}].content[{j}]: only text parts are "
                              f"supported, given {kind!r}", "unsupported_value")
            parts.append(part["text"])
        return "".join(parts)
    raise invalid(f"messages[{i}].content", f"messages[{i}].content must be a string or an array of text parts, "
                  f"given {_type_name(content)}", "invalid_type")


def parse_chat(body: dict) -> ChatRequest:
    _check_known(body, _CHAT_FIELDS, "chat.completions")
    model = _require_model(body)
    messages = body.get("messages")
    if messages is None:
        raise invalid("messages", "you must provide a messages parameter", "missing_required_parameter")
    if not isinstance(messages, list) or not messages:
        raise invalid("messages", "'messages' must be a non-empty array of {role, content} objects",
                      "invalid_value" if isinstance(messages, list) else "invalid_type")
    flat = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise invalid(f"messages[{i}]", f"messages[{i}] must be an object, given {_type_name(message)}",
                          "invalid_type")
        role = message.get("role")
        if role not in _ROLES:
            raise invalid(f"messages[{i}].role", f"messages[{i}].role must be one of {sorted(_ROLES)}, given {role!r}",
                          "invalid_value")
        entry = {"role": role, "content": _message_content(message, i)}
        if isinstance(message.get("name"), str):
            entry["name"] = message["name"]
        flat.append(entry)
    for name in ("tools", "functions"):
        if body.get(name):
            raise invalid(name, f"'{name}' (tool calling) is not supported by this server", "unsupported_value")
    for name in ("tool_choice", "function_call"):
        if body.get(name) not in (None, "none"):
            raise invalid(name, f"'{name}' (tool calling) is not supported by this server", "unsupported_value")
    response_format = body.get("response_format")
    if response_format is not None and response_format != {"type": "text"}:
        raise invalid("response_format", "only response_format {'type': 'text'} is supported", "unsupported_value")
    params = _sampling(body)
    n = _get_int(body, "n", 1, 1, MAX_N)
    stream = _get_bool(body, "stream", False)
    logprobs = _get_bool(body, "logprobs", False)
    top = _get_int(body, "top_logprobs", None, 0, MAX_TOP_LOGPROBS)
    if top is not None and not logprobs:
        raise invalid("top_logprobs", "top_logprobs requires logprobs to be true", "invalid_value")
    params.logprobs = (top or 0) if logprobs else None
    param = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    params.max_tokens = _get_int(body, param, None, 1)
    _get_str(body, "user")
    return ChatRequest(model=model, messages=flat, n=n, stream=stream, include_usage=_get_stream_options(body, stream),
                       params=params, max_tokens_given=params.max_tokens is not None, max_tokens_param=param,
                       logprobs=logprobs)


def parse_embedding(body: dict) -> EmbeddingRequest:
    model, inputs = _model_and_inputs(body, _EMBEDDING_FIELDS, "embeddings", "input")
    for i, item in enumerate(inputs):
        if isinstance(item, str) and not item:
            raise invalid("input", f"input[{i}] is an empty string; every input must be non-empty", "invalid_value")
    encoding = _get_str(body, "encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise invalid("encoding_format", f"encoding_format must be 'float' or 'base64', given {encoding!r}",
                      "invalid_value")
    if body.get("dimensions") is not None:
        raise invalid("dimensions", "'dimensions' (shortened embeddings) is not supported by this model",
                      "unsupported_value")
    _get_str(body, "user")
    return EmbeddingRequest(model=model, inputs=inputs, encoding_format=encoding)


def check_length(prompt_tokens: int, max_tokens: Optional[int], context: int, *, prompt_param: str,
                 max_tokens_param: str = "max_tokens", max_tokens_given: bool = True) -> int:
    """The completion budget for a prompt, or the error OpenAI gives when prompt + completion overflow
    the context. A default ``max_tokens`` (not given) shrinks to what is left instead."""
    if prompt_tokens > context or (prompt_tokens == context and max_tokens != 0):
        raise APIError(
            f"This model's maximum context length is {context} tokens. However, your {prompt_param} has "
            f"{prompt_tokens} tokens. Please reduce the length of the {prompt_param}.",
            param=prompt_param, code="context_length_exceeded")
    room = context - prompt_tokens
    if max_tokens is None:
        return room
    if max_tokens > room:
        if not max_tokens_given:
            return room
        raise APIError(
            f"This model's maximum context length is {context} tokens. However, you requested "
            f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the {prompt_param}, {max_tokens} in the "
            f"completion). Please reduce the length of the {prompt_param} or the completion.",
            param=max_tokens_param, code="context_length_exceeded")
    return max_tokens


# ----------------------------------------------------------------------------------------------------
# Responses


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_logprobs(entries: list) -> dict:
    """The legacy completions ``logprobs`` object from per-token entries (token text, its log-probability
    or None, {alternative: log-probability} or None, character offset)."""
    return {
        "tokens": [e.text for e in entries],
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [e.top for e in entries],
        "text_offset": [e.offset for e in entries],
    }


def chat_logprobs(entries: list) -> dict:
    """The chat ``logprobs`` object: one item per token, with its alternatives."""
    def item(text, logprob):
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    return {"content": [dict(item(e.text, e.logprob),
                             top_logprobs=[item(t, lp) for t, lp in (e.top or {}).items()]) for e in entries],
            "refusal": None}


def embedding_data(vectors: np.ndarray, encoding_format: str) -> list:
    data = []
    for i, vector in enumerate(vectors):
        vector = np.asarray(vector, dtype=np.float32)
        value: Union[list, str]
        if encoding_format == "base64":
            value = base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
        else:
            value = [float(x) for x in vector]
        data.append({"object": "embedding", "index": i, "embedding": value})
    return data


def model_card(name: str, created: int) -> dict:
    return {"id": name, "object": "model", "created": created, "owned_by": "polyformers"}
