"""PyTorch frontend: a state_dict checkpoint + a network definition -> ONNX (and TorchScript), verified.

Why each step is the way it is:

* **Loading** is ``torch.load(..., weights_only=True)`` and nothing else. A ``.pth`` is a pickle; a
  full pickle can run arbitrary code when loaded, so a checkpoint that holds anything but tensors and
  plain containers is refused with one line, never "retried" unsafely.
* **Strict weights**: the network is built from its definition (a registered architecture such as
  ``craft``, or the user's ``module:factory``) and the state_dict must fill it exactly: a missing or
  unexpected key means the definition and the weights disagree, and a silently half-initialised model
  would make every later number (float baseline, INT8 delta) meaningless.
* **Export** uses the TorchScript-based ("legacy") ONNX exporter, opset 17, with dynamic batch,
  height and width. On torch 2.13 it exports CRAFT exactly (max abs diff ~1e-7) and needs no extra
  package, whereas the dynamo exporter would add onnxscript/onnx-ir to the ``torch`` extra.
* **Verification** runs the exported model and PyTorch on real images (the embedded sample set,
  preprocessed by the model's task exactly as evaluation will) at a size different from the one used
  for tracing, which also proves the dynamic shapes work; the output is only written if it passes.

torch is an optional dependency (``pip install 'ocrquant[torch]'``); importing this module does not
need it, every function that does says so with an :class:`OcrQuantError`.
"""

from __future__ import annotations

import importlib
import pickle
import re
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import onnxruntime as ort

from ocrquant.data import load_image, open_dataset, sample_root
from ocrquant.errors import OcrQuantError, missing_extra
from ocrquant.fileio import atomic_path, sha256_file
from ocrquant.onnx_shapes import declared_dims
from ocrquant.tasks import get_task_class

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

EXTRA = "torch"  # pip install 'ocrquant[torch]' (pins torch==2.13.0)
TORCH_REQUIREMENT = "torch==2.13.0"
OPSET = 17
DEFAULT_TOLERANCE = 1e-3
# Prefixes that wrappers add to every key (DataParallel / DistributedDataParallel, torch.compile).
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Keys under which training scripts commonly nest the weights in a checkpoint dict.
NESTED_STATE_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")


def require_torch() -> Any:
    """Import torch, or explain in one line how to get it (the ``torch`` extra pins torch==2.13.0)."""
    try:
        import torch
    except ImportError as exc:
        raise missing_extra(EXTRA, "the PyTorch frontend", exc) from None
    return torch


# --------------------------------------------------------------------------------------- architectures


@dataclass(frozen=True)
class TorchArch:
    """A network definition the frontend can build.

    ``factory`` is ``"module:callable"`` returning an ``nn.Module``. ``outputs`` names the outputs to
    export and ``keep`` selects them (by index) from what ``forward`` returns (``None`` = all of them,
    named ``output_0``...). ``task`` is the ocrquant task whose preprocessing feeds the model.
    ``checkpoints`` are the file names of published weights this architecture loads (the torch
    backend runs a ``.pth`` by its name, as the zoo fetched it).
    """

    name: str
    factory: str
    task: str | None = None
    outputs: tuple[str, ...] | None = None
    keep: tuple[int, ...] | None = None
    output_dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)
    checkpoints: tuple[str, ...] = ()


ARCHS: dict[str, TorchArch] = {
    # CRAFT's forward returns (maps NHWC, feature); deployment only needs the maps, and exporting the
    # 32-channel half-resolution feature would only cost memory traffic (and quantization error).
    "craft": TorchArch(
        "craft",
        "ocrquant.frontends.craft_net:CRAFT",
        task="det-craft",
        outputs=("maps",),
        keep=(0,),
        output_dynamic_axes={"maps": {0: "batch", 1: "map_height", 2: "map_width"}},
        checkpoints=("craft_mlt_25k.pth",),
    ),
}


def arch_for_checkpoint(checkpoint: Path) -> TorchArch:
    """The registered architecture whose published weights file this is (craft_mlt_25k.pth -> craft)."""
    for arch in ARCHS.values():
        if checkpoint.name in arch.checkpoints:
            return arch
    raise OcrQuantError("no registered architecture for this checkpoint (use `ocrquant convert`)", checkpoint)


def resolve_arch(spec: str, task: str | None = None) -> TorchArch:
    """A registered architecture name, or ``module:factory`` for the user's own network."""
    if spec in ARCHS:
        arch = ARCHS[spec]
        return arch if task is None else replace(arch, task=task)
    if ":" not in spec:
        raise OcrQuantError(f"unknown architecture '{spec}' (known: {', '.join(ARCHS)}; or module:factory)")
    return TorchArch(spec, spec, task=task)


