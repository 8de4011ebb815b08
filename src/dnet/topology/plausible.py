"""Is a probe's figure believable? A quick probe taken while the machine was busy once cached an f32
matmul rate of 2.1 GFLOP/s on a machine that does 174-270, and every later plan was ~20x off. So a
probe is checked against what the core could possibly do before it is kept.
"""
from __future__ import annotations

from dnet.hardware import clock_hz
from dnet.topology.model import Device

MIN_PEAK_FRACTION = 0.02   # an f32 matmul (BLAS or dnet's C gemm) under 2 % of one core's peak is a busy
                           # machine, not the device: they reach 20-70 % of it
NOISY_SPREAD = 1.0         # (max - min) / median over the runs above this: something else was running


def peak_f32_per_core(device: Device, clock: float | None = None) -> float:
    """FLOP/s one core could reach in f32: SIMD lanes x 2 (a fused multiply-add) x 2 (two FMA units)."""
    lanes = max(device.vector_width, 128) // 32
    return lanes * 2 * 2 * (clock or clock_hz())


def implausible(device: Device, f32_matmul_rate: float | None, clock: float | None = None) -> list[str]:
    """Why the probe's f32 matmul rate cannot be the device's own (empty: it can be)."""
    if f32_matmul_rate is None:
        return []
    floor = MIN_PEAK_FRACTION * peak_f32_per_core(device, clock)
    if f32_matmul_rate < floor:
        return [f"f32 matmul at {f32_matmul_rate / 1e9:.2f} GFLOP/s is under {MIN_PEAK_FRACTION:.0%} of one "
                f"core's peak ({floor / MIN_PEAK_FRACTION / 1e9:.0f} GFLOP/s): the machine was busy"]
    return []
