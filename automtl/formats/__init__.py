"""Export formats: a registry of writers, selected by name (``automtl export --format``).

A writer takes what every format shares (:class:`Exported`: the shrunk model, the dense one, the problem,
a latency batch) and a staging folder, writes its files there and returns what it measured
(:class:`Written`): files, entries for ``card.json``, test metrics through its runtime, and runs to time.
Add a format by adding a module with a ``write`` function and one line in :data:`WRITERS`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from torch import Tensor, nn

from automtl.models import task_outputs
from automtl.problems import Problem

# ONNX vs PyTorch, per task: |onnx - pytorch| <= ONNX_TOLERANCE * (max |pytorch| + |pytorch|). Relative to the
# outputs' scale because float32 through a deep network (BatchNorm folded into the convolutions, other kernels)
# differs by ~1e-5 of it (3.7e-5 to 5.3e-5 seen on MobileNetV2, EfficientNet-B0 and RegNet logits).
ONNX_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Exported:
    """What every writer gets."""

    model: nn.Module  # the trial's network, shrunk, in eval mode
    dense: nn.Module  # the dense network it was pruned from, in eval mode
    problem: Problem
    sample: Tensor  # the latency batch
    batch_size: int  # for scoring whole splits
    source: dict[str, Any]  # how to rebuild the architecture: problem config, seed, model overrides
    quantize: str | None = None
    onnx_tolerance: float = ONNX_TOLERANCE


@dataclass
class Written:
    """What a writer wrote and measured."""

    files: dict[str, str] = field(default_factory=dict)  # kind -> file name in the export folder
    card: dict[str, Any] = field(default_factory=dict)  # merged into card.json
    test_metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # runtime -> task -> metric
    runs: dict[str, Callable[[], object]] = field(default_factory=dict)  # name -> one forward to time


WRITERS = {  # a format's name is its module's (automtl/formats/<name>.py) and its card entry's (files.<name>)
    "onnx": "automtl.formats.onnx",
    "torch_export": "automtl.formats.torch_export",
    "safetensors": "automtl.formats.safetensors",
    "sparse": "automtl.formats.sparse",
}
RENAMED = {"torchscript": "torch_export"}  # names formats had before, still accepted
QUANTIZE = ("int8",)  # dynamic quantisation of the ONNX model


def write(name: str, exported: Exported, folder: Path) -> Written:
    """Run the writer registered as ``name`` (imported on first use)."""
    return importlib.import_module(WRITERS[name]).write(exported, folder)


class TaskTuple(nn.Module):
    """Wraps a multi-task model so it returns a tuple in task order (for ONNX / torch.export)."""

    def __init__(self, model: nn.Module, task_names: list[str]):
        super().__init__()
        self.model, self.task_names = model, task_names

    def forward(self, x):
        out = task_outputs(self.model(x), self.task_names)
        return tuple(out[t] for t in self.task_names)
