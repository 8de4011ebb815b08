"""Readable text form of the graph IR: one line a node, SSA style."""
from __future__ import annotations

from dnet.graph.ir import Graph, format_attr
from dnet.graph.ops import Op


def print_graph(g: Graph, show_names: bool = False) -> str:
    lines = []
    ins = ", ".join(f"%{i}: {g.nodes[i].type}" for i in g.inputs)
    lines.append(f"graph({ins}) {{")
    for n in g.nodes:
        if n.op is Op.INPUT:
            lines.append(f"  %{n.id}: {n.type} = input {n.attrs['name']!r}")
            continue
        args = ", ".join(f"%{i}" for i in n.inputs)
        attrs = ", ".join(f"{k}={format_attr(v)}" for k, v in n.attrs.items())
        body = f"{n.op}({args}{', ' if args and attrs else ''}{attrs})"
        note = f"  # {n.name}" if show_names and n.name else ""
        lines.append(f"  %{n.id}: {n.type} = {body}{note}")
    outs = ", ".join(f"{name}=%{i}" for name, i in zip(g.output_names, g.outputs))
    lines.append(f"  return {outs}")
    lines.append("}")
    return "\n".join(lines)
