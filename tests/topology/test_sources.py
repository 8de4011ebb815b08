"""Topologies built by the layers above (Ray, LAN discovery): named sources, and one-line errors without them."""
from __future__ import annotations

import sys

import pytest

import dnet
from dnet.cli.main import main
from dnet.cluster.auth import SECRET_ENV, new_secret
from dnet.errors import DnetError
from dnet.topology import sources


def test_an_unknown_source_is_an_error_naming_the_known_ones():
    with pytest.raises(DnetError, match="no topology source 'rya'") as err:
        sources.build("rya")
    assert "ray" in str(err.value.hint)


def test_from_ray_without_ray_installed_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)   # `import ray` fails as if it were absent
    with pytest.raises(DnetError, match="Ray is not installed") as err:
        dnet.Topology.from_ray()
    assert "dnet[ray]" in str(err.value.hint)


def _one_line_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) <= 2, err   # the error, and its hint
    return err


def test_the_cli_without_ray_or_zeroconf_is_a_one_line_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setitem(sys.modules, "zeroconf", None)
    monkeypatch.setenv(SECRET_ENV, new_secret())
    assert "Ray is not installed" in _one_line_error(capsys, ["cluster", "ray"])
    assert "LAN discovery needs zeroconf" in _one_line_error(capsys, ["cluster", "discover", "--timeout", "0.1"])


def test_discover_refuses_a_timeout_that_is_not_positive(monkeypatch, capsys):
    monkeypatch.setenv(SECRET_ENV, new_secret())
    assert "--timeout must be positive" in _one_line_error(capsys, ["cluster", "discover", "--timeout", "0"])