def build_network(arch: TorchArch) -> nn.Module:
    """Instantiate ``arch.factory`` (imports the user's module: that is the user's own code)."""
    require_torch()
    from torch import nn

    module_name, _, attr = arch.factory.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise OcrQuantError(f"cannot import module '{module_name}' for --arch {arch.name}: {exc}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise OcrQuantError(f"module '{module_name}' has no callable '{attr}' (--arch {arch.name})")
    net = factory()
    if not isinstance(net, nn.Module):
        raise OcrQuantError(f"--arch {arch.name} returned {type(net).__name__}, not a torch.nn.Module")
    return net


# --------------------------------------------------------------------------------------- checkpoints


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint with ``weights_only=True`` and return its (unwrapped) state_dict."""
    torch = require_torch()
    path = Path(path)
    if not path.is_file():
        raise OcrQuantError("checkpoint not found", path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        message = str(exc)
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", message)
        if found or "Unsupported global" in message:
            name = f" ({found.group(1)})" if found else ""
            raise OcrQuantError(
                f"refused: the checkpoint contains pickled Python objects{name}, which could run code when "
                "loaded; only plain state_dicts (tensors in dicts/lists) are accepted: save "
                "model.state_dict() instead",
                path,
            ) from None
        detail = _weights_unpickler_detail(message)
        raise OcrQuantError(f"not a readable weights-only PyTorch checkpoint ({detail})", path) from None
    except Exception as exc:  # torch raises RuntimeError, EOFError, zipfile errors... for non-checkpoints
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise OcrQuantError(f"not a readable PyTorch checkpoint ({first[:160]})", path) from None
    return _state_dict_of(obj, path)


def _weights_unpickler_detail(message: str) -> str:
    """The short reason inside torch's long, multi-line weights-only refusal."""
    tail = message.split("WeightsUnpickler error:", 1)[-1]
    lines = [ln.strip() for ln in tail.splitlines() if ln.strip()]
    return (lines[0] if lines else "unpickling failed")[:160]


def _is_state_dict(obj: Any) -> bool:
    import torch

    return (
        isinstance(obj, Mapping)
        and bool(obj)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _state_dict_of(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The state_dict itself, or one nested under a common key; wrapper prefixes are stripped."""
    state = obj if _is_state_dict(obj) else None
    if state is None and isinstance(obj, Mapping):
        state = next((obj[k] for k in NESTED_STATE_KEYS if k in obj and _is_state_dict(obj[k])), None)
    if state is None:
        keys = ", ".join(map(str, list(obj)[:6])) if isinstance(obj, Mapping) else type(obj).__name__
        raise OcrQuantError(f"no state_dict (name -> tensor) in the checkpoint (found: {keys})", path)
    state = dict(state)
    for prefix in WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def load_strict(net: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Fill ``net`` with ``state``; any missing/unexpected key or shape mismatch is an error."""
    try:
        result = net.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches raise even when strict=False
        lines = [ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln]
        raise OcrQuantError(
            f"weights do not fit the network: {lines[0] if lines else str(exc).splitlines()[0]}"
            f"{f' (+{len(lines) - 1} more)' if len(lines) > 1 else ''}",
            path,
        ) from None
    problems = []
    for label, keys in (("missing", result.missing_keys), ("unexpected", result.unexpected_keys)):
        if keys:
            more = " ..." if len(keys) > 3 else ""
            problems.append(f"{len(keys)} {label} key(s): {', '.join(keys[:3])}{more}")
    if problems:
        raise OcrQuantError(f"weights do not fit the network ({'; '.join(problems)})", path)


def load_network(arch: TorchArch, checkpoint: Path) -> nn.Module:
    """Build ``arch``, load ``checkpoint`` strictly and return it in eval mode."""
    state = load_state_dict(checkpoint)
    net = build_network(arch)
    load_strict(net, state, checkpoint)
    return net.eval()


# --------------------------------------------------------------------------------------- export


def select_outputs(net: nn.Module, arch: TorchArch) -> nn.Module:
    """``net`` restricted to the outputs ``arch`` keeps (returned as a tuple)."""
    from torch import nn

    keep = arch.keep

    class Selected(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: Any) -> Any:
            out = self.net(x)
            if keep is None or not isinstance(out, tuple | list):
                return out
            return tuple(out[i] for i in keep)

    return Selected().eval()


def _as_list(out: Any) -> list[np.ndarray]:
    seq = out if isinstance(out, tuple | list) else [out]
    return [t.detach().cpu().numpy() for t in seq]


def export_onnx(
    net: nn.Module, arch: TorchArch, target: Path, probe_hw: tuple[int, int] = (256, 320), opset: int = OPSET
) -> list[str]:
    """Write ``net`` as ONNX (opset 17, dynamic N/H/W) to ``target``; returns the output names."""
    torch = require_torch()
    module = select_outputs(net, arch)
    probe = torch.zeros(1, 3, *probe_hw)
    with torch.no_grad():
        n_out = len(_as_list(module(probe)))
    names = list(arch.outputs) if arch.outputs else [f"output_{i}" for i in range(n_out)]
    dynamic = {"input": {0: "batch", 2: "height", 3: "width"}, **arch.output_dynamic_axes}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter's notice
        try:
            torch.onnx.export(
                module,
                (probe,),
                str(target),
                dynamo=False,
                opset_version=opset,
                input_names=["input"],
                output_names=names,
                dynamic_axes=dynamic,
                do_constant_folding=True,
            )
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise OcrQuantError(f"ONNX export of --arch {arch.name} failed: {first[:200]}") from None
    return names


def export_torchscript(net: nn.Module, target: Path, probe_hw: tuple[int, int] = (256, 320)) -> str:
    """Save ``net`` as TorchScript to ``target``: scripted when possible (shape logic kept), else traced
    (a traced module replays the probe's control flow, which is fine for shape-generic networks)."""
    torch = require_torch()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit deprecation notices
        try:
            scripted, how = torch.jit.script(net), "script"
        except Exception:
            with torch.no_grad():
                scripted, how = torch.jit.trace(net, torch.zeros(1, 3, *probe_hw)), "trace"
        torch.jit.save(scripted, str(target))
    return how


# --------------------------------------------------------------------------------------- verification


def verification_inputs(task: str | None, count: int) -> list[tuple[str, np.ndarray]]:
    """(image name, model input) for real images of the embedded sample, by the task's preprocessing."""

    task_name = task or "det"
    task_obj = get_task_class(task_name)()
    kind = "rec" if task_name in ("rec", "cls") else "det"
    samples = open_dataset(sample_root() / kind, kind).samples[:count]
    return [(s.key, task_obj.preprocess([load_image(s)]).inputs) for s in samples]


def max_abs_diff(reference: list[np.ndarray], other: list[np.ndarray]) -> float:
    """Largest absolute difference over all outputs (counts and shapes must agree)."""
    if len(reference) != len(other):
        raise OcrQuantError(f"output count differs: PyTorch {len(reference)}, exported {len(other)}")
    worst = 0.0
    for a, b in zip(reference, other, strict=True):
        if a.shape != b.shape:
            raise OcrQuantError(f"output shape differs: PyTorch {list(a.shape)}, exported {list(b.shape)}")
        worst = max(worst, float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))))
    return worst


