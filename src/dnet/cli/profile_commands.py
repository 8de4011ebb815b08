"""`dnet profile`: a compiled model's time, kernel by kernel, against the node's peaks."""
from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from dnet.cli.main import cli
from dnet.cli.model_loading import check_dims, parse_dims
from dnet.cli.progress_view import note, progress_options
from dnet.errors import DnetError

LLM_SUFFIXES = (".gguf",)


@cli.command("profile")
@click.argument("model")
@click.option("-i", "--input", "inputs", multiple=True, help="input type, NAME:DTYPE[dims]")
@click.option("--dims", default="", help="sizes of symbolic dims for random inputs, e.g. batch=1,seq=128")
@click.option("--threads", type=int, default=None, help="threads (default: all cores)")
@click.option("--repeats", type=int, default=10, show_default=True, help="runs; each kernel's median is shown")
@click.option("--top", type=int, default=20, show_default=True, help="kernels shown, slowest first")
@click.option("--past", type=int, default=64, show_default=True,
              help="an LLM: positions already in the KV cache before the profiled step")
@click.option("--tokens", type=int, default=1, show_default=True,
              help="an LLM: new tokens in the profiled step (1: a decode step, more: a prefill chunk)")
@click.option("--no-counters", is_flag=True, help="do not read hardware counters")
@click.option("--trace", "trace_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="write one run as a Chrome/Perfetto trace (JSON)")
@click.option("--output-json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="write the profile as JSON")
@progress_options(json_names=("--progress-json",))
def profile_cmd(model: str, inputs, dims: str, threads: int | None, repeats: int, top: int, past: int, tokens: int,
                no_counters: bool, trace_path: Path | None, json_path: Path | None) -> None:
    """Run MODEL compiled for C, launch by launch: per kernel its time, GFLOP/s, GB/s, share of the node's
    peaks and, where the OS gives them, hardware counters. MODEL as for `dnet run`, or an LLM (a GGUF file,
    a Hugging Face folder, smollm2), profiled for one step of --tokens new tokens after --past cached ones."""
    from dnet.backends.c.profile import profile

    if repeats < 1 or top < 1:
        raise DnetError("--repeats and --top must be at least 1")
    runner, feeds = _llm_step(model, threads, past, tokens) if _is_llm(model) else \
        _model_run(model, inputs, dims, threads)
    result = profile(runner, feeds, repeats, counters=not no_counters)
    click.echo(_table(result, top))
    if result.counters_note:
        note(f"hardware counters: {result.counters_note}")
    if trace_path is not None:
        _write(trace_path, {"traceEvents": result.trace, "displayTimeUnit": "ms"})
        note(f"wrote {trace_path} (open it in https://ui.perfetto.dev or chrome://tracing)")
    if json_path is not None:
        _write(json_path, result.to_json())
        note(f"wrote {json_path}")


def _is_llm(model: str) -> bool:
    path = Path(model)
    return model == "smollm2" or path.suffix in LLM_SUFFIXES or (path.is_dir() and (path / "config.json").is_file()
                                                                 and (path / "tokenizer.json").is_file())


def _llm_step(model: str, threads: int | None, past: int, tokens: int):
    import dnet.llm
    from dnet.llm.engine import step_inputs

    if past < 0 or tokens < 1:
        raise DnetError("--past must be at least 0 and --tokens at least 1")
    llm = dnet.llm.load(model, threads=threads, context=past + tokens, prefix_cache=False)
    engine = llm.engine
    seq = engine.open()
    if past:
        engine.prefill(seq, [int(t) for t in np.arange(past) % llm.config.vocab_size])
    feeds = step_inputs([seq.length], np.full((1, tokens), 1, np.int64), np.array([tokens - 1]))
    feeds.update(engine.cache.bind(seq.slot, 1))
    return engine.exe.runner, feeds


def _model_run(model: str, inputs, dims: str, threads: int | None):
    from dnet.cli.model_commands import _compile, _random_inputs

    options = {"threads": threads} if threads else {}
    exe = _compile(model, inputs, "c", None, None, 0, **options)
    env = parse_dims(dims)
    check_dims(exe.graph, env)
    return exe.runner, _random_inputs(exe.graph, env, 0)


def _table(result, top: int) -> str:
    flops_peak, bandwidth = _peaks()
    events = sorted({e for k in result.kernels for e in k.counters})
    head = ["kernel", "calls", "ms", "%", "GFLOP/s", "GB/s", "% peak", *_counter_heads(events), "ops"]
    rows = [head]
    for k in result.kernels[:top]:
        share = max(k.flops / k.seconds / flops_peak if flops_peak and k.seconds else 0,
                    k.bytes / k.seconds / bandwidth if bandwidth and k.seconds else 0)
        rows.append([k.kernel, str(k.calls), f"{1e3 * k.seconds:.3f}", f"{100 * k.seconds / result.seconds:.1f}",
                     f"{k.gflops:.1f}", f"{k.gbytes:.1f}", f"{100 * share:.0f}", *_counter_cells(k, events),
                     k.ops[:48]])
    rows.append(["total", str(sum(k.calls for k in result.kernels)), f"{1e3 * result.seconds:.3f}", "100",
                 "", "", "", *[""] * len(_counter_heads(events)), f"{len(result.kernels)} kernels"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i in (0, len(head) - 1) else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    peaks = f"node peaks: {flops_peak / 1e9:.0f} GFLOP/s f32 matmul, {bandwidth / 1e9:.1f} GB/s memory (probed)"
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:], peaks])


def _counter_heads(events: list[str]) -> list[str]:
    heads = []
    if "instructions" in events and "cycles" in events:
        heads.append("IPC")
    if "cache-misses" in events and "cache-references" in events:
        heads.append("miss %")
    return heads


def _counter_cells(k, events: list[str]) -> list[str]:
    c = k.counters
    cells = []
    if "instructions" in events and "cycles" in events:
        cells.append(f"{c['instructions'] / c['cycles']:.2f}" if c.get("cycles") else "")
    if "cache-misses" in events and "cache-references" in events:
        cells.append(f"{100 * c['cache-misses'] / c['cache-references']:.1f}" if c.get("cache-references") else "")
    return cells


def _peaks() -> tuple[float, float]:
    """This node's probed f32 matmul rate and memory bandwidth (cached by `dnet probe`)."""
    from dnet.core.dtypes import DType
    from dnet.topology.probe import probe_device

    device = probe_device("c", quick=True)
    return device.compute.get(DType.F32.value, device.peak), device.memory_bandwidth


def _write(path: Path, obj: dict) -> None:
    try:
        path.write_text(json.dumps(obj, indent=1))
    except OSError as err:
        raise DnetError(f"cannot write {path}: {err.strerror or err}") from None
