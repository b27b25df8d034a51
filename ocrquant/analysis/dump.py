"""Dump every intermediate tensor of a model to ``.npy`` files, in bounded memory.

Layout: ``OUT/<index>__<safe name>/batch_<k>.npy`` (see :func:`safe_tensor_dirname`) plus
``OUT/tensors.json``. Memory stays bounded because the model is run once per *chunk* of tensors,
with only that chunk exposed as extra graph outputs, and each output is written to disk as soon as
the run returns: a 512x896 detection input never has all its activations in RAM at once.
``dump_pair`` dumps a float and an INT8 model side by side with ``index.json`` matching them.
"""

from __future__ import annotations

import fnmatch
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tqdm import tqdm

from ocrquant.analysis.graph import (
    GraphView,
    load_model,
    match_tensors,
    safe_tensor_dirname,
    tensor_elem_types,
    with_outputs,
)
from ocrquant.errors import OcrQuantError
from ocrquant.fileio import atomic_path, write_json_atomic

log = logging.getLogger("ocrquant")

DEFAULT_CHUNK = 0  # 0 = choose from the input size (see auto_chunk_size)
MEMORY_BUDGET = 1 << 30  # bytes of exposed tensors per run that auto_chunk_size aims for
WARN_BYTES = 10**9  # a dump that passes this says so (and how to make it smaller)
INDEX_FILE = "tensors.json"
PAIR_INDEX_FILE = "index.json"


@dataclass
class DumpEntry:
    index: int
    name: str
    dir: str
    op_type: str
    shapes: list[list[int]]
    dtype: str


Feeds = dict[str, np.ndarray]


def as_feeds(session: ort.InferenceSession, inputs: Sequence[np.ndarray | Feeds]) -> list[Feeds]:
    """Accept plain arrays for single-input models (every OCR model here) or ready feed dicts."""
    names = [i.name for i in session.get_inputs()]
    feeds = []
    for x in inputs:
        if isinstance(x, dict):
            feeds.append(x)
        elif len(names) == 1:
            feeds.append({names[0]: np.ascontiguousarray(x)})
        else:
            raise OcrQuantError(f"model has {len(names)} inputs ({', '.join(names)}); pass feed dicts")
    return feeds


