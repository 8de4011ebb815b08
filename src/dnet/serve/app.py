"""The HTTP application: OpenAI's endpoints over a served model, its metrics, its web page.

    GET  /v1/models                 the one model served
    POST /v1/chat/completions       chat, streamed as server-sent events or whole
    POST /v1/completions            text completion, the same
    POST /v1/embeddings             sentence vectors (an encoder model)
    GET  /v1/dnet/status            the plan over the cluster and live figures (the web page reads it)
    GET  /health, GET /metrics, GET /   liveness, Prometheus, the web page

Every error is OpenAI's JSON shape with a 4xx status for what the client sent (a 429 when the
queue is full) and a 500 for the server's own failures; none stops the server. With an API key,
everything but `/health` and the page's files needs `Authorization: Bearer KEY`.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
from importlib import resources
from typing import Any, AsyncIterator, Awaitable, Callable

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException

from dnet.errors import DnetError
from dnet.llm.batcher import QueueFull
from dnet.llm.generation import Step
from dnet.serve.metrics import CONTENT_TYPE, Metrics
from dnet.serve.protocol import (APIError, ChatRequest, CompletionRequest, EmbeddingRequest, Envelope,
                                 chat_logprobs, completion_logprobs, usage)

log = logging.getLogger(__name__)


def create_app(served: Any, api_key: str | None = None) -> FastAPI:
    app = FastAPI(title="dnet", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.served = served
    metrics = app.state.metrics = Metrics(served)
    _errors(app)

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        route = request.url.path
        if api_key is not None and not _open(route) and not _authorized(request, api_key):
            response: Response = _error(APIError(401, "a valid API key is needed: send 'Authorization: Bearer KEY'",
                                                 "authentication_error", code="invalid_api_key"))
        else:
            response = await call_next(request)
        metrics.requests.labels(route if route in KNOWN else "other", str(response.status_code)).inc()
        return response

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": served.name}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": served.name, "object": "model", "created": int(served.started),
                                            "owned_by": "dnet"}]}

    @app.get("/v1/dnet/status")
    async def status() -> dict:
        return served.status()

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request) -> Response:
        text = _text_model(served, body.model)
        prompt = _prompt(lambda: text.chat_prompt(body.chat_messages()), text.context, "messages")
        params = _sampling(lambda: body.sampling(text.context - len(prompt)))
        run = _Run(text, prompt, params, Envelope("chat", text.name), metrics, body.include_usage)
        if body.stream:
            return _sse(run.chat_chunks(), run.stream)
        return JSONResponse(await _whole(request, run.chat_response()))

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        text = _text_model(served, body.model)
        if body.echo or body.suffix:
            raise APIError(400, "'echo' and 'suffix' are not supported", param="echo" if body.echo else "suffix")
        prompt_value = body.prompt
        if isinstance(prompt_value, list) and prompt_value and isinstance(prompt_value[0], str):
            if len(prompt_value) != 1:
                raise APIError(400, "one prompt per request (send one request per prompt)", param="prompt")
            prompt_value = prompt_value[0]
        prompt = _prompt(lambda: text.text_prompt(prompt_value), text.context, "prompt")
        top = body.logprobs if body.logprobs is not None else -1
        params = _sampling(lambda: body.params(body.max_tokens if body.max_tokens is not None
                                               else text.context - len(prompt), top))
        run = _Run(text, prompt, params, Envelope("text", text.name), metrics, body.include_usage)
        if body.stream:
            return _sse(run.completion_chunks(), run.stream)
        return JSONResponse(await _whole(request, run.completion_response()))

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest) -> dict:
        if body.model != served.name:
            raise _unknown_model(body.model, served.name)
        if served.kind != "embeddings":
            raise APIError(400, f"model '{served.name}' generates text; it has no embeddings endpoint",
                           param="model", code="wrong_model_kind")
        if body.dimensions is not None:
            raise APIError(400, "'dimensions' is not supported: the model's vectors have a fixed size",
                           param="dimensions")
        texts = [body.input] if isinstance(body.input, str) else body.input
        if any(not t for t in texts):
            raise APIError(400, "'input' strings must not be empty", param="input")
        vectors, tokens = await served.embed(texts)
        return {"object": "list", "model": served.name, "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                "data": [{"object": "embedding", "index": i, "embedding": _vector(v, body.encoding_format)}
                         for i, v in enumerate(vectors)]}

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(_page_file("index.html"))

    @app.get("/page/{name}")
    async def page_file(name: str) -> Response:
        kinds = {".js": "text/javascript", ".css": "text/css"}
        kind = next((v for k, v in kinds.items() if name.endswith(k)), None)
        if kind is None or "/" in name:
            raise APIError(404, f"no page file '{name}'", code="not_found")
        return Response(_page_file(name), media_type=kind)

    KNOWN = {r.path for r in app.routes}
    return app


# --------------------------------------------------------------------------- one generation


class _Run:
    """One generation request: its steps as OpenAI's whole response or as its stream of chunks."""

    def __init__(self, text: Any, prompt: list[int], params: Any, envelope: Envelope, metrics: Metrics,
                 include_usage: bool):
        self.text, self.prompt, self.params, self.env = text, prompt, params, envelope
        self.metrics, self.include_usage = metrics, include_usage
        self.steps: list[Step] = []
        self.started = time.perf_counter()
        self.stream = text.start(prompt, params)       # queued now: a full queue is a 429 before any answer

    async def _steps(self) -> AsyncIterator[Step]:
        async for step in self.stream:
            if not self.steps:
                self.metrics.first_token.observe(time.perf_counter() - self.started)
            self.steps.append(step)
            yield step

    @property
    def finish_reason(self) -> str:
        return self.steps[-1].finish_reason if self.steps else "length"

    def _usage(self) -> dict:
        """Tokens generated: every step's, but an end-of-sequence token's (it is not part of the answer)."""
        n = len(self.steps)
        if n and self.steps[-1].finish_reason == "stop" and self.steps[-1].token in self.text.eos:
            n -= 1
        return usage(len(self.prompt), n)

    async def chat_response(self) -> dict:
        async for _ in self._steps():
            pass
        choice = {"index": 0, "message": {"role": "assistant", "content": "".join(s.text for s in self.steps)},
                  "logprobs": self._chat_logprobs(self.steps), "finish_reason": self.finish_reason}
        return self.env.wrap("chat.completion", choices=[choice], usage=self._usage())

    async def completion_response(self) -> dict:
        async for _ in self._steps():
            pass
        choice = {"index": 0, "text": "".join(s.text for s in self.steps), "finish_reason": self.finish_reason,
                  "logprobs": self._completion_logprobs(self.steps, 0)}
        return self.env.wrap("text_completion", choices=[choice], usage=self._usage())

    async def chat_chunks(self) -> AsyncIterator[dict]:
        def chunk(delta: dict, finish: str | None = None, logprobs: dict | None = None) -> dict:
            return self.env.wrap("chat.completion.chunk", choices=[
                {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}])

        yield chunk({"role": "assistant", "content": ""})
        async for step in self._steps():
            if step.text or self.params.logprobs:
                yield chunk({"content": step.text}, None, self._chat_logprobs([step]))
            if step.finish_reason:
                yield chunk({}, step.finish_reason)
        if not self.steps:
            yield chunk({}, "length")
        if self.include_usage:
            yield self.env.wrap("chat.completion.chunk", choices=[], usage=self._usage())

    async def completion_chunks(self) -> AsyncIterator[dict]:
        offset = 0
        async for step in self._steps():
            yield self.env.wrap("text_completion", choices=[
                {"index": 0, "text": step.text, "logprobs": self._completion_logprobs([step], offset),
                 "finish_reason": step.finish_reason}])
            offset += len(step.text)
        if not self.steps:
            yield self.env.wrap("text_completion", choices=[
                {"index": 0, "text": "", "logprobs": None, "finish_reason": "length"}])
        if self.include_usage:
            yield self.env.wrap("text_completion", choices=[], usage=self._usage())

    def _chat_logprobs(self, steps: list[Step]) -> dict | None:
        return chat_logprobs(steps, self.text.token_text) if self.params.logprobs else None

    def _completion_logprobs(self, steps: list[Step], offset: int) -> dict | None:
        return completion_logprobs(steps, self.text.token_text, offset) if self.params.logprobs else None


