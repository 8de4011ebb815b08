"""Chat templates: a model's Jinja template rendered the way transformers' `apply_chat_template` does.

    text = render_chat(template, [{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                       bos_token="<s>", eos_token="</s>")

Same environment as transformers (a sandbox, `trim_blocks` and `lstrip_blocks`, loop controls,
`raise_exception`, `strftime_now`, a `tojson` that does not escape HTML), so a template written
for transformers renders to the same text here. Templates come from model files, untrusted:
the sandbox is immutable, and namespaces refuse underscore attributes.
"""
from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any, Sequence

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment

from dnet.errors import TokenizerError


def render_chat(template: str | None, messages: Sequence[dict], add_generation_prompt: bool = True,
                tools: Sequence[dict] | None = None, source: str = "", **variables: Any) -> str:
    """The text of `messages` under `template`; `variables` (bos_token, eos_token, ...) are visible to it."""
    where = f"{source}: " if source else ""
    if not template:
        raise TokenizerError(f"{where}the model has no chat template")
    check_messages(messages, where)
    if tools is not None and not all(isinstance(tool, dict) for tool in tools):
        raise TokenizerError(f"{where}tools must be a list of JSON schemas (dicts)")
    try:
        compiled = compile_template(template)
        return compiled.render(messages=[_aliased(dict(m)) for m in messages],
                               tools=None if tools is None else list(tools),
                               documents=None, add_generation_prompt=add_generation_prompt, **variables)
    except (jinja2.TemplateError, TypeError, ValueError, KeyError, AttributeError) as error:
        raise TokenizerError(f"{where}chat template: {_one_line(error)}") from None


def check_messages(messages: Any, where: str = "") -> None:
    if not isinstance(messages, (list, tuple)):
        raise TokenizerError(f"{where}messages must be a list of {{'role', 'content'}} dicts, "
                             f"got {type(messages).__name__}")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) or "content" not in message:
            raise TokenizerError(f"{where}message {index} is not a {{'role': str, 'content': ...}} dict: "
                                 f"{_short(message)}")


# names a message's reasoning goes under: templates read the first, some the second
REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def _aliased(message: dict) -> dict:
    reasoning = next((message[key] for key in REASONING_FIELDS if message.get(key) is not None), None)
    if reasoning is None:
        return message
    return {"thinking": reasoning, **message, "reasoning_content": reasoning}


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _one_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


@lru_cache(maxsize=16)
def compile_template(template: str):
    """A compiled template in transformers' environment (kept: one per model, reused by every chat)."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols, GenerationBlock])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    env.globals["namespace"] = SafeNamespace
    env.globals["dict"] = dict
    return env.from_string(template)


def tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None,
           sort_keys: bool = False) -> str:
    """JSON as Python writes it: Jinja's own filter would escape <, >, & and ' for HTML."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def raise_exception(message: str):
    raise jinja2.TemplateError(message)


def strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


class SafeNamespace(jinja2.utils.Namespace):
    """Jinja's namespace, refusing underscore names (no way to CPython's internals)."""

    def __init__(*args, **kwargs):
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)


def _check_name(name: Any) -> None:
    if isinstance(name, str) and name.startswith("_"):
        raise jinja2.exceptions.SecurityError(f"a chat template cannot set '{name}' on a namespace")


class GenerationBlock(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` (transformers' marker of assistant text): rendered as its body."""
    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
        return caller()
