"""`dnet compile`, `dnet run`, `dnet inspect`: working with one model on one node."""
from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from dnet.cli.main import cli
from dnet.cli.model_loading import check_dims, load_model, parse_dims, parse_inputs, read_arrays
from dnet.cli.progress_view import progress_options
from dnet.core.shapes import Dim, evaluate_shape
from dnet.errors import DnetError

MODEL_HELP = ("a built-in name (minilm), FILE.py:NAME, FILE.dnet[:Object], FILE.onnx or a directory from "
              "`dnet compile -o`")


def weight_options(command):
    """--weights and --init: where a DSL model's parameters get their data."""
    command = click.option("--init", type=click.Choice(["seeded"]), default=None,
                           help="a DSL model's parameters drawn at random from --seed (no weights at hand)")(command)
    return click.option("--weights", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
                        help="a DSL model's weights: .safetensors or .npz, by dotted parameter path")(command)


def _compile(ref: str, specs: tuple[str, ...], target: str, weights: Path | None = None, init: str | None = None,
             seed: int = 0, **options):
    """Load MODEL and compile it for the input types of `specs` (or the model's own defaults)."""
    import dnet

    model, default_inputs = load_model(ref, weights, init, seed)
    return dnet.compile(model, parse_inputs(specs) or default_inputs, target=target, **options)


@cli.command("compile", help=f"Compile MODEL ({MODEL_HELP}) for TARGET.")   # a docstring cannot be built
@click.argument("model")
@click.option("-i", "--input", "inputs", multiple=True, help="input type, NAME:DTYPE[dims], e.g. x:f32[batch,384]")
@click.option("-t", "--target", default="numpy", show_default=True, help="backend to compile for")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="write a standalone artefact here")
@click.option("--quantize", type=click.Choice(["int8", "int8-dynamic"]), default=None,
              help="int8: matmul weights as int8 with one scale per output channel; int8-dynamic: their "
                   "activations quantized per row too, integer products")
@click.option("--precision", type=click.Choice(["f32", "bf16"]), default=None,
              help="bf16: matmuls on bf16 weights and activations, sums in f32")
@weight_options
@click.option("--seed", default=0, show_default=True, help="seed of --init seeded")
@progress_options()
def compile_cmd(model: str, inputs: tuple[str, ...], target: str, output: Path | None, quantize: str | None,
                precision: str | None, weights: Path | None, init: str | None, seed: int) -> None:
    from dnet.api import save_artifact

    exe = _compile(model, inputs, target, weights, init, seed, quantize=quantize, precision=precision)
    graph = exe.graph
    click.echo(f"compiled {model}: {len(graph)} graph nodes, {graph.weight_bytes() / 2**20:.1f} MiB of weights, "
               f"target {target}")
    if output:
        try:
            save_artifact(exe, output)
        except OSError as err:
            raise DnetError(f"cannot write {output}: {err.strerror or err}",
                            hint="a directory you can write (it is created)") from None
        click.echo(f"wrote {output}")


def _random_inputs(graph, env: dict[str, int], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for name, t in graph.input_types().items():
        missing = {s for d in t.shape if isinstance(d, Dim) for s in d.free_symbols()} - env.keys()
        if missing:
            raise DnetError(f"input '{name}' has symbolic dims {sorted(missing)}", hint="give them with --dims")
        shape = evaluate_shape(t.shape, env)
        if t.dtype.is_float:
            out[name] = rng.standard_normal(shape).astype(t.dtype.np)
        elif t.dtype.is_int:
            out[name] = rng.integers(0, 2, shape).astype(t.dtype.np)
        else:
            out[name] = rng.integers(0, 2, shape).astype(bool)
    return out


@cli.command("run")
@click.argument("model")
@click.option("-i", "--input", "inputs", multiple=True, help="input type, NAME:DTYPE[dims]")
@click.option("-t", "--target", default="numpy", show_default=True)
@click.option("--data", type=click.Path(exists=True, path_type=Path), help=".npz file of input arrays by name")
@click.option("--dims", default="", help="sizes of symbolic dims for random inputs, e.g. batch=2,seq=16")
@click.option("--seed", default=0, show_default=True)
@click.option("-o", "--output", type=click.Path(path_type=Path), help="write outputs to this .npz")
@click.option("--topology", type=click.Path(exists=True, path_type=Path),
              help="run across the workers of this topology file (docs/cluster.md)")
@weight_options
@progress_options()
def run_cmd(model: str, inputs, target: str, data: Path | None, dims: str, seed: int, output: Path | None,
            topology: Path | None, weights: Path | None, init: str | None) -> None:
    """Run MODEL on inputs from --data, or on seeded random inputs."""
    from dnet.api import load_artifact

    path = Path(model)
    env = parse_dims(dims)
    if topology is not None:
        from dnet.topology import Topology

        exe = _compile(model, inputs, target, weights, init, seed, topology=Topology.load(str(topology)),
                       env=env or None)
    else:
        exe = load_artifact(path) if path.is_dir() else _compile(model, inputs, target, weights, init, seed)
    check_dims(exe.graph, env)
    feeds = read_arrays(data) if data else _random_inputs(exe.graph, env, seed)
    try:
        results = exe.run(feeds)
    finally:
        if topology is not None:
            exe.close()
    for name, value in results.items():
        click.echo(f"{name}: {value.dtype}{list(value.shape)}  mean={float(np.mean(value)):.6g} "
                   f"std={float(np.std(value)):.6g}")
    if output:
        np.savez(output, **results)
        click.echo(f"wrote {output}")


@cli.command("inspect")
@click.argument("model")
@click.option("-i", "--input", "inputs", multiple=True, help="input type, NAME:DTYPE[dims]")
@click.option("--level", type=click.Choice(["object", "graph", "summary", "all"]), default="all", show_default=True)
@click.option("--object", "object_name", default=None, help="show only this object (class name or path)")
@click.option("--passes", is_flag=True, help="show the object IR before and after each object-level pass")
@click.option("--dims", default="", help="sizes of symbolic dims for the cost summary, e.g. batch=1,seq=128")
@weight_options
def inspect_cmd(model: str, inputs, level: str, object_name: str | None, passes: bool, dims: str,
                weights: Path | None, init: str | None) -> None:
    """Print MODEL's object IR, graph IR and data-flow summary."""
    from dnet.cli.inspect_views import render

    click.echo(render(model, inputs, level, object_name, passes, parse_dims(dims), weights, init))
