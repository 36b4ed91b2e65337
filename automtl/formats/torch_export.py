"""``torch_export``: a ``torch.export`` program with a dynamic batch dimension (``model.pt2``).

Named ``torchscript`` before (still accepted): it was never TorchScript.
"""

from __future__ import annotations

from pathlib import Path

import torch

from automtl.formats import Exported, TaskTuple, Written


def write(exported: Exported, folder: Path) -> Written:
    program = torch.export.export(TaskTuple(exported.model, exported.problem.task_names).eval(),
                                  (exported.sample[:256],), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(folder / "model.pt2"))
    return Written(files={"torch_export": "model.pt2"})
