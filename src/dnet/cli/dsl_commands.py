"""`dnet fmt` and `dnet check`: the DSL's formatter and its checker without running.

(`dnet inspect FILE.dnet[:Object] --passes` goes through `dnet.load_dsl`; the same view
for a library caller is `dnet.frontend.dsl.inspect_dsl`.)
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from dnet.cli.main import cli
from dnet.errors import DnetError


def parse_constant(spec: str) -> tuple[str, Any]:
    """`NAME=VALUE` with VALUE an int, a float, true/false, a dtype (D_F16) or a string."""
    from dnet.frontend.dsl.expressions import DTYPE_NAMES

    name, sep, text = spec.partition("=")
    if not sep or not name.strip().isidentifier():
        raise DnetError(f"bad constant '{spec}'", hint="write NAME=VALUE, e.g. hidden_size=64")
    text = text.strip()
    for parse in (int, float):
        try:
            return name.strip(), parse(text)
        except ValueError:
            pass
    if text in ("true", "false"):
        return name.strip(), text == "true"
    return name.strip(), DTYPE_NAMES.get(text, text)


@cli.command("fmt")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-w", "--write", is_flag=True, help="rewrite the files in place")
@click.option("--check", "check_only", is_flag=True, help="change nothing; exit 1 if a file is not canonical")
def fmt_cmd(files: tuple[Path, ...], write: bool, check_only: bool) -> None:
    """Print FILES (DSL source) in canonical form."""
    from dnet.frontend.dsl import format_source

    changed = []
    for path in files:
        text = path.read_text()
        canonical = format_source(text, str(path))
        if canonical != text:
            changed.append(path)
        if check_only:
            continue
        if write:
            if canonical != text:
                path.write_text(canonical)
        else:
            click.echo(canonical, nl=False)
    if check_only and changed:
        for path in changed:
            click.echo(f"would reformat {path}", err=True)
        sys.exit(1)


@cli.command("check")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--object", "object_name", default=None, help="the object class to instantiate (default: model(...))")
@click.option("--set", "constants", multiple=True, metavar="NAME=VALUE", help="a configuration constant")
def check_cmd(file: Path, object_name: str | None, constants: tuple[str, ...]) -> None:
    """Type- and shape-check FILE (DSL source) without running it."""
    from dnet.frontend.dsl import check_dsl

    click.echo(str(check_dsl(file, object_name, dict(parse_constant(c) for c in constants))))
