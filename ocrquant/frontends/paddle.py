"""Paddle frontend: Paddle inference models (``.pdmodel`` + ``.pdiparams``) to ONNX with paddle2onnx.

A conversion is only accepted once the ONNX model reproduces Paddle's own outputs on real images
prepared the way the task prepares them (det images for a detector, word crops for cls/rec), so a
silently wrong operator mapping cannot reach quantization. Needs ``ocrquant[paddle]``
(paddlepaddle 2.6.2 + paddle2onnx 1.3.1: paddle 3.x with paddle2onnx 2.x cannot read these models).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import onnxruntime as ort

from ocrquant.data import load_image, open_dataset, sample_root
from ocrquant.errors import OcrQuantError, missing_extra
from ocrquant.fileio import atomic_path, scratch_dir
from ocrquant.onnx_shapes import check_pinnable, declared_dims, static_output_shapes
from ocrquant.tasks import get_task_class, make_config
from ocrquant.tasks.base import layout_fits

log = logging.getLogger("ocrquant")

if TYPE_CHECKING:
    from ocrquant.zoo.registry import ZooEntry

EXTRA = "paddle"

# Paddle 2.6's CPU IR pass ``self_attention_fuse_pass`` dies with SIGILL while loading PP-OCRv4 rec
# on many x86 CPUs (PaddleOCR issue #11597, Paddle issue #64852); the model has no pattern it fuses.
_BROKEN_PASSES = ("self_attention_fuse_pass",)
_ONEDNN_CACHE = 10  # oneDNN primitive cache entries; PaddleOCR's bound for variable input shapes


def paddle_model_files(model: Path) -> tuple[Path, Path]:
    """``(program, params)`` for a ``.pdmodel`` file, or a directory holding exactly one."""
    model = Path(model)
    if model.is_dir():
        found = sorted(model.glob("*.pdmodel"))
        if len(found) != 1:
            what = "no .pdmodel" if not found else f"{len(found)} .pdmodel files"
            raise OcrQuantError(f"expected one Paddle inference model in the directory, found {what}", model)
        model = found[0]
    if model.suffix != ".pdmodel":
        raise OcrQuantError("the paddle backend loads Paddle inference models (.pdmodel + .pdiparams)", model)
    if not model.is_file():
        raise OcrQuantError("model file not found", model)
    params = model.with_suffix(".pdiparams")
    if not params.is_file():
        raise OcrQuantError(f"weights file {params.name} not found beside the model", model)
    return model, params


def paddle_error_line(exc: BaseException) -> str:
    """The one informative line of a Paddle error: its ``...Error: message`` line, which follows the
    Python stack of the model's export (from the exporter's machine) or a C++ traceback."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and not ln.strip().startswith("-")]
    named = [ln for ln in lines if re.match(r"^[A-Za-z]+Error: ", ln)]
    return (named[-1:] or lines[-1:] or [type(exc).__name__])[0][:300]


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def import_paddle_inference(what: str = "the paddle backend") -> Any:
    """``paddle.inference``, or the one-line missing-extra error saying ``what`` needed it."""
    os.environ.setdefault("GLOG_minloglevel", "2")  # Paddle's C++ INFO/WARNING logging on stderr
    try:
        import paddle.inference as paddle_infer
    except ImportError as exc:
        raise missing_extra("paddle", what, exc) from None
    return paddle_infer


def paddle_predictor(program: Path, params: Path, threads: int, optimization: str) -> Any:
    """A CPU Paddle Inference predictor. ``optimization`` maps to Paddle's knobs: ``disable`` = no IR
    passes; ``basic`` = IR passes; ``extended``/``all`` = IR passes plus oneDNN kernels (Paddle's fast
    CPU path). ``threads=0`` means every core this process may use (Paddle's own default is one)."""
    paddle_infer = import_paddle_inference()
    config = paddle_infer.Config(str(program), str(params))
    config.disable_gpu()
    config.disable_glog_info()
    config.set_cpu_math_library_num_threads(threads or _cores())
    config.switch_ir_optim(optimization != "disable")
    for name in _BROKEN_PASSES:
        config.delete_pass(name)
    if optimization in ("extended", "all"):
        config.enable_mkldnn()
        config.set_mkldnn_cache_capacity(_ONEDNN_CACHE)
    config.enable_memory_optim()
    try:
        return paddle_infer.create_predictor(config)
    except Exception as exc:  # Paddle raises its own C++-wrapped error types for a bad model
        raise OcrQuantError(f"Paddle cannot load the model: {paddle_error_line(exc)}", program) from None


