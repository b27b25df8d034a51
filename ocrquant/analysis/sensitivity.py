"""Per-layer quantization sensitivity: which Conv/MatMul/Gemm layers cost task accuracy in INT8.

Two questions, one row per quantized layer:

* ``only-float``: the INT8 model as configured, with *only this layer* kept float. The gain over the
  INT8 model is what excluding the layer buys (the direct input of the mixed-precision search).
* ``only-quantized``: the float model with *only this layer* quantized. The drop from FP32 is the
  error the layer adds by itself, free of interactions with the others.

Each row gives the task's primary metric with that choice, its delta, the SNR of the final model
output against FP32 and the latency cost of keeping the layer float.

**Validation data is not the test set.** By default the validation subset is drawn (seeded) from the
*calibration* directory's samples that the calibration pick did not use: the same
``sample_calibration(dataset, calib_size, seed)`` call as the quantization pipeline decides which
images calibrate, and the validation images are drawn from the rest (compared by image file, so a
cls set derived from rec crops never sees one crop in both roles). Decisions made on this subset may
then be confirmed on a test set once.

**What "keeping a layer float" means** (``granularity``):

* ``block`` (default): the layer and its activation nodes up to the next layer (PP-OCR: the
  decomposed HardSwish, SE gate, residual Add) are excluded, so the tensors between two float layers
  carry no Q/DQ at all; a tensor keeps its Q/DQ only while a quantized node still reads or writes it.
* ``layer``: only the Conv/MatMul node is excluded; its input and output stay quantized because its
  quantized neighbours keep them, so only the weight rounding goes away. On PP-OCRv3 rec this
  recovers almost nothing (the loss is in the activations), which is why ``block`` is the default.

**How variants are made.** Re-running the quantization pipeline per layer would repeat its float
stage (HS-CLE statistics, ~30 s for PP-OCRv3 rec) ~100 times. Instead the pipeline runs twice: once as
configured (the INT8 model) and once with every node excluded but one data-movement node (the
pipeline's float graph: same node names, same HS-CLE-scaled weights). A variant is then an edit of
the INT8 graph: float nodes read the float weights instead of ``DequantizeLinear(int8)``, Relu/Clip
nodes ORT's quantizer folded into a QuantizeLinear are put back inside float blocks, and Q/DQ pairs
on tensors that no quantized node touches any more are bypassed. The result is the graph the
pipeline writes with ``QuantConfig(exclude=builder.float_nodes(layers))`` (tested on PP-OCRv3 cls
for both granularities, outputs equal to 1e-5). "Only this layer quantized" is built the other way:
the float graph with the INT8 model's Q/DQ copied onto that layer's inputs, weights and output.

Unused Q/DQ nodes and initializers are removed, so a variant also times like the real model. The
mixed-precision search (:mod:`ocrquant.tuning.budget`) re-quantizes its final choice
through the pipeline and reports that model's figures.

Latency cost of keeping a layer float: either measured (``latency="measure"``: the INT8 model and the
variant timed interleaved) or estimated (``latency="estimate"``, default): the layer's MACs times a
measured ms/MAC = (latency with every layer float - INT8 latency) / MACs of all quantized layers, both
timed interleaved. The estimate is what a 2-core shared machine can resolve; per-layer differences of
0.1 ms are below its noise.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper
from tqdm import tqdm

from ocrquant.analysis.compare import ErrorStats
from ocrquant.analysis.graph import with_outputs
from ocrquant.data import Sample, readable_images
from ocrquant.errors import OcrQuantError
from ocrquant.evaluation.significance import paired_stats_interval
from ocrquant.fileio import write_json_atomic
from ocrquant.quantization.algorithms.hs_cle import GATE_SUFFIX
from ocrquant.runtime import RuntimeOptions, create_runner
from ocrquant.runtime.timing import interleaved_latency

log = logging.getLogger("ocrquant")

LAYER_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
MODES = ("only-float", "only-quantized")
LATENCY_SOURCES = ("estimate", "measure", "none")
GRANULARITIES = ("block", "layer")
RANKINGS = ("metric", "fidelity", "snr")
Q_OPS = ("QuantizeLinear", "DequantizeLinear")
FLOAT_SUFFIX = "__float"
PASSTHROUGH_OPS = ("Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten")
KEEPER_FALLBACK_OPS = ("Concat", "Resize", "MaxPool", "GlobalAveragePool", "Sigmoid")
#: variants built and handed to the scorer at a time: enough to keep a few workers busy, few enough
#: that the models held at once stay small (PP-OCRv3 rec: ~10 MB each)
PROBE_CHUNK = 8


# ------------------------------------------------------------------------------------ graph variants
def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in model.graph.node for o in n.output if o}


def quantized_layers(qmodel: onnx.ModelProto) -> list[str]:
    """Names of the Conv/ConvTranspose/MatMul/Gemm nodes that read at least one DequantizeLinear
    output (the layers the configured INT8 model runs in integer arithmetic), in graph order."""
    prod = _producers(qmodel)
    out = []
    for node in qmodel.graph.node:
        if node.op_type not in LAYER_OPS:
            continue
        if any(i in prod and prod[i].op_type == "DequantizeLinear" for i in node.input[:2] if i):
            out.append(node.name)
    return out


def _dequantize(model_inits: dict[str, onnx.TensorProto], dq: onnx.NodeProto) -> np.ndarray:
    """The value a DequantizeLinear of an initializer produces (fallback when no float twin exists)."""
    q = numpy_helper.to_array(model_inits[dq.input[0]]).astype(np.float64)
    scale = numpy_helper.to_array(model_inits[dq.input[1]]).astype(np.float64)
    zp = (
        numpy_helper.to_array(model_inits[dq.input[2]]).astype(np.float64)
        if len(dq.input) > 2 and dq.input[2]
        else np.zeros_like(scale)
    )
    axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
    if scale.ndim == 1 and scale.size > 1:
        shape = [1] * q.ndim
        shape[axis % q.ndim] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    return ((q - zp) * scale).astype(np.float32)


class VariantBuilder:
    """Mixed-precision variants of one pipeline-written QDQ model (see the module doc).

    ``reference`` is the same pipeline's output with every node excluded: it holds the float weights
    under the names the QDQ model's ``<name>_quantized`` initializers came from.
    """

    def __init__(
        self, quantized: onnx.ModelProto, reference: onnx.ModelProto, granularity: str = "block"
    ) -> None:
        if granularity not in GRANULARITIES:
            raise OcrQuantError(f"unknown granularity '{granularity}' (known: {', '.join(GRANULARITIES)})")
        self.granularity = granularity
        self.base = quantized
        self.reference = reference
        self.float_inits = {i.name: i for i in reference.graph.initializer}
        self.layers = quantized_layers(quantized)
        if not self.layers:
            raise OcrQuantError("the quantized model has no quantized Conv/MatMul/Gemm layer")
        if granularity == "block":  # an HS-CLE gate is part of its producer's layer (see block())
            self.layers = [x for x in self.layers if self._gate_owner(x) not in self.layers]
        self.op_types = {n.name: n.op_type for n in quantized.graph.node}
        self._check_reference()
        self._ref_prod = _producers(reference)
        self._ref_cons: dict[str, list[onnx.NodeProto]] = {}
        for n in reference.graph.node:
            for i in n.input:
                self._ref_cons.setdefault(i, []).append(n)
        base_names = {n.name for n in quantized.graph.node}
        # Relu/Clip nodes ORT's quantizer deleted (their producer now writes their output name and the
        # following QuantizeLinear's range does the clipping): a float block must get them back.
        self._removed = {
            n.name: n
            for n in reference.graph.node
            if n.op_type in ("Relu", "Clip") and n.name not in base_names
        }
        prod = _producers(quantized)
        q_inputs = {n.input[0] for n in quantized.graph.node if n.op_type == "QuantizeLinear"}
        # the nodes ORT quantized: they read a DequantizeLinear or feed a QuantizeLinear
        self._selected = {
            n.name
            for n in quantized.graph.node
            if n.op_type not in Q_OPS
            and (
                any(prod.get(i) is not None and prod[i].op_type == "DequantizeLinear" for i in n.input)
                or any(o in q_inputs for o in n.output)
            )
        }
        # a deleted Relu/Clip was selected (ORT folds only selected activations); it counts as such
        # while its producer is quantized
        for name, r in self._removed.items():
            writer = prod.get(r.output[0])
            if writer is not None and writer.name in self._selected:
                self._selected.add(name)
        self._base_cons: dict[str, set[str]] = {}
        for n in quantized.graph.node:
            for i in n.input:
                self._base_cons.setdefault(i, set()).add(n.name)

    @staticmethod
    def _gate_owner(layer: str) -> str | None:
        """The producer Conv of an HS-CLE gate Conv, None for any other layer."""

        return layer[: -len(GATE_SUFFIX)] if layer.endswith(GATE_SUFFIX) else None

    def block(self, layer: str) -> list[str]:
        """``layer`` and the nodes after it up to the next layer (its activation: the HardSwish chain,
        SE gate, residual Add, ...), in the float graph. Keeping the block float keeps the layer's
        output activations float, not only its weights.

        The gate Conv HS-CLE writes into the layer's HardSwish belongs to the block: it is half of the
        activation, and splitting the two misleads the search. Measured on PP-OCRv3 rec (2000
        held-out crops, gates as separate layers): keeping ``Conv_3`` float with its gate quantized
        took accuracy from 0.6165 to 0.573, adding ``Conv_4``'s gate to a float ``Conv_4`` from 0.6035
        to 0.627."""
        names = [layer]
        if self.granularity == "layer":
            return names
        node = next(n for n in self.reference.graph.node if n.name == layer)
        frontier = [o for o in node.output if o]
        seen = {layer}
        while frontier:
            for c in self._ref_cons.get(frontier.pop(), []):
                if c.name in seen or c.op_type in Q_OPS:
                    continue
                if c.op_type in LAYER_OPS and self._gate_owner(c.name) != layer:
                    continue
                seen.add(c.name)
                names.append(c.name)
                frontier.extend(o for o in c.output if o)
        return names

    def float_nodes(self, layers: Iterable[str]) -> list[str]:
        """The node names a set of float layers keeps float (``QuantConfig.exclude`` for the pipeline)."""
        out: list[str] = []
        for layer in layers:
            out.extend(n for n in self.block(layer) if n not in out)
        return out

    def _check_reference(self) -> None:
        """The float weights must be the ones the INT8 weights were rounded from (same HS-CLE scaling);
        a mismatch means the two pipeline runs prepared different float graphs."""
        inits = {i.name: i for i in self.base.graph.initializer}
        prod = _producers(self.base)
        for node in self.base.graph.node:
            if node.name not in self.layers or node.op_type not in LAYER_OPS or len(node.input) < 2:
                continue
            dq = prod.get(node.input[1])
            if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
                continue
            name = dq.input[0].removesuffix("_quantized")
            if name not in self.float_inits:
                raise OcrQuantError(f"reference model lacks the float weight {name} of layer {node.name}")
            w = numpy_helper.to_array(self.float_inits[name]).astype(np.float32)
            deq = _dequantize(inits, dq)
            scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64)
            if w.shape != deq.shape or float(np.abs(w - deq).max()) > float(scale.max()) * 0.51 + 1e-6:
                raise OcrQuantError(
                    f"float weight {name} of layer {node.name} does not round to the INT8 weight: the "
                    "reference and INT8 runs prepared different float graphs"
                )

    def build(self, float_layers: Iterable[str] = (), only_quantized: str | None = None) -> onnx.ModelProto:
        """The INT8 model with ``float_layers`` kept float, or (``only_quantized``) the float model
        with only that layer quantized."""
        float_set = set(float_layers)
        unknown = (float_set | ({only_quantized} if only_quantized else set())) - set(self.layers)
        if unknown:
            raise OcrQuantError(f"not a quantized layer of this model: {', '.join(sorted(unknown))}")
        if only_quantized is not None:
            return self._only_quantized(only_quantized)
        m = onnx.ModelProto()
        m.CopyFrom(self.base)
        inits = {i.name: i for i in m.graph.initializer}
        prod = _producers(m)
        added: set[str] = set()
        float_nodes = set(self.float_nodes(float_set))
        for node in m.graph.node:
            if node.name not in float_nodes:
                continue
            for slot, name in enumerate(node.input):
                dq = prod.get(name)
                if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
                    continue
                # a constant shared with a still-quantized node keeps its single DQ for every reader
                if self._base_cons.get(name, set()) <= float_nodes:
                    node.input[slot] = self._float_init(m, inits, dq, added)
        if self.granularity == "block" and float_nodes:
            self._restore_removed(m, float_nodes)
            self._bypass_unneeded_qdq(m, float_nodes)
        _prune(m)
        return m

    def _restore_removed(self, m: onnx.ModelProto, float_nodes: set[str]) -> None:
        """Put back the deleted Relu/Clip nodes of the float blocks, as the pipeline's graph has them."""
        inits = {i.name for i in m.graph.initializer}
        restore = {r.output[0]: r for name, r in self._removed.items() if name in float_nodes}
        if not restore:
            return
        nodes: list[onnx.NodeProto] = []
        for node in m.graph.node:
            new = onnx.NodeProto()
            new.CopyFrom(node)
            nodes.append(new)
            for o in [o for o in node.output if o in restore]:
                r = restore[o]
                new.output[:] = [r.input[0] if x == o else x for x in new.output]
                act = onnx.NodeProto()
                act.CopyFrom(r)
                for b in act.input[1:]:
                    if b and b not in inits:
                        t = onnx.TensorProto()
                        t.CopyFrom(self.float_inits[b])
                        m.graph.initializer.append(t)
                        inits.add(b)
                nodes.append(act)
        del m.graph.node[:]
        m.graph.node.extend(nodes)

    def _bypass_unneeded_qdq(self, m: onnx.ModelProto, float_nodes: set[str]) -> None:
        """Remove the Q/DQ pairs the pipeline would not write once ``float_nodes`` are excluded: those on
        tensors that no still-quantized node produces or reads (ORT quantizes a tensor for the sake of
        a selected node)."""
        selected = self._selected - float_nodes
        prod = _producers(m)
        inits = {i.name for i in m.graph.initializer}
        for node in m.graph.node:
            if node.op_type in Q_OPS:
                continue
            for slot, name in enumerate(node.input):
                dq = prod.get(name)
                q = prod.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
                if q is None or q.op_type != "QuantizeLinear" or q.input[0] in inits:
                    continue
                a = q.input[0]
                touching = {self._ref_prod[a].name} if a in self._ref_prod else set()
                touching |= {c.name for c in self._ref_cons.get(a, [])}
                if not touching & selected:
                    node.input[slot] = a

    def _float_init(
        self, m: onnx.ModelProto, inits: dict[str, onnx.TensorProto], dq: onnx.NodeProto, added: set[str]
    ) -> str:
        """The float twin of a dequantized initializer, added to ``m`` once."""
        name = dq.input[0].removesuffix("_quantized")
        new = name + FLOAT_SUFFIX
        if new not in added:
            if name in self.float_inits:
                t = onnx.TensorProto()
                t.CopyFrom(self.float_inits[name])
                t.name = new
            else:  # a constant the reference run did not keep float: its dequantized value
                t = numpy_helper.from_array(_dequantize(inits, dq), new)
            m.graph.initializer.append(t)
            added.add(new)
        return new

    def _only_quantized(self, layer: str) -> onnx.ModelProto:
        """The reference (float) graph with the INT8 model's Q/DQ copied onto ``layer``'s inputs,
        weights and output.

        Built from the float graph, not by stripping the INT8 one: ORT's quantizer deletes a Relu/Clip
        whose range the following QuantizeLinear enforces, so an INT8 graph without its Q/DQ would lose
        those activations.
        """
        m = onnx.ModelProto()
        m.CopyFrom(self.reference)
        _strip_qdq(m)
        base_inits = {i.name: i for i in self.base.graph.initializer}
        base_prod = _producers(self.base)
        base_node = next(n for n in self.base.graph.node if n.name == layer)
        node = next((n for n in m.graph.node if n.name == layer), None)
        if node is None or len(node.input) != len(base_node.input):
            raise OcrQuantError(f"layer {layer} differs between the INT8 and the reference graph")
        new_nodes: list[onnx.NodeProto] = []

        def copy_init(name: str) -> str:
            if name and name not in {i.name for i in m.graph.initializer}:
                t = onnx.TensorProto()
                t.CopyFrom(base_inits[name])
                m.graph.initializer.append(t)
            return name

        def qdq(tensor: str, q: onnx.NodeProto, dq: onnx.NodeProto, tag: str) -> str:
            """Q -> DQ on ``tensor`` with the INT8 model's parameters; returns the DQ output."""
            params = [copy_init(x) for x in q.input[1:]]
            qn = onnx.NodeProto()
            qn.CopyFrom(q)
            qn.name, qn.input[:], qn.output[:] = f"{q.name}{tag}", [tensor, *params], [f"{tensor}{tag}_q"]
            dn = onnx.NodeProto()
            dn.CopyFrom(dq)
            dn.name = f"{dq.name}{tag}"
            dn.input[:] = [qn.output[0], *[copy_init(x) for x in dq.input[1:]]]
            dn.output[:] = [f"{tensor}{tag}_dq"]
            new_nodes.extend([qn, dn])
            return dn.output[0]

        for slot, name in enumerate(base_node.input):
            dq = base_prod.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            if dq.input[0] in base_inits:  # weight / bias: the INT8 initializer and its DQ
                d = onnx.NodeProto()
                d.CopyFrom(dq)
                d.name = f"{dq.name}__only"
                d.input[:] = [copy_init(x) for x in dq.input]
                d.output[:] = [f"{dq.output[0]}__only"]
                new_nodes.append(d)
                node.input[slot] = d.output[0]
            else:
                q = base_prod.get(dq.input[0])
                if q is not None and q.op_type == "QuantizeLinear":
                    node.input[slot] = qdq(node.input[slot], q, dq, f"__in{slot}")
        out_q = next(
            (
                n
                for n in self.base.graph.node
                if n.op_type == "QuantizeLinear" and n.input[0] in base_node.output
            ),
            None,
        )
        if out_q is not None:
            out_dq = next(
                n
                for n in self.base.graph.node
                if n.op_type == "DequantizeLinear" and out_q.output[0] in n.input
            )
            y = node.output[0]
            consumers = [n for n in m.graph.node if y in n.input]
            dq_out = qdq(y, out_q, out_dq, "__out")
            for c in consumers:
                c.input[:] = [dq_out if i == y else i for i in c.input]
        # insert the new nodes right after the layer (inputs' Q/DQ before it: a topological order)
        pos = list(m.graph.node).index(node)
        before = [n for n in new_nodes if "__out" not in n.name]
        after = [n for n in new_nodes if "__out" in n.name]
        nodes = list(m.graph.node)
        nodes[pos : pos + 1] = [*before, node, *after]
        del m.graph.node[:]
        m.graph.node.extend(nodes)
        _prune(m)
        return m

    def save(
        self, path: str | Path, float_layers: Iterable[str] = (), only_quantized: str | None = None
    ) -> Path:
        path = Path(path)
        onnx.save(self.build(float_layers, only_quantized), str(path))
        return path