def _check_tolerance(worst: float, tolerance: float, what: str) -> None:
    if not worst <= tolerance:  # also catches NaN
        raise OcrQuantError(
            f"{what} differs from PyTorch by {worst:.3g} (max abs) on real images, above the tolerance "
            f"{tolerance:g}; nothing written"
        )


def onnx_vs_torch(net: nn.Module, arch: TorchArch, onnx_path: Path, inputs: list[np.ndarray]) -> float:
    """Max abs difference between PyTorch and onnxruntime over ``inputs``."""
    torch = require_torch()

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    module = select_outputs(net, arch)
    worst = 0.0
    for x in inputs:
        with torch.no_grad():
            ref = _as_list(module(torch.from_numpy(x)))
        worst = max(worst, max_abs_diff(ref, session.run(None, {"input": x})))
    return worst


def torchscript_vs_torch(net: nn.Module, ts_path: Path, inputs: list[np.ndarray]) -> float:
    """Max abs difference between PyTorch and the saved TorchScript module over ``inputs``."""
    torch = require_torch()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit's deprecation notice
        loaded = torch.jit.load(str(ts_path), map_location="cpu")
    worst = 0.0
    for x in inputs:
        with torch.no_grad():
            ref, got = _as_list(net(torch.from_numpy(x))), _as_list(loaded(torch.from_numpy(x)))
        worst = max(worst, max_abs_diff(ref, got))
    return worst


# --------------------------------------------------------------------------------------- the step


