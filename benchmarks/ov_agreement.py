"""Does the OpenVINO backend compute the same thing as onnxruntime? Output cosine and a quick metric.

Run: python benchmarks/ov_agreement.py [--int8-det M] [--int8-rec M] [--int8-cls M] [--n 8] [--limit 100]
For each task's FP32 zoo model and INT8 model: the same real ICDAR2015 test inputs (task-preprocessed:
det at max side 960, rec/cls crops in batches of 8) through onnxruntime and OpenVINO; prints the cosine
similarity of the flattened outputs (the lowest over inputs) and the max |difference|; then the task
metric on the first --limit test samples with each backend (``evaluate`` with the openvino runner).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ocrquant.api import build_task, eval_model
from ocrquant.data import load_image, open_dataset
from ocrquant.runtime import RuntimeOptions, create_runner
from ocrquant.zoo.resolve import resolve_model

SHARED = Path(__file__).resolve().parents[2] / "shared/data/icdar2015"
FP32 = {"det": "ppocrv3-det", "rec": "ppocrv3-rec", "cls": "ppocrv3-cls"}
DATA = {"det": "det_test", "rec": "rec_test", "cls": "rec_test"}
PRIMARY = {"det": "hmean", "rec": "acc", "cls": "acc"}


def inputs(task: str, root: Path, n: int) -> list[np.ndarray]:
    t = build_task(task, resolve_model(FP32[task]), {})
    samples = open_dataset(root, "rec" if task == "cls" else task).samples
    if task == "det":
        return [t.preprocess([load_image(s)]).inputs for s in samples[:n]]
    return [t.preprocess([load_image(s) for s in samples[i * 8 : i * 8 + 8]]).inputs for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for task in FP32:
        ap.add_argument(f"--int8-{task}", type=Path, default=Path(f"runs/stock-int8/{task}.int8.onnx"))
    ap.add_argument("--shared", type=Path, default=SHARED)
    ap.add_argument("--tasks", nargs="+", default=list(FP32))
    ap.add_argument("--n", type=int, default=8, help="inputs for the output comparison")
    ap.add_argument("--limit", type=int, default=100, help="test samples for the metric (0: skip)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    opts = RuntimeOptions(threads=args.threads)
    for task in args.tasks:
        xs = inputs(task, args.shared / DATA[task], args.n)
        cases = (("fp32", resolve_model(FP32[task]).path), ("int8", getattr(args, f"int8_{task}")))
        for prec, model in cases:
            ort_r, ov_r = create_runner(model, "onnxruntime", opts), create_runner(model, "openvino", opts)
            cos, diff = [], 0.0
            for x in xs:
                a = ort_r.run({ort_r.input_names[0]: x})[0].ravel().astype(np.float64)
                b = ov_r.run({ov_r.input_names[0]: x})[0].ravel().astype(np.float64)
                cos.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12)))
                diff = max(diff, float(np.abs(a - b).max()))
            line = (
                f"{task} {prec}: cosine(ORT, OV) min {min(cos):.6f} mean {np.mean(cos):.6f}, "
                f"max|diff| {diff:.4g}"
            )
            if args.limit:
                m = {}
                for backend in ("onnxruntime", "openvino"):
                    res = eval_model(
                        model,
                        args.shared / DATA[task],
                        task=task,
                        backend=backend,
                        limit=args.limit,
                        runtime=opts,
                        progress=False,
                    )
                    m[backend] = res.metrics[PRIMARY[task]]
                line += (
                    f"; {PRIMARY[task]} on {args.limit} samples: ORT {m['onnxruntime']:.4f}, "
                    f"OV {m['openvino']:.4f}"
                )
            print(line, flush=True)


if __name__ == "__main__":
    main()
