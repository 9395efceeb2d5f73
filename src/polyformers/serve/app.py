"""The HTTP side: OpenAI's routes as an ASGI (Starlette) application.

Each route validates the request (:mod:`.protocol`), tokenizes, hands the work to the model's scheduler
and turns the scheduler's events into a JSON body or a stream of server-sent events ending in
``data: [DONE]``. Every failure answers with OpenAI's error object. A client that goes away cancels its
request, which frees its slots at the next token boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from typing import Optional

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from . import protocol as P
from .scheduler import Event, GenerationRequest, QueueFull, ShuttingDown

logger = logging.getLogger("polyformers.serve")


def error_response(err: P.APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status)


class _Done:
    """Put on a request's event queue when its client has gone away."""


class Generation:
    """One request in flight: its scheduler request and the queue its events arrive on."""

    def __init__(self, served, prompts: list, params: P.SamplingParams, n: int, budgets: list):
        self.served = served
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.request = GenerationRequest(prompts, params, n, self._deliver, max_tokens=budgets)
        self.total = len(self.request.sequences)
        self.complete = False  # every choice has ended

    def _deliver(self, event: Event) -> None:  # scheduler thread
        self.loop.call_soon_threadsafe(self.queue.put_nowait, event)

    def submit(self) -> None:
        try:
            self.served.scheduler.submit(self.request)
        except QueueFull as err:
            raise P.APIError(str(err), status=429, type="rate_limit_error", code="rate_limit_exceeded") from None
        except ShuttingDown as err:
            raise P.APIError(str(err), status=503, type="server_error", code="shutting_down") from None

    def cancel(self) -> None:
        if not self.request.cancelled and not self.complete:
            self.request.cancel()
            self.served.scheduler.wake()
            self.queue.put_nowait(_Done())

    async def events(self):
        """Events until every choice has finished (or the client is gone)."""
        finished = 0
        while finished < self.total:
            event = await self.queue.get()
            if isinstance(event, _Done):
                return
            if event.finish_reason is not None or event.error is not None:
                finished += 1
                self.complete = finished == self.total
            yield event


async def _watch_disconnect(receive, on_disconnect) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            on_disconnect()
            return


