"""Checkpoint files: written atomically, loaded with ``weights_only=True``, checksummed.

A checkpoint is a plain ``torch.save`` dict ``{"state": {name: tensor},
"meta": json-string, "sha256": hex}``. The digest covers every tensor's name,
dtype, shape and bytes plus the meta, so a truncated file fails to load and a
tampered one fails verification; both raise :class:`CorruptCheckpoint`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor

from automtl.errors import UserError


class CorruptCheckpoint(UserError):
    """A checkpoint that cannot be read or whose checksum does not match."""


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder + rename: all or nothing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def digest(state: Mapping[str, Tensor], meta: str) -> str:
    """sha256 over the tensors (name, dtype, shape, bytes, in name order) and the meta string.

    Each tensor's bytes are read flattened, so 0-d tensors (e.g. BatchNorm's
    ``num_batches_tracked``) hash too; for the others the bytes are the same as unflattened.
    """
    h = hashlib.sha256(meta.encode())
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        h.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return h.hexdigest()


SPARSE_KEY = "sparse_layout"


def _pack(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, list[int]]]:
    """Store mostly-zero floating tensors as their non-zero values plus a 1-bit-per-entry bitmap."""
    packed, layout = {}, {}
    for name, tensor in state.items():
        if tensor.is_floating_point() and tensor.numel() >= 64 and tensor.eq(0).float().mean() > 0.5:
            present = tensor.ne(0).flatten()
            packed[f"{name}.values"] = tensor.flatten()[present].clone()
            packed[f"{name}.bitmap"] = torch.from_numpy(np.packbits(present.numpy()))
            layout[name] = list(tensor.shape)
        else:
            packed[name] = tensor
    return packed, layout


def _unpack(packed: dict[str, Tensor], layout: Mapping[str, list[int]]) -> dict[str, Tensor]:
    state = {k: v for k, v in packed.items() if k.rsplit(".", 1)[0] not in layout}
    for name, shape in layout.items():
        values, bitmap = packed[f"{name}.values"], packed[f"{name}.bitmap"]
        n = int(np.prod(shape))
        present = torch.from_numpy(np.unpackbits(bitmap.numpy(), count=n).astype(bool))
        dense = torch.zeros(n, dtype=values.dtype)
        dense[present] = values
        state[name] = dense.view(shape)
    return state


def save(
    path: str | Path, state: Mapping[str, Tensor], meta: Mapping[str, Any] | None = None, compact: bool = False
) -> None:
    """Atomically write ``state`` (tensors) and JSON-able ``meta`` with their checksum.

    ``compact`` stores mostly-zero tensors as values + bitmap; :func:`load` restores them.
    """
    state = {k: v.detach().cpu() for k, v in state.items()}
    meta = dict(meta or {})
    if compact:
        state, meta[SPARSE_KEY] = _pack(state)
    meta_json = json.dumps(meta, sort_keys=True)
    buffer = io.BytesIO()
    torch.save({"state": state, "meta": meta_json, "sha256": digest(state, meta_json)}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read and verify a checkpoint; raise CorruptCheckpoint if it is unreadable or altered."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        state, meta_json, expected = payload["state"], payload["meta"], payload["sha256"]
    except FileNotFoundError:
        raise
    except Exception as exc:  # truncated zip, wrong format, missing keys: all mean "corrupt"
        raise CorruptCheckpoint(f"checkpoint {path} is unreadable ({type(exc).__name__}: {exc})") from exc
    if digest(state, meta_json) != expected:
        raise CorruptCheckpoint(f"checkpoint {path} fails its checksum: it was altered after writing")
    meta = json.loads(meta_json)
    layout = meta.pop(SPARSE_KEY, None)
    return (_unpack(state, layout) if layout else state), meta
