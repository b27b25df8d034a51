"""PyTorch backend: runs the original network (a zoo ``.pth`` with a registered architecture).

It exists so ``ocrquant run --framework torch`` can report the framework's own float figure next to
the ONNX float one, which tells conversion loss apart from quantization loss.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ocrquant.frontends.torch import arch_for_checkpoint, load_network, require_torch, select_outputs
from ocrquant.runtime.base import Runner, RuntimeOptions, register_backend


@register_backend("torch")
class TorchRunner(Runner):
    model_format: ClassVar[str] = "torch"  # ResolvedModel.path_for() hands us the .pth

    def __init__(self, model: Path, options: RuntimeOptions) -> None:
        torch = require_torch()
        if options.threads:
            torch.set_num_threads(options.threads)
        arch = arch_for_checkpoint(model)
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
