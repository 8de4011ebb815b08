"""Frontends: the Python bindings (Module, nn, functional), the DSL and the importers."""
