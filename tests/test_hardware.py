"""dnet.hardware on macOS, where there is no /proc/cpuinfo: the CPU's features come from `sysctl hw.optional`,
in the flag names Linux lists (an Apple M1's dot product is `asimddp`, as on a Linux AArch64 board)."""
from pathlib import Path

from dnet import hardware

# `sysctl hw.optional` on an Apple M1 (abridged; a 0 is a feature the CPU lacks)
M1 = """hw.optional.arm.FEAT_FP16: 1
hw.optional.arm.FEAT_DotProd: 1
hw.optional.arm.FEAT_I8MM: 0
hw.optional.arm.FEAT_BF16: 0
hw.optional.floatingpoint: 1
hw.optional.neon: 1
hw.optional.AdvSIMD: 1
hw.optional.armv8_crc32: 1
"""
# on an Intel Mac without AVX-512
INTEL = """hw.optional.sse2: 1
hw.optional.sse4_2: 1
hw.optional.avx1_0: 1
hw.optional.avx2_0: 1
hw.optional.fma: 1
hw.optional.avx512f: 0
"""


def test_sysctl_flags_are_linux_flag_names():
    assert hardware.sysctl_flags(M1) == {"neon", "asimd", "asimddp", "fphp", "asimdhp"}
    assert hardware.sysctl_flags(INTEL) == {"sse2", "sse4_2", "avx", "avx2", "fma"}
    assert hardware.sysctl_flags("hw.optional.arm.FEAT_DotProd: 0\nnot a line\n") == frozenset()


def test_a_mac_is_read_through_sysctl(monkeypatch):
    """No /proc/cpuinfo and Darwin: model and flags from sysctl (the cached reader called unwrapped)."""
    def no_file(self, *args, **kwargs):
        raise FileNotFoundError(self)

    answers = {("-n", "machdep.cpu.brand_string"): "Apple M1\n", ("hw.optional",): M1}
    monkeypatch.setattr(Path, "read_text", no_file)
    monkeypatch.setattr(hardware.platform, "system", lambda: "Darwin")
    monkeypatch.setattr(hardware, "_sysctl", lambda *keys: answers[keys])
    model, flags, clock = hardware._cpuinfo_all.__wrapped__()
    assert (model, clock) == ("Apple M1", 0.0)
    assert "asimddp" in flags and "neon" in flags
    host = hardware.Host(machine="arm64", cpu_model=model, cores=8,
                         isa=frozenset(f for f in flags if f in hardware._INTERESTING))
    assert host.vector_bytes == 16 and "asimddp" in host.isa
