"""Where trials compute, and how many a worker fine-tunes together there.

``backend.device``: ``auto`` is CUDA when the process sees a GPU (Ray sets which
one), else the CPU. ``trial_batch: auto`` is one trial at a time on the CPU
(workers with a thread each already keep the cores busy, docs/BENCHMARKS.md)
and, on CUDA, as many as keep the stacked models within
:data:`AUTO_BATCH_PARAMETERS` parameters, at most :data:`AUTO_BATCH`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch

from automtl.errors import TrialFailed

if TYPE_CHECKING:
    from automtl.config import SearchConfig

def resolve_device(name: str) -> torch.device:
    """``auto`` = CUDA when this process sees a GPU (Ray sets which one), else CPU."""
    if name == "cuda" and not torch.cuda.is_available():
        raise TrialFailed("backend.device is cuda but this worker sees no GPU (torch.cuda.is_available() is False)")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


AUTO_BATCH, AUTO_BATCH_PARAMETERS = 16, 50_000_000


def batch_size(config: "SearchConfig", cuda: bool, parameters: Callable[[], int]) -> int:
    """Trials fine-tuned together: the config's ``trial_batch``, or for ``auto`` 1 on the CPU (workers with
    a thread each already keep the cores busy, so a batch is no faster: docs/BENCHMARKS.md) and on CUDA as
    many as keep the stack within ``AUTO_BATCH_PARAMETERS`` parameters (``parameters()``: one model's), at
    most ``AUTO_BATCH``."""
    if config.trial_batch != "auto":
        return config.trial_batch
    return max(1, min(AUTO_BATCH, AUTO_BATCH_PARAMETERS // parameters())) if cuda else 1
