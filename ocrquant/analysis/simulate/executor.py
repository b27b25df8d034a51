"""Run one ONNX node on numpy arrays with onnxruntime: the float fallback, the integer data-movement
ops and lookup-table construction all share it, so they follow the ONNX definition exactly."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper


class SingleNodeExecutor:
    """Caches one small session per (node, input dtypes and ranks)."""

    def __init__(self, opset_imports: list[onnx.OperatorSetIdProto]) -> None:
        self.opset_imports = list(opset_imports)
        self._sessions: dict[tuple, tuple[ort.InferenceSession, list[str]]] = {}

    def run(self, node: onnx.NodeProto, arrays: list[np.ndarray | None]) -> list[np.ndarray]:
        arrays = [None if a is None else np.asarray(a) for a in arrays]
        key = (node.name, id(node), tuple(None if a is None else (a.dtype.str, a.ndim) for a in arrays))
        if key not in self._sessions:
            self._sessions[key] = self._build(node, arrays)
        session, names = self._sessions[key]
        feeds = {n: a for n, a in zip(names, arrays, strict=True) if n}
        return session.run(None, feeds)

    def _build(
        self, node: onnx.NodeProto, arrays: list[np.ndarray | None]
    ) -> tuple[ort.InferenceSession, list]:
        names, inputs = [], []
        for i, a in enumerate(arrays):
            if a is None:
                names.append("")
                continue
            names.append(f"in{i}")
            dims = [f"d{i}_{k}" for k in range(a.ndim)]
            inputs.append(
                helper.make_tensor_value_info(f"in{i}", helper.np_dtype_to_tensor_dtype(a.dtype), dims)
            )
        outs = [f"out{k}" for k, o in enumerate(node.output) if o]
        single = onnx.NodeProto()
        single.CopyFrom(node)
        del single.input[:]
        single.input.extend(names)
        del single.output[:]
        single.output.extend(outs)
        graph = helper.make_graph(
            [single], "single", inputs, [helper.make_empty_tensor_value_info(o) for o in outs]
        )
        model = helper.make_model(graph, opset_imports=self.opset_imports)
        model.ir_version = min(model.ir_version, 10)
        try:
            inferred = onnx.shape_inference.infer_shapes(model)
            types = {v.name: v.type for v in inferred.graph.value_info}
            types.update({v.name: v.type for v in inferred.graph.output if v.type.tensor_type.elem_type})
            for out in model.graph.output:
                if out.name in types:
                    out.type.CopyFrom(types[out.name])
        except Exception:  # best effort: the runtime infers what is left
            pass
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.intra_op_num_threads = 1
        session = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        return session, names
