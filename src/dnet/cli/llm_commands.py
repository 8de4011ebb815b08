"""`dnet generate` and `dnet chat`: text from an LLM (GGUF file or Hugging Face folder), streamed."""
from __future__ import annotations

import sys
import time

import click

from dnet.cli.main import cli
from dnet.errors import DnetError


def _model_options(f):
    f = click.option("--target", "-t", default="c", show_default=True, help="backend: c or numpy")(f)
    f = click.option("--threads", type=int, default=None, help="threads (default: all cores)")(f)
    f = click.option("--context", type=int, default=None, help="positions per sequence (default: model's, <= 4096)")(f)
    f = click.option("--quantize", type=click.Choice(["q8_0", "q4_0", "q4_1"]), default=None,
                     help="store a float model's matrices in a block format")(f)
    return f


def _sampling_options(f):
    for name, kind, text in (("temperature", float, "0 = greedy"), ("top-k", int, ""), ("top-p", float, ""),
                             ("min-p", float, ""), ("repetition-penalty", float, ""), ("seed", int, "same seed, same text")):
        f = click.option(f"--{name}", type=kind, default=None, help=text or None)(f)
    f = click.option("--stop", multiple=True, help="stop at this string (repeatable)")(f)
    return f


def _sampling(options: dict) -> dict:
    keys = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty", "seed")
    out = {k: options[k] for k in keys if options.get(k) is not None}
    if options.get("stop"):
        out["stop"] = list(options["stop"])
    return out


def _load(model, target, threads, context, quantize):
    from dnet.llm import load

    start = time.perf_counter()
    llm = load(model, target=target, threads=threads, context=context, quantize=quantize)
    click.secho(f"loaded {llm.config.name or llm.config.arch} ({llm.config.num_layers} layers) from {llm.source} "
                f"in {time.perf_counter() - start:.1f} s", fg="bright_black", err=True)
    return llm


@cli.command()
@click.argument("model", required=False)
@click.option("--prompt", "-p", required=True, help="the prompt text")
@click.option("--max-tokens", "-n", type=int, default=128, show_default=True, help="tokens to generate at most")
@click.option("--chat", "as_chat", is_flag=True, help="wrap the prompt in the model's chat template")
@_model_options
@_sampling_options
def generate(model, prompt, max_tokens, as_chat, target, threads, context, quantize, **options) -> None:
    """Generate text after PROMPT with MODEL (a .gguf file or a Hugging Face folder; default SmolLM2-135M)."""
    llm = _load(model, target, threads, context, quantize)
    sampling = {**_sampling(options), "max_tokens": max_tokens}
    pieces = llm.chat([{"role": "user", "content": prompt}], stream=True, **sampling) if as_chat \
        else llm.generate(prompt, stream=True, **sampling)
    for piece in pieces:
        click.echo(piece, nl=False)
        sys.stdout.flush()
    click.echo()
    _report(llm)


def _report(llm) -> None:
    s = llm.stats
    prefill = s.prompt_tokens / s.prefill_seconds if s.prefill_seconds else 0.0
    decode = (s.generated_tokens - 1) / s.decode_seconds if s.decode_seconds else 0.0
    click.secho(f"prompt {s.prompt_tokens} tokens at {prefill:.0f} tok/s, generated {s.generated_tokens} at "
                f"{decode:.1f} tok/s", fg="bright_black", err=True)


@cli.command()
@click.argument("model", required=False)
@click.option("--system", default=None, help="a system message to start the conversation with")
@click.option("--max-tokens", "-n", type=int, default=512, show_default=True, help="tokens per reply at most")
@_model_options
@_sampling_options
def chat(model, system, max_tokens, target, threads, context, quantize, **options) -> None:
    """Chat with MODEL in the terminal (replies stream; /reset forgets, /exit or Ctrl-D quits)."""
    llm = _load(model, target, threads, context, quantize)
    sampling = {**_sampling(options), "max_tokens": max_tokens}
    start = [{"role": "system", "content": system}] if system else []
    messages = list(start)
    while True:
        try:
            line = input("> ")
        except EOFError:
            click.echo()
            return
        if line.strip() in ("/exit", "/quit"):
            return
        if line.strip() == "/reset":
            messages = list(start)
            continue
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line})
        reply = []
        try:
            for piece in llm.chat(messages, stream=True, **sampling):
                reply.append(piece)
                click.echo(piece, nl=False)
                sys.stdout.flush()
        except DnetError as err:          # a conversation past the context: say so, keep the session
            messages.pop()
            click.secho(f"error: {err}", fg="red", err=True)
            continue
        click.echo()
        messages.append({"role": "assistant", "content": "".join(reply)})
