"""`dnet serve` against llama-cpp-python's own OpenAI server: the same model, threads and client.

    python benchmarks/serve.py [--threads 2] [--streams 1,4,16] [--max-tokens 64] [--rounds 3]

Each server runs as its own process, one after the other (never both at once: they would share
the cores). Through the official `openai` client, `c` streams at once each send a chat request
(a different question each, temperature 0) and read the streamed answer; a round's aggregate
tokens/s is every stream's completion tokens over the round's wall time, and time to first
token is from sending a request to its first streamed text. Figures are medians over rounds.

llama-cpp-python's server runs one request at a time (`interrupt_requests` off, so a new request
waits instead of cutting the running one short); dnet's batches every request in flight.
Needs llama-cpp-python with its server extra (benchmarks/install_llama_cpp.sh).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from common import table  # noqa: E402

QUESTIONS = ["Tell me about the sea.", "Describe a forest in autumn.", "What makes a good friend?",
             "Explain how rain forms.", "Write about a city at night.", "Why do cats purr?",
             "Describe a mountain hike.", "What is a library for?", "Tell me about the moon.",
             "How do birds fly?", "Describe a summer market.", "What is music?", "Tell me about trains.",
             "Describe the desert.", "What is a good breakfast?", "Explain what a river does."]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(command: list[str], url: str, timeout: float = 600) -> subprocess.Popen:
    log = tempfile.TemporaryFile("w+")      # a file, not a pipe: llama.cpp's chatty log would fill a pipe and block
    proc = subprocess.Popen(command, stdout=log, stderr=log, text=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise SystemExit(f"{command[0]} exited: {log.read()[-2000:]}")
        try:
            if httpx.get(url + "/v1/models", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"{command[0]} did not start in {timeout} s")


def one_stream(client, model: str, question: str, max_tokens: int) -> tuple[float | None, int]:
    """(seconds to the first text, completion tokens) of one streamed chat request."""
    sent = time.perf_counter()
    first, tokens, pieces = None, None, 0
    stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                            max_tokens=max_tokens, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces += 1
            first = time.perf_counter() - sent if first is None else first
        if getattr(chunk, "usage", None) is not None:
            tokens = chunk.usage.completion_tokens
    return first, tokens if tokens is not None else pieces     # a server without usage: a chunk a token


def measure(url: str, model: str, streams: int, max_tokens: int, rounds: int) -> tuple[float, float]:
    """Median (aggregate tokens/s, time to first token in s) over `rounds` rounds of `streams` streams."""
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key="bench", max_retries=0, timeout=600)
    one_stream(client, model, "Hello", 4)                      # warm-up
    rates, firsts = [], []
    with concurrent.futures.ThreadPoolExecutor(streams) as pool:
        for r in range(rounds):
            questions = [QUESTIONS[(r * streams + i) % len(QUESTIONS)] for i in range(streams)]
            start = time.perf_counter()
            results = list(pool.map(lambda q: one_stream(client, model, q, max_tokens), questions))
            wall = time.perf_counter() - start
            rates.append(sum(t for _, t in results) / wall)
            firsts.extend(f for f, _ in results if f is not None)
    return statistics.median(rates), statistics.median(firsts)


def servers(args) -> dict[str, tuple[list[str], str]]:
    from dnet.llm import default_model_path

    model = str(default_model_path())
    bin_dir = Path(sys.executable).parent
    port = free_port()
    dnet = ([str(bin_dir / "dnet"), "serve", "smollm2", "--port", str(port), "--threads", str(args.threads),
             "--slots", str(max(args.streams)), "--context", str(args.context), "--quiet"], port)
    port2 = free_port()
    llama = ([sys.executable, "-m", "llama_cpp.server", "--model", model, "--model_alias", "smollm2",
              "--port", str(port2), "--n_threads", str(args.threads), "--n_threads_batch", str(args.threads),
              "--n_ctx", str(args.context), "--interrupt_requests", "False"], port2)
    return {"dnet": dnet, "llama-cpp-python": llama}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--streams", default="1,4,16", help="concurrent streams, comma-separated")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--servers", default="dnet,llama-cpp-python")
    args = parser.parse_args()
    args.streams = [int(s) for s in args.streams.split(",")]
    results: dict[str, dict[int, tuple[float, float]]] = {}
    for name, (command, port) in servers(args).items():
        if name not in args.servers.split(","):
            continue
        url = f"http://127.0.0.1:{port}"
        proc = start(command, url)
        try:
            results[name] = {c: measure(url, "smollm2", c, args.max_tokens, args.rounds) for c in args.streams}
        finally:
            proc.terminate()
            proc.wait(30)
        for c, (rate, first) in results[name].items():
            print(f"{name}: {c} streams: {rate:.1f} tok/s, first token {1e3 * first:.0f} ms", flush=True)
    rows = [["streams", *[f"{n} tok/s" for n in results], *[f"{n} TTFT ms" for n in results]]]
    names = list(results)
    for c in args.streams:
        rows.append([str(c), *[f"{results[n][c][0]:.1f}" for n in names],
                     *[f"{1e3 * results[n][c][1]:.0f}" for n in names]])
    if len(names) == 2:
        rows[0] += ["tok/s ratio", "TTFT ratio"]
        for row, c in zip(rows[1:], args.streams):
            (a, fa), (b, fb) = results[names[0]][c], results[names[1]][c]
            row += [f"{a / b:.2f}x", f"{fa / fb:.2f}x"]
    print(f"\nSmolLM2-135M-Instruct Q4_1, {args.threads} threads, {args.max_tokens} tokens per stream, "
          f"medians of {args.rounds} rounds")
    print(table(rows))


if __name__ == "__main__":
    main()