def _strip_qdq(model: onnx.ModelProto) -> None:
    """Bypass every activation Q -> DQ pair (consumers read the float tensor); pruning removes them."""
    prod = _producers(model)
    for node in model.graph.node:
        if node.op_type in Q_OPS:
            continue
        for slot, name in enumerate(node.input):
            dq = prod.get(name)
            q = prod.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[slot] = q.input[0]
    _prune(model)


def _prune(model: onnx.ModelProto) -> None:
    """Drop nodes whose outputs nobody reads, then initializers nobody reads (ORT warns about each)."""
    graph_outputs = {o.name for o in model.graph.output}
    while True:
        used = {i for n in model.graph.node for i in n.input} | graph_outputs
        dead = [n for n in model.graph.node if not any(o in used for o in n.output if o)]
        if not dead:
            break
        for n in dead:
            model.graph.node.remove(n)
    used = {i for n in model.graph.node for i in n.input} | graph_outputs
    keep = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


# ------------------------------------------------------------------------------------ scoring
@dataclass
class Score:
    """One model on the validation subset: the task's primary metric (0..1), the output SNR and the
    fidelity (the primary metric scored against the FP32 model's own predictions)."""

    metric: float
    metrics: dict[str, float]
    snr_db: float | None
    fidelity: float | None = None
    # per-sample ``metric.sample_stats`` rows in validation order (None: the metric has none, or the
    # labels were not scored): what the paired spread of a variant's drop is resampled from
    stats: np.ndarray | None = field(default=None, repr=False)


