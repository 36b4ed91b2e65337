"""``sparse``: the shrunk model's weights with unstructured zeros left out (``model.sparse.safetensors``),
and :func:`load_pruned`, which rebuilds the model from it.

ONNX and ``model.safetensors`` store every surviving layer densely, so each zero inside it costs 4 bytes. Here
a tensor that is cheaper that way is stored as its non-zero values (row-major order) and a bitmap of where
they are (one bit per element); the rest are stored as they are. The file's metadata holds the layer sizes
after shrinking and how to build the architecture (problem, seed, model fields), so the file alone restores
the exported model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from automtl.errors import UserError
from automtl.formats import Exported, Written
from automtl.problems import Problem

FILE = "model.sparse.safetensors"
FORMAT = "automtl.sparse/1"
# Module attributes that shrinking changes; stored per module so the rebuilt model has the same sizes.
SIZE_ATTRIBUTES = ("in_features", "out_features", "in_channels", "out_channels", "num_features", "groups", "num_heads",
                   "normalized_shape", "num_embeddings", "embedding_dim")
VALUES, BITMAP = "::values", "::bitmap"


def write(exported: Exported, folder: Path) -> Written:
    state = exported.model.state_dict()
    tensors, metadata = encode(state, exported.model, exported.source)
    save_file(tensors, str(folder / FILE), metadata=metadata)
    size = (folder / FILE).stat().st_size
    bound = sum(int(t.count_nonzero()) * 4 + t.numel() / 8 for t in state.values())
    return Written(files={"sparse": FILE}, card={"sparse_weights": {
        "bytes": size, "nonzero_bound_bytes": round(bound),
        "vs_bound": size / bound,
        "bound": "non-zero values x 4 B + one bit per stored element",
        "faster": "no: this file is smaller on disk and over the network only. load_pruned() expands it to dense "
                  "tensors, so inference runs at the shrunk PyTorch model's speed (latency_ms.exported_pytorch). "
                  "Only removed units (rows, channels) make inference faster; zeros inside kept layers do not.",
    }})


def encode(state: dict[str, torch.Tensor], model: nn.Module, source: dict) -> tuple[dict, dict[str, str]]:
    """The tensors to save and the metadata (shapes of the sparse-coded tensors, module sizes, source)."""
    tensors, shapes = {}, {}
    for name, tensor in state.items():
        tensor = tensor.detach().cpu().contiguous()
        nonzero = tensor != 0
        if tensor.is_floating_point() and int(nonzero.sum()) * tensor.element_size() + tensor.numel() / 8 \
                < tensor.numel() * tensor.element_size():
            tensors[name + VALUES] = tensor[nonzero]
            tensors[name + BITMAP] = torch.from_numpy(np.packbits(nonzero.flatten().numpy()))
            shapes[name] = list(tensor.shape)
        else:
            tensors[name] = tensor
    sizes = {name: {a: getattr(module, a) for a in SIZE_ATTRIBUTES if isinstance(getattr(module, a, None),
                                                                                  (int, tuple))}
             for name, module in model.named_modules()}
    metadata = {"format": FORMAT, "shapes": json.dumps(shapes), "source": json.dumps(source),
                "sizes": json.dumps({name: attrs for name, attrs in sizes.items() if attrs})}
    return tensors, metadata


def decode(tensors: dict[str, torch.Tensor], shapes: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    state = {name: tensor for name, tensor in tensors.items() if not name.endswith((VALUES, BITMAP))}
    for name, shape in shapes.items():
        numel = int(np.prod(shape))
        where = torch.from_numpy(np.unpackbits(tensors[name + BITMAP].numpy(), count=numel).astype(bool))
        values = tensors[name + VALUES]
        dense = torch.zeros(numel, dtype=values.dtype)
        dense[where] = values
        state[name] = dense.reshape(shape)
    return state


def load_pruned(path: str | Path, problem: Problem | None = None) -> nn.Module:
    """The exported model from ``model.sparse.safetensors`` (or the export folder holding it), in eval mode.

    The architecture is built as the search built it, from the problem recorded in the file; pass
    ``problem`` when the search was given a Problem object.

    Example:
        >>> import automtl
        >>> result = automtl.export(run_dir, run_dir + "-sparsest", pick="sparsest", formats=["sparse"],
        ...                         problem=problem)
        >>> model = automtl.load_pruned(result.out_dir / "model.sparse.safetensors", problem)
        >>> sorted(model(problem.test.sample(4).inputs))
        ['left', 'right']
    """
    from automtl.config import ProblemConfig

    path = Path(path)
    path = path / FILE if path.is_dir() else path
    if not path.is_file():
        raise UserError(f"{path} does not exist; export with --format sparse to write it")
    try:
        with safe_open(str(path), "pt") as file:
            metadata = file.metadata() or {}
            tensors = {key: file.get_tensor(key) for key in file.keys()}
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for a damaged file
        raise UserError(f"{path} is not a safetensors file ({exc})") from None
    if metadata.get("format") != FORMAT:
        raise UserError(f"{path} was not written by automtl export --format sparse (format {metadata.get('format')!r})")
    source = json.loads(metadata["source"])
    problem = problem or ProblemConfig(**source["problem"]).build(source["seed"])
    model = problem.build_model(problem.default_model.override(**source["model"]))
    state = decode(tensors, json.loads(metadata["shapes"]))
    _resize(model, state, json.loads(metadata["sizes"]))
    model.load_state_dict(state)
    return model.eval()


def _resize(model: nn.Module, state: dict[str, torch.Tensor], sizes: dict[str, dict]) -> None:
    """Give ``model`` the shrunk sizes: module attributes, and every parameter and buffer's shape."""
    for name, attrs in sizes.items():
        module = model.get_submodule(name)
        for attr, value in attrs.items():
            setattr(module, attr, tuple(value) if isinstance(value, list) else value)
    for name, tensor in state.items():
        owner, _, leaf = name.rpartition(".")
        module = model.get_submodule(owner)
        current = getattr(module, leaf, None)
        if current is None or current.shape == tensor.shape:
            continue
        if isinstance(current, nn.Parameter):
            setattr(module, leaf, nn.Parameter(torch.empty_like(tensor), requires_grad=current.requires_grad))
        else:
            module.register_buffer(leaf, torch.empty_like(tensor))
