"""Prepare a PaddleOCR ONNX model for quantization: opset->13, ORT BASIC offline opt (folds BN into Conv, constant folding)."""
import sys, onnx, onnxruntime as ort
from onnx import version_converter
def prepare(src, dst, opset=13):
    m = onnx.load(src)
    if m.opset_import[0].version < opset:
        m = version_converter.convert_version(m, opset)
    tmp = dst + '.op13.onnx'
    onnx.save(m, tmp)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = dst
    ort.InferenceSession(tmp, so, providers=['CPUExecutionProvider'])
    m2 = onnx.load(dst)
    # keep metadata
    del m2.metadata_props[:]
    m2.metadata_props.extend(m.metadata_props)
    onnx.save(m2, dst)
    return dst
if __name__ == '__main__':
    prepare(sys.argv[1], sys.argv[2])
