"""Run a graph a stretch at a time over fixed batches, keeping only the tensors later nodes read.

Why: the layer-by-layer algorithms (bias correction) need one layer's output, then change that layer,
then need the next layer's output *as the changed model computes it*. Re-running the model from its
input for every layer costs the sum of all prefixes, about half a model run per layer: on PP-OCRv3 det
(64 corrected convs, 16 images) 1040 prefix runs, 52 s of onnxruntime and 15 s of decoding the same
images again. Walking forward instead runs every node about twice in all (once to measure a stretch,
once more after the change to move on), from the values already computed: the *frontier*, the tensors
computed so far that some later node still reads.

The values are the ones a run from the input gives: each stretch is a sub-graph of the same nodes
(same kernels, same initializers) fed the same input values; bias correction written either way gives
the same bytes (``tests/test_quantization.py::test_graph_walk_equals_runs_from_the_input_as_biases_change``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import onnx
import onnxruntime as ort

from ocrquant.errors import OcrQuantError
from ocrquant.quantization.calibration.stats import has_subgraphs, observed_model, observer_session

#: bytes of values a walk may hold (its input batches and frontier); past it the walk stops cutting and
#: reads every tensor by a run from the input (one batch's activations alive at a time, each read
#: costing the model's prefix up to it). Bias correction over 16 det_train images (one per batch), 2-core AMX
#: Xeon: PP-OCRv3 det (544x960) holds at most 0.52 GB, peak resident 1.17 GB against 0.53 GB from the
#: input, 8 s against 67 s; PP-OCRv6 small det (736x1280) holds 1.03 GB, peak resident 1.97 GB, 25 s
#: (``/usr/bin/time -v ocrquant quantize -m ppocrv3-det --calib-data .../det_train --calib-size 140
#: --method percentile --percentile 99.99 --algo bias_correction -o ...``, calibration cached).
MAX_HELD_BYTES = 4 << 30


class GraphWalk:
    """A cursor over ``model``'s nodes (in their topological order) with the frontier's values for every
    batch. ``values`` reads tensors at or after the cursor without moving it; ``advance`` moves it past
    the nodes that produce the given tensors, computed with the model as it is *then* (initializers
    changed since are used). Graphs with control flow (If/Loop bodies read outer tensors implicitly)
    are not cut: every read runs the whole graph from its input; so is the rest of a walk whose values
    would pass ``max_bytes``."""

    def __init__(
        self, model: onnx.ModelProto, batches: Iterable[np.ndarray], max_bytes: int = MAX_HELD_BYTES
    ) -> None:
        self._nodes = list(model.graph.node)
        self._producer = {o: i for i, n in enumerate(self._nodes) for o in n.output if o}
        self._initializers = {i.name for i in model.graph.initializer}
        # last node index reading each tensor
        self._last_read: dict[str, int] = {}
        for i, n in enumerate(self._nodes):
            for t in n.input:
                if t:
                    self._last_read[t] = i
        # Nodes that read only initializers (weight and bias DequantizeLinear, Constant): never kept in
        # the frontier but run again inside every stretch that reads them, so a bias changed after the
        # walk passed its DequantizeLinear (quantizers often list those nodes first) is still seen.
        constant = set(self._initializers)
        self._constant_nodes: set[int] = set()
        for i, n in enumerate(self._nodes):
            if not n.op_type.startswith("Random") and all(t in constant for t in n.input if t):
                constant.update(o for o in n.output if o)
                self._constant_nodes.add(i)
        self._constant = constant - self._initializers
        inputs = [i.name for i in model.graph.input if i.name not in self._initializers]
        if len(inputs) != 1:
            raise OcrQuantError(f"a layer-by-layer walk needs a model with one input, not {len(inputs)}")
        self._input, self._inputs = inputs[0], list(batches)
        if not self._inputs:
            raise OcrQuantError("no calibration inputs")
        self._max_bytes = max_bytes
        self._cut = not has_subgraphs(model)
        self._cursor = 0
        self._frontier: dict[str, list[np.ndarray]] = {self._input: self._inputs}

    @property
    def num_batches(self) -> int:
        return len(self._inputs)

    @property
    def cuts(self) -> bool:
        """Whether reads run from the frontier (else from the model input)."""
        return self._cut

    def held(self) -> list[str]:
        """The tensors whose values the walk holds now (the frontier)."""
        return list(self._frontier)

    def held_bytes(self) -> int:
        """Bytes the walk holds now: its input batches and the frontier's values."""
        held = {id(a): a.nbytes for arrays in [self._inputs, *self._frontier.values()] for a in arrays}
        return sum(held.values())

    def _end(self, tensors: list[str]) -> int:
        """One past the last node that produces ``tensors`` (the cursor where they are all computed)."""
        ends = []
        for t in tensors:
            if t in self._frontier or t in self._constant:
                continue
            i = self._producer.get(t)
            if i is None:
                raise OcrQuantError(f"tensor '{t}' is not produced by the model")
            if i < self._cursor:
                raise OcrQuantError(f"tensor '{t}' was computed before the walk's cursor and not kept")
            ends.append(i + 1)
        return max(ends, default=self._cursor)

    def _stretch(
        self, model: onnx.ModelProto, end: int, outputs: list[str], all_nodes: bool
    ) -> onnx.ModelProto:
        """A model of nodes [cursor, end) (only those ``outputs`` depend on unless ``all_nodes``) and
        the constant nodes they read, fed by the frontier, with ``model``'s current initializers."""
        nodes = model.graph.node
        keep = set(range(self._cursor, end)) - self._constant_nodes if all_nodes else set()
        stack = list(outputs) + [t for i in keep for t in nodes[i].input]
        while stack:
            t = stack.pop()
            i = self._producer.get(t)
            if not t or t in self._frontier or i is None or i in keep:
                continue
            if i < self._cursor and i not in self._constant_nodes:
                continue  # reported below as a feed the frontier lacks
            keep.add(i)
            stack.extend(nodes[i].input)
        kept = [nodes[i] for i in sorted(keep)]
        made = {o for n in kept for o in n.output}
        read = {t for n in kept for t in n.input if t}
        feeds = sorted(read - made - self._initializers)
        missing = [t for t in feeds if t not in self._frontier]
        if missing:
            raise OcrQuantError(f"tensors {missing[:3]} are needed but were not kept by the walk")
        graph = onnx.helper.make_graph(
            kept,
            model.graph.name,
            [
                onnx.helper.make_tensor_value_info(
                    t, onnx.helper.np_dtype_to_tensor_dtype(self._frontier[t][0].dtype), None
                )
                for t in feeds
            ],
            [onnx.ValueInfoProto(name=t) for t in outputs],
            [i for i in model.graph.initializer if i.name in read],
        )
        sub = onnx.helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)
        sub.functions.extend(model.functions)
        return sub

    def _run(self, sub: onnx.ModelProto) -> Iterator[list[np.ndarray]]:
        sess = observer_session(sub, level=ort.GraphOptimizationLevel.ORT_ENABLE_BASIC)
        names = [i.name for i in sess.get_inputs()]
        outs = [o.name for o in sess.get_outputs()]
        for b in range(self.num_batches):
            yield sess.run(outs, {n: self._frontier[n][b] for n in names})

    def values(self, model: onnx.ModelProto, tensors: list[str]) -> Iterator[dict[str, np.ndarray]]:
        """``{tensor: value}`` per batch for ``tensors`` (at or after the cursor), the cursor left where
        it is."""
        if not self._cut:
            for outs in self._run(observed_model(model, tensors)):
                yield dict(zip(tensors, outs, strict=True))
            return
        # tensors the walk holds are read from it; the others from one stretch after the cursor
        todo = [t for t in tensors if t not in self._frontier]
        runs = self._run(self._stretch(model, self._end(todo), todo, all_nodes=False)) if todo else None
        for b in range(self.num_batches):
            got = dict(zip(todo, next(runs), strict=True)) if runs else {}
            yield {t: got[t] if t in got else self._frontier[t][b] for t in tensors}

    def advance(self, model: onnx.ModelProto, tensors: list[str]) -> None:
        """Move the cursor past the producers of ``tensors``, computing the new frontier with ``model``
        as it is now, and drop the values no later node reads."""
        end = self._end(tensors)
        if not self._cut or end <= self._cursor:
            return
        made = [o for n in self._nodes[self._cursor : end] for o in n.output if o and o not in self._constant]
        keep = [o for o in made if self._last_read.get(o, -1) >= end]
        if keep:
            sub = self._stretch(model, end, keep, all_nodes=True)
            fresh: dict[str, list[np.ndarray]] = {t: [] for t in keep}
            for outs in self._run(sub):
                for t, v in zip(keep, outs, strict=True):
                    fresh[t].append(v)
            self._frontier.update(fresh)
        self._cursor = end
        for t in [t for t in self._frontier if self._last_read.get(t, -1) < end]:
            del self._frontier[t]
        if self.held_bytes() > self._max_bytes:
            self._cut, self._frontier = False, {self._input: self._inputs}
