"""What a model costs: parameters, FLOPs (Torch-Pruning's counter) and CPU latency.

Shared by the trials (the structural objectives ``flops`` and ``latency_ms``,
measured on the shrunk model) and by export (the card).
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch
import torch_pruning as tp
from torch import Tensor, nn

from automtl.models import in_mode


def parameters(model: nn.Module) -> tuple[int, int]:
    """(parameters, non-zero parameters)."""
    values = [p.detach() for p in model.parameters()]
    return sum(v.numel() for v in values), sum(int(v.ne(0).sum()) for v in values)


def flops(model: nn.Module, sample: Tensor) -> int:
    """Multiply-accumulate operations of one forward pass on a single input (Torch-Pruning's count)."""
    with in_mode(model, False):
        ops, _ = tp.utils.count_ops_and_params(model, sample[:1])
    return int(ops)


def latencies_ms(runs: dict[str, Callable[[], object]], rounds: int = 100, warmup: int = 5) -> dict[str, float]:
    """Median wall time in ms of each ``runs[name]()``, measured round-robin (one call of each per
    round, after ``warmup`` rounds, no autograd) so that drift of the machine hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    with torch.no_grad():
        for round_ in range(rounds + warmup):
            for name, run_batch in runs.items():
                start = time.perf_counter()
                run_batch()
                if round_ >= warmup:
                    times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(values) for name, values in times.items()}


def cpu_latency_ms(model: nn.Module, inputs: Tensor, batch_size: int, rounds: int) -> float:
    """Median CPU time in ms of one eval-mode forward pass on ``batch_size`` inputs (cycled from ``inputs``)."""
    batch = inputs[torch.arange(batch_size) % len(inputs)].cpu()
    with in_mode(model, False):
        return latencies_ms({"model": lambda: model(batch)}, rounds, warmup=2)["model"]
