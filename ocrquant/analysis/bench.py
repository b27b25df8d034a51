"""``ocrquant bench``: latency, throughput, size and memory of models x backends at a task's real sizes.

Why it is built this way:

* **Everything interleaved in one loop.** The CPU is shared; every (model, backend, input size) is
  timed once per round, in alternating order (``timing.interleaved_runs``), so a noisy neighbour
  slows all of them alike and the *ratios* stay meaningful even when absolute times are not.
  onnxruntime sessions are created with spinning off (``RuntimeOptions``), or the idle-spinning pool
  of one session steals the cores of the next one in the loop.
* **Real inputs at the sizes the task really runs.** Images from ``data`` (default: the embedded
  sample set), preprocessed by the task itself to each benchmark shape: det at 544x960 (ICDAR's
  1280x720 frames at max side 960) and the seed's fixed 512x896; rec 48x320 batch 1 and 8; cls
  48x192 batch 1 and 8.
* **Peak memory measured honestly.** RSS in one process that holds every session is meaningless
  per backend (allocators keep freed pages; the runtimes share libraries). Each (model, backend)
  is therefore measured in its own fresh subprocess: RSS high-water mark (``ru_maxrss``) after
  importing the runtime, then again after creating the session and running every benchmark shape
  once. ``rss_peak_mb`` is the process's peak, ``rss_delta_mb`` what the session itself added.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import onnxruntime
from tqdm import tqdm

from ocrquant.analysis.profile import kernel_hints
from ocrquant.data import load_image, open_dataset, sample_root
from ocrquant.errors import OcrQuantError
from ocrquant.runtime.base import BACKENDS, RuntimeOptions, create_runner
from ocrquant.runtime.timing import interleaved_runs
from ocrquant.tasks import get_task_class, make_config
from ocrquant.zoo.resolve import resolve_model
from ocrquant.zoo.task import build_task, infer_task

# (label, N, C, H, W) per task: the sizes each task really runs at
TASK_SHAPES: dict[str, list[tuple[str, tuple[int, int, int, int]]]] = {
    # 736x1312: a 1280x720 image under PP-OCRv6's preset (short side to 736)
    "det": [("544x960", (1, 3, 544, 960)), ("512x896", (1, 3, 512, 896)), ("736x1312", (1, 3, 736, 1312))],
    "rec": [("48x320 b1", (1, 3, 48, 320)), ("48x320 b8", (8, 3, 48, 320))],
    "cls": [("48x192 b1", (1, 3, 48, 192)), ("48x192 b8", (8, 3, 48, 192))],
}
DATA_KIND = {"det": "det", "rec": "rec", "cls": "rec"}


@dataclass
class BenchModel:
    """One model file under test; ``precision`` is int8 when the graph has Q/DQ nodes."""

    label: str
    path: Path
    precision: str
    size_mb: float
    #: what in the file keeps onnxruntime off its fast kernels (the profile's hints), one line each
    notes: list[str] = field(default_factory=list)


@dataclass
class BenchRow:
    model: str
    precision: str
    backend: str
    shape: str
    input_shape: list[int]
    median_ms: float
    p90_ms: float
    min_ms: float
    runs: int
    throughput_ips: float
    size_mb: float
    speedup_vs_baseline: float = 1.0  # baseline median / this median
    min_speedup_vs_baseline: float = 1.0  # baseline min / this min: the least contended runs
    rss_peak_mb: float | None = None
    rss_delta_mb: float | None = None


@dataclass
class BenchResult:
    task: str
    baseline: str
    settings: dict[str, Any]
    rows: list[BenchRow] = field(default_factory=list)
    #: model x backend pairs the backend could not load, with its one-line reason (the table goes on)
    unsupported: list[dict[str, str]] = field(default_factory=list)
    #: per model label, what in its file slows onnxruntime (a speed-up over it includes that)
    notes: dict[str, list[str]] = field(default_factory=dict)
    #: each model's label (the rows' ``model``), in the order the models were given
    labels: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "baseline": self.baseline,
            "settings": self.settings,
            "rows": [asdict(r) for r in self.rows],
            "unsupported": self.unsupported,
            "notes": self.notes,
            "labels": self.labels,
        }


def describe_model(model: str | Path, task_name: str) -> BenchModel:
    """Resolve a zoo name or path; label, INT8-or-float, size on disk (with external data files). A
    model of another task than ``task_name`` is refused (it would fail inside the runtime)."""

    resolved = resolve_model(model)
    build_task(infer_task(resolved, task_name), resolved)
    path = resolved.path
    if not path.is_file():
        raise OcrQuantError("model file not found", path)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # DecodeError and friends
        raise OcrQuantError(f"not a readable ONNX model: {str(exc).strip()[:200]}", path) from None
    qdq = any(n.op_type in ("QuantizeLinear", "DequantizeLinear", "QLinearConv") for n in proto.graph.node)
    size = path.stat().st_size
    for init in proto.graph.initializer:  # external data lives beside the model
        for entry in init.external_data:
            if entry.key == "location" and (path.parent / entry.value).is_file():
                size += (path.parent / entry.value).stat().st_size
    zoo_name = resolved.name and resolved.name != path.stem
    label = resolved.name if zoo_name else f"{path.parent.name}/{path.name}"
    return BenchModel(label, path, "int8" if qdq else "fp32", round(size / 1e6, 3), kernel_hints(proto))


def make_inputs(
    task_name: str, data: Path, shape: tuple[int, int, int, int], count: int = 2
) -> list[np.ndarray]:
    """``count`` real input tensors of exactly ``shape``, preprocessed by the task from images in ``data``.

    Images are resized to the benchmark size first so the task's own normalisation (and padding
    rules) produce that shape exactly.
    """

    n, _, h, w = shape
    cls = get_task_class(task_name)
    opts = {"input_shape": (h, w)} if task_name == "det" else {"image_shape": (3, h, w)}
    task = cls(make_config(cls.Config, opts))
    samples = open_dataset(data, task_name).samples
    if not samples:
        raise OcrQuantError("dataset has no samples", data)
    out = []
    for i in range(count):
        group = [samples[(i * n + k) % len(samples)] for k in range(n)]
        images = [cv2.resize(load_image(s), (w, h)) for s in group]
        x = task.preprocess(images).inputs.astype(np.float32)
        if tuple(x.shape) != shape:
            raise OcrQuantError(
                f"task {task_name} preprocessing gave shape {list(x.shape)}, wanted {list(shape)}", data
            )
        out.append(np.ascontiguousarray(x))
    return out


def default_data(task_name: str) -> Path:

    return sample_root() / DATA_KIND[task_name]


def _proc_status_mb(field_name: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Linux: writing 5 to clear_refs resets VmHWM, so the peak seen next is the session's own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _maxrss_mb() -> float:
    # ru_maxrss is KiB on Linux, bytes on macOS
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / (1024 * 1024)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def rss_probe(model: Path, backend: str, threads: int, shapes: list[list[int]]) -> dict[str, float]:
    """In *this* process (meant to be a fresh one): RSS peak before and after session + one run per shape."""
    if backend == "openvino":
        import openvino  # noqa: F401  (count the runtime's import in the baseline, not the session)
    # (onnxruntime is imported with this module.) Current RSS after the runtime's import, with the peak
    # reset to it (import-time transients would otherwise hide a smaller session); fallback without
    # /proc: the ru_maxrss high-water mark
    reset = _reset_peak_rss()
    before = _proc_status_mb("VmRSS") if reset else _maxrss_mb()
    runner = create_runner(model, backend, RuntimeOptions(threads=threads))
    for s in shapes:
        runner.run({runner.input_names[0]: np.zeros(s, dtype=np.float32)})
    after = (_proc_status_mb("VmHWM") if reset else None) or _maxrss_mb()
    return {"rss_peak_mb": round(after, 1), "rss_delta_mb": round(after - (before or 0.0), 1)}


def measure_rss(model: Path, backend: str, threads: int, shapes: list[list[int]]) -> dict[str, float]:
    """``rss_probe`` in a fresh Python subprocess, so no other session's memory is counted."""
    code = (
        "import json,sys; from ocrquant.analysis.bench import rss_probe; "
        "a=json.loads(sys.argv[1]); print(json.dumps(rss_probe(a['m'], a['b'], a['t'], a['s'])))"
    )
    arg = json.dumps({"m": str(model), "b": backend, "t": threads, "s": shapes})
    proc = subprocess.run([sys.executable, "-c", code, arg], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
        raise OcrQuantError(f"memory probe for {backend} failed: {tail[:300]}", model)
    return json.loads(proc.stdout.strip().splitlines()[-1])


#: real inputs per shape, alternated in the timing loop (a single input repeated would let the
#: caches hold exactly its data)
INPUTS_PER_SHAPE = 2


def run_bench(
    models: list[str | Path],
    task_name: str,
    *,
    backends: list[str] | None = None,
    data: Path | None = None,
    threads: int = 2,
    rounds: int = 20,
    warmup: int = 2,
    shapes: list[str] | None = None,
    memory: bool = True,
    progress: bool = True,
) -> BenchResult:
    """Time every model x backend x task shape in one interleaved loop.

    The baseline of ``speedup_vs_baseline`` is the first model on the first backend, per shape.
    """
    if task_name not in TASK_SHAPES:
        raise OcrQuantError(f"unknown task '{task_name}' for bench (known: {', '.join(TASK_SHAPES)})")
    if not models:
        raise OcrQuantError("bench needs at least one --model")
    if rounds < 1 or warmup < 0 or threads < 0:
        raise OcrQuantError("--rounds must be >= 1, warm-up and --threads >= 0")
    backends = backends or ["onnxruntime"]

    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise OcrQuantError(f"unknown backend(s) {', '.join(unknown)} (known: {', '.join(sorted(BACKENDS))})")
    task_shapes = TASK_SHAPES[task_name]
    if shapes:
        task_shapes = [s for s in task_shapes if s[0] in shapes]
        if not task_shapes:
            raise OcrQuantError(
                f"no shape among {shapes} for {task_name} (known: "
                f"{', '.join(s for s, _ in TASK_SHAPES[task_name])})"
            )
    data = data or default_data(task_name)
    bms = [describe_model(m, task_name) for m in models]
    labels = [b.label for b in bms]
    if len(set(labels)) != len(labels):  # two files with one name: disambiguate by path
        for b in bms:
            b.label = str(b.path)
    inputs = {label: make_inputs(task_name, data, shape, INPUTS_PER_SHAPE) for label, shape in task_shapes}

    options = RuntimeOptions(threads=threads, spinning=False)
    runners, feeds, meta = {}, {}, {}
    unsupported: list[dict[str, str]] = []
    for bm in bms:
        for backend in backends:
            try:
                runner = create_runner(bm.path, backend, options)
            except OcrQuantError as exc:  # e.g. ncnn without its converted model, openvino not installed
                if len(bms) * len(backends) == 1:
                    raise  # nothing else to measure: the reason itself is the answer
                unsupported.append(
                    {"model": bm.label, "backend": backend, "reason": " ".join(str(exc).split())}
                )
                continue
            for shape_label, shape in task_shapes:
                key = f"{bm.label} | {backend} | {shape_label}"
                runners[key], feeds[key] = runner, inputs[shape_label]
                meta[key] = (bm, backend, shape_label, shape)

    if not runners:
        reasons = "; ".join(f"{u['model']} on {u['backend']}: {u['reason']}" for u in unsupported)
        raise OcrQuantError(f"no model could be loaded on any backend ({reasons})")

    total = (warmup + rounds) * sum(len(v) for v in feeds.values())
    with tqdm(total=total, disable=not progress, desc=f"bench {task_name}", unit="call", leave=False) as bar:
        lat = interleaved_runs(runners, feeds, rounds=rounds, warmup=warmup, progress=lambda: bar.update(1))

    by_label = {bm.label: bm for bm in bms}
    loaded = list(dict.fromkeys((bm.label, backend) for bm, backend, _, _ in meta.values()))
    rss: dict[tuple[str, str], dict[str, float]] = {}
    if memory:
        for label, backend in loaded:
            probe_shapes = [list(s) for _, s in task_shapes]
            rss[(label, backend)] = measure_rss(by_label[label].path, backend, threads, probe_shapes)

    base_model, base_backend = loaded[0]  # the first pair that loaded
    result = BenchResult(
        task_name,
        f"{base_model} | {base_backend}",
        _settings(threads, rounds, warmup, INPUTS_PER_SHAPE, data),
        unsupported=unsupported,
        notes={b.label: b.notes for b in bms if b.notes},
        labels=[b.label for b in bms],
    )
    for key, (bm, backend, shape_label, shape) in meta.items():
        lt = lat[key]
        base = lat[f"{base_model} | {base_backend} | {shape_label}"]
        mem = rss.get((bm.label, backend), {})
        result.rows.append(
            BenchRow(
                bm.label,
                bm.precision,
                backend,
                shape_label,
                list(shape),
                lt.median_ms,
                lt.p90_ms,
                lt.min_ms,
                lt.runs,
                lt.throughput(shape[0]),
                bm.size_mb,
                round(base.median_ms / lt.median_ms, 3),
                round(base.min_ms / lt.min_ms, 3),
                mem.get("rss_peak_mb"),
                mem.get("rss_delta_mb"),
            )
        )
    return result


def _settings(threads: int, rounds: int, warmup: int, inputs_per_shape: int, data: Path) -> dict[str, Any]:

    versions = {"onnxruntime": onnxruntime.__version__}
    try:
        import openvino

        versions["openvino"] = openvino.__version__
    except ImportError:
        pass
    return {
        "threads": threads,
        "rounds": rounds,
        "warmup": warmup,
        "inputs_per_shape": inputs_per_shape,
        "data": str(data),
        "spinning": False,
        "interleaved": True,
        "versions": versions,
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "load_avg_at_end": [round(x, 2) for x in os.getloadavg()],
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()
