"""Baseline: ORT quantize_static QDQ, s8 activations / s8 per-channel weights, MinMax calibration."""
import sys, pickle, numpy as np, onnx, time
from onnxruntime.quantization import quantize_static, QuantFormat, QuantType, CalibrationDataReader, CalibrationMethod
from common import *

class Reader(CalibrationDataReader):
    def __init__(self, xs, name='x'):
        self.it = iter([{name: x} for x in xs])
    def get_next(self):
        return next(self.it, None)

def quant(src, dst, calib, ops=('Conv',), exclude=(), extra=None, per_channel=True, act=QuantType.QInt8, method=CalibrationMethod.MinMax):
    ex = {'ActivationSymmetric': False, 'WeightSymmetric': True}
    if extra: ex.update(extra)
    quantize_static(src, dst, Reader(calib), quant_format=QuantFormat.QDQ, op_types_to_quantize=list(ops),
                    per_channel=per_channel, activation_type=act, weight_type=QuantType.QInt8,
                    nodes_to_exclude=list(exclude), calibrate_method=method, extra_options=ex)
    return dst

if __name__ == '__main__':
    te_x, te_y, ca_x, ca_y = pickle.load(open('/tmp/rq/recdata.pkl', 'rb'))
    N = 500
    for name, ops in [('conv', ('Conv',)), ('conv_matmul', ('Conv', 'MatMul'))]:
        t = time.time()
        p = quant('/tmp/rq/rec.prep.onnx', f'/tmp/rq/rec.base_{name}.onnx', ca_x[:200], ops)
        print(name, 'quant time', time.time() - t, 'acc500', eval_rec(p, te_x[:N], te_y[:N]), flush=True)
