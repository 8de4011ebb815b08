"""Building small ONNX models by hand and running them in ONNX Runtime and in dnet."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import dnet

_ELEM = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int64): TensorProto.INT64,
         np.dtype(np.int32): TensorProto.INT32, np.dtype(np.bool_): TensorProto.BOOL}


def model(nodes: Sequence[onnx.NodeProto], inputs: Mapping[str, tuple], outputs: Mapping[str, int] | Sequence[str],
          initializers: Mapping[str, np.ndarray] | None = None, opset: int = 17) -> onnx.ModelProto:
    """inputs: name -> (numpy dtype, shape with str for named dims); outputs: names (float) or name -> elem type."""
    outputs = outputs if isinstance(outputs, Mapping) else {n: TensorProto.FLOAT for n in outputs}
    graph = helper.make_graph(
        list(nodes), "test",
        [helper.make_tensor_value_info(n, _ELEM[np.dtype(t)], shape) for n, (t, shape) in inputs.items()],
        [helper.make_tensor_value_info(n, t, None) for n, t in outputs.items()],
        [numpy_helper.from_array(np.asarray(a), n) for n, a in (initializers or {}).items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def ort_run(proto: onnx.ModelProto | str, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    source = proto if isinstance(proto, str) else proto.SerializeToString()
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(None, dict(feeds))


def dnet_run(graph_or_exe, feeds: Mapping[str, np.ndarray], target: str = "numpy", **options) -> list[np.ndarray]:
    exe = graph_or_exe if isinstance(graph_or_exe, dnet.Executable) else dnet.compile(graph_or_exe, target=target,
                                                                                      **options)
    out = exe.run(dict(feeds))
    return [out[n] for n in exe.graph.output_names]


def assert_matches_ort(proto: onnx.ModelProto, feeds: Mapping[str, np.ndarray], atol: float = 1e-5) -> None:
    """dnet's numpy backend and ONNX Runtime agree on every output: dtype, shape and values."""
    want = ort_run(proto, feeds)
    declare_output_shapes(proto, [w.shape for w in want])
    got = dnet_run(dnet.from_onnx(proto), feeds)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape, (g.dtype, g.shape, w.dtype, w.shape)
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=atol, equal_nan=True)


def declare_output_shapes(proto: onnx.ModelProto, shapes: Sequence[tuple]) -> None:
    """Fill in the outputs' shapes (the checker wants them; ORT runs without), which dnet then checks;
    a str is a named dim."""
    for out, shape in zip(proto.graph.output, shapes):
        out.type.tensor_type.shape.SetInParent()
        for size in shape:
            dim = out.type.tensor_type.shape.dim.add()
            if isinstance(size, str):
                dim.dim_param = size
            else:
                dim.dim_value = size
