"""Hardware performance counters of this process, read with Linux's `perf_event_open` through ctypes.

    counters = open_counters()            # or CountersUnavailable, saying why (no PMU, a sandbox, ...)
    before = counters.read()              # {"cycles": ..., "instructions": ..., ...}, summed over threads

One counter per event and per thread of the process (the thread pool's workers included, as they
are when the counters open), counting user space only, so `perf_event_paranoid` up to 2 allows it.
Where the kernel refuses (another OS, no hardware PMU in a virtual machine, paranoid 3, seccomp),
`open_counters` raises with the reason and the caller reports times alone.
"""
from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct

from dnet.errors import DnetError

# (type, config) of the generic events: PERF_TYPE_HARDWARE (0) and its PERF_COUNT_HW_* numbers
EVENTS = {
    "cycles": (0, 0),
    "instructions": (0, 1),
    "cache-references": (0, 2),
    "cache-misses": (0, 3),
    "branch-misses": (0, 5),
    "stalled-cycles-backend": (0, 8),
}
_SYSCALL = {"x86_64": 298, "aarch64": 241, "arm64": 241}
_ATTR_SIZE = 128
_DISABLED, _EXCLUDE_KERNEL, _EXCLUDE_HV = 1 << 0, 1 << 5, 1 << 6
_IOC_ENABLE, _IOC_DISABLE = 0x2400, 0x2401


class CountersUnavailable(DnetError):
    """The OS gives this process no hardware counters."""


class Counters:
    """Open counters over every thread of this process; `read()` gives each event's running total."""

    def __init__(self, fds: dict[str, list[int]]):
        self._fds = fds

    @property
    def events(self) -> list[str]:
        return list(self._fds)

    def read(self) -> dict[str, float]:
        return {name: float(sum(struct.unpack("Q", os.read(fd, 8))[0] for fd in fds))
                for name, fds in self._fds.items()}

    def close(self) -> None:
        for fds in self._fds.values():
            for fd in fds:
                os.close(fd)
        self._fds = {}

    def __enter__(self) -> "Counters":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_counters(events: tuple[str, ...] = tuple(EVENTS)) -> Counters:
    """Counters for `events` on every thread of this process, counting; events the CPU lacks are left
    out, and when none can be opened CountersUnavailable says why."""
    number = _SYSCALL.get(platform.machine())
    if number is None or not os.path.isdir("/proc/self/task"):
        raise CountersUnavailable(f"no perf_event_open on {platform.system()} {platform.machine()}")
    libc = ctypes.CDLL(None, use_errno=True)
    threads = [int(t) for t in os.listdir("/proc/self/task")]
    fds: dict[str, list[int]] = {}
    reason = 0
    for name in events:
        opened = []
        for tid in threads:
            fd = _open(libc, number, *EVENTS[name], tid)
            if fd < 0:
                reason = -fd
                break
            opened.append(fd)
        if len(opened) == len(threads):
            fds[name] = opened
        else:
            for fd in opened:
                os.close(fd)
    if not fds:
        raise CountersUnavailable(f"the kernel gives no hardware counters here: {_why(reason)}")
    for opened in fds.values():
        for fd in opened:
            libc.ioctl(fd, _IOC_ENABLE, 0)
    return Counters(fds)


def _open(libc, number: int, kind: int, config: int, tid: int) -> int:
    attr = bytearray(_ATTR_SIZE)
    struct.pack_into("IIQ", attr, 0, kind, _ATTR_SIZE, config)
    struct.pack_into("Q", attr, 40, _DISABLED | _EXCLUDE_KERNEL | _EXCLUDE_HV)
    fd = libc.syscall(number, ctypes.create_string_buffer(bytes(attr), _ATTR_SIZE), tid, -1, -1, 0)
    return fd if fd >= 0 else -ctypes.get_errno()


def _why(code: int) -> str:
    return {errno.ENOENT: "the CPU exposes no such events (no hardware PMU: a virtual machine?)",
            errno.EACCES: "not permitted (kernel.perf_event_paranoid is 3 or more)",
            errno.EPERM: "not permitted (a sandbox or seccomp forbids perf_event_open)",
            errno.ENOSYS: "perf_event_open is not available in this kernel"}.get(code, os.strerror(code))
