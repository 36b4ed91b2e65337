"""``safetensors``: the shrunk model's weights, stored densely (``model.safetensors``)."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import save_file

from automtl.formats import Exported, Written


def write(exported: Exported, folder: Path) -> Written:
    save_file({k: v.contiguous() for k, v in exported.model.state_dict().items()}, str(folder / "model.safetensors"))
    return Written(files={"safetensors": "model.safetensors"})