def run_predictor(predictor: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Feed ``feeds`` (input name -> array), run, return every output in the program's order."""
    for name, value in feeds.items():
        handle = predictor.get_input_handle(name)
        array = np.ascontiguousarray(value)
        handle.reshape(list(array.shape))
        handle.copy_from_cpu(array)
    try:
        predictor.run()
    except Exception as exc:  # e.g. an input shape the model cannot take
        raise OcrQuantError(f"Paddle inference failed: {paddle_error_line(exc)}") from None
    return [predictor.get_output_handle(name).copy_to_cpu() for name in predictor.get_output_names()]


PADDLE_TASKS = ("det", "cls", "rec")  # the PP-OCR model families, in the order guess_task tries them
DEFAULT_TOLERANCE = 1e-3  # max abs diff on probabilities (sigmoid/softmax); float32 reorderings give ~1e-5


@dataclass
class PaddleConvertConfig:
    """How to convert and how hard to check.

    ``input_shape`` fixes N C H W (e.g. 1 3 512 896 for a static-shape deployment); ``None`` keeps
    the dynamic dimensions. ``opset`` is the minimum: paddle2onnx raises it where an operator needs
    a newer one (PP-OCR's HardSwish needs 14), and the report states the opset actually used.
    """

    opset: int = 13
    input_shape: tuple[int, int, int, int] | None = None
    task: str | None = None  # det | cls | rec; inferred from the output shape when None
    char_dict: Path | None = None  # rec: stored as ONNX metadata "character", as PP-OCR ONNX models do
    verify: bool = True
    tolerance: float = DEFAULT_TOLERANCE
    verify_images: int = 4


@dataclass
class ConversionReport:
    """What was written and how well it matches Paddle."""

    output: Path
    source: Path
    opset: int
    inputs: dict[str, list[int | str]]
    outputs: dict[str, list[int | str]]
    task: str | None
    max_abs_diff: float | None = None  # None when verification was skipped
    verified_on: list[str] = field(default_factory=list)  # sample keys the check ran on
    seconds: float = 0.0


def _import_paddle2onnx() -> Any:
    try:
        import paddle2onnx
    except ImportError as exc:
        raise missing_extra(EXTRA, "converting Paddle models", exc) from None
    return paddle2onnx


def locate_model(
    model_dir: Path | None = None, model: Path | None = None, params: Path | None = None
) -> tuple[Path, Path]:
    """``(program, params)`` from ``--model-dir`` or ``--model`` [+ ``--params``]."""
    if (model_dir is None) == (model is None):
        raise OcrQuantError("give either a model directory or a .pdmodel file (not both)")
    if model_dir is not None:
        return paddle_model_files(Path(model_dir))
    model = Path(model)  # type: ignore[arg-type]
    if params is None:
        return paddle_model_files(model)
    if model.suffix != ".pdmodel" or not model.is_file():
        raise OcrQuantError("expected an existing .pdmodel file", model)
    if not Path(params).is_file():
        raise OcrQuantError("weights file not found", params)
    return model, Path(params)


@contextlib.contextmanager
def _captured_native_output() -> Iterator[list[str]]:
    """Collect what C++ code prints on fds 1/2: paddle2onnx reports failures there, not as exceptions."""
    lines: list[str] = []
    sys.stdout.flush()
    sys.stderr.flush()
    with tempfile.TemporaryFile(mode="w+b") as sink:
        saved = [os.dup(1), os.dup(2)]
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            yield lines
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            lines.extend(sink.read().decode("utf-8", "replace").splitlines())


def _native_error(lines: list[str], default: str) -> str:
    found = [ln.replace("[Paddle2ONNX]", "").strip() for ln in lines if "[Paddle2ONNX]" in ln]
    return "; ".join(found[-2:]) or default


def export_onnx(program: Path, params: Path, opset: int) -> onnx.ModelProto:
    """paddle2onnx's Python API; its empty result on failure becomes an error naming the cause."""
    p2o = _import_paddle2onnx()
    data, error = b"", ""
    with _captured_native_output() as lines:
        try:
            data = p2o.export(
                str(program),
                str(params),
                opset_version=opset,
                auto_upgrade_opset=True,
                verbose=False,
                enable_onnx_checker=True,
                enable_optimize=True,
            )
        except Exception as exc:  # the C++ converter raises IndexError/RuntimeError on inconsistent files
            error = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    if error:
        raise OcrQuantError(f"paddle2onnx failed: {error}", program)
    if not data:
        raise OcrQuantError(f"paddle2onnx failed: {_native_error(lines, 'no model produced')}", program)
    return onnx.load_from_string(data)


def fix_input_shape(
    model: onnx.ModelProto, shape: tuple[int, int, int, int], source: Path
) -> onnx.ModelProto:
    """Pin the image input to ``shape`` and re-propagate shapes with paddle2onnx's own optimizer,
    which also folds the Shape/Slice chains a dynamic export leaves (``onnx_shapes.pin_input_shape``
    only declares the new dims)."""
    graph_input = check_pinnable(model, shape, source)
    from paddle2onnx import paddle2onnx_cpp2py_export as c_p2o

    with scratch_dir("p2o") as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        onnx.save(model, str(src))
        with _captured_native_output() as lines:
            c_p2o.optimize(str(src), str(dst), {graph_input.name: list(shape)})
        if not dst.is_file():
            raise OcrQuantError(
                f"fixing the input shape failed: {_native_error(lines, 'no model produced')}", source
            )
        fixed = onnx.load(str(dst))
    got = declared_dims(fixed.graph.input[0])
    if any(want != -1 and have != want for have, want in zip(got, shape, strict=True)):
        raise OcrQuantError(f"fixing the input shape to {list(shape)} did not take", source)
    static_output_shapes(fixed)
    return fixed


def guess_task(model: onnx.ModelProto) -> str | None:
    """The first of det, cls, rec whose output layout the model's one output declares (det maps
    N x 1 x H x W, cls gives N x classes, CTC rec gives N x T x classes: ``Task.output_layout``)."""
    if len(model.graph.output) != 1:
        return None
    dims = declared_dims(model.graph.output[0])
    for name in PADDLE_TASKS:
        layout = get_task_class(name).output_layout
        if layout is not None and layout_fits(layout, dims, fixed_declared=True):
            return name
    return None


def _check_rec_classes(model: onnx.ModelProto, characters: str, source: Path) -> None:
    """A CTC head has blank + dictionary (+ space) classes; any other count means the wrong dictionary."""
    dims = declared_dims(model.graph.output[0])
    n = len(characters.splitlines())
    if len(dims) == 3 and isinstance(dims[2], int) and dims[2] > 0 and dims[2] not in (n + 1, n + 2):
        raise OcrQuantError(
            f"rec model has {dims[2]} classes but the dictionary has {n} characters "
            f"(expected {n + 2} = blank + characters + space)",
            source,
        )


def _dictionary_beside(model: onnx.ModelProto, program: Path) -> Path | None:
    """The dictionary shipped in a Paddle rec model's folder (``ppocr_keys_v1.txt`` and the like): the
    one ``.txt`` file whose line count fits the CTC head (blank + characters [+ space]), so the ONNX
    model carries it and decodes with no ``--char-dict``."""
    dims = declared_dims(model.graph.output[0])
    classes = dims[2] if len(dims) == 3 and isinstance(dims[2], int) else None
    if classes is None:
        return None
    fits = []
    for candidate in sorted(program.parent.glob("*.txt")):
        try:
            n = len(candidate.read_text(encoding="utf-8").rstrip("\n").splitlines())
        except (OSError, UnicodeDecodeError):
            continue
        if classes in (n + 1, n + 2):
            fits.append(candidate)
    if len(fits) == 1:
        log.info("rec dictionary %s carried into the ONNX metadata", fits[0])
        return fits[0]
    return None


def set_metadata(model: onnx.ModelProto, values: dict[str, str]) -> None:
    kept = [p for p in model.metadata_props if p.key not in values]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in values.items():
        model.metadata_props.add(key=key, value=value)


def verification_batches(task: str, input_shape: tuple[int, int, int, int] | None, count: int) -> list[Any]:
    """Real inputs for the equivalence check: the embedded sample through the task's preprocessing.

    Returns ``(keys, NCHW float32)`` pairs; with a fixed shape the batch matches it exactly (rec
    crops are zero-padded or cut to the fixed width, which is what the padding would contain).
    """

    cls = get_task_class(task)
    options: dict[str, Any] = {}
    if input_shape is not None:
        options = (
            {"input_shape": input_shape[2:]} if task == "det" else {"image_shape": tuple(input_shape[1:])}
        )
    task_obj = cls(make_config(cls.Config, options))
    samples = open_dataset(sample_root(), task).samples
    per_batch = max(input_shape[0], 1) if input_shape is not None else 1  # -1: a dynamic batch
    count = max(count, per_batch)  # at least one full batch
    step = max(1, len(samples) // count)
    chosen = (samples[::step] * per_batch)[:count]  # a batch larger than the sample repeats images
    batches = []
    for start in range(0, len(chosen) - per_batch + 1, per_batch):
        group = chosen[start : start + per_batch]
        inputs = task_obj.preprocess([load_image(s) for s in group]).inputs
        if input_shape is not None:
            width = input_shape[3]
            inputs = inputs[..., :width]
            if inputs.shape[3] < width:
                inputs = np.pad(inputs, [(0, 0), (0, 0), (0, 0), (0, width - inputs.shape[3])])
        batches.append(([s.key for s in group], np.ascontiguousarray(inputs, dtype=np.float32)))
    return batches


def max_abs_difference(onnx_path: Path, program: Path, batches: list[Any]) -> float:
    """Run Paddle Inference and onnxruntime on the same batches; the largest output difference."""
    # one thread: a few images do not need more, and oversubscribed OpenMP threads (Paddle's oneDNN)
    # stall badly on a machine shared with other jobs
    paddle = paddle_predictor(program, program.with_suffix(".pdiparams"), threads=1, optimization="all")
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    worst = 0.0
    for _, inputs in batches:
        expected = run_predictor(paddle, {paddle.get_input_names()[0]: inputs})
        got = session.run(None, {session.get_inputs()[0].name: inputs})
        if len(expected) != len(got):
            raise OcrQuantError(f"ONNX model has {len(got)} outputs, Paddle's has {len(expected)}", onnx_path)
        for e, g in zip(expected, got, strict=True):
            if e.shape != g.shape:
                raise OcrQuantError(
                    f"ONNX output shape {list(g.shape)} != Paddle's {list(e.shape)}", onnx_path
                )
            worst = max(worst, float(np.abs(e.astype(np.float64) - g).max()) if e.size else 0.0)
    return worst


def convert_paddle(
    program: Path, params: Path, output: Path, config: PaddleConvertConfig | None = None
) -> ConversionReport:
    """Convert, check against Paddle, and only then write ``output`` (atomically)."""
    config = config or PaddleConvertConfig()
    started = time.perf_counter()
    _import_paddle2onnx()
    if config.verify:  # fail before the slow part when Paddle (needed for the check) is missing
        import_paddle_inference("checking a Paddle conversion against Paddle")
    model = export_onnx(program, params, config.opset)
    if config.input_shape is not None:
        model = fix_input_shape(model, config.input_shape, program)
    task = config.task or guess_task(model)
    metadata = {
        "source_framework": "paddle",
        "source_model": program.name,
        "converter": f"paddle2onnx {_import_paddle2onnx().__version__}",
    }
    char_dict = config.char_dict
    if char_dict is None and task == "rec":
        char_dict = _dictionary_beside(model, program)
    if char_dict is not None:
        if not Path(char_dict).is_file():
            raise OcrQuantError("character dictionary not found", char_dict)
        metadata["character"] = Path(char_dict).read_text(encoding="utf-8").rstrip("\n")
    set_metadata(model, metadata)
    if task == "rec" and "character" in metadata:
        _check_rec_classes(model, metadata["character"], program)
    report = ConversionReport(
        output=Path(output),
        source=program,
        opset=max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0),
        inputs={i.name: declared_dims(i) for i in model.graph.input},
        outputs={o.name: declared_dims(o) for o in model.graph.output},
        task=task,
    )
    with atomic_path(output) as tmp:
        onnx.save(model, str(tmp))
        if config.verify:
            if task is None:
                raise OcrQuantError(
                    "cannot tell the model's task from its outputs; pass --task det|cls|rec", program
                )
            batches = verification_batches(task, config.input_shape, config.verify_images)
            report.max_abs_diff = max_abs_difference(tmp, program, batches)
            report.verified_on = [key for keys, _ in batches for key in keys]
            if not report.max_abs_diff <= config.tolerance:  # also catches NaN
                raise OcrQuantError(
                    f"ONNX output differs from Paddle's by {report.max_abs_diff:.3g} on real {task} inputs "
                    f"(tolerance {config.tolerance:g}); nothing written",
                    output,
                )
    report.seconds = time.perf_counter() - started
    return report


def export_zoo_entry(entry: ZooEntry, model_file: Path, output: Path) -> None:
    """Frontend contract (see :mod:`ocrquant.frontends`): convert a fetched Paddle zoo model, checked."""
    program, params = paddle_model_files(Path(model_file))
    char_dict = entry.options.get("char_dict")
    config = PaddleConvertConfig(
        task=entry.task, char_dict=program.parent / str(char_dict) if isinstance(char_dict, str) else None
    )
    convert_paddle(program, params, output, config)
