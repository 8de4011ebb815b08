"""`dnet generate` and `dnet chat`: text from an LLM (GGUF file or Hugging Face folder), streamed."""
from __future__ import annotations

import sys
import time

import click

from dnet.cli.cluster_commands import stage_table
from dnet.cli.main import cli
from dnet.cli.progress_view import current_output, note, progress_options
from dnet.cli.topology_spec import TOPOLOGY_HELP, parse_topology
from dnet.errors import DnetError


def _model_options(f):
    f = click.option("--target", "-t", default="c", show_default=True, help="backend: c or numpy")(f)
    f = click.option("--threads", type=int, default=None, help="threads (default: all cores)")(f)
    f = click.option("--context", type=int, default=None, help="positions per sequence (default: model's, <= 4096)")(f)
    f = click.option("--quantize", type=click.Choice(["q8_0", "q4_0", "q4_1"]), default=None,
                     help="store a float model's matrices in a block format")(f)
    f = click.option("--topology", "-T", default=None, help="run across a cluster: " + TOPOLOGY_HELP)(f)
    f = click.option("--parallel", type=click.Choice(["auto", "pipeline", "tensor"]), default="pipeline",
                     show_default=True, help="with a topology: layers in stages, every layer over a group, or "
                     "whichever the cost model finds faster")(f)
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


def _load(model, target, threads, context, quantize, topology, parallel="pipeline"):
    from dnet.llm import load

    start = time.perf_counter()
    where, options = (parse_topology(topology) if topology else (None, {}))
    llm = load(model, target=target, threads=threads, context=context, quantize=quantize, topology=where,
               cluster=options, parallel=parallel)
    seconds = time.perf_counter() - start
    note(f"loaded {llm.config.name or llm.config.arch} ({llm.config.num_layers} layers) from {llm.source} "
         f"in {seconds:.1f} s", model=llm.source, seconds=round(seconds, 3))
    if where is not None and _for_people():
        from dnet.partition.render import plan_table

        _console().print(plan_table(llm.engine.exe.plan))
    return llm


def _for_people() -> bool:
    """Tables are for a person: not under --quiet, nor in --json's event stream."""
    output = current_output()
    return not (output.quiet or output.json)


def _console():
    from rich.console import Console

    console = Console(stderr=True)
    return console if console.is_terminal else Console(stderr=True, width=120)


@cli.command()
@click.argument("model", required=False)
@click.option("--prompt", "-p", required=True, help="the prompt text")
@click.option("--max-tokens", "-n", type=int, default=128, show_default=True, help="tokens to generate at most")
@click.option("--chat", "as_chat", is_flag=True, help="wrap the prompt in the model's chat template")
@_model_options
@_sampling_options
@progress_options()
def generate(model, prompt, max_tokens, as_chat, target, threads, context, quantize, topology, parallel,
             **options) -> None:
    """Generate text after PROMPT with MODEL (a .gguf file or a Hugging Face folder; default SmolLM2-135M)."""
    llm = _load(model, target, threads, context, quantize, topology, parallel)
    sampling = {**_sampling(options), "max_tokens": max_tokens}
    pieces = llm.chat([{"role": "user", "content": prompt}], stream=True, **sampling) if as_chat \
        else llm.generate(prompt, stream=True, **sampling)
    for piece in pieces:
        click.echo(piece, nl=False)
        sys.stdout.flush()
    click.echo()
    _report(llm)
    llm.close()


def _report(llm) -> None:
    s = llm.stats
    prefill = s.prompt_tokens / s.prefill_seconds if s.prefill_seconds else 0.0
    decode = (s.generated_tokens - 1) / s.decode_seconds if s.decode_seconds else 0.0
    exe = getattr(llm.engine, "exe", None)
    if hasattr(exe, "timings") and _for_people():   # across a cluster: each stage's mean compute per step
        title = f"per-stage times (mean of {sum(t.runs for t in exe.timings.values())} stage runs)"
        _console().print(stage_table(title, exe.plan, [t.mean_ms / 1e3 for t in exe.timings.values()]))
    note(f"prompt {s.prompt_tokens} tokens at {prefill:.0f} tok/s, generated {s.generated_tokens} at "
         f"{decode:.1f} tok/s", prompt_tokens=s.prompt_tokens, generated_tokens=s.generated_tokens,
         prefill_tokens_per_s=round(prefill, 2), decode_tokens_per_s=round(decode, 2))


@cli.command()
@click.argument("model", required=False)
@click.option("--system", default=None, help="a system message to start the conversation with")
@click.option("--max-tokens", "-n", type=int, default=512, show_default=True, help="tokens per reply at most")
@_model_options
@_sampling_options
@progress_options()
def chat(model, system, max_tokens, target, threads, context, quantize, topology, parallel, **options) -> None:
    """Chat with MODEL in the terminal (replies stream; /reset forgets, /exit or Ctrl-D quits)."""
    llm = _load(model, target, threads, context, quantize, topology, parallel)
    try:
        _converse(llm, system, {**_sampling(options), "max_tokens": max_tokens})
    finally:
        llm.close()


def _converse(llm, system: str | None, sampling: dict) -> None:
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
