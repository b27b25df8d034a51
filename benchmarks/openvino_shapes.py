"""OpenVINO: one model compiled per input shape, or one compiled with dynamic shapes?

For each INT8 model of a chain (``runs/<chain>/<task>.int8.onnx``) at its pipeline shape, two
OpenVINO runners of ocrquant's own: one as it runs a shape it has room to cache (reshaped to that
static shape), one with no room left (``max_cached_shapes = 0``: the file's own dynamic dimensions).
Printed: each runner's first call (the compile and one inference) and the two latencies,
interleaved in one loop. This is what ``ocrquant.runtime.openvino`` decides by: a static model runs
faster but costs a compile per shape, so the runner stays static for the shapes a task repeats and
serves the rest from one dynamic compile.

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
        runners = {"static": OpenVinoRunner(path, RuntimeOptions(threads=2)),
                   "dynamic": OpenVinoRunner(path, RuntimeOptions(threads=2))}  # fmt: skip
        runners["dynamic"].max_cached_shapes = 0  # every shape past the (empty) cache: the dynamic model
        x = {runners["static"].input_names[0]: np.random.default_rng(0).random(shape, dtype=np.float32)}
        first: dict[str, float] = {}
        for name, runner in runners.items():
            t = time.perf_counter()
            runner.run(x)
            first[name] = time.perf_counter() - t
        assert runners["static"].cached_shapes and not runners["dynamic"].cached_shapes
        times: dict[str, list[float]] = {k: [] for k in runners}
        for i in range(args.rounds):
            for name in list(runners)[i % 2 :] + list(runners)[: i % 2]:
                t = time.perf_counter()
                runners[name].run(x)
                times[name].append(time.perf_counter() - t)
        cells = "  ".join(
            f"{k}: first call {first[k]:.2f} s, run {1000 * np.median(v):.2f} ms" for k, v in times.items()
        )
        print(f"  {task:4} {'x'.join(map(str, shape)):12} {cells}", flush=True)


if __name__ == "__main__":
    run_script(main)
