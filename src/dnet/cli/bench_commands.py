"""`dnet bench`: the C backend's benchmarks, side by side with ONNX Runtime and PyTorch.

The benchmarks live in the repository's `benchmarks/` folder (they need torch and
onnxruntime, which dnet itself does not); this command runs them with one thread count
for every framework.
"""
from __future__ import annotations

import runpy
import sys
from pathlib import Path

import click

from dnet.cli.main import cli
from dnet.errors import DnetError

BENCHMARKS = {"minilm": "minilm.py", "matmul": "matmul.py", "conv": "conv.py", "llm": "llm.py"}


def _benchmarks_dir() -> Path:
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "benchmarks"
        if (candidate / "minilm.py").is_file():
            return candidate
    raise DnetError("the benchmarks/ folder is not next to this dnet installation",
                    hint="run `dnet bench` from a checkout of the dnet repository (pip install -e .)")


@cli.command()
@click.argument("which", type=click.Choice(sorted(BENCHMARKS)), default="minilm")
@click.argument("model", required=False)
@click.option("--threads", type=int, default=None, help="threads for every framework (default: all cores)")
@click.option("--repeats", type=int, default=5, show_default=True, help="runs per round; medians are reported")
def bench(which: str, model: str | None, threads: int | None, repeats: int) -> None:
    """Benchmark dnet's C backend: MiniLM latency vs ONNX Runtime and PyTorch, matmul or conv GFLOP/s, or
    LLM prefill and decode tokens/s vs llama.cpp and transformers (`dnet bench llm [MODEL.gguf]`)."""
    if model is not None and which != "llm":
        raise DnetError(f"`dnet bench {which}` takes no model argument", hint="only `dnet bench llm [MODEL]` does")
    script = _benchmarks_dir() / BENCHMARKS[which]
    argv = [str(script), *([model] if model else []), "--repeats", str(repeats)]
    argv += ["--threads", str(threads)] if threads else []
    saved = sys.argv
    sys.argv = argv
    try:
        runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.argv = saved
