"""``evaluate``: data -> task preprocess -> runtime -> task postprocess -> metric, over a whole set.

Per-sample results are appended to ``<output>.partial.jsonl`` as they are produced, so an
interrupted run resumes where it stopped; the final JSON is written atomically and the partial file
removed. Decoding and preprocessing run in a worker thread ahead of the model (OpenCV releases the
GIL), so the evaluation is bound by model time, not Python.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ocrquant.data.types import READ_POLICY, Dataset, Sample, load_image, readable_images
from ocrquant.errors import OcrQuantError
from ocrquant.fileio import file_fingerprint, write_json_atomic
from ocrquant.runtime.base import Runner
from ocrquant.tasks.base import Batch, Task

log = logging.getLogger("ocrquant")


@dataclass
class EvalResult:
    task: str
    model: str
    data: str
    metrics: dict[str, float]
    count: int
    skipped: list[dict[str, str]]
    timing: dict[str, float]
    settings: dict[str, Any]
    samples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def primary(self) -> float:
        return float(self.metrics[self.settings["primary_metric"]])

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def read(cls, path: Path) -> EvalResult:
        """A result saved with :meth:`to_json`, or a one-line error naming the file."""
        try:
            return cls(**json.loads(Path(path).read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise OcrQuantError(f"not a readable evaluation JSON ({type(exc).__name__})", path) from None


def cached_result(path: Path, run: Callable[[], EvalResult]) -> EvalResult:
    """The evaluation saved at ``path``, or ``run()`` written there atomically: lets a script that
    compares many models over draws resume without evaluating anything twice."""
    if path.exists():
        return EvalResult.read(path)
    result = run()
    write_json_atomic(path, result.to_json())
    return result


@dataclass
class _Prepared:
    samples: list[Sample]
    batch: Batch


#: a change applied to every decoded image before preprocessing (robustness probes); None: none
ImageTransform = Callable[[np.ndarray, Sample], np.ndarray]


def _prepare_chunk(
    task: Task, samples: list[Sample], batch_size: int, transform: ImageTransform | None = None
) -> tuple[list[_Prepared], list[dict]]:
    """Decode a chunk of samples, sort by the task's key (rec/cls: aspect ratio), form batches."""
    loaded: list[tuple[Sample, np.ndarray]] = []
    errors: list[dict[str, str]] = []
    for sample in samples:
        try:
            image = load_image(sample)
        except OcrQuantError as exc:
            if READ_POLICY.strict:
                raise
            errors.append({"key": sample.key, "error": str(exc)})
            continue
        loaded.append((sample, transform(image, sample) if transform else image))
    if batch_size > 1:
        loaded.sort(key=lambda pair: task.sort_key(pair[1]))
    prepared = []
    for i in range(0, len(loaded), batch_size):
        group = loaded[i : i + batch_size]
        prepared.append(_Prepared([s for s, _ in group], task.preprocess([im for _, im in group])))
    return prepared, errors


def _chunks(samples: list[Sample], size: int) -> Iterator[list[Sample]]:
    for i in range(0, len(samples), size):
        yield samples[i : i + size]


def resume_key(samples: list[Sample], root: Path) -> dict[str, str]:
    """What identifies the evaluated data beyond its settings: the data folder resolved (the same
    relative ``-d`` from another directory is another set) and a digest of its listing (each sample's
    key, image path, size and modification time, and ground truth), so an edited label or a replaced
    image starts a fresh run."""

    h = hashlib.sha256()
    for s in samples:
        try:
            st = Path(s.image_path).stat()
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        target = json.dumps(asdict(s.target) if is_dataclass(s.target) else s.target, default=str)
        h.update(f"{s.key}|{s.image_path}|{stamp}|{s.rotate180}|{target}\n".encode())
    return {"data": str(Path(root).resolve()), "data_listing": h.hexdigest()}


