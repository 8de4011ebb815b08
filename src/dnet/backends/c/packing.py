"""The C backend's weight layouts: a constant matmul operand packed once, at load time, as its Gemm reads it.

The scheduler names a packed weight as a launch argument (`('packed', const node, nr[, layout])`, or
`('scales', const node, nr, offset, stride)` for an int8 weight's per-column scales);
`program.build.build_program` hands each to the backend's packer (`PanelPacker` here), which owns
the layout. Other backends whose kernels read the same panels (OpenCL's tiled matmul) use this one;
a backend with its own layout writes its own packer (`program.build.WeightPacker`).
"""
from __future__ import annotations

import numpy as np

from dnet.core.dtypes import DType
from dnet.errors import BackendError
from dnet.graph.ir import Graph
from dnet.kernel.ir import Gemm, Kernel


class PanelPacker:
    """The micro-kernel's panels: (k, n) -> (panels, k, nr), zero-padded to whole panels."""

    def pack(self, graph: Graph, arg: tuple, kernel: Kernel) -> tuple[str, DType, np.ndarray]:
        """(buffer name, dtype, array) of the weight argument `arg` of a launch of `kernel`."""
        gemm = next((s for s in kernel.body if isinstance(s, Gemm)), None)
        if gemm is None:
            raise BackendError(f"kernel {kernel.name} asks for a packed weight but has no Gemm")
        if arg[0] == "packed" and len(arg) > 3 and arg[3].startswith("winograd"):
            return self._winograd(graph, arg[1], arg[2], int(arg[3][len("winograd"):]))
        if arg[0] == "packed":
            return self._packed(graph, arg[1], gemm, arg[3] if len(arg) > 3 else "")
        if arg[0] == "scales":
            return self._scales(graph, *arg[1:], gemm)
        raise BackendError(f"unknown packed weight argument {arg!r}", hint="known: 'packed', 'scales'")

    def _packed(self, graph: Graph, nid: int, gemm: Gemm, layout: str) -> tuple[str, DType, np.ndarray]:
        name, dtype = graph.nodes[nid].attrs["name"], graph.nodes[nid].dtype
        flat = np.ascontiguousarray(graph.weights[name], dtype=dtype.np).reshape(-1)
        k, n, nr, size = gemm.k, gemm.n, gemm.tile.nr, flat.itemsize
        view = np.lib.stride_tricks.as_strided(flat[gemm.b.offset:], (k, n),
                                               (gemm.b.row_stride * size, gemm.b.col_stride * size))
        if layout:                            # the low-precision Gemms' grouped layouts
            from dnet.program.panels import LAYOUTS

            packed = LAYOUTS[layout](view, nr)
        else:
            packed = pack_panels(view, nr)
        return f"{name}@packed{nr}{layout}", dtype, packed

    def _winograd(self, graph: Graph, nid: int, mr: int, m: int) -> tuple[str, DType, np.ndarray]:
        """A 3x3 filter's Winograd transform (`kernel.winograd.filter_transform`) as the micro-kernel's a, in
        blocks of the kernel's input channels (`pack_winograd`)."""
        from dnet.backends.c.winograd import CHANNEL_BLOCK
        from dnet.kernel.winograd import filter_transform

        name = graph.nodes[nid].attrs["name"]
        packed = pack_winograd(filter_transform(graph.weights[name], m), mr, CHANNEL_BLOCK)
        return f"{name}@winograd{m}x{mr}b{CHANNEL_BLOCK}", DType.F32, packed

    def _scales(self, graph: Graph, nid: int, nr: int, offset: int, stride: int,
                gemm: Gemm) -> tuple[str, DType, np.ndarray]:
        """An int8 weight's per-column scales, zero-padded to whole panels like the weight."""
        name = graph.nodes[nid].attrs["name"]
        flat = np.ascontiguousarray(graph.weights[name], dtype=np.float32).reshape(-1)
        padded = pack_panels(flat[offset + stride * np.arange(gemm.n)][None, :], nr).reshape(-1)
        return f"{name}@panels{nr}", DType.F32, padded


def pack_panels(b: np.ndarray, nr: int) -> np.ndarray:
    """(k, n) -> (panels, k, nr): the micro-kernel's layout, zero-padded to whole panels."""
    k, n = b.shape
    panels = -(-n // nr)
    padded = np.zeros((k, panels * nr), b.dtype)
    padded[:, :n] = b
    return np.ascontiguousarray(padded.reshape(k, panels, nr).transpose(1, 0, 2))


def pack_winograd(u: np.ndarray, mr: int, block: int) -> np.ndarray:
    """(alpha, alpha, O, C) transformed filters -> blocks of `block` input channels (the last may be fewer),
    each (alpha * alpha, slivers, channels of the block, mr): sliver s of position p holds, per input channel,
    output channels s * mr .. s * mr + mr - 1 (zero past O). Flat, in the order the kernel reads them (block by
    block, position by position, sliver by sliver), so the filters stream from memory in one direction."""
    a, _, o, c = u.shape
    slivers = -(-o // mr)
    padded = np.zeros((a * a, slivers * mr, c), np.float32)
    padded[:, :o] = u.reshape(a * a, o, c)
    slivered = padded.reshape(a * a, slivers, mr, c).transpose(0, 1, 3, 2)   # (positions, slivers, C, mr)
    return np.concatenate([slivered[:, :, c0:c0 + block].reshape(-1) for c0 in range(0, c, block)])
