"""The dnet DSL: the call-form language of the original vision, a second frontend
beside the Python bindings. See docs/dsl.md for the language reference.

    program = load_program("model.dnet")          # parse, analyse, resolve names
    module  = instantiate(program, "Attention", {"hidden_size": 64, ...})   # object IR
"""
from dnet.frontend.dsl.instantiate import instantiate
from dnet.frontend.dsl.loader import load_program, parse_program
from dnet.frontend.dsl.program import Program
from dnet.frontend.dsl.syntax import parse_source

__all__ = ["instantiate", "load_program", "parse_program", "parse_source", "Program"]
