"""Dump every intermediate tensor of a model to ``.npy`` files, in bounded memory.

Layout: ``OUT/<index>__<safe name>/batch_<k>.npy`` (see :func:`safe_tensor_dirname`) plus
``OUT/tensors.json``. Memory stays bounded because the model is run once per *chunk* of tensors,
with only that chunk exposed as extra graph outputs, and each output is written to disk as soon as
the run returns: a 512x896 detection input never has all its activations in RAM at once.
``dump_pair`` dumps a float and an INT8 model side by side with ``index.json`` matching them.
"""

from __future__ import annotations

import json
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

DEFAULT_CHUNK = 0  # 0 = choose from the input size (see auto_chunk_size)
MEMORY_BUDGET = 1 << 30  # bytes of exposed tensors per run that auto_chunk_size aims for
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


def dump_model(
    model_path: str | Path,
    inputs: Sequence[np.ndarray | Feeds],
    out_dir: str | Path,
    *,
    chunk_size: int = DEFAULT_CHUNK,
    include_weights: bool = False,
    threads: int = 0,
    progress: bool = True,
) -> list[DumpEntry]:
    """Write every activation of ``model_path`` for each input; return (and save) the index.

    ``include_weights`` also dumps dequantized weights (DQ nodes of initializers), off by default
    because they do not depend on the input.
    """
    out_dir = Path(out_dir)
    model = load_model(model_path)
    view = GraphView(model)
    names = view.activation_tensors(include_weights=include_weights)
    if not inputs:
        raise OcrQuantError("no inputs to dump (empty dataset or --limit 0)")
    entries = {
        name: DumpEntry(i, name, safe_tensor_dirname(i, name), _op(view, name), [], "")
        for i, name in enumerate(names)
    }
    desc = f"dump {Path(model_path).name}" if progress else None
    for k, arrays in iter_tensor_chunks(model_path, names, inputs, chunk_size, threads, desc):
        for name, arr in arrays.items():
            entry = entries[name]
            target = out_dir / entry.dir / f"batch_{k}.npy"
            with atomic_path(target) as tmp, open(tmp, "wb") as fh:
                np.save(fh, arr)
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
) -> dict:
    """Dump both models under ``float/`` and ``quant/`` and write ``index.json`` pairing the tensors."""
    out_dir = Path(out_dir)
    match = match_tensors(load_model(float_path), load_model(quant_path))
    f_index = {
        e.name: e
        for e in dump_model(
            float_path, inputs, out_dir / "float", chunk_size=chunk_size, threads=threads, progress=progress
        )
    }
    q_index = {
        e.name: e
        for e in dump_model(
            quant_path, inputs, out_dir / "quant", chunk_size=chunk_size, threads=threads, progress=progress
        )
    }
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
        for m in match.matches
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