def analysis_session(model: bytes | str, threads: int = 0) -> ort.InferenceSession:
    """A session that runs the graph exactly as written (no fusion), so every tensor exists."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads:
        so.intra_op_num_threads = threads
    return ort.InferenceSession(model, sess_options=so, providers=["CPUExecutionProvider"])


def auto_chunk_size(inputs: Sequence[np.ndarray | Feeds], budget: int = MEMORY_BUDGET) -> int:
    """Tensors per run so that the exposed outputs stay near ``budget`` bytes.

    A conv net's activations are rarely more than ~3x its input (DB det: 16 channels at half
    resolution = 1.3x), so budget / (3 x input bytes) tensors fit: every tensor at once for rec and
    cls crops, a few dozen for a 512x896 detection input.
    """
    first = inputs[0]
    nbytes = sum(a.nbytes for a in first.values()) if isinstance(first, dict) else first.nbytes
    return max(4, int(budget // max(3 * nbytes, 1)))


def iter_tensor_chunks(
    model_path: str | Path,
    names: list[str],
    inputs: Sequence[np.ndarray | Feeds],
    chunk_size: int = DEFAULT_CHUNK,
    threads: int = 0,
    desc: str | None = None,
):
    """Yield ``(sample k, {name: array})`` for chunks of ``names``: the shared bounded-memory engine.

    Each chunk costs one session and one run per input; only that chunk's arrays are alive.
    """
    model = load_model(model_path)
    types = tensor_elem_types(model)
    chunk_size = chunk_size or auto_chunk_size(inputs)
    chunks = [names[i : i + chunk_size] for i in range(0, len(names), max(chunk_size, 1))]
    bar = tqdm(total=len(chunks) * len(inputs), desc=desc, disable=desc is None, unit="run")
    for chunk in chunks:
        session = analysis_session(with_outputs(model, chunk, types).SerializeToString(), threads)
        for k, feeds in enumerate(as_feeds(session, inputs)):
            arrays = session.run(chunk, feeds)
            yield k, dict(zip(chunk, arrays, strict=True))
            bar.update(1)
        del session
    bar.close()


def select_tensors(view: GraphView, names: list[str], layers: Sequence[str], source: object) -> list[str]:
    """The tensors ``--layers`` patterns (globs) name: by tensor name, producing node name or op type."""
    if not layers:
        return names

    def chosen(name: str) -> bool:
        node = view.producer.get(name)
        keys = [name] + ([node.name, node.op_type] if node is not None else [])
        return any(fnmatch.fnmatchcase(k, p) for k in keys for p in layers)

    picked = [n for n in names if chosen(n)]
    if not picked:
        ops = sorted({view.producer[n].op_type for n in names if n in view.producer})
        raise OcrQuantError(
            f"--layers {' '.join(layers)} selects none of the {len(names)} tensors (their op types: "
            f"{', '.join(ops[:12])})",
            source,
        )
    return picked


def dump_model(
    model_path: str | Path,
    inputs: Sequence[np.ndarray | Feeds],
    out_dir: str | Path,
    *,
    chunk_size: int = DEFAULT_CHUNK,
    include_weights: bool = False,
    threads: int = 0,
    progress: bool = True,
    layers: Sequence[str] = (),
    only: set[str] | None = None,
    float16: bool = False,
) -> list[DumpEntry]:
    """Write every activation of ``model_path`` for each input; return (and save) the index.

    ``include_weights`` also dumps dequantized weights (DQ nodes of initializers), off by default
    because they do not depend on the input. ``layers`` (globs) or ``only`` (exact names) keep a part
    of the tensors and ``float16`` halves float32 files: a dump of every tensor of one PP-OCRv3 rec
    crop is 292 MB. Past :data:`WARN_BYTES` written, a warning says so once.
    """
    out_dir = Path(out_dir)
    model = load_model(model_path)
    view = GraphView(model)
    every = view.activation_tensors(include_weights=include_weights)
    position = {name: i for i, name in enumerate(every)}  # folder indices do not depend on --layers
    names = (
        [n for n in every if n in only]
        if only is not None
        else select_tensors(view, every, layers, model_path)
    )
    if not inputs:
        raise OcrQuantError("no inputs to dump (empty dataset or --limit 0)")
    entries = {
        name: DumpEntry(
            position[name], name, safe_tensor_dirname(position[name], name), _op(view, name), [], ""
        )
        for name in names
    }
    desc = f"dump {Path(model_path).name}" if progress else None
    written = 0
    for k, arrays in iter_tensor_chunks(model_path, names, inputs, chunk_size, threads, desc):
        for name, arr in arrays.items():
            entry = entries[name]
            if float16 and arr.dtype == np.float32:
                arr = arr.astype(np.float16)
            target = out_dir / entry.dir / f"batch_{k}.npy"
            with atomic_path(target) as tmp, open(tmp, "wb") as fh:
                np.save(fh, arr)
            if written < WARN_BYTES <= written + arr.nbytes:
                log.warning(
                    "dump of %s has passed %.1f GB (%d tensors x %d inputs); --layers, --float16 or a "
                    "smaller --limit make it smaller", Path(model_path).name, WARN_BYTES / 1e9, len(names),
                    len(inputs),
                )  # fmt: skip
            written += arr.nbytes
            entry.shapes.append(list(arr.shape))
            entry.dtype = str(arr.dtype)
    index = list(entries.values())
    write_json_atomic(
        out_dir / INDEX_FILE,
        {"model": str(model_path), "samples": len(inputs), "tensors": [asdict(e) for e in index]},
    )
    return index


def _op(view: GraphView, name: str) -> str:
    node = view.producer.get(name)
    return node.op_type if node is not None else "input"


def dump_pair(
    float_path: str | Path,
    quant_path: str | Path,
    inputs: Sequence[np.ndarray | Feeds],
    out_dir: str | Path,
    *,
    chunk_size: int = DEFAULT_CHUNK,
    threads: int = 0,
    progress: bool = True,
    layers: Sequence[str] = (),
    float16: bool = False,
) -> dict:
    """Dump both models under ``float/`` and ``quant/`` and write ``index.json`` pairing the tensors
    (the matched ones, or those of the float tensors ``layers`` selects)."""
    out_dir = Path(out_dir)
    float_model = load_model(float_path)
    match = match_tensors(float_model, load_model(quant_path))
    view = GraphView(float_model)
    picked = set(select_tensors(view, [m.float_name for m in match.matches], layers, float_path))
    kept = [m for m in match.matches if m.float_name in picked]
    common = {"chunk_size": chunk_size, "threads": threads, "progress": progress, "float16": float16}
    # all of both graphs by default (the INT8 dump then also holds the integer QuantizeLinear outputs);
    # with --layers only the chosen pairs
    f_only = {m.float_name for m in kept} if layers else None
    q_only = {m.quant_name for m in kept} if layers else None
    f_index = {e.name: e for e in dump_model(float_path, inputs, out_dir / "float", only=f_only, **common)}
    q_index = {e.name: e for e in dump_model(quant_path, inputs, out_dir / "quant", only=q_only, **common)}
    pairs = [
        {
            "float": m.float_name,
            "quant": m.quant_name,
            "how": m.how,
            "op_type": m.op_type,
            "float_dir": f"float/{f_index[m.float_name].dir}",
            "quant_dir": f"quant/{q_index[m.quant_name].dir}",
            "depth": m.float_index,
        }
        for m in kept
        if m.float_name in f_index and m.quant_name in q_index
    ]
    index = {
        "float_model": str(float_path),
        "quant_model": str(quant_path),
        "samples": len(inputs),
        "pairs": pairs,
        "unmatched": match.unmatched,
    }
    write_json_atomic(out_dir / PAIR_INDEX_FILE, index)
    return index


def read_pair_index(dump_dir: str | Path) -> dict:
    """The ``index.json`` of a ``dump_pair`` directory, or a one-line error saying what is wrong."""
    path = Path(dump_dir) / PAIR_INDEX_FILE
    if not path.is_file():
        raise OcrQuantError(
            f"not a float/INT8 dump directory (no {PAIR_INDEX_FILE}); make one with "
            "'ocrquant dump --model F --quant Q'",
            dump_dir,
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise OcrQuantError(f"corrupt dump index: {exc}", path) from None