@dataclass
class TorchConvertResult:
    """What ``convert_torch`` wrote and how close it is to PyTorch (field names shared with the Paddle
    frontend's report, so ``ocrquant convert`` prints both the same way)."""

    output: Path
    source: Path
    opset: int
    inputs: dict[str, list[int | str]]
    outputs: dict[str, list[int | str]]
    task: str | None
    arch: str
    parameters: int
    max_abs_diff: float | None = None  # None when verification was skipped
    verified_on: list[str] = field(default_factory=list)
    torchscript: Path | None = None
    torchscript_mode: str | None = None  # "script" | "trace"
    torchscript_max_abs_diff: float | None = None
    seconds: float = 0.0

    @property
    def extra(self) -> dict[str, str]:
        """Rows a report may add beyond the shared fields."""
        rows = {"arch": f"{self.arch} ({self.parameters / 1e6:.2f} M parameters)"}
        if self.torchscript is not None:
            diff = self.torchscript_max_abs_diff
            rows["torchscript"] = f"{self.torchscript} ({self.torchscript_mode}" + (
                f", max abs diff {diff:.3g})" if diff is not None else ")"
            )
        return rows


def _finish_onnx(onnx_path: Path, props: dict[str, str]) -> tuple[int, dict[str, list], dict[str, list]]:
    """Record provenance in the ONNX metadata; return (opset, input shapes, output shapes)."""

    model = onnx.load(str(onnx_path))
    existing = {p.key: p for p in model.metadata_props}
    for key, value in props.items():
        entry = existing.get(key) or model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(onnx_path))
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    return (
        opset,
        {i.name: declared_dims(i) for i in model.graph.input},
        {o.name: declared_dims(o) for o in model.graph.output},
    )


def convert_torch(
    checkpoint: str | Path,
    output: str | Path,
    arch: str = "craft",
    *,
    task: str | None = None,
    opset: int = OPSET,
    torchscript: str | Path | None = None,
    verify_images: int = 2,
    tolerance: float = DEFAULT_TOLERANCE,
) -> TorchConvertResult:
    """Load ``checkpoint`` (weights only) into ``arch`` strictly, export ONNX (+ TorchScript), verify.

    Each file appears at its destination only after its equivalence check passed.
    """
    torch = require_torch()
    start = time.perf_counter()
    checkpoint, output = Path(checkpoint), Path(output)
    spec = resolve_arch(arch, task)
    net = load_network(spec, checkpoint)
    checks = verification_inputs(spec.task, verify_images) if verify_images > 0 else []
    inputs = [x for _, x in checks]
    with atomic_path(output) as tmp:
        export_onnx(net, spec, tmp, opset=opset)
        diff = onnx_vs_torch(net, spec, tmp, inputs) if inputs else None
        if diff is not None:
            _check_tolerance(diff, tolerance, "exported ONNX")
        used_opset, in_dims, out_dims = _finish_onnx(tmp, {
            "source_framework": "torch",
            "source_model": checkpoint.name,
            "source_sha256": sha256_file(checkpoint),
            "converter": f"torch {torch.__version__} onnx export (TorchScript-based)",
            "arch": spec.name,
            "task": spec.task or "",
        })  # fmt: skip
    result = TorchConvertResult(
        output, checkpoint, used_opset, in_dims, out_dims, spec.task, spec.name,
        int(sum(p.numel() for p in net.parameters())), diff, [k for k, _ in checks],
    )  # fmt: skip
    if torchscript is not None:
        result.torchscript = Path(torchscript)
        with atomic_path(result.torchscript) as tmp:
            result.torchscript_mode = export_torchscript(net, tmp)
            if inputs:
                result.torchscript_max_abs_diff = torchscript_vs_torch(net, tmp, inputs[:1])
                _check_tolerance(result.torchscript_max_abs_diff, tolerance, "TorchScript")
    result.seconds = time.perf_counter() - start
    return result


def export_zoo_entry(entry: Any, model_file: Path, output: Path) -> None:
    """Frontend contract (see :mod:`ocrquant.frontends`): convert a fetched torch zoo model to ``output``
    (a temporary path the registry renames into the cache, beside the checkpoint)."""
    convert_torch(model_file, output, entry.architecture or "craft")


__all__ = [
    "ARCHS", "EXTRA", "TORCH_REQUIREMENT", "TorchArch", "TorchConvertResult", "convert_torch",
    "export_zoo_entry", "load_network", "load_state_dict", "load_strict", "resolve_arch",
]  # fmt: skip
