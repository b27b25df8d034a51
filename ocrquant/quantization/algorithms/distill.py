"""Output distillation: tune weight scales and biases so the INT8 model's *output* matches the float one.

Why: on PP-OCRv3 det, INT8 lowers the logits of the probability map near text by about 2 (measured
on det_train: mean INT8 - FP32 logit -1.99 where the FP32 logit is in (-2, 6)) while the mean over
all pixels is unchanged (-0.007): background dominates every per-layer statistic, so per-channel
bias correction cannot see the shift, and the text regions shrink (5 % fewer pixels above DB's
bitmap threshold), losing weak boxes. A loss on the network's output weighs errors where the task
makes decisions. Learning runs through the fake-quantized graph (:mod:`ocrquant.quantization.
torch_qdq`) on the calibration inputs; the float model's outputs are the targets, so no labels are
needed. Only per-channel weight-scale multipliers and biases are learned (the integers, activation
ranges and layout stay what calibration chose): a few parameters per channel, which 140 images
cannot overfit the way free weights could (learning the integers too, +-1 step, measured no better
on held-out det_train images). Learning the activation scales as well (``learn_activations``, LSQ
style) is an option, off by default: on det and cls it raised neither held-out nor test fidelity
consistently (``ocrquant quantize --algorithms distill`` with and without
``learn_activations``, scored by ``ocrquant compare``).

Data: up to ``data_size`` inputs, the calibration pick first, then more images of the calibration
directory (never auto's held-out images). Range calibration needs a few hundred inputs; 7912
learned parameters on cls fit 200 crops' noise (held-out fidelity fell 0.947 -> 0.9405) and follow
the float model on 2000 (-> 0.9545). det_train has no images to spare (140 calibrate, 60 judge).

The loss follows the model's last activation (registry :data:`LOSSES`): binary cross-entropy
against the float probabilities after a Sigmoid (det maps), cross-entropy against the float
distribution after a Softmax (cls, rec), mean squared error otherwise.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import onnx
from onnxruntime import GraphOptimizationLevel
from tqdm import tqdm

from ocrquant.errors import OcrQuantError
from ocrquant.fileio import atomic_path
from ocrquant.quantization.algorithms.base import Algorithm, AlgorithmContext, register_algorithm
from ocrquant.quantization.calibration.stats import augment_model, observer_session
from ocrquant.quantization.graph import attributes

#: the last op's type -> (loss on the pre-activation of the quantized model, float pre-activation)
LOSSES: dict[str, Callable[..., Any]] = {}


def _loss(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        LOSSES[name] = fn
        return fn

    return deco


@_loss("Sigmoid")
def _sigmoid_loss(z: Any, target: Any, attrs: dict[str, Any]) -> Any:
    import torch

    return torch.nn.functional.binary_cross_entropy_with_logits(z, torch.sigmoid(target))


@_loss("Softmax")
def _softmax_loss(z: Any, target: Any, attrs: dict[str, Any]) -> Any:
    import torch

    axis = attrs.get("axis", -1)
    p = torch.softmax(target, dim=axis)
    return -(p * (torch.log_softmax(z, dim=axis) - torch.log_softmax(target, dim=axis))).sum(axis).mean()


def _mse_loss(z: Any, target: Any, attrs: dict[str, Any]) -> Any:
    return ((z - target) ** 2).mean()


def _log_softmax(x: np.ndarray, axis: int) -> np.ndarray:
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def _sigmoid_loss_np(z: np.ndarray, target: np.ndarray, attrs: dict[str, Any]) -> float:
    p = 1.0 / (1.0 + np.exp(-target))
    return float((np.maximum(z, 0) - z * p + np.log1p(np.exp(-np.abs(z)))).mean())


def _softmax_loss_np(z: np.ndarray, target: np.ndarray, attrs: dict[str, Any]) -> float:
    axis = attrs.get("axis", -1)
    log_t = _log_softmax(target, axis)
    return float(-(np.exp(log_t) * (_log_softmax(z, axis) - log_t)).sum(axis).mean())


#: :data:`LOSSES` in numpy, for scoring without learning (:func:`output_losses`): ``auto`` ranks det
#: by it, and that must run where torch is not installed (the README's first command installs none).
#: ``tests/test_distill.py`` holds each equal to its torch twin.
NUMPY_LOSSES: dict[str, Callable[..., float]] = {"Sigmoid": _sigmoid_loss_np, "Softmax": _softmax_loss_np}


#: ops that only move values around; the head search looks through them (opset-11 Softmax export
#: is Flatten -> Softmax -> Reshape)
_LAYOUT_OPS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity")


def output_head(model: onnx.ModelProto) -> tuple[str, str, dict[str, Any]]:
    """(last activation's op type, its input tensor, its attributes): the tensor the loss compares.
    ('', the graph output, {}) when the model ends in no activation with a registered loss."""

    producer = {o: n for n in model.graph.node for o in n.output}
    out = model.graph.output[0].name
    node = producer.get(out)
    while node is not None and node.op_type in _LAYOUT_OPS:
        node = producer.get(node.input[0])
    if node is not None and node.op_type in LOSSES:
        return node.op_type, node.input[0], attributes(node)
    return "", out, {}


def float_logits(float_model: onnx.ModelProto, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """The float model's output before its last activation, per input: what :func:`output_losses`
    scores against (computed once, shared by every model compared on the same inputs)."""
    _, f_logit, _ = output_head(float_model)
    reference = observer_session(augment_model(float_model, [f_logit]))
    name = reference.get_inputs()[0].name
    return [reference.run([f_logit], {name: x})[0] for x in inputs]


def output_losses(model: onnx.ModelProto, inputs: list[np.ndarray], targets: list[np.ndarray]) -> np.ndarray:
    """Per-input loss of ``model``'s output against the float targets (:func:`float_logits`), the loss
    ``distill`` learns on, with ``model`` run as it ships (onnxruntime, every optimisation).

    Why: on images ``distill`` did not learn from, this says whether what it learned carries over. It
    counts every output value and needs no labels; det's held-out box figures (60 images, one box
    ~0.4 pt) cannot resolve the change (``python benchmarks/distill_draws.py``).
    Computed in numpy (:data:`NUMPY_LOSSES`), so it needs no torch.
    """
    kind, q_logit, attrs = output_head(model)
    loss_fn = NUMPY_LOSSES.get(kind, _mse_loss)
    shipped = observer_session(augment_model(model, [q_logit]), level=GraphOptimizationLevel.ORT_ENABLE_ALL)
    name = shipped.get_inputs()[0].name
    losses = []
    for x, t in zip(inputs, targets, strict=True):
        z = shipped.run([q_logit], {name: x})[0]
        losses.append(float(loss_fn(z.astype(np.float64), t.astype(np.float64), attrs)))
    return np.array(losses)


def _steps(batches: Iterable[np.ndarray], per_step: int, max_values: int) -> Iterator[np.ndarray]:
    """Consecutive same-shape batches joined until ``per_step`` samples or ``max_values`` input values
    (a det image is one step: its backward pass holds every activation of a 960-pixel map)."""
    held: list[np.ndarray] = []
    for x in batches:
        n = sum(len(h) for h in held)
        if held and (
            x.shape[1:] != held[0].shape[1:] or n + len(x) > per_step or (n + len(x)) * x[0].size > max_values
        ):
            yield np.concatenate(held)
            held = []
        held.append(x)
    if held:
        yield np.concatenate(held)


class LearningSteps:
    """The learning steps as (input, float target) pairs, made once and replayed by every pass
    (the loss before learning, each epoch, the loss after), as long as they fit in ``budget`` bytes;
    steps past the budget are read and their targets computed again on each pass.

    Why: a pass re-read and preprocessed every image and ran the float model on it again; on PP-OCRv3
    det (140 images at 544x960, three learning passes) that was ~0.3 s of a 0.85 s learning step. The
    steps are the same arrays on every pass either way, so what is learned does not change. The budget
    holds PP-OCRv6 small det's 140 steps at 736x1312 (2.2 GB) and not the 2000 rec crops' 18710-class
    logits (6 GB), which are recomputed."""

    def __init__(
        self,
        inputs: Callable[[], Iterator[np.ndarray]],
        target: Callable[[np.ndarray], np.ndarray],
        budget: int,
    ) -> None:
        self._inputs, self._target, self._budget = inputs, target, budget
        self._kept: list[tuple[np.ndarray, np.ndarray]] = []
        self._complete = False  # every step is kept
        self._full = False  # the budget is spent: later steps are made on each pass

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        yield from self._kept
        if self._complete:
            return
        kept_bytes = sum(x.nbytes + t.nbytes for x, t in self._kept)
        for x in itertools.islice(self._inputs(), len(self._kept), None):
            pair = (x, self._target(x))
            if not self._full and kept_bytes + x.nbytes + pair[1].nbytes <= self._budget:
                self._kept.append(pair)
                kept_bytes += x.nbytes + pair[1].nbytes
            else:
                self._full = True
            yield pair
        self._complete = not self._full  # a whole pass kept every step


#: bytes of (input, float target) pairs :class:`LearningSteps` keeps between passes
STEP_CACHE_BYTES = 3 << 30

#: learning rate of the activation-scale multipliers (``learn_activations``): ten times the
#: weights' default ``lr``
ACTIVATION_LR = 1e-3


@register_algorithm("distill", stage="qdq")
class Distill(Algorithm):
    """Learn weight-scale multipliers and biases against the float model's output (needs torch)."""

    requires = ("torch",)
    learns_output = True

    def __init__(
        self,
        epochs: int = 1,
        min_steps: int = 100,
        max_steps: int = 450,
        data_size: int = 2000,
        lr: float = 1e-4,
        samples_per_step: int = 8,
        max_values_per_step: int = 2_000_000,
        max_batches: int | None = None,
        seed: int = 0,
        learn_activations: bool = False,
    ) -> None:
        if epochs < 1 or lr <= 0 or samples_per_step < 1 or data_size < 0:
            raise OcrQuantError("distill: epochs and samples_per_step must be >= 1, lr > 0, data_size >= 0")
        self.epochs, self.min_steps, self.max_steps, self.lr = epochs, min_steps, max_steps, lr
        self.data_size = data_size
        self.samples_per_step, self.max_values_per_step = samples_per_step, max_values_per_step
        self.max_batches, self.seed = max_batches, seed
        self.learn_activations = learn_activations

    def _batches(self, ctx: AlgorithmContext) -> Callable[[], Iterable[np.ndarray]]:
        """The batch factory to learn from: more inputs than the calibration pick where the calibration
        directory has them (module doc). Resolved once: every epoch and loss pass reuses the sample list."""
        if self.data_size and ctx.learning_batches is not None:
            return ctx.learning_batches(self.data_size)
        return ctx.batches

    def _inputs(self, batches: Callable[[], Iterable[np.ndarray]]) -> Iterator[np.ndarray]:
        it = iter(batches())
        if self.max_batches is not None:
            it = (x for k, x in zip(range(self.max_batches), it, strict=False))
        return _steps(it, self.samples_per_step, self.max_values_per_step)

    def apply(self, ctx: AlgorithmContext) -> dict[str, Any]:
        import torch

        from ocrquant.quantization.torch_qdq import QDQModule  # needs torch (the [torch] extra)

        assert ctx.qdq_path is not None
        qmodel = onnx.load(str(ctx.qdq_path))
        kind, q_logit, attrs = output_head(qmodel)
        f_kind, f_logit, _ = output_head(ctx.model)
        if kind != f_kind:
            raise OcrQuantError(f"distill: the float model ends in '{f_kind}', the QDQ model in '{kind}'")
        loss_fn = LOSSES.get(kind, _mse_loss)
        reference = observer_session(augment_model(ctx.model, [f_logit]))
        in_name = reference.get_inputs()[0].name

        torch.manual_seed(self.seed)
        # a target whose scales are constrained (npu-pow2: powers of two) keeps its scales
        learn_scales = getattr(ctx.profile, "scale_constraint", "none") == "none"
        net = QDQModule(qmodel, learn_activations=learn_scales and self.learn_activations)
        params = [*(net.log_alpha.parameters() if learn_scales else ()), *net.bias.parameters()]
        # an activation range is one number per tensor, and its multiplier moves far more than the
        # per-channel weight multipliers (measured: 7-13 % against +-0.5 %), so it gets its own step
        groups = [{"params": params}, {"params": list(net.log_beta.parameters()), "lr": ACTIVATION_LR}]
        opt = torch.optim.Adam([g for g in groups if g["params"]], lr=self.lr)

        batches = self._batches(ctx)
        steps = LearningSteps(
            lambda: self._inputs(batches),
            lambda x: reference.run([f_logit], {in_name: x})[0],
            STEP_CACHE_BYTES,
        )

        def measure(model: onnx.ModelProto) -> tuple[float, int, int]:
            """One pass over the steps, without learning: the mean loss of ``model`` as onnxruntime runs
            it (fused kernels, what ships), steps and samples. (The interpreter's own loss is not
            measured: a forward pass over every step, 0.2 s per det image, for a figure nothing decides
            on; the epochs' mean training loss shows what it saw.)"""

            sess = observer_session(
                augment_model(model, [q_logit]), level=GraphOptimizationLevel.ORT_ENABLE_ALL
            )
            name = sess.get_inputs()[0].name
            shipped, samples = [], 0
            with torch.no_grad():
                for x, t in steps:
                    z = torch.from_numpy(sess.run([q_logit], {name: x})[0])
                    shipped.append(float(loss_fn(z, torch.from_numpy(t), attrs)))
                    samples += len(x)
            return float(np.mean(shipped or [0.0])), len(shipped), samples

        before, n_steps, n_samples = measure(qmodel)
        if n_steps == 0:
            raise OcrQuantError("distill: no calibration batches")
        # ``epochs`` passes, fewer where that would pass ``max_steps`` (2000 crops: one pass of 250 steps,
        # minutes of torch on 2 cores), at least ``min_steps`` updates (200 crops make 25 steps of 8, too
        # few to move anything). One pass by default: on PP-OCRv3 det (140 calibration images, one step
        # each) one pass lowered the mean held-out output loss to 0.68 of the model's without distill and
        # three passes (420 steps) to 0.80, in 97 and 226 s on the 2-core AMX Xeon (60 held-out det_train
        # images; ``python benchmarks/distill_draws.py --seeds 0 --passes 1 3``, docs/quantization.md)
        epochs = max(1, min(self.epochs, self.max_steps // n_steps), math.ceil(self.min_steps / n_steps))
        total = n_steps * epochs
        warmup = max(1, total // 10)

        def schedule(k: int) -> float:
            # linear warm-up (Adam's first steps are sign steps of size lr for every parameter, noisy
            # gradients included), then cosine decay so the last steps settle instead of ending on one
            # batch's gradient
            if k < warmup:
                return (k + 1) / warmup
            return 0.5 * (1 + math.cos(math.pi * min(k - warmup, total - warmup) / max(1, total - warmup)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        history = []

        with tqdm(total=total, desc="distill", unit="step", disable=not ctx.progress, leave=False) as bar:
            for _epoch in range(epochs):
                losses = []
                for x, t in steps:
                    loss = loss_fn(net(torch.from_numpy(x), until=q_logit), torch.from_numpy(t), attrs)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    sched.step()
                    losses.append(loss.item())
                    bar.update(1)
                history.append(float(np.mean(losses)))
                bar.set_postfix(loss=f"{history[-1]:.5f}")
        # Never hand back a model further from the float one on its own data, judged on what ships:
        # the exported model in onnxruntime, not the interpreter that learned it. The two part ways on
        # small data: cls on 96 crops, 156 steps, interpreter loss 5.0e-4 -> 0.8e-4 while the exported
        # model rose to 6.1e-4 (a one-step rounding flip in the first conv, where the int32 bias grid
        # differs from the learned float bias, cascades through a model fitted to those 96 crops).
        exported = net.export()
        after, _, _ = measure(exported)
        kept = after < before
        if kept:
            with atomic_path(ctx.qdq_path) as tmp:
                onnx.save(exported, str(tmp))
        # a model whose quantized layers all lack a learnable scale (the sensitivity tool's one-layer
        # variants) has none: torch.cat of an empty list crashed a 14-minute run
        alpha = torch.cat([p.detach().flatten() for p in net.log_alpha.parameters()] or [torch.ones(0)]).exp()
        beta = torch.cat([p.detach().flatten() for p in net.log_beta.parameters()] or [torch.ones(0)]).exp()
        return {
            "loss": kind or "mse",
            "weight_scales": len(net.weights) if learn_scales else 0,
            "activation_scales": len(net.log_beta),
            "biases": len(net.bias),
            "steps": total,
            "samples": n_samples,
            "calib_loss_before": before,  # onnxruntime, the model as calibrated
            "train_loss_per_epoch": history,
            "calib_loss_after": after,  # onnxruntime, the exported model
            "kept": kept,
            "scale_multiplier_range": [float(alpha.min()), float(alpha.max())]
            if alpha.numel()
            else [1.0, 1.0],
            "activation_multiplier_range": [float(beta.min()), float(beta.max())]
            if beta.numel()
            else [1.0, 1.0],
        }
