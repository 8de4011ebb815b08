"""Probing: the backend seam, the cache per hardware fingerprint, link probes over loopback."""
import numpy as np
import pytest

from dnet.core.dtypes import DType
from dnet.topology import probe as P
from dnet.topology.linkprobe import probe_link, serve_probe


def test_matmul_rate_is_flops_over_the_kernels_median_time():
    calls, now = [], [0.0]
    durations = iter([9.0, 0.002, 0.004, 0.003])   # the warm-up run is not timed

    def kernel(n, dtype):  # a stand-in backend whose "matmul" takes the next duration on a fake clock
        calls.append((n, dtype))
        return lambda: now.__setitem__(0, now[0] + next(durations))

    with P.timed_by(lambda: now[0]):
        m = P.probe_matmul(kernel, DType.F32, 100, runs=3)
    assert calls == [(100, DType.F32)]
    assert m.median == pytest.approx(2 * 100**3 / 0.003) and m.runs == 3
    assert m.spread == pytest.approx((0.004 - 0.002) / 0.003)


def _registered_backends() -> list[str]:
    """Every backend but the reference one: numpy against itself would check nothing."""
    from dnet.backends import registry

    return [name for name in registry.names() if name != "numpy"]


@pytest.mark.parametrize("backend", _registered_backends())
def test_every_registered_backend_is_probed_through_the_registry(backend):
    from dnet.errors import BackendError

    try:
        run = P.backend_matmul(backend)(8, DType.F32)
    except BackendError as err:   # e.g. no C compiler on this machine
        pytest.skip(str(err))
    reference = P.backend_matmul("numpy")(8, DType.F32)()["c"]   # same seeded operands
    np.testing.assert_allclose(run()["c"], reference, rtol=1e-5, atol=1e-5)


def test_vector_width_from_cpu_flags():
    assert P.vector_width({"avx512f", "avx2"}) == 512
    assert P.vector_width({"avx2", "sse2"}) == 256


def test_probe_is_cached_per_fingerprint(tmp_path, monkeypatch):
    monkeypatch.setenv("DNET_CACHE_DIR", str(tmp_path))
    slow = []

    def kernel(n, dtype):
        slow.append(n)
        return lambda: sum(range(100))

    first = P.probe(kernel=kernel, quick=True)
    second = P.probe(kernel=kernel, quick=True)
    assert not first.cached and second.cached
    assert len(slow) == 4              # one size per dtype and a second for f32, measured once
    assert second.device.compute == first.device.compute
    assert set(first.measurements) >= {"matmul.f32", "memory_bandwidth", "op_overhead", "erf", "sum"}
    assert all(m.spread >= 0 for m in first.measurements.values())
    (next(tmp_path.rglob("*.json"))).write_text("{not json")   # a corrupt entry is measured again
    assert not P.probe(kernel=kernel, quick=True).cached


def test_link_probe_over_loopback():
    server = serve_probe("127.0.0.1", 0, background=True)
    try:
        host, port = server.server_address
        latency, bandwidth = probe_link(f"{host}:{port}", nbytes=1 << 20, runs=2)
    finally:
        server.shutdown()
    assert 0 < latency.median < 0.05            # loopback: well under 50 ms
    assert bandwidth.median > 10e6              # and well over 10 MB/s


def test_unreachable_peer_is_a_clear_error():
    from dnet.errors import DnetError

    with pytest.raises(DnetError, match="cannot reach probe peer 127.0.0.1:1"):
        probe_link("127.0.0.1:1", timeout=1.0)


