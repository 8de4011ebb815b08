"""`dnet probe` (measure this node and its links) and `dnet plan` (partition a model over a topology)."""
from __future__ import annotations

import json
from pathlib import Path

import click

from dnet.cli.main import cli
from dnet.cli.model_loading import check_dims, load_model, parse_dims
from dnet.cli.progress_view import progress_options
from dnet.cli.topology_spec import TOPOLOGY_HELP, parse_topology
from dnet.errors import DnetError
from dnet.partition.pipeline import METHODS, OBJECTIVES

NOISY = 0.5  # a probe whose runs spread wider than this is reported as unreliable
SYNTHETIC_HELP = "or a planning stand-in: llama-1b, cnn, bert (layer graphs with no real weights)"


@cli.command("probe")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="topology file to write or update")
@click.option("--name", default=None, help="this node's name in the topology (default: the host name)")
@click.option("--backend", default="numpy", show_default=True,
              help="backend whose rates are measured (every backend the node has is listed)")
@click.option("--quick", is_flag=True, help="fewer, smaller runs")
@click.option("--refresh", is_flag=True, help="measure again even if this hardware is cached")
@click.option("--link", "links", multiple=True, metavar="NAME=HOST:PORT",
              help="measure the link to a peer running `dnet probe --serve`")
@click.option("--serve", metavar="HOST:PORT", help="answer other nodes' link probes until interrupted")
@progress_options()
def probe_cmd(output: Path | None, name: str | None, backend: str, quick: bool, refresh: bool,
              links: tuple[str, ...], serve: str | None) -> None:
    """Measure this node (matmul rate per dtype, memory bandwidth and size, cores, vector width, caches)."""
    import socket

    from dnet.backends import registry
    from dnet.topology.linkprobe import probe_link, serve_probe
    from dnet.topology.model import Node, Topology
    from dnet.topology.probe import probe
    from dnet.topology.units import format_quantity

    if serve:
        host, _, port = serve.rpartition(":")
        server = serve_probe(host, int(port))
        click.echo(f"serving link probes on {serve}; Ctrl-C to stop")
        server.serve_forever()
        return
    registry.require_available(backend)     # unknown, or not on this machine: one line naming the others
    report = probe(backend, quick=quick, refresh=refresh)
    name = name or socket.gethostname()
    click.echo(f"node {name} ({'cached' if report.cached else 'measured'}, fingerprint {report.fingerprint})")
    _echo_backends(backend)
    for key, m in report.measurements.items():
        kind = {"memory_bandwidth": "bandwidth", "op_overhead": "time"}.get(key, "rate")   # op_overhead: seconds
        click.echo(f"  {key:<18} {format_quantity(m.median, kind):>16}  spread {m.spread:.1%} over {m.runs} runs")
    noisy = [k for k, m in report.measurements.items() if m.spread > NOISY]
    if noisy:
        click.secho(f"  warning: {', '.join(noisy)} varied by more than {NOISY:.0%} between runs: something else "
                    "may be using this machine; measure again with --refresh when it is idle", fg="yellow")
    d = report.device
    click.echo(f"  cores {d.cores}, memory {format_quantity(d.memory, 'bytes')}, vector width {d.vector_width} bits, "
               + ", ".join(f"{k} {format_quantity(v, 'bytes')}" for k, v in d.cache.items()))
    existing = output.read_text() if output and output.exists() else None
    topo = Topology.load(str(output)) if existing is not None else Topology()
    written: list[tuple[str, str]] = []
    here = Node(name, [d])
    if name in topo.names:  # keep its place in the file's order
        topo.nodes[topo.names.index(name)] = here
    else:
        topo.nodes.append(here)
    for spec in links:
        peer, _, address = spec.partition("=")
        if not peer or not address:
            raise DnetError(f"bad --link '{spec}'", hint="write NAME=HOST:PORT")
        latency, bandwidth = probe_link(address)
        click.echo(f"  link {name} -> {peer}: {format_quantity(bandwidth.median, 'bandwidth')} "
                   f"(spread {bandwidth.spread:.1%}), latency {format_quantity(latency.median, 'time')}")
        if peer not in topo.names:
            raise DnetError(f"peer '{peer}' is not a node of {output or 'the topology'}",
                            hint="probe it first, writing to the same file")
        topo.add_link(name, peer, bandwidth.median, latency.median, symmetric=False)
        written.append((name, peer))
    if output:   # an existing file keeps its comments and the rest of its text: only these tables change
        from dnet.topology.toml_format import update_topology_text

        output.write_text(topo.dumps() if existing is None else update_topology_text(existing, topo, [name], written))
        click.echo(f"wrote {output}")


