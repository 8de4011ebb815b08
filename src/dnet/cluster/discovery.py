"""Workers that find each other on a LAN: mDNS / DNS-SD (`zeroconf`), service type `_dnet._tcp.local.`.

A worker started with `--announce` advertises where it listens and a summary of its probe (backend, cores,
memory, f32 rate, the hardware fingerprint its probe is cached under, and the SHA-256 of its TLS
certificate when it has one). Anyone on the LAN can send such a record, so `discover` believes none of it:
it connects to each worker it heard with the cluster secret (and TLS files, where given). A worker that
completes the handshake is *accepted*, and its node is built from what it reports over that authenticated
connection (its probe), not from the record; one that fails it is *refused*, listed with the reason and the
fingerprints it announced, and left out of the topology.

`zeroconf` is imported only here: an optional extra (`pip install dnet[discovery]`).
"""
from __future__ import annotations

import hashlib
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from dnet.cluster.auth import connect
from dnet.cluster.protocol import DEFAULT_LIMITS
from dnet.cluster.tls import CERT_FILE, ClusterTls
from dnet.core import progress
from dnet.errors import DnetError
from dnet.topology import Device, Node, Topology

SERVICE = "_dnet._tcp.local."
SUMMARY_KEYS = ("name", "backend", "cores", "memory", "f32", "fingerprint", "cert")


def _zeroconf() -> Any:
    try:
        import zeroconf
    except ImportError:
        raise DnetError("LAN discovery needs zeroconf", hint="pip install 'dnet[discovery]' (or pip install zeroconf)"
                        ) from None
    return zeroconf


def certificate_fingerprint(tls: ClusterTls | None) -> str:
    """The SHA-256 of a node's certificate (DER), in hex: what `openssl x509 -fingerprint -sha256` shows."""
    if tls is None:
        return ""
    pem = (tls.node_dir / CERT_FILE).read_text()
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()


def probe_summary(backend: str, tls: ClusterTls | None) -> dict[str, str]:
    """What an announcement tells of its worker (a DNS TXT record holds short strings)."""
    from dnet.topology.probe import fingerprint, probe_device

    device = probe_device(backend, quick=True)
    return {"backend": backend, "cores": str(device.cores), "memory": f"{device.memory:.0f}",
            "f32": f"{device.compute.get('f32', 0.0):.4g}", "fingerprint": fingerprint(backend),
            "cert": certificate_fingerprint(tls)}


class Announcement:
    """A worker's record on the LAN, from `start()` until `close()` (which withdraws it)."""

    def __init__(self, name: str, host: str, port: int, summary: dict[str, str]):
        zc = _zeroconf()
        self.zeroconf = zc.Zeroconf(ip_version=zc.IPVersion.V4Only)
        # the address the record gives: the worker's own, unless it listens on every interface
        address = host if host not in ("0.0.0.0", "") else _primary_address()
        label = f"{name or 'dnet'}-{port}".replace(".", "-")
        self.info = zc.ServiceInfo(SERVICE, f"{label}.{SERVICE}", port=port, addresses=[socket.inet_aton(address)],
                                   properties={"name": name, **summary}, server=f"{label}.local.")

    def start(self) -> "Announcement":
        self.zeroconf.register_service(self.info, allow_name_change=True)   # two workers of one name: both heard
        return self

    def close(self) -> None:
        try:
            self.zeroconf.unregister_service(self.info)
        finally:
            self.zeroconf.close()

    def __enter__(self) -> "Announcement":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def announce(worker: Any, backend: str, tls: ClusterTls | None) -> Announcement:
    """Advertise a running `dnet.cluster.worker.Worker` (at its advertised address) with its probe summary."""
    from dnet.cluster.coordinator import parse_address

    host, port = parse_address(worker.config.advertise or worker.address)
    return Announcement(worker.name, host, port, probe_summary(backend, tls)).start()


