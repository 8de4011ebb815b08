"""A plan for people: a rich table for the terminal, an SVG drawing of the topology."""
from __future__ import annotations

import math
from html import escape

from rich.table import Table

from dnet.partition.plan import Plan
from dnet.topology.model import Topology
from dnet.topology.units import format_quantity


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}"


def _mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:.1f}"


def _layer_span(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{names[0]} .. {names[-1]} ({len(names)})"


def plan_table(plan: Plan) -> Table:
    title = (f"{plan.model or 'model'}: {len(plan.stages)} stages, objective {plan.objective}, "
             f"solver {plan.solver} ({plan.solve_seconds * 1e3:.1f} ms)")
    table = Table(title=title)
    for col, justify in (("stage", "right"), ("node", "left"), ("layers", "left"), ("ops", "right"),
                         ("sharded", "right"), ("compute ms", "right"), ("memory MiB", "right"),
                         ("sends", "left"), ("send ms", "right")):
        table.add_column(col, justify=justify)
    links = {(l.src, l.dst): l for l in plan.links}
    for i, s in enumerate(plan.stages):
        nxt = plan.stages[i + 1].node if i + 1 < len(plan.stages) else None
        link = links.get((s.node, nxt))
        table.add_row(str(i), s.node, _layer_span(s.layers), str(len(s.graph_nodes)), str(len(s.shards)),
                      _ms(s.compute_seconds), f"{_mib(s.memory_bytes)} / {_mib(s.capacity_bytes)}",
                      f"{format_quantity(link.bytes, 'bytes')} -> {nxt}" if link else "",
                      _ms(link.seconds) if link else "")
    unused = f"; unused: {', '.join(plan.unused)}" if plan.unused else ""
    table.caption = (f"throughput {plan.throughput:.2f}/s (bottleneck {plan.bottleneck}), "
                     f"latency {plan.latency * 1e3:.2f} ms{unused}")
    return table


_BOX_W, _BOX_H = 200, 92


def plan_svg(plan: Plan, topology: Topology | None = None) -> str:
    """The topology's nodes on a circle, each with the stages it runs; every link of the topology
    drawn faint, the links the plan uses as arrows labelled with their bytes and time per item;
    the bottleneck (a node or a link) in red, unused nodes grey."""
    names = topology.names if topology else list(dict.fromkeys(
        [m for s in plan.stages for m in (s.members or [s.node])] + plan.unused))
    n = len(names)
    radius = 0 if n == 1 else max(170, 70 * n)
    size = 2 * radius + _BOX_W + 80
    centre = size / 2
    at = {name: (centre + radius * math.sin(2 * math.pi * k / n), centre + 20 - radius * math.cos(2 * math.pi * k / n))
          for k, name in enumerate(names)}
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{size:.0f}" height="{size + 40:.0f}" '
           f'font-family="sans-serif" font-size="12">',
           '<defs><marker id="arrow" markerWidth="10" markerHeight="7" refX="10" refY="3.5" orient="auto">'
           '<polygon points="0 0, 10 3.5, 0 7"/></marker></defs>',
           f'<text x="12" y="20">{escape(plan.model)}: throughput {plan.throughput:.2f}/s, latency '
           f'{plan.latency * 1e3:.2f} ms, bottleneck {escape(plan.bottleneck)}</text>']
    if topology:
        for a, b in {tuple(sorted(k)) for k in topology.links}:
            out.append(_line(at[a], at[b], 'stroke="#ccc" stroke-dasharray="4 3"'))
    for link in plan.links:
        hot = plan.bottleneck == f"{link.src}->{link.dst}"
        colour = "#d33" if hot else "#246"
        out.append(_line(at[link.src], at[link.dst], f'stroke="{colour}" stroke-width="2" marker-end="url(#arrow)"',
                         clip=True))
        (x0, y0), (x1, y1) = at[link.src], at[link.dst]
        out.append(f'<text x="{(x0 + x1) / 2 + 6:.1f}" y="{(y0 + y1) / 2 - 6:.1f}" font-size="11" fill="{colour}">'
                   f'{escape(format_quantity(link.bytes, "bytes"))}, {_ms(link.seconds)} ms</text>')
    for name in names:
        out += _node_box(plan, name, *at[name])
    out.append("</svg>")
    return "\n".join(out)


def _node_box(plan: Plan, name: str, cx: float, cy: float) -> list[str]:
    stages = [(i, s) for i, s in enumerate(plan.stages) if name == s.node or name in s.members]
    x, y = cx - _BOX_W / 2, cy - _BOX_H / 2
    hot = plan.bottleneck in {name, *(s.node for _, s in stages)}
    fill, stroke = ("#eef4ff", "#d33" if hot else "#369") if stages else ("#f2f2f2", "#aaa")
    lines = [name]
    for i, s in stages:
        shared = f" (with {', '.join(m for m in s.members if m != name)})" if s.members else ""
        lines += [f"stage {i}{shared}: {_layer_span(s.layers)}",
                  f"{_ms(s.compute_seconds)} ms, {_mib(s.memory_bytes)}/{_mib(s.capacity_bytes)} MiB"
                  + (f", {len(s.shards)} split ops" if s.shards else "")]
    if not stages:
        lines.append("unused")
    out = [f'<rect x="{x:.1f}" y="{y:.1f}" width="{_BOX_W}" height="{_BOX_H}" rx="8" fill="{fill}" '
           f'stroke="{stroke}" stroke-width="{3 if hot else 1.5}"/>']
    for j, line in enumerate(lines[:5]):
        weight = ' font-weight="bold"' if j == 0 else ""
        out.append(f'<text x="{x + 8:.1f}" y="{y + 18 + j * 17:.1f}"{weight} font-size="{12 if j == 0 else 11}">'
                   f'{escape(line[:34])}</text>')
    return out


def _line(a: tuple[float, float], b: tuple[float, float], style: str, clip: bool = False) -> str:
    """A line between two box centres; with `clip`, from edge to edge (so an arrow head shows)."""
    (x0, y0), (x1, y1) = a, b
    if clip:
        (x0, y0), (x1, y1) = _edge(a, b), _edge(b, a)
    return f'<line x1="{x0:.1f}" y1="{y0:.1f}" x2="{x1:.1f}" y2="{y1:.1f}" {style}/>'


def _edge(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
    """Where the segment from a's centre towards b leaves a's box."""
    dx, dy = b[0] - a[0], b[1] - a[1]
    t = min((_BOX_W / 2) / abs(dx) if dx else math.inf, (_BOX_H / 2) / abs(dy) if dy else math.inf)
    return a[0] + t * dx, a[1] + t * dy
