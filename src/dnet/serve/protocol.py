"""The OpenAI API's request and response shapes, and its errors.

Requests are pydantic models in strict mode: a string where a number belongs is a 400, never a
silent cast. Unknown fields are ignored (clients send `user`, `metadata`, ...), as OpenAI's
server does. Sampling fields map onto `dnet.llm.sampling.SamplingParams` with OpenAI's defaults
(temperature 1, top_p 1, no top-k, no min-p); `top_k`, `min_p` and `repetition_penalty` are
accepted as llama.cpp's and vLLM's servers accept them.
"""
from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from dnet.llm.generation import Step
from dnet.llm.sampling import MAX_TOP_LOGPROBS, SamplingParams


class APIError(Exception):
    """An error the client gets as OpenAI's JSON: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class StreamOptions(_Request):
    include_usage: bool = False


class _Sampling(_Request):
    """The fields chat and text completions share."""
    model: str
    max_tokens: int | None = Field(None, ge=0)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    min_p: float = Field(0.0, ge=0, le=1)
    seed: int | None = Field(None, ge=0)
    stop: str | list[str] | None = None
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    repetition_penalty: float = Field(1.0, gt=0)
    n: int = Field(1, ge=1, le=1)          # one choice per request: send n requests for n choices
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    def params(self, max_tokens: int, top_logprobs: int) -> SamplingParams:
        return SamplingParams(max_tokens=max_tokens, temperature=self.temperature, top_k=self.top_k,
                              top_p=self.top_p, min_p=self.min_p, repetition_penalty=self.repetition_penalty,
                              frequency_penalty=self.frequency_penalty, presence_penalty=self.presence_penalty,
                              seed=self.seed, stop=_stops(self.stop), logprobs=top_logprobs >= 0,
                              top_logprobs=max(top_logprobs, 0))

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class TextPart(_Request):
    type: Literal["text"]
    text: str


class Message(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=0)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)

    def sampling(self, room: int) -> SamplingParams:
        """`room`: positions left in the context after the prompt (the default max_tokens)."""
        limit = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        return self.params(room if limit is None else limit, (self.top_logprobs or 0) if self.logprobs else -1)

    def chat_messages(self) -> list[dict]:
        # "developer" is OpenAI's newer name for "system"; chat templates know only the latter
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in self.messages]


class CompletionRequest(_Sampling):
    prompt: str | list[int] | list[str] = Field(min_length=1)
    max_tokens: int | None = Field(16, ge=0)        # the completions API's default
    logprobs: int | None = Field(None, ge=0, le=5)  # the legacy API: how many alternatives per token
    echo: bool = False
    suffix: str | None = None


class EmbeddingRequest(_Request):
    model: str
    input: str | list[str] = Field(min_length=1)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None


def _stops(stop: str | list[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    stops = (stop,) if isinstance(stop, str) else tuple(stop)
    if any(not s for s in stops):
        raise APIError(400, "'stop' strings must not be empty", param="stop")
    return stops


# --------------------------------------------------------------------------- responses


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


class Envelope:
    """What every response and chunk of one request shares: id, object, created, model."""

    def __init__(self, kind: str, model: str):
        self.kind, self.model = kind, model
        self.id = new_id("chatcmpl" if kind.startswith("chat") else "cmpl")
        self.created = int(time.time())

    def wrap(self, obj: str, **fields: Any) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "system_fingerprint": "dnet", **fields}


def chat_logprobs(steps: list[Step], token_text) -> dict:
    """OpenAI's chat `logprobs`: per token its text, bytes, log-probability and the alternatives."""
    def entry(token: int, logprob: float) -> dict:
        text = token_text(token)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    return {"content": [{**entry(s.token, s.logprob), "top_logprobs": [entry(t, lp) for t, lp in s.top]}
                        for s in steps]}


def completion_logprobs(steps: list[Step], token_text, offset: int = 0) -> dict:
    """The legacy completions `logprobs`: tokens, token_logprobs, top_logprobs, text_offset."""
    tokens, offsets = [], []
    for s in steps:
        offsets.append(offset)
        tokens.append(token_text(s.token))
        offset += len(s.text)
    return {"tokens": tokens, "token_logprobs": [s.logprob for s in steps],
            "top_logprobs": [{token_text(t): lp for t, lp in s.top} for s in steps], "text_offset": offsets}