def _primary_address() -> str:
    """This machine's address on its default route (no packet is sent: a UDP socket only picks a route)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
            return s.getsockname()[0]
        except OSError:
            return "127.0.0.1"


@dataclass
class Heard:
    """One record heard on the LAN: where it says its worker is, and what it says of it (unverified)."""

    service: str
    address: str
    summary: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.summary.get("name") or self.address


def listen(timeout_s: float) -> list[Heard]:
    """The dnet workers announcing themselves during `timeout_s` seconds, each once (by address)."""
    zc = _zeroconf()
    names: list[str] = []
    lock = threading.Lock()

    def on_change(zeroconf: Any, service_type: str, name: str, state_change: Any) -> None:
        if state_change is zc.ServiceStateChange.Added:
            with lock:
                names.append(name)

    conf = zc.Zeroconf(ip_version=zc.IPVersion.V4Only)
    browser = zc.ServiceBrowser(conf, SERVICE, handlers=[on_change])
    try:
        with progress.task("listen for announcements"):    # as long as asked: nothing to count meanwhile
            time.sleep(timeout_s)
        heard: dict[str, Heard] = {}
        with lock:
            found = list(names)
        for name in found:
            info = conf.get_service_info(SERVICE, name, timeout=2000)
            if info is None or not info.parsed_addresses() or info.port is None:
                continue   # withdrawn meanwhile
            address = f"{info.parsed_addresses()[0]}:{info.port}"
            summary = {k.decode(errors="replace"): (v or b"").decode(errors="replace")
                       for k, v in info.properties.items()}
            heard.setdefault(address, Heard(name, address, summary))
        return sorted(heard.values(), key=lambda h: (h.name, h.address))
    finally:
        browser.cancel()
        conf.close()


@dataclass
class Found:
    heard: Heard
    accepted: bool
    reason: str = ""                  # why it was refused


def verify(heard: list[Heard], secret: str, tls: ClusterTls | None) -> list[Found]:
    """Accept the workers that complete the handshake with `secret` (and TLS), refuse the others."""
    out = []
    with progress.task("verify workers heard", total=len(heard), unit="workers") as task:
        for h in heard:
            out.append(_verify_one(h, secret, tls))
            task.advance()
    return out


def _verify_one(h: Heard, secret: str, tls: ClusterTls | None) -> Found:
    from dnet.cluster.coordinator import parse_address

    host, port = parse_address(h.address)
    try:
        connect(host, port, secret, DEFAULT_LIMITS, tls=tls).close()
        return Found(h, True)
    except DnetError as err:   # AuthError: another secret; TlsError: a certificate from another CA
        return Found(h, False, str(err).removeprefix(f"{h.address} "))   # its address is listed beside
    except OSError as err:
        return Found(h, False, f"unreachable: {err.strerror or err}")


def topology_of(addresses: list[str], secret: str, tls: ClusterTls | None, names: list[str] | None = None,
                measure_links: bool = True) -> Topology:
    """A topology of workers at `addresses`, each node built from what its worker reports over an
    authenticated connection (its probed device); with `measure_links`, the links between them measured by
    the workers. Nodes are named by `names`, else by what the workers call themselves."""
    from dnet.cluster.coordinator import Coordinator

    if not addresses:
        raise DnetError("no workers to make a topology of")
    with Coordinator(addresses, secret, tls=tls) as coordinator:
        caps = coordinator.capabilities(probe=True)
        links = coordinator.measure_links() if measure_links and len(addresses) > 1 else {}
    node_names = names or _unique([c.name or a for c, a in zip(caps, addresses)])
    topo = Topology([Node(n, [c.device or Device()], address=a, backend=c.backend)
                     for n, c, a in zip(node_names, caps, addresses)])
    for (i, j), shape in links.items():
        topo.add_link(node_names[i], node_names[j], shape.bandwidth, shape.latency, symmetric=False)
    return topo


def _unique(names: list[str]) -> list[str]:
    """Node names must differ: a repeated one gets its position appended."""
    return [n if names.count(n) == 1 else f"{n}-{i}" for i, n in enumerate(names)]


def discover(timeout_s: float, secret: str, tls: ClusterTls | None) -> tuple[list[Found], Topology | None]:
    """Listen, verify, and make the accepted workers' topology (None when none was accepted)."""
    found = verify(listen(timeout_s), secret, tls)
    accepted = [f.heard for f in found if f.accepted]
    if not accepted:
        return found, None
    return found, topology_of([h.address for h in accepted], secret, tls, _unique([h.name for h in accepted]))
