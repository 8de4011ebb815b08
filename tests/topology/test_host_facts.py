"""Host facts are read in one place (dnet.hardware): the probe and the C backend see the same machine
(issue 13: hardware.py and topology/probe.py each parsed /proc/cpuinfo and sysfs their own way)."""
from dnet import hardware
from dnet.topology import probe as P


def test_the_probe_and_the_c_backend_see_the_same_host():
    host = hardware.detect()
    assert P.core_count() == host.cores
    caches = P.cache_sizes()
    for level, size in (("l1", host.l1d), ("l2", host.l2), ("l3", host.l3)):
        if level in caches:
            assert caches[level] == size
    assert P.vector_width() == (host.vector_bytes * 8 if host.vector_bytes > 4 else 0)


def test_vector_bits_follow_the_widest_instruction_set():
    assert hardware.vector_bits({"sse2", "avx", "avx2", "avx512f"}) == 512
    assert hardware.vector_bits({"sse2", "avx2"}) == 256
    assert hardware.vector_bits({"asimd"}, machine="aarch64") == 128
    assert hardware.vector_bits(set(), machine="x86_64") == 0
