"""`dnet serve`: an OpenAI-compatible HTTP server over a model, on this machine or across a cluster."""
from __future__ import annotations

import signal
import sys
from pathlib import Path

import click

from dnet.cli.main import cli
from dnet.cli.progress_view import note, progress_options
from dnet.cli.topology_spec import TOPOLOGY_HELP, parse_topology
from dnet.errors import DnetError


@cli.command()
@click.argument("model", default="smollm2")
@click.option("--topology", "-T", default=None, help="run across a cluster: " + TOPOLOGY_HELP)
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", type=int, default=8000, show_default=True, help="port to listen on (0: any free one)")
@click.option("--api-key-file", type=click.Path(dir_okay=False), default=None,
              help="file holding the API key clients must send as 'Authorization: Bearer KEY'")
@click.option("--slots", type=int, default=16, show_default=True, help="sequences decoded together at most")
@click.option("--queue", "max_waiting", type=int, default=64, show_default=True,
              help="requests waiting for a slot at most (more are answered 429)")
@click.option("--context", type=int, default=None, help="positions per sequence (default: the model's, <= 4096)")
@click.option("--threads", type=int, default=None, help="threads (default: all cores)")
@click.option("--target", "-t", default="c", show_default=True, help="backend: c or numpy")
@click.option("--no-prefix-cache", is_flag=True,
              help="feed every prompt whole (bit-exact repeats of seeded answers; slower to the first token)")
@progress_options()
def serve(model, topology, host, port, api_key_file, slots, max_waiting, context, threads, target,
          no_prefix_cache) -> None:
    """Serve MODEL over OpenAI's HTTP API, with a web page at /.

    MODEL: a GGUF file, a Hugging Face folder, `smollm2` (the default) or `minilm` (embeddings only).
    """
    from dnet.serve import Server, create_app, load_served
    from dnet.serve.server import bind, check_bind

    if slots < 1 or max_waiting < 0:
        raise DnetError("--slots must be at least 1 and --queue at least 0")
    api_key = _api_key(api_key_file)
    where, options = parse_topology(topology) if topology else (None, {})
    check_bind(host, api_key)           # the address is checked and bound before the model loads, not after
    sock = bind(host, port)
    try:
        served = load_served(model, topology=where, threads=threads, slots=slots, context=context,
                             max_waiting=max_waiting, target=target, cluster=options,
                             prefix_cache=not no_prefix_cache)
    except BaseException:
        sock.close()
        raise
    try:
        server = Server(create_app(served, api_key), host, port, log_level="warning", sock=sock)
        note(f"serving '{served.name}' on {server.url} (OpenAI API at /v1, web page at /)",
             model=served.name, url=server.url)
        # uvicorn shuts down gracefully on SIGTERM, then raises the signal again for the handler it found:
        # this one ends the command normally, so the model (and a cluster's sessions) is closed below
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        server.run()
    finally:
        served.close()


def _api_key(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        key = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        raise DnetError(f"cannot read the API key file {path}: {getattr(err, 'strerror', None) or err}") from None
    if len(key) < 16:
        raise DnetError(f"the API key in {path} is {len(key)} characters: use at least 16",
                        hint="e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))' > " + path)
    return key
