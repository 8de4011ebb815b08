"""Backends: each runs a graph (or a node's program) on one kind of device."""
