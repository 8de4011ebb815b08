"""The `dnet` command line: one click group; each subcommand lives in its own module."""
from dnet.cli.main import main

__all__ = ["main"]
