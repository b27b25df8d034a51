"""Shared helpers: rec data loading/preprocess (PaddleOCR predict_rec, batch 1), CTC decode, eval, timing."""
import os, math, time, numpy as np, cv2, onnx, onnxruntime as ort
DATA = '/work/shared/data/icdar2015'
REC_FP32 = '/root/.cache/ocrquant/models/ppocrv3-rec/model.onnx'

def read_gt(split):
    out = []
    with open(f'{DATA}/{split}/gt.txt', encoding='utf-8-sig') as f:
        for line in f:
            line = line.rstrip('\r\n')
            if not line: continue
            name, rest = line.split(',', 1)
            lab = rest[rest.index('"') + 1: rest.rindex('"')]
            out.append((name.strip(), lab))
    return out

def prep_rec(img, H=48, W=320):
    h, w = img.shape[:2]
    ratio = w / float(h)
    imgW = int(H * max(W / H, ratio))
    rw = min(imgW, int(math.ceil(H * ratio)))
    r = cv2.resize(img, (rw, H)).astype(np.float32)
    r = r.transpose(2, 0, 1) / 255.
    r = (r - 0.5) / 0.5
    out = np.zeros((3, H, imgW), np.float32)
    out[:, :, :rw] = r
    return out[None]

def load_rec(split, n=None, start=0):
    gt = read_gt(split)
    sel = gt[start: (start + n) if n else None]
    xs = [prep_rec(cv2.imread(f'{DATA}/{split}/images/{nm}')) for nm, _ in sel]
    return xs, [l for _, l in sel]

def chars_of(model_path=REC_FP32):
    m = onnx.load(model_path, load_external_data=False)
    md = {p.key: p.value for p in m.metadata_props}
    return ['blank'] + md['character'].splitlines() + [' ']

_CH = None
def decode(prob):
    global _CH
    if _CH is None: _CH = chars_of()
    idx = prob.argmax(-1)
    res = []
    for row in idx:
        s, prev = [], -1
        for t in row:
            if t != prev and t != 0: s.append(_CH[t])
            prev = t
        res.append(''.join(s))
    return res

def session(path, threads=2, level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL, opt_out=None, profile=False):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = level
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if opt_out: so.optimized_model_filepath = opt_out
    if profile: so.enable_profiling = True
    return ort.InferenceSession(path, so, providers=['CPUExecutionProvider'])

def eval_rec(path_or_sess, xs, labels, return_preds=False):
    s = session(path_or_sess) if isinstance(path_or_sess, str) else path_or_sess
    iname = s.get_inputs()[0].name
    preds = [decode(s.run(None, {iname: x})[0])[0] for x in xs]
    ok = [p.replace(' ', '') == l.replace(' ', '') for p, l in zip(preds, labels)]
    acc = float(np.mean(ok))
    return (acc, preds) if return_preds else acc

def bench(paths, shape=(1, 3, 48, 320), rounds=10, iters=50, threads=2):
    """interleaved timing; returns median ms per inference for each path"""
    sess = [session(p, threads) for p in paths]
    x = np.random.RandomState(0).uniform(-1, 1, shape).astype(np.float32)
    names = [s.get_inputs()[0].name for s in sess]
    for s, n in zip(sess, names):
        for _ in range(10): s.run(None, {n: x})
    times = [[] for _ in paths]
    for r in range(rounds):
        for i, (s, n) in enumerate(zip(sess, names)):
            t = time.perf_counter()
            for _ in range(iters): s.run(None, {n: x})
            times[i].append((time.perf_counter() - t) / iters * 1000)
    return [float(np.median(t)) for t in times]
