"""A plan for people: a rich table for the terminal, an SVG drawing of the topology."""
from __future__ import annotations

from html import escape

from rich.table import Table

from dnet.partition.plan import Plan
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


def plan_svg(plan: Plan) -> str:
    """The stages as boxes left to right, unused nodes greyed below, links labelled with bytes and time."""
    box_w, box_h, gap, pad = 190, 110, 80, 20
    width = pad * 2 + len(plan.stages) * (box_w + gap) - gap
    height = pad * 2 + box_h + (box_h + 40 if plan.unused else 0) + 40
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{max(width, 420)}" height="{height}" '
           f'font-family="sans-serif" font-size="12">',
           '<defs><marker id="arrow" markerWidth="10" markerHeight="7" refX="10" refY="3.5" orient="auto">'
           '<polygon points="0 0, 10 3.5, 0 7"/></marker></defs>',
           f'<text x="{pad}" y="{pad}">{escape(plan.model)}: throughput {plan.throughput:.2f}/s, '
           f'latency {plan.latency * 1e3:.2f} ms, bottleneck {escape(plan.bottleneck)}</text>']
    links = {(l.src, l.dst): l for l in plan.links}
    y = pad + 20
    for i, s in enumerate(plan.stages):
        x = pad + i * (box_w + gap)
        hot = plan.bottleneck == s.node
        out.append(f'<rect x="{x}" y="{y}" width="{box_w}" height="{box_h}" rx="8" fill="#eef4ff" '
                   f'stroke="{"#d33" if hot else "#369"}" stroke-width="{3 if hot else 1.5}"/>')
        lines = [f"stage {i}: {s.node}", _layer_span(s.layers), f"{_ms(s.compute_seconds)} ms compute",
                 f"{_mib(s.memory_bytes)} / {_mib(s.capacity_bytes)} MiB", f"{len(s.shards)} sharded ops"]
        for j, line in enumerate(lines):
            out.append(f'<text x="{x + 8}" y="{y + 20 + j * 18}">{escape(line)}</text>')
        if i + 1 < len(plan.stages):
            link = links.get((s.node, plan.stages[i + 1].node))
            x0, x1, ym = x + box_w, x + box_w + gap, y + box_h / 2
            hot = link is not None and plan.bottleneck == f"{link.src}->{link.dst}"
            out.append(f'<line x1="{x0}" y1="{ym}" x2="{x1}" y2="{ym}" stroke="{"#d33" if hot else "#333"}" '
                       f'marker-end="url(#arrow)"/>')
            if link:
                out.append(f'<text x="{x0 + 4}" y="{ym - 8}" font-size="10">'
                           f'{escape(format_quantity(link.bytes, "bytes"))}</text>')
                out.append(f'<text x="{x0 + 4}" y="{ym + 16}" font-size="10">{_ms(link.seconds)} ms</text>')
    for i, name in enumerate(plan.unused):
        x, yy = pad + i * (box_w + gap), y + box_h + 40
        out.append(f'<rect x="{x}" y="{yy}" width="{box_w}" height="40" rx="8" fill="#eee" stroke="#aaa"/>')
        out.append(f'<text x="{x + 8}" y="{yy + 24}" fill="#777">{escape(name)} (unused)</text>')
    out.append("</svg>")
    return "\n".join(out)
