"""`dnet compile`, `dnet run`, `dnet inspect`, `dnet demo`: working with one model."""
from __future__ import annotations

from dnet.cli.main import cli  # noqa: F401 - commands register on it
