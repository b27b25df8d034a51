"""OpenVINO: one model compiled per input shape, or one compiled with dynamic shapes?

For each INT8 model of a chain (``runs/<chain>/<task>.int8.onnx``) at its pipeline shape, the file is
compiled twice with the OpenVINO runner's settings: reshaped to that static shape, and as written
(dynamic batch/width). Printed: each compile's seconds and the two latencies, interleaved in one
loop. This is what ``ocrquant.runtime.openvino`` decides by: a static compile is faster to run but
costs a compile per shape, so the runner stays static for the shapes a task repeats and serves the
rest from one dynamic compile.

  python benchmarks/openvino_shapes.py [--chain v6] [--rounds 20]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from icdar2015 import CHAINS

from ocrquant.errors import OcrQuantError, run_script
from ocrquant.report.table import machine_description
from ocrquant.runtime import RuntimeOptions
from ocrquant.runtime.openvino import OpenVinoRunner

#: the shape each task's model sees in a pipeline (det: a 1280x720 frame under the v6 preset; cls and
#: rec: PaddleOCR's batch of 6 crops)
SHAPES = {"det": (1, 3, 736, 1312), "cls": (6, 3, 48, 192), "rec": (6, 3, 48, 320)}


def compiled(runner: OpenVinoRunner, shape: tuple[int, ...] | None):  # noqa: ANN201 - an OpenVINO request
    import openvino as ov

    model = runner.core.read_model(str(runner.path))
    if shape is not None:
        model.reshape({model.inputs[0].any_name: ov.PartialShape(list(shape))})
    t = time.perf_counter()
    request = runner.core.compile_model(model, "CPU", runner.config).create_infer_request()
    return request, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chain", default="v6", choices=sorted(CHAINS))
    ap.add_argument("--runs", type=Path, default=Path("runs"))
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    print(machine_description(), flush=True)
    for task, shape in SHAPES.items():
        path = args.runs / args.chain / f"{task}.int8.onnx"
        if not path.is_file():
            raise OcrQuantError(
                f"no INT8 model: run python benchmarks/icdar2015.py --chain {args.chain}", path
            )
        runner = OpenVinoRunner(path, RuntimeOptions(threads=2))
        requests = {"static": compiled(runner, shape), "dynamic": compiled(runner, None)}
        x = np.random.default_rng(0).random(shape, dtype=np.float32)
        times: dict[str, list[float]] = {k: [] for k in requests}
        for request, _ in requests.values():
            request.infer({0: x})  # warm-up
        for i in range(args.rounds):
            for name in list(requests)[i % 2 :] + list(requests)[: i % 2]:
                t = time.perf_counter()
                requests[name][0].infer({0: x})
                times[name].append(time.perf_counter() - t)
        cells = "  ".join(
            f"{k}: compile {requests[k][1]:.2f} s, run {1000 * np.median(v):.2f} ms" for k, v in times.items()
        )
        print(f"  {task:4} {'x'.join(map(str, shape)):12} {cells}", flush=True)


if __name__ == "__main__":
    run_script(main)
