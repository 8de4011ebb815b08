"""`dnet demo`: the real all-MiniLM-L6-v2 compiled on this node, with a readable report."""
from __future__ import annotations

import time

import click
import numpy as np

from dnet.cli.main import cli

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
]


def _best_target() -> str:
    from dnet.backends import registry

    return "c" if "c" in registry.names() else "numpy"


@cli.command("demo")
@click.option("-t", "--target", default=None, help="backend (default: c where a C compiler exists, else numpy)")
@click.option("--repeats", default=5, show_default=True, help="timed runs; the median is reported")
def demo_cmd(target: str | None, repeats: int) -> None:
    """Compile all-MiniLM-L6-v2 (real weights) and print the sentence-similarity table."""
    from rich.console import Console
    from rich.table import Table

    from dnet.models import load_minilm

    console = Console()
    if not console.is_terminal:  # a log or CI: wide enough that the report lines do not wrap
        console = Console(width=120)
    target = target or _best_target()
    start = time.perf_counter()
    encoder = load_minilm(target=target)
    compile_s = time.perf_counter() - start
    inputs = encoder.tokenize(SENTENCES)
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        emb = encoder.executable(**inputs)
        times.append(time.perf_counter() - t0)
    graph = encoder.executable.graph
    console.print(f"[bold]all-MiniLM-L6-v2[/bold]: {len(graph)} graph nodes, "
                  f"{graph.weight_bytes() / 2**20:.1f} MiB of weights, target [bold]{target}[/bold], "
                  f"loaded and compiled in {compile_s:.2f} s")
    console.print(f"batch of {len(SENTENCES)} sentences, padded to {inputs['input_ids'].shape[1]} tokens: "
                  f"median {1e3 * float(np.median(times)):.1f} ms over {len(times)} runs")
    if target != "numpy":
        from dnet.backends.numpy import run_graph

        reference = run_graph(graph, inputs)[graph.output_names[0]]
        console.print(f"agreement with the numpy reference backend: max |difference| "
                      f"{float(np.abs(emb - reference).max()):.2e}")
    for i, text in enumerate(SENTENCES):
        console.print(f"  [{i}] {text}")
    table = Table(title="cosine similarity of the sentence embeddings")
    table.add_column("")
    for i in range(len(SENTENCES)):
        table.add_column(f"[{i}]", justify="right")
    sims = emb @ emb.T
    for i in range(len(SENTENCES)):
        table.add_row(f"[{i}]", *(f"{sims[i, j]:.3f}" for j in range(len(SENTENCES))))
    console.print(table)