class PartialLog:
    """Append-only JSON-lines log of finished samples; its first line pins the settings it belongs to
    (model file digest, resolved data and listing included: see :func:`resume_key`)."""

    def __init__(self, path: Path | None, settings: dict[str, Any]) -> None:
        self.path = path
        self.done: dict[str, dict[str, Any]] = {}
        self._fh = None
        if path is None:
            return
        header = {"settings": settings}
        if path.exists():
            lines = path.read_text(encoding="utf-8").splitlines()
            if lines and _safe_json(lines[0]) == header:
                for line in lines[1:]:
                    rec = _safe_json(line)
                    if isinstance(rec, dict) and "key" in rec:
                        self.done[rec["key"]] = rec
                if self.done:
                    log.info("resuming: %d samples already evaluated in %s", len(self.done), path)
            else:
                old = (_safe_json(lines[0]) or {}).get("settings") if lines else None
                log.warning("starting afresh, not resuming %s: %s", path, _what_changed(old, settings))
                path.unlink()
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(header) + "\n", encoding="utf-8")
        self._fh = open(path, "a", encoding="utf-8")  # noqa: SIM115  (kept open for the run)

    def add(self, rec: dict[str, Any]) -> None:
        self.done[rec["key"]] = rec
        if self._fh is not None:
            self._fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
            self._fh.flush()

    def close(self, remove: bool) -> None:
        if self._fh is not None:
            self._fh.close()
        if remove and self.path is not None and self.path.exists():
            self.path.unlink()

    def finish(self, output: Path | None, payload: dict[str, Any], completed: bool) -> None:
        """Write the final result atomically and drop the partial log, but only for a complete run
        (an interrupted one keeps its partial log so the next run resumes)."""
        if output is not None and completed:
            write_json_atomic(output, payload)
            self.close(remove=True)


def preprocessed_inputs(task: Task, dataset: Dataset, n: int) -> list[np.ndarray]:
    """Batch-1 model inputs of the first ``n`` readable samples (what latency measurements feed)."""
    return [task.preprocess([image]).inputs for _, image in readable_images(dataset.samples[: max(n, 1)])]


def _finished_result(output: Path | None, settings: dict[str, Any]) -> EvalResult | None:
    """The complete evaluation already at ``output`` when it was made with exactly these settings
    (the model file's sha256, the resolved data folder and its listing included: :func:`resume_key`),
    so running a finished command again gives its result without evaluating anything; None otherwise."""
    if output is None or not output.is_file():
        return None
    try:
        done = EvalResult.read(output)
    except OcrQuantError:  # unreadable: evaluate again and replace it
        return None
    if done.settings != json.loads(json.dumps(settings, default=str)):
        return None
    log.info("evaluated already with the same model, data and settings: %s", output)
    return done


def _what_changed(old: Any, new: dict[str, Any]) -> str:
    """Which settings differ between a partial log and this run, in words."""
    if not isinstance(old, dict):
        return "its header is unreadable"
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return f"{', '.join(keys)} changed" if keys else "its header is unreadable"


