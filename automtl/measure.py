"""What a model costs: parameters, FLOPs (Torch-Pruning's counter) and CPU latency.

Shared by the trials (the structural objectives ``flops`` and ``latency_ms``,
measured on the shrunk model: :func:`shrunk_costs`) and by export (the card).
"""

from __future__ import annotations

import copy
import itertools
import logging
import statistics
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
import torch_pruning as tp
from torch import Tensor, nn

from automtl import objectives
from automtl.models import in_mode
from automtl.pruning.shrink import CHECK_SAMPLES, ShrinkFailed, shrink

if TYPE_CHECKING:
    from automtl.config import SearchConfig
    from automtl.problems import Problem

log = logging.getLogger(__name__)


def parameters(model: nn.Module) -> tuple[int, int]:
    """(parameters, non-zero parameters)."""
    values = [p.detach() for p in model.parameters()]
    return sum(v.numel() for v in values), sum(int(v.ne(0).sum()) for v in values)


def flops(model: nn.Module, sample: Tensor) -> int:
    """Multiply-accumulate operations of one forward pass on a single input (Torch-Pruning's count)."""
    with in_mode(model, False):
        ops, _ = tp.utils.count_ops_and_params(model, sample[:1])
    return int(ops)


@dataclass(frozen=True)
class Timing:
    """Wall times of several runs measured side by side: per run the median and the quartiles, in ms."""

    median_ms: dict[str, float]
    quartiles_ms: dict[str, tuple[float, float]]  # 25th and 75th percentile
    rounds: int  # calls of each run that were timed
    seconds: float  # wall time spent timing, warm-up included


def time_side_by_side(runs: dict[str, Callable[[], object]], budget_s: float = 2.0, min_rounds: int = 5,
                      max_rounds: int = 100, warmup: int = 2) -> Timing:
    """Time each ``runs[name]()`` round-robin (one call of each per round, no autograd, every other round in
    reverse order), so that drift of the machine, and what one call leaves behind for the next (threads still
    spinning), hit all alike. Time runs of one runtime together: another runtime's threads distort them.
    Bounded by time, as ``timeit``'s autorange: after ``warmup`` rounds, rounds go on until ``budget_s``
    seconds per run are spent (and at least ``min_rounds``), at most ``max_rounds``."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    began = time.perf_counter()
    with torch.no_grad():
        for round_ in itertools.count():
            timed = round_ - warmup
            spent = sum(sum(values) for values in times.values())
            if timed >= max_rounds or (timed >= min_rounds and spent >= budget_s * len(runs)):
                break
            for name, run_batch in (runs.items() if round_ % 2 == 0 else reversed(runs.items())):
                start = time.perf_counter()
                run_batch()
                if timed >= 0:
                    times[name].append(time.perf_counter() - start)
    quartiles = {name: statistics.quantiles(values, n=4)[::2] if len(values) > 1 else values * 2
                 for name, values in times.items()}
    return Timing(median_ms={name: 1000 * statistics.median(values) for name, values in times.items()},
                  quartiles_ms={name: (1000 * q[0], 1000 * q[1]) for name, q in quartiles.items()},
                  rounds=max(0, timed), seconds=time.perf_counter() - began)


def cpu_latency_ms(model: nn.Module, inputs: Tensor, batch_size: int, rounds: int) -> float:
    """Median CPU time in ms of one eval-mode forward pass on ``batch_size`` inputs (cycled from ``inputs``)."""
    batch = inputs[torch.arange(batch_size) % len(inputs)].cpu()
    with in_mode(model, False):
        timing = time_side_by_side({"model": lambda: model(batch)}, budget_s=0, min_rounds=rounds, max_rounds=rounds)
    return timing.median_ms["model"]


def costs(model: nn.Module, problem: "Problem", config: "SearchConfig") -> dict[str, float]:
    """The structural objectives the config asks for (``flops``, ``latency_ms``) of ``model`` as it is,
    on the CPU (latency: median of ``latency.rounds`` forward passes of ``latency.batch_size`` inputs)."""
    measured = {}
    inputs = problem.val.sample(config.latency.batch_size).inputs.cpu()
    if "flops" in config.objectives:
        measured["flops"] = float(flops(model, inputs))
    if "latency_ms" in config.objectives:
        measured["latency_ms"] = cpu_latency_ms(model, inputs, config.latency.batch_size, config.latency.rounds)
    return measured


def shrunk_costs(model: nn.Module, problem: "Problem", config: "SearchConfig") -> dict[str, float]:
    """:func:`costs` of a CPU copy of ``model`` with its unused units physically removed (as export would;
    the unshrunk model's when removing them would change it, which export would refuse)."""
    if not set(objectives.STRUCTURAL) & set(config.objectives):
        return {}
    shrunk = copy.deepcopy(model).cpu()
    try:
        shrink(shrunk, problem.val.sample(CHECK_SAMPLES).inputs.cpu(), problem.task_names)
    except ShrinkFailed as exc:
        log.warning("%s; the structural objectives are measured on the unshrunk model", exc)
        shrunk = copy.deepcopy(model).cpu()
    return costs(shrunk, problem, config)
