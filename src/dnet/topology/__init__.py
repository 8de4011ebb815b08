"""Topologies: nodes with devices, links between them; TOML files; probing the local node."""
from dnet.topology.model import Device, Link, Node, Topology
from dnet.topology.units import format_quantity, parse_quantity

__all__ = ["Device", "Link", "Node", "Topology", "format_quantity", "parse_quantity"]