def test_probe_cli_writes_this_node_and_its_link_into_the_topology_file(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from dnet.cli.main import _load_commands, cli
    from dnet.topology import Topology

    monkeypatch.setenv("DNET_CACHE_DIR", str(tmp_path / "cache"))
    _load_commands()
    path = tmp_path / "cluster.toml"
    runner = CliRunner()
    for name in ("peer", "here"):
        result = runner.invoke(cli, ["probe", "--quick", "-o", str(path), "--name", name])
        assert result.exit_code == 0, result.output
    server = serve_probe("127.0.0.1", 0, background=True)
    try:
        host, port = server.server_address
        result = runner.invoke(cli, ["probe", "--quick", "-o", str(path), "--name", "here",
                                     "--link", f"peer={host}:{port}"])
    finally:
        server.shutdown()
    assert result.exit_code == 0, result.output
    assert "link here -> peer" in result.output and "matmul.f32" in result.output
    topo = Topology.load(str(path))
    assert topo.names == ["peer", "here"]                 # a re-probed node keeps its place
    assert topo.link("here", "peer").bandwidth > 0 and topo.link("peer", "here") is None
    assert topo.node("here").devices[0].compute["f32"] > 0


def test_rate_from_two_sizes_takes_off_the_fixed_cost():
    fixed, rate = 1e-3, 1e9                                 # a made-up device: 1 ms per call, 1 GFLOP/s
    flops = [1e6, 1e8]
    seen = [P.Measurement(f / (fixed + f / rate), 0.0, 1) for f in flops]
    assert P.fit_rate(flops, seen) == pytest.approx(rate)
    assert seen[1].median < rate                            # the large size alone underestimates it


def test_op_rates_are_measured_per_op_through_the_backend():
    rates = P.probe_op_rates("numpy", 1 << 14, runs=2)
    assert set(rates) == {op.name.lower() for op in P.RATED_OPS}
    assert all(m.median > 0 for m in rates.values())
    assert rates["erf"].median < rates["add"].median      # scipy's erf is far slower than an add


def test_probe_cli_lists_every_backend_the_node_has_and_why_not_the_others(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from dnet.backends import registry
    from dnet.cli.main import _load_commands, cli
    from dnet.program.device import Device

    monkeypatch.setenv("DNET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setitem(registry._BACKENDS, "fakegpu", registry.NumpyBackend)
    monkeypatch.setitem(registry._DEVICES, "fakegpu", lambda: Device(
        "fakegpu", allocator=lambda: None, renderers={}, loader=None, dtypes=frozenset(),
        available=lambda: "no FakeGPU driver"))
    _load_commands()
    result = CliRunner().invoke(cli, ["probe", "--quick"])
    assert result.exit_code == 0, result.output
    listed = {line.split()[1]: line.split(None, 2)[2] for line in result.output.splitlines()
              if line.startswith("  backend ")}
    assert set(listed) == set(registry.names())
    assert listed["numpy"] == "measured" and listed["fakegpu"] == "not here: no FakeGPU driver"
    for name in registry.names():
        reason = registry.unavailable(name)
        assert listed[name] in (("measured", "available") if reason is None else (f"not here: {reason}",))


def test_probe_cli_refuses_a_backend_the_node_lacks_naming_the_ones_it_has(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from dnet.cli.main import _load_commands, cli
    from dnet.errors import BackendError

    monkeypatch.setenv("DNET_CACHE_DIR", str(tmp_path / "cache"))
    _load_commands()
    result = CliRunner().invoke(cli, ["probe", "--quick", "--backend", "nosuch"])
    assert isinstance(result.exception, BackendError)
    assert str(result.exception).startswith("unknown target 'nosuch'") and "numpy" in str(result.exception)


def test_the_cost_model_takes_the_rate_of_this_hosts_tuned_kernels(tmp_path, monkeypatch):
    from dnet.core.tuning import TuneCache
    from dnet.graph.ops import Op
    from dnet.hardware import detect
    from dnet.topology.model import Device

    monkeypatch.setenv("DNET_CACHE_DIR", str(tmp_path))
    report = P.ProbeReport(Device(kind="c", cores=2, compute={"f32": 300e9}))
    assert P.with_tuned_rates(report, "c").device.rate(Op.MATMUL, DType.F32) == 300e9   # nothing tuned
    TuneCache(detect().fingerprint()).update({"k": {"backend": "c", "threads": 2, "flops": 4e9, "seconds": 0.02}})
    device = P.with_tuned_rates(report, "c").device
    assert device.rate(Op.MATMUL, DType.F32) == pytest.approx(200e9)    # 4 GFLOP in 20 ms, as tuned
    assert device.rate(Op.ADD, DType.F32) == 300e9                      # other ops keep the probe's rates
    other = P.ProbeReport(Device(kind="c", cores=4, compute={"f32": 300e9}))
    assert P.with_tuned_rates(other, "c").device.rate(Op.MATMUL, DType.F32) == 300e9   # tuned for 2 threads
