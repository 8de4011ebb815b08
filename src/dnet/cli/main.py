"""The `dnet` command group. Subcommand modules register themselves on `cli`."""
from __future__ import annotations

import importlib
import sys

import click

from dnet.errors import DnetError

# Each module defines click commands decorated with @cli.command(); add yours here.
COMMAND_MODULES = (
    "dnet.cli.dsl_commands",
    "dnet.cli.model_commands",
    "dnet.cli.demo_commands",
    "dnet.cli.cluster_commands",
    "dnet.cli.cluster_find_commands",
    "dnet.cli.plan_commands",
    "dnet.cli.bench_commands",
    "dnet.cli.llm_commands",
    "dnet.cli.serve_commands",
    "dnet.cli.profile_commands",
    "dnet.cli.tune_commands",
)


@click.group()
@click.version_option(package_name="dnet")
def cli() -> None:
    """dnet: compile a model and run it across a network of unlike devices."""


def _load_commands() -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(name)


def main(argv: list[str] | None = None) -> None:
    """Entry point: dnet errors print as one clear line, not a traceback."""
    _load_commands()
    try:
        cli.main(args=argv, standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except DnetError as err:
        click.secho(f"error: {err}", fg="red", err=True)
        sys.exit(2)