class EventStream:
    """A ``text/event-stream`` response that cancels its generation as soon as the client disconnects
    (not only when the next write fails)."""

    def __init__(self, chunks, generation: Generation):
        self.chunks = chunks
        self.generation = generation

    async def __call__(self, scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream; charset=utf-8"),
                                (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]})
        watcher = asyncio.ensure_future(_watch_disconnect(receive, self.generation.cancel))
        try:
            async for chunk in self.chunks:
                await send({"type": "http.response.body", "body": chunk.encode("utf-8"), "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:  # the connection broke while writing
            self.generation.cancel()
        finally:
            watcher.cancel()
            self.generation.cancel()  # a no-op once every choice has ended


def sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def _event_frames(generation, frames, usage_head: Optional[dict], prompt_tokens: int):
    """The server-sent events of a streamed generation: the frames ``frames(event)`` makes of each event (a
    failed sequence's event becomes an error frame instead), then, with ``usage_head`` (the id, object,
    created and model fields), a usage frame, then the end marker. Leaving early cancels the generation."""
    counts = {}  # choice index -> completion tokens so far
    try:
        async for event in generation.events():
            if event.error is not None:
                yield sse(P.error_body(event.error, "server_error", None, "generation_failed"))
                continue
            counts[event.index] = event.completion_tokens
            for frame in frames(event):
                yield frame
        if usage_head is not None:
            yield sse({**usage_head, "choices": [], "usage": P.usage(prompt_tokens, sum(counts.values()))})
        yield "data: [DONE]\n\n"
    finally:
        generation.cancel()


class Server:
    """The application state: the served models and the API key."""

    def __init__(self, models: dict, api_key: Optional[str] = None):
        self.models = models
        self.api_key = api_key

    # -- helpers ---------------------------------------------------------------------------------------

    def authorize(self, request: Request) -> None:
        if self.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if not header:
            raise P.APIError("You didn't provide an API key. You need to provide your API key in an Authorization "
                             "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).", status=401,
                             code="invalid_api_key")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), self.api_key.encode()):
            raise P.APIError("Incorrect API key provided.", status=401, code="invalid_api_key")

    async def read_json(self, request: Request) -> dict:
        self.authorize(request)
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise P.APIError(f"We could not parse the JSON body of your request: {err}. The body must be a JSON "
                             "object.", code="invalid_json") from None
        if not isinstance(body, dict):
            raise P.APIError(f"The JSON body must be an object, given {P._type_name(body)}", code="invalid_json")
        return body

    def model(self, name: str, want: str):
        served = self.models.get(name)
        if served is None:
            raise P.APIError(f"The model `{name}` does not exist. Available models: {sorted(self.models)}",
                             param="model", code="model_not_found")
        if want == "generate" and not served.generative:
            raise P.APIError(f"The model `{name}` is an encoder ({type(served.model).__name__}): it serves "
                             "/v1/embeddings, not text generation", param="model", code="model_not_supported")
        if want == "embed" and served.embedder is None:
            raise P.APIError(f"The model `{name}` ({type(served.model).__name__}) generates text; embeddings "
                             "need an encoder model", param="model", code="model_not_supported")
        return served

    @staticmethod
    def check_ids(ids: list, vocab: int, param: str) -> None:
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise P.invalid(param, f"token id {bad[0]} in '{param}' is outside the vocabulary [0, {vocab})",
                            "invalid_value")

    def prompt_ids(self, served, prompt) -> list:
        if isinstance(prompt, str):
            with served.scheduler.tokenizer_lock:
                ids = served.tokenizer(prompt, add_special_tokens=served.kind == "seq2seq")["input_ids"]
        else:
            ids = list(prompt)
            self.check_ids(ids, served.vocab_size, "prompt")
        if not ids:
            # An empty prompt starts from the beginning-of-text token, as OpenAI's models do.
            start = served.tokenizer.bos_token_id
            if start is None:
                start = served.tokenizer.eos_token_id
            if start is None:
                raise P.invalid("prompt", "the prompt is empty and the model has no beginning-of-text token",
                                "invalid_value")
            ids = [start]
        return ids

    def budgets(self, served, prompts: list, params: P.SamplingParams, *, prompt_param: str,
                max_tokens_param: str, given: bool) -> list:
        budgets = []
        for ids in prompts:
            if served.kind == "seq2seq":
                # The encoder reads the prompt and the decoder writes the completion: separate limits.
                P.check_length(len(ids), 0, served.context, prompt_param=prompt_param)
                budgets.append(P.check_length(1, params.max_tokens, served.context, prompt_param=prompt_param,
                                              max_tokens_param=max_tokens_param, max_tokens_given=given))
            else:
                budgets.append(P.check_length(len(ids), params.max_tokens, served.context,
                                              prompt_param=prompt_param, max_tokens_param=max_tokens_param,
                                              max_tokens_given=given))
        for token in params.logit_bias:
            if not 0 <= token < served.vocab_size:
                raise P.invalid("logit_bias", f"logit_bias: token id {token} is outside the vocabulary "
                                f"[0, {served.vocab_size})", "invalid_value")
        return budgets

    async def collect(self, request: Request, generation: Generation) -> dict:
        """Every event of a non-streamed request, per choice; the client leaving cancels it."""
        per_choice = {i: [] for i in range(generation.total)}
        watcher = asyncio.ensure_future(_watch_disconnect(request.receive, generation.cancel))
        try:
            async for event in generation.events():
                if event.error is not None:
                    generation.cancel()
                    raise P.APIError(event.error, status=500, type="server_error", code="generation_failed")
                per_choice[event.index].append(event)
        finally:
            watcher.cancel()
            generation.cancel()  # a no-op once every choice has ended
        return per_choice

    async def parse(self, request: Request, parse, use: str):
        """The request's JSON body checked by ``parse`` (one of ``protocol``'s), and the model it names,
        which must serve ``use`` ("generate" or "embed")."""
        req = parse(await self.read_json(request))
        return req, self.model(req.model, use)

    # -- routes ----------------------------------------------------------------------------------------

    async def completions(self, request: Request):
        req, served = await self.parse(request, P.parse_completion, "generate")
        prompts = [self.prompt_ids(served, p) for p in req.prompts]
        budgets = self.budgets(served, prompts, req.params, prompt_param="prompt", max_tokens_param="max_tokens",
                               given=req.max_tokens_given)
        generation = Generation(served, prompts, req.params, req.n, budgets)
        generation.submit()
        prompt_texts = None
        if req.echo:
            with served.scheduler.tokenizer_lock:
                prompt_texts = [p if isinstance(p, str) else
                                served.tokenizer.decode(p, clean_up_tokenization_spaces=False) for p in req.prompts]
        rid, created = P.new_id("cmpl"), P.now()
        prompt_tokens = sum(len(ids) for ids in prompts)
        if req.stream:
            return EventStream(self._stream_completion(generation, req, rid, created, prompt_texts, prompt_tokens),
                               generation)
        per_choice = await self.collect(request, generation)
        choices, completion_tokens = [], 0
        for index, events in per_choice.items():
            text = "".join(e.text for e in events)
            entries = [x for e in events for x in e.logprobs]
            completion_tokens += events[-1].completion_tokens if events else 0
            logprobs = None
            if req.echo:
                prefix = prompt_texts[index // req.n]
                if req.params.logprobs is not None:
                    prompt_entries = next((e.prompt_logprobs for e in events if e.prompt_logprobs is not None), [])
                    entries = list(prompt_entries) + [_shift(x, len(prefix)) for x in entries]
                text = prefix + text
            if req.params.logprobs is not None:
                logprobs = P.completion_logprobs(entries)
            choices.append({"text": text, "index": index, "logprobs": logprobs,
                            "finish_reason": events[-1].finish_reason if events else None})
        return JSONResponse({"id": rid, "object": "text_completion", "created": created, "model": req.model,
                             "choices": choices, "usage": P.usage(prompt_tokens, completion_tokens),
                             "system_fingerprint": None})

    def _stream_completion(self, generation, req, rid, created, prompt_texts, prompt_tokens):
        head = {"id": rid, "object": "text_completion", "created": created, "model": req.model}
        started = set()

        def frames(event):
            text, entries = event.text, list(event.logprobs)
            if req.echo:  # the prompt comes first in the choice's text: offsets move past it
                prefix = prompt_texts[event.index // req.n]
                entries = [_shift(x, len(prefix)) for x in entries]
            if event.index not in started:
                started.add(event.index)
                if req.echo:
                    if event.prompt_logprobs is not None:
                        entries = list(event.prompt_logprobs) + entries
                    text = prefix + text
            logprobs = P.completion_logprobs(entries) if req.params.logprobs is not None else None
            if text or entries or event.finish_reason:
                choice = {"text": text, "index": event.index, "logprobs": logprobs,
                          "finish_reason": event.finish_reason}
                yield sse({**head, "choices": [choice], "system_fingerprint": None})

        return _event_frames(generation, frames, head if req.include_usage else None, prompt_tokens)

    async def chat_completions(self, request: Request):
        req, served = await self.parse(request, P.parse_chat, "generate")
        tokenizer = served.tokenizer
        if getattr(tokenizer, "chat_template", None) is None:
            raise P.APIError(f"The model `{req.model}` has no chat template (its tokenizer_config.json sets no "
                             "\"chat_template\"), so chat messages cannot be formatted for it; use /v1/completions "
                             "with a plain prompt instead", param="model", code="chat_template_missing")
        try:
            with served.scheduler.tokenizer_lock:
                ids = tokenizer.apply_chat_template(req.messages, add_generation_prompt=True, tokenize=True)
        except Exception as err:  # jinja2.TemplateError, raise_exception() in the template
            raise P.APIError(f"the model's chat template rejected the messages: {err}", param="messages",
                             code="invalid_messages") from None
        ids = self.prompt_ids(served, list(ids)) if ids else self.prompt_ids(served, "")
        budgets = self.budgets(served, [ids], req.params, prompt_param="messages",
                               max_tokens_param=req.max_tokens_param, given=req.max_tokens_given)
        generation = Generation(served, [ids], req.params, req.n, budgets)
        generation.submit()
        rid, created = P.new_id("chatcmpl"), P.now()
        if req.stream:
            return EventStream(self._stream_chat(generation, req, rid, created, len(ids)), generation)
        per_choice = await self.collect(request, generation)
        choices, completion_tokens = [], 0
        for index, events in per_choice.items():
            entries = [x for e in events for x in e.logprobs]
            completion_tokens += events[-1].completion_tokens if events else 0
            choices.append({
                "index": index,
                "message": {"role": "assistant", "content": "".join(e.text for e in events), "refusal": None},
                "logprobs": P.chat_logprobs(entries) if req.logprobs else None,
                "finish_reason": events[-1].finish_reason if events else None,
            })
        return JSONResponse({"id": rid, "object": "chat.completion", "created": created, "model": req.model,
                             "choices": choices, "usage": P.usage(len(ids), completion_tokens),
                             "system_fingerprint": None})

    def _stream_chat(self, generation, req, rid, created, prompt_tokens):
        head = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": req.model}
        started = set()

        def chunk(index, delta, finish=None, logprobs=None):
            return sse({**head, "system_fingerprint": None,
                        "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]})

        def frames(event):
            if event.index not in started:
                started.add(event.index)
                yield chunk(event.index, {"role": "assistant", "content": ""})
            logprobs = P.chat_logprobs(event.logprobs) if req.logprobs and event.logprobs else None
            if event.text or logprobs:
                yield chunk(event.index, {"content": event.text}, None, logprobs)
            if event.finish_reason:
                yield chunk(event.index, {}, event.finish_reason)

        return _event_frames(generation, frames, head if req.include_usage else None, prompt_tokens)

    async def embeddings(self, request: Request):
        req, served = await self.parse(request, P.parse_embedding, "embed")
        embedder = served.embedder
        for item in req.inputs:
            if not isinstance(item, str):
                self.check_ids(item, served.vocab_size, "input")
                if embedder.max_tokens and len(item) > embedder.max_tokens:
                    raise P.APIError(f"This model's maximum context length is {embedder.max_tokens} tokens, "
                                     f"however an input has {len(item)} tokens", param="input",
                                     code="context_length_exceeded")
        loop = asyncio.get_running_loop()
        rows = embedder.rows(req.inputs)
        vectors = await loop.run_in_executor(None, embedder.embed, rows)
        tokens = sum(len(r["input_ids"]) for r in rows)
        return JSONResponse({"object": "list", "data": P.embedding_data(vectors, req.encoding_format),
                             "model": req.model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    async def list_models(self, request: Request):
        self.authorize(request)
        return JSONResponse({"object": "list",
                             "data": [P.model_card(name, m.created) for name, m in self.models.items()]})

    async def get_model(self, request: Request):
        self.authorize(request)
        name = request.path_params["model"]
        served = self.models.get(name)
        if served is None:
            raise P.APIError(f"The model `{name}` does not exist", status=404, param="model", code="model_not_found")
        return JSONResponse(P.model_card(name, served.created))

    async def health(self, request: Request):
        return JSONResponse({"status": "ok", "models": {
            name: (m.scheduler.load if m.scheduler is not None else {}) for name, m in self.models.items()}})


def _shift(entry, by: int):
    from dataclasses import replace

    return replace(entry, offset=entry.offset + by)


async def _api_error(request: Request, err: P.APIError):
    return error_response(err)


async def _http_error(request: Request, err: HTTPException):
    kind = "not_found" if err.status_code == 404 else "method_not_allowed" if err.status_code == 405 else None
    message = (f"Unknown request URL: {request.method} {request.url.path}" if err.status_code == 404
               else f"{request.method} is not allowed on {request.url.path}" if err.status_code == 405
               else str(err.detail))
    return JSONResponse(P.error_body(message, "invalid_request_error", None, kind), status_code=err.status_code)


async def _server_error(request: Request, err: Exception):
    logger.exception("request failed: %s %s", request.method, request.url.path)
    return JSONResponse(P.error_body(f"The server had an error while processing your request: "
                                     f"{type(err).__name__}: {err}", "server_error"), status_code=500)


def create_app(models: dict, *, api_key: Optional[str] = None) -> Starlette:
    """The ASGI application serving ``models`` (name -> :class:`~polyformers.serve.models.ServedModel`).
    Its shutdown stops the schedulers, cancelling whatever is still queued."""
    server = Server(models, api_key)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        for served in models.values():
            if served.scheduler is not None:
                await asyncio.get_running_loop().run_in_executor(None, served.scheduler.stop)

    routes = [
        Route("/v1/completions", server.completions, methods=["POST"]),
        Route("/v1/chat/completions", server.chat_completions, methods=["POST"]),
        Route("/v1/embeddings", server.embeddings, methods=["POST"]),
        Route("/v1/models", server.list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", server.get_model, methods=["GET"]),
        Route("/health", server.health, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={P.APIError: _api_error, HTTPException: _http_error, Exception: _server_error})
    app.state.server = server
    return app