@dataclass(frozen=True)
class ValidatorSpec:
    """What a :class:`Validator` is made from, picklable: a worker process or a Ray node that gets it
    makes the same validator (same images, same FP32 reference) and so the same scores. The model and
    the images are read by path (on a cluster, from a file system every node sees)."""

    task: Any
    samples: tuple[Sample, ...]
    float_model: str
    threads: int = 2
    snr_samples: int = 64
    metric: bool = True
    optimization: str = "all"

    def build(self, progress: bool = False) -> Validator:
        return Validator(
            self.task,
            list(self.samples),
            self.float_model,
            threads=self.threads,
            snr_samples=self.snr_samples,
            metric=self.metric,
            optimization=self.optimization,
            progress=progress,
        )


#: scores of named variants, in order (:func:`analyze_layers`'s ``scorer``)
Scorer = Callable[[list[tuple[str, onnx.ModelProto]]], list[Score]]


class Validator:
    """The validation subset decoded and preprocessed once, scored against FP32 for every variant.

    Images run one per model call (as ``evaluate`` with batch size 1, the setting of the verified
    FP32 figures). The FP32 outputs of the first ``snr_samples`` images are kept for the SNR of the
    final model output (sum over those images of x^2 / (x - y)^2, x FP32, y the variant), and the
    FP32 predictions of every image for the fidelity (see :func:`ocrquant.evaluation.fidelity`).
    """

    def __init__(
        self,
        task: Any,
        samples: list[Sample],
        float_model: str | Path,
        *,
        threads: int = 2,
        snr_samples: int = 64,
        metric: bool = True,
        optimization: str = "all",
        progress: bool = True,
    ) -> None:

        self.spec = ValidatorSpec(
            task, tuple(samples), str(float_model), threads, snr_samples, metric, optimization
        )
        self.task = task
        self.optimization = optimization  # ORT graph optimization: "all" runs the fused integer kernels
        self.float_model_path = Path(float_model)
        self.threads = threads
        self.use_metric = metric
        self.progress = progress
        self.items = []
        bar = tqdm(samples, desc="validation images", disable=not progress, leave=False)
        for s, image in readable_images(bar):
            self.items.append((s, task.preprocess([image])))
        self.snr_count = min(snr_samples, len(self.items))
        self.reference: list[list[np.ndarray]] = []
        self.predictions: list[Any] = []  # the FP32 model's post-processed prediction per image
        self.fp32 = self.score(float_model, _keep_reference=True)

    def runner(self, model: str | Path) -> Any:

        options = RuntimeOptions(threads=self.threads, spinning=False, optimization=self.optimization)
        return create_runner(model, "onnxruntime", options)

    def score(self, model: str | Path, *, _keep_reference: bool = False) -> Score:

        runner = self.runner(model)
        name = runner.input_names[0]
        metric = self.task.new_metric()
        agreement = self.task.new_metric()  # against the FP32 predictions
        err = ErrorStats()
        rows: list[list[float]] = []
        items = self.items if self.use_metric else self.items[: self.snr_count]
        for i, (sample, batch) in enumerate(items):
            outputs = runner.run({name: batch.inputs})
            if i < self.snr_count:
                if _keep_reference:
                    self.reference.append([np.array(o, copy=True) for o in outputs])
                else:
                    for x, y in zip(self.reference[i], outputs, strict=True):
                        err.update(x, y)
            if self.use_metric:
                prediction = self.task.postprocess(outputs, batch)[0]
                own = metric.update(prediction, sample.target)
                if metric.stat_names:
                    rows.append(metric.sample_stats(own))
                if _keep_reference:
                    self.predictions.append(prediction)
                else:
                    agreement.update(prediction, agreement.target_from_prediction(self.predictions[i]))
        figures = metric.result() if self.use_metric else {}
        primary = float(figures.get(metric.primary, math.nan)) if self.use_metric else math.nan
        snr = None if _keep_reference or err.n == 0 else err.snr_db
        fid = None
        if self.use_metric and not _keep_reference:
            fid = float(agreement.result()[agreement.primary])
        stats = np.asarray(rows, dtype=float) if rows else None
        return Score(primary, {k: float(v) for k, v in figures.items()}, snr, fid, stats)

    def score_models(self, named: list[tuple[str, onnx.ModelProto]]) -> list[Score]:
        """Score in-memory models one after another here (the default :data:`Scorer`)."""
        scores = []
        with tempfile.TemporaryDirectory(prefix="ocrquant-variant-") as tmp:
            path = Path(tmp) / "variant.onnx"
            for _, model in named:
                onnx.save(model, str(path))
                scores.append(self.score(path))
        return scores

    def drop_se_points(self, score: Score) -> float | None:
        """Standard error, in points, of ``score``'s drop below FP32 on data like the validation
        subset: a paired bootstrap over its samples (both models on the same resample).

        Why: a set whose drop is within budget on these samples may not be on the next ones; the
        spread shrinks as the variant's predictions approach FP32's (only samples on which the two
        disagree move the difference), which is what the ``--max-drop`` search's confidence margin
        rewards. None when the metric has no per-sample counts.
        """

        if score.stats is None or self.fp32.stats is None:
            return None
        iv = paired_stats_interval(self.task.new_metric(), self.fp32.stats, score.stats, resamples=1000)
        return 100.0 * iv["se"]

    def bench_inputs(self, count: int = 4) -> list[np.ndarray]:
        """A few validation inputs spread over the subset, for latency measurements."""
        if not self.items:
            return []
        step = max(1, len(self.items) // count)
        return [self.items[i][1].inputs for i in range(0, len(self.items), step)][:count]


def time_models(
    models: dict[str, Path], inputs: list[np.ndarray], threads: int = 2, rounds: int = 5
) -> dict[str, float]:
    """Median latency of one model call (ms, over every input and round) per model, all models
    interleaved in every round."""

    lat = interleaved_latency(models, inputs, threads=threads, rounds=rounds, warmup=1)
    return {k: v.median_ms for k, v in lat.items()}


def layer_macs(model: onnx.ModelProto, layers: list[str], x: np.ndarray) -> dict[str, int]:
    """Multiply-accumulates of each layer for input ``x`` (shapes observed by running the model)."""

    nodes = {n.name: n for n in model.graph.node if n.name in layers}
    inits = {i.name: i for i in model.graph.initializer}
    prod = _producers(model)
    wanted: list[str] = []
    for n in nodes.values():
        for t in (n.input[0], n.output[0], n.input[1] if n.op_type in ("MatMul", "Gemm") else ""):
            if t and t not in inits and t not in wanted:
                wanted.append(t)

    probe = with_outputs(model, wanted, {t: onnx.TensorProto.FLOAT for t in wanted})
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    sess = ort.InferenceSession(probe.SerializeToString(), so, providers=["CPUExecutionProvider"])
    values = dict(zip(wanted, sess.run(wanted, {sess.get_inputs()[0].name: x}), strict=True))

    def weight_shape(name: str) -> tuple[int, ...]:
        if name in inits:
            return tuple(inits[name].dims)
        node = prod.get(name)
        if node is not None and node.op_type == "DequantizeLinear" and node.input[0] in inits:
            return tuple(inits[node.input[0]].dims)
        return tuple(values[name].shape) if name in values else ()

    macs: dict[str, int] = {}
    for name, n in nodes.items():
        out = values[n.output[0]].shape
        w = weight_shape(n.input[1]) if len(n.input) > 1 else ()
        if n.op_type == "Conv":  # W (M, C/g, k...): every output element reduces over C/g x k
            macs[name] = int(np.prod(out)) * int(np.prod(w[1:]))
        elif n.op_type == "ConvTranspose":  # W (C, M/g, k...): every input element scatters M/g x k
            macs[name] = int(np.prod(values[n.input[0]].shape)) * int(np.prod(w[1:]))
        else:  # MatMul / Gemm: output elements x reduction length
            a = values[n.input[0]].shape
            trans_a = any(at.name == "transA" and at.i for at in n.attribute)
            k = a[-2] if trans_a else a[-1]
            macs[name] = int(np.prod(out)) * int(k)
    return macs


# ------------------------------------------------------------------------------------ the analysis
@dataclass
class LayerSensitivity:
    name: str
    op_type: str
    depth: int  # position among the quantized layers (graph order)
    macs: int | None
    metric: float | None  # primary metric with this choice (0..1)
    delta_points: float | None  # 100 x (metric - the mode's baseline)
    snr_db: float | None  # final model output vs FP32
    latency_cost_ms: float | None  # keeping the layer float, vs the INT8 model
    fidelity: float | None = None  # primary metric against the FP32 model's predictions (0..1)


@dataclass
class SensitivityResult:
    task: str
    model: str
    mode: str
    metric_name: str
    fp32_metric: float
    int8_metric: float
    int8_snr_db: float | None
    latency_source: str
    latency_ms: dict[str, float]  # fp32, int8, all_float (the INT8 pipeline with every layer float)
    ms_per_mac: float | None
    validation: dict[str, Any]
    rows: list[LayerSensitivity]
    settings: dict[str, Any] = field(default_factory=dict)
    rank_by: str = "metric"  # metric | fidelity | snr (each broken by the SNR, then the metric)

    def sensitivity(self, row: LayerSensitivity, by: str = "metric") -> tuple[float, ...]:
        """Larger = more sensitive. only-float: the gain from floating the layer; only-quantized: the
        drop it causes alone. The SNR breaks ties (the metric moves in steps of one image)."""
        d = row.delta_points if row.delta_points is not None else 0.0
        s = row.snr_db if row.snr_db is not None and math.isfinite(row.snr_db) else 0.0
        f = row.fidelity if row.fidelity is not None else 0.0
        key = {"metric": (d, s), "snr": (s, d), "fidelity": (f, s, d)}[by]
        return key if self.mode == "only-float" else tuple(-k for k in key)

    def ranked(self, by: str | None = None) -> list[LayerSensitivity]:
        by = by or self.rank_by
        if by not in RANKINGS:
            raise OcrQuantError(f"unknown ranking '{by}' (known: {', '.join(RANKINGS)})")
        return sorted(self.rows, key=lambda r: self.sensitivity(r, by), reverse=True)

    def ranking(self, by: str | None = None) -> list[str]:
        return [r.name for r in self.ranked(by)]

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["ranking"] = self.ranking()
        return json_safe(d)

    def save(self, path: str | Path) -> Path:
        write_json_atomic(path, self.to_json())
        return Path(path)


def json_safe(obj: Any) -> Any:
    """JSON has no infinity or NaN: such floats (an exact match's SNR) are written as null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [json_safe(v) for v in obj]
    return obj


def analyze_layers(
    builder: VariantBuilder,
    validator: Validator,
    int8_model: Path,
    *,
    mode: str = "only-float",
    latency: str = "estimate",
    work_dir: Path,
    layers: list[str] | None = None,
    rounds: int = 5,
    on_row: Callable[[LayerSensitivity], None] | None = None,
    scorer: Scorer | None = None,
) -> SensitivityResult:
    """Score every quantized layer in ``mode`` (see the module doc); the library core of the command.
    ``scorer``: where the variants are scored, :data:`PROBE_CHUNK` at a time (the tuning layer's
    executor: local processes or a Ray cluster); None: one after another with ``validator``."""

    if mode not in MODES:
        raise OcrQuantError(f"unknown sensitivity mode '{mode}' (known: {', '.join(MODES)})")
    if latency not in LATENCY_SOURCES:
        raise OcrQuantError(f"unknown latency source '{latency}' (known: {', '.join(LATENCY_SOURCES)})")
    layers = list(builder.layers if layers is None else layers)
    int8 = validator.score(int8_model)
    inputs = validator.bench_inputs()
    all_float = builder.save(work_dir / "all_float.onnx", float_layers=builder.layers)
    lat_ms: dict[str, float] = {}
    ms_per_mac = None
    macs = layer_macs(builder.base, builder.layers, inputs[0]) if inputs else {}
    if latency != "none" and inputs:
        lat_ms = time_models(
            {"fp32": validator.float_model_path, "int8": int8_model, "all_float": all_float},
            inputs,
            validator.threads,
            rounds,
        )
        total = sum(macs.values())
        ms_per_mac = (lat_ms["all_float"] - lat_ms["int8"]) / total if total else None
    baseline = int8.metric if mode == "only-float" else validator.fp32.metric
    rows = []
    position = {n: i for i, n in enumerate(builder.layers)}
    score_many = scorer or validator.score_models

    def variant(name: str) -> onnx.ModelProto:
        return (
            builder.build(float_layers=[name]) if mode == "only-float" else builder.build(only_quantized=name)
        )

    bar = tqdm(total=len(layers), desc=f"sensitivity ({mode})", disable=not validator.progress, leave=False)
    for start in range(0, len(layers), PROBE_CHUNK):
        named = [(n, variant(n)) for n in layers[start : start + PROBE_CHUNK]]
        for (name, model), s in zip(named, score_many(named), strict=True):
            cost = None
            if latency == "measure" and inputs:
                fl = work_dir / "float_one.onnx"  # the only-float variant is that model: not built twice
                if mode == "only-float":
                    onnx.save(model, str(fl))
                else:
                    builder.save(fl, float_layers=[name])
                t = time_models({"int8": int8_model, "float": fl}, inputs, validator.threads, rounds)
                cost = t["float"] - t["int8"]
            elif latency == "estimate" and ms_per_mac is not None and name in macs:
                cost = macs[name] * ms_per_mac
            row = LayerSensitivity(
                name,
                builder.op_types[name],
                position[name],
                macs.get(name),
                None if math.isnan(s.metric) else s.metric,
                None if math.isnan(s.metric) else 100.0 * (s.metric - baseline),
                s.snr_db,
                cost,
                s.fidelity,
            )
            rows.append(row)
            bar.update(1)
            if on_row is not None:
                on_row(row)
    bar.close()
    return SensitivityResult(
        task=validator.task.name,
        model="",
        mode=mode,
        metric_name=validator.task.new_metric().primary,
        fp32_metric=validator.fp32.metric,
        int8_metric=int8.metric,
        int8_snr_db=int8.snr_db,
        latency_source=latency,
        latency_ms=lat_ms,
        ms_per_mac=ms_per_mac,
        validation={},
        rows=rows,
    )
