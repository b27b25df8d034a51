"""Per-channel stats of every Conv input/output (prepared rec model) on calibration crops."""
import pickle, numpy as np, onnx, onnxruntime as ort
from onnx import helper
from common import *
te_x, te_y, ca_x, ca_y = pickle.load(open('/tmp/rq/recdata.pkl', 'rb'))
m = onnx.load('/tmp/rq/rec.prep.onnx')
inits = {i.name: onnx.numpy_helper.to_array(i) for i in m.graph.initializer}
convs = [n for n in m.graph.node if n.op_type == 'Conv']
outs = []
for n in convs:
    for t in (n.input[0], n.output[0]):
        if t not in outs and t != 'x': outs.append(t)
del m.graph.output[1:]
for t in outs: m.graph.output.append(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
s = session(m.SerializeToString(), level=ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
mn = {t: None for t in outs}; mx = dict(mn)
for x in ca_x[:100]:
    r = s.run(outs, {'x': x})
    for t, v in zip(outs, r):
        a, b = v.min(axis=(0, 2, 3)), v.max(axis=(0, 2, 3))
        mn[t] = a if mn[t] is None else np.minimum(mn[t], a)
        mx[t] = b if mx[t] is None else np.maximum(mx[t], b)
pickle.dump((mn, mx), open('/tmp/rq/chstats.pkl', 'wb'))
for i, n in enumerate(convs):
    W = inits[n.input[1]]
    g = [a.i for a in n.attribute if a.name == 'group']; g = g[0] if g else 1
    t = n.input[0]
    if t == 'x': rng = np.array([2.])
    else: rng = mx[t] - mn[t]
    r = mx[n.output[0]] - mn[n.output[0]]
    print(f'Conv_{i:2d} W{list(W.shape)} g={g:3d} in: tensor range [{mn.get(t, np.array([-1])).min():8.2f},{mx.get(t, np.array([1])).max():8.2f}] chan-range min/med/max {rng.min():7.3f} {np.median(rng):7.3f} {rng.max():7.2f} | out chan-range {r.min():7.3f} {np.median(r):7.3f} {r.max():7.2f}')