def _echo_backends(measured: str) -> None:
    """Every backend registered, as this node has it: one line each, available or why not (the rates
    above are `measured`'s; `dnet probe --backend NAME` measures another)."""
    from dnet.backends import registry

    for name in registry.names():
        reason = registry.unavailable(name)
        state = "measured" if name == measured else "available" if reason is None else f"not here: {reason}"
        click.echo(f"  backend {name:<8} {state}")


def _plan_graph(model: str, dims: dict[str, int]):
    from dnet.partition import synthetic

    stand_ins = {"llama-1b": synthetic.MODELS["llama-1b"], "cnn": synthetic.MODELS["cnn"],
                 "bert": synthetic.MODELS["minilm"]}
    if model in stand_ins:
        graph = stand_ins[model]()
        check_dims(graph, dims)
        return graph, dims
    import dnet

    loaded, inputs = load_model(model)
    graph = dnet.to_graph(loaded, inputs)
    check_dims(graph, dims)   # the user's names only: batch and seq below are defaults, used where they apply
    return graph, {"batch": 1, "seq": 128, **dims}


@cli.command("plan", help=f"Partition MODEL (a model reference as for `dnet run`, {SYNTHETIC_HELP}) over a "
                          "topology.")   # help= : a docstring built with + is an expression, not a docstring
@click.argument("model")
@click.option("-T", "--topology", "topology_path", required=True, type=click.Path(path_type=Path),
              help=TOPOLOGY_HELP)
@click.option("--objective", type=click.Choice(OBJECTIVES), default="throughput", show_default=True)
@click.option("--method", type=click.Choice(METHODS), default="auto", show_default=True)
@click.option("--dims", default="", help="sizes of symbolic dims, e.g. batch=1,seq=128 (those two by default)")
@click.option("--layers", "layers_by", type=click.Choice(["auto", "names", "cuts"]), default="auto",
              show_default=True, help="find layers by node names, or by single-tensor cut points")
@click.option("--split-across-nodes", "groups", is_flag=True,
              help="let pairs of well-linked nodes run a stage together, splitting its ops (planning only)")
@click.option("--baselines", is_flag=True, help="also show the equal, memory-proportional and Halda assignments")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="write the plan as JSON")
@click.option("--svg", "svg_path", type=click.Path(path_type=Path), help="draw the plan as SVG")
@progress_options(json_names=("--progress-json",))   # --json PATH writes the plan
def plan_cmd(model: str, topology_path: Path, objective: str, method: str, dims: str, layers_by: str, groups: bool,
             baselines: bool, json_path: Path | None, svg_path: Path | None) -> None:
    from rich.console import Console

    from dnet.partition import build_problem, evaluate, layer_chain, plan_from_stages, plan_pipeline
    from dnet.partition.baselines import BASELINES
    from dnet.partition.render import plan_svg, plan_table

    topology, _ = parse_topology(str(topology_path))
    graph, env = _plan_graph(model, parse_dims(dims))
    chain = layer_chain(graph, env, by=layers_by)
    plan = plan_pipeline(graph, topology, objective, method, env, model, chain, groups)
    console = Console()
    console.print(plan_table(plan))
    if baselines:
        problem = build_problem(chain, topology)  # baselines place whole layers on single nodes
        for name, fn in BASELINES.items():
            stages = fn(problem)
            if stages is None:
                console.print(f"{name}: no assignment fits")
                continue
            problems = evaluate(problem, stages).problems
            if problems:
                console.print(f"{name}: not feasible: {'; '.join(problems)}")
                continue
            base = plan_from_stages(chain, topology, problem, stages, objective, name, model=model)
            console.print(f"{name}: throughput {base.throughput:.2f}/s, latency {base.latency * 1e3:.2f} ms")
    if json_path:
        json_path.write_text(json.dumps(plan.to_json(), indent=1))
        console.print(f"wrote {json_path}")
    if svg_path:
        svg_path.write_text(plan_svg(plan, topology))
        console.print(f"wrote {svg_path}")