async def _whole(request: Request, answer: Awaitable[dict]) -> dict:
    """The whole answer, or nothing if the client leaves first: its generation is cancelled then, at once.

    The client's leaving is awaited as the ASGI message `http.disconnect`, as a streamed response listens
    for it. `request.is_disconnected()` cannot tell here: behind an `@app.middleware("http")` (Starlette's
    BaseHTTPMiddleware) its one non-blocking look at `receive` is swallowed, and it answers False forever."""
    task = asyncio.ensure_future(answer)
    gone = asyncio.ensure_future(_client_gone(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:           # this handler cancelled (the server stopping): the generation too
        task.cancel()
        raise
    finally:
        gone.cancel()
    if task.done():
        return task.result()
    task.cancel()
    gone.result()                   # a failure of the listening itself is raised as it is
    raise APIError(499, "the client closed the connection", code="client_closed")


async def _client_gone(request: Request) -> None:
    """Returns when the client has closed the connection (the body has been read: nothing else can come)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _sse(chunks: AsyncIterator[dict], stream: Any) -> StreamingResponse:
    """Server-sent events: `data: {json}` per chunk, then `data: [DONE]`; an error mid-stream is one
    last `data: {"error": ...}` (the status line has gone out already)."""
    async def events() -> AsyncIterator[str]:
        try:
            async for chunk in chunks:
                yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
        except APIError as err:
            yield f"data: {json.dumps(err.body())}\n\n"
        except DnetError as err:
            yield f"data: {json.dumps(APIError(500, str(err), 'server_error').body())}\n\n"
        yield "data: [DONE]\n\n"

    # the background task runs when the response ends, a client gone included: the generation stops then
    return StreamingResponse(events(), media_type="text/event-stream", background=BackgroundTask(stream.cancel),
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


# --------------------------------------------------------------------------- checks


def _text_model(served: Any, model: str) -> Any:
    if model != served.name:
        raise _unknown_model(model, served.name)
    if served.kind != "text":
        raise APIError(400, f"model '{served.name}' is an encoder: it serves /v1/embeddings only",
                       param="model", code="wrong_model_kind")
    return served


def _unknown_model(model: str, name: str) -> APIError:
    return APIError(404, f"the model '{model}' does not exist here (this server has '{name}')", param="model",
                    code="model_not_found")


def _prompt(make: Callable[[], list[int]], context: int, param: str) -> list[int]:
    try:
        prompt = make()
    except DnetError as err:
        raise APIError(400, str(err), param=param) from None
    if len(prompt) >= context:
        raise APIError(400, f"the prompt's {len(prompt)} tokens leave no room in the model's context of {context}",
                       param=param, code="context_length_exceeded")
    return prompt


def _sampling(make: Callable[[], Any]) -> Any:
    try:
        return make()
    except DnetError as err:
        raise APIError(400, str(err)) from None


def _vector(v: np.ndarray, encoding: str) -> list[float] | str:
    if encoding == "base64":
        import base64

        return base64.b64encode(np.asarray(v, "<f4").tobytes()).decode()
    return [float(x) for x in v]


def _authorized(request: Request, api_key: str) -> bool:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), api_key.encode())


def _open(path: str) -> bool:
    return path == "/" or path == "/health" or path.startswith("/page/")


def _page_file(name: str) -> str:
    try:
        return resources.files("dnet.serve").joinpath("page", name).read_text(encoding="utf-8")
    except (FileNotFoundError, OSError):
        raise APIError(404, f"no page file '{name}'", code="not_found") from None


# --------------------------------------------------------------------------- errors


def _error(err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status)


def _errors(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(_: Request, err: APIError) -> JSONResponse:
        return _error(err)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        return _error(_validation_error(err.errors()))

    @app.exception_handler(HTTPException)
    async def http(_: Request, err: HTTPException) -> JSONResponse:
        kind = "not_found" if err.status_code == 404 else None
        return _error(APIError(err.status_code, str(err.detail), code=kind))

    @app.exception_handler(QueueFull)
    async def busy(_: Request, err: QueueFull) -> JSONResponse:
        return _error(APIError(429, str(err), "rate_limit_error", code="queue_full"))

    @app.exception_handler(DnetError)
    async def dnet_error(_: Request, err: DnetError) -> JSONResponse:
        return _error(APIError(400, str(err)))

    @app.exception_handler(Exception)
    async def crash(_: Request, err: Exception) -> JSONResponse:
        log.exception("request failed")
        return _error(APIError(500, f"internal error: {type(err).__name__}", "server_error"))


_TYPE_TAG = re.compile(r"^(str|int|float|bool|none|list\[.*\]|dict\[.*\]|[A-Z]\w*|function-.*)$")


def _validation_error(errors: list[dict]) -> APIError:
    """One line for the first problem, naming the field as a path (messages.0.content)."""
    first = errors[0] if errors else {"msg": "invalid request", "loc": ()}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    if first.get("type") == "json_invalid":
        return APIError(400, f"the body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}",
                        code="invalid_json")
    if not loc and first.get("type") in ("model_attributes_type", "dict_type", "missing"):
        return APIError(400, "the body must be a JSON object (sent as Content-Type: application/json)",
                        code="invalid_body")
    loc = [p for p in loc if not _TYPE_TAG.match(p)]   # a union's branch names: content.str -> content
    param = ".".join(loc) or None
    received = first.get("input")
    shown = json.dumps(received)[:60] if received is not None and first.get("type") != "missing" else None
    message = f"'{param}': {first['msg']}" + (f" (got {shown})" if shown else "")
    return APIError(400, message, param=param, code="invalid_value")
