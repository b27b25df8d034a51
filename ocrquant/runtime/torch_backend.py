"""PyTorch backend: runs the original network (a zoo ``.pth`` with a registered architecture).

It exists so ``ocrquant run --framework torch`` can report the framework's own float figure next to
the ONNX float one, which tells conversion loss apart from quantization loss.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ocrquant.errors import OcrQuantError
from ocrquant.runtime.base import Runner, RuntimeOptions, register_backend


def _arch_for_checkpoint(checkpoint: Path) -> str:
    """The zoo entry whose weights file this is decides the architecture (e.g. craft-mlt25k -> craft)."""
    from ocrquant.zoo import ZOO

    for entry in ZOO.values():
        if entry.framework == "torch" and entry.model_file == checkpoint.name and entry.architecture:
            return entry.architecture
    raise OcrQuantError("no registered architecture for this checkpoint (use `ocrquant convert`)", checkpoint)


@register_backend("torch")
class TorchRunner(Runner):
    model_format: ClassVar[str] = "torch"  # ResolvedModel.path_for() hands us the .pth

    def __init__(self, model: Path, options: RuntimeOptions) -> None:
        from ocrquant.frontends.torch import load_network, require_torch, resolve_arch, select_outputs

        torch = require_torch()
        if options.threads:
            torch.set_num_threads(options.threads)
        arch = resolve_arch(_arch_for_checkpoint(model))
        self._torch = torch
        self._net = select_outputs(load_network(arch, model), arch)
        self._outputs = list(arch.outputs or ("output_0",))

    @property
    def input_names(self) -> list[str]:
        return ["x"]

    @property
    def output_names(self) -> list[str]:
        return self._outputs

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        (x,) = feeds.values()
        with self._torch.inference_mode():
            out: Any = self._net(self._torch.from_numpy(np.ascontiguousarray(x)))
        seq = out if isinstance(out, tuple | list) else [out]
        return [t.detach().cpu().numpy() for t in seq]