def _safe_json(line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None


def evaluate(
    task: Task,
    runner: Runner,
    dataset: Dataset,
    *,
    model_name: str = "",
    batch_size: int = 1,
    limit: int | None = None,
    output: Path | None = None,
    progress: bool = True,
    extra_settings: dict[str, Any] | None = None,
    image_transform: ImageTransform | None = None,
) -> EvalResult:
    """Run ``task`` with ``runner`` over ``dataset``; resumable through ``output``'s partial file.

    ``image_transform`` changes each decoded image before preprocessing (e.g. the noise of
    ``benchmarks/noise_floor.py``); name it in ``extra_settings`` so a resumed run cannot mix."""
    if batch_size < 1:
        raise OcrQuantError("--batch-size must be >= 1")
    if batch_size > 1 and not task.batchable():
        log.warning("task %s cannot batch images of different sizes; using batch size 1", task.name)
        batch_size = 1
    samples = dataset.samples[:limit] if limit else dataset.samples
    if not samples:
        raise OcrQuantError("dataset has no samples", dataset.root)
    model_path = (extra_settings or {}).get("model_path")
    task.check_model(runner, model_path or model_name or "model")
    metric_probe = task.new_metric()
    settings = {
        "task": task.name,
        "model": model_name,
        **({"model_sha256": file_fingerprint(model_path)} if output and model_path else {}),
        **(resume_key(samples, dataset.root) if output else {"data": str(dataset.root)}),
        "format": dataset.format,
        "limit": limit,
        "batch_size": batch_size,
        "task_config": _jsonable(task.config),
        "primary_metric": metric_probe.primary,
        **(extra_settings or {}),
    }
    finished = _finished_result(output, settings)
    if finished is not None:
        return finished
    partial = PartialLog(output.with_suffix(".partial.jsonl") if output else None, settings)
    todo = [s for s in samples if s.key not in partial.done]
    input_name = runner.input_names[0]
    model_s = 0.0
    t0 = time.perf_counter()
    bar = progress_bar(len(samples), len(samples) - len(todo), progress, f"eval {task.name}")
    completed = False
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            chunk_size = max(batch_size * 8, 8)
            chunks = list(_chunks(todo, chunk_size))

            def submit(chunk: list[Sample]) -> Future:
                return pool.submit(_prepare_chunk, task, chunk, batch_size, image_transform)

            pending: list[Future] = [submit(c) for c in chunks[:2]]
            for ci in range(len(chunks)):
                prepared, errors = pending.pop(0).result()
                if ci + 2 < len(chunks):
                    pending.append(submit(chunks[ci + 2]))
                for err in errors:
                    log.warning("skipped: %s", err["error"])
                    partial.add({**err, "skipped": True})
                    bar.update(1)
                for prep in prepared:
                    ts = time.perf_counter()
                    outputs = runner.run({input_name: prep.batch.inputs})
                    model_s += time.perf_counter() - ts
                    for sample, pred in zip(prep.samples, task.postprocess(outputs, prep.batch), strict=True):
                        partial.add({"key": sample.key, "prediction": pred})
                    bar.update(len(prep.samples))
        completed = True
    finally:
        bar.close()
        partial.close(remove=False)
    wall_s = time.perf_counter() - t0
    result = _summarise(
        task, samples, partial.done, settings, model_name, dataset, wall_s, model_s, len(todo)
    )
    partial.finish(output, result.to_json(), completed)
    return result


def _summarise(
    task: Task,
    samples: list[Sample],
    done: dict[str, dict[str, Any]],
    settings: dict[str, Any],
    model_name: str,
    dataset: Dataset,
    wall_s: float,
    model_s: float,
    n_run: int,
) -> EvalResult:
    """Recompute the metric from stored predictions in dataset order (same result resumed or not)."""
    metric = task.new_metric()
    per_sample, skipped = [], []
    for s in samples:
        rec = done[s.key]
        if rec.get("skipped"):
            skipped.append({"key": s.key, "error": rec["error"]})
            continue
        figures = metric.update(rec["prediction"], s.target)
        per_sample.append({"key": s.key, "prediction": rec["prediction"], "figures": figures})
    timing = {
        "wall_s": round(wall_s, 3),
        "model_s": round(model_s, 3),
        "images_evaluated_now": n_run,
        "images_per_s": round(n_run / wall_s, 3) if wall_s > 0 and n_run else 0.0,
        "model_ms_per_image": round(1000 * model_s / n_run, 3) if n_run else 0.0,
        "model_share": round(model_s / wall_s, 4) if wall_s > 0 else 0.0,
    }
    return EvalResult(
        task.name,
        model_name,
        str(dataset.root),
        metric.result(),
        len(per_sample),
        skipped,
        timing,
        settings,
        per_sample,
    )


def _jsonable(config: Any) -> dict[str, Any]:
    try:
        return json.loads(json.dumps(asdict(config), default=str))
    except TypeError:
        return {}


def progress_bar(total: int, initial: int, enabled: bool, desc: str):  # noqa: ANN202

    return tqdm(total=total, initial=initial, disable=not enabled, desc=desc, unit="img", leave=False)


def fidelity(task: Task, result: EvalResult, reference: EvalResult) -> dict[str, float]:
    """The task metric of ``result``'s predictions scored against ``reference``'s predictions.

    Why: when choosing between quantized variants of one model, agreement with the float model is
    the quantity quantization controls. Accuracy against labels adds the noise of the samples a
    variant gets right by luck (the float model was wrong and the perturbed one happens to be
    right), which does not carry over to other data; fidelity counts those as changes too, and it
    needs no labels. Both results must hold their per-sample predictions.
    """
    metric = task.new_metric()
    fidelity_samples(metric, result, reference)
    return metric.result()


def fidelity_samples(metric: Any, result: EvalResult, reference: EvalResult) -> list[dict[str, Any]]:
    """Feed ``metric`` (a fresh task metric) ``result``'s predictions against ``reference``'s, and return
    the per-sample figures (``{"key", "figures"}``, as in ``EvalResult.samples``) for resampling."""
    targets = {s["key"]: s["prediction"] for s in reference.samples}
    if not result.samples or not targets:
        raise OcrQuantError("fidelity needs per-sample predictions of both evaluations")
    out = []
    for s in result.samples:
        if s["key"] in targets:
            figures = metric.update(s["prediction"], metric.target_from_prediction(targets[s["key"]]))
            out.append({"key": s["key"], "figures": figures})
    return out
