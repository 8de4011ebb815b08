"""The dnet DSL: the call-form language of the original vision, a second frontend
beside the Python bindings. docs/dsl.md is the language reference.

    module = load_dsl("model.dnet", weights="model.safetensors")      # object IR
    program = load_program("model.dnet")                              # the declarations
    module = instantiate(program, "Attention", {"hidden_size": 64, ...})
"""
from dnet.frontend.dsl.api import load_dsl
from dnet.frontend.dsl.check import CheckReport, check_dsl, inspect_dsl
from dnet.frontend.dsl.formatter import format_source
from dnet.frontend.dsl.instantiate import instantiate
from dnet.frontend.dsl.loader import load_program, parse_program
from dnet.frontend.dsl.program import Program
from dnet.frontend.dsl.syntax import parse_source
from dnet.frontend.dsl.weights import load_weights, seeded_weights

__all__ = [
    "CheckReport", "Program", "check_dsl", "format_source", "inspect_dsl", "instantiate", "load_dsl", "load_program",
    "load_weights", "parse_program", "parse_source", "seeded_weights",
]
