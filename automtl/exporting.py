"""Export a trial as a genuinely smaller model.

1. Load the trial's saved pruned weights (checksummed; no re-training); the trial
   is chosen by :func:`automtl.pareto.choose`.
2. **Shrink**: physically remove every unit that is empty, silent or unheard
   (:mod:`automtl.pruning.shrink`), as whole dependency groups — a channel with
   its BatchNorm, the channels tied to it by residual adds and the weights
   reading it, or an attention head — then compare the shrunk model with the
   trial's on the whole test split (outputs within 1e-4 + 1e-4·|value|, every
   task metric within 0.1 point) and refuse, writing nothing, if they differ.
   A group that cannot be removed exactly stays whole and is named, with the
   reason, under ``kept_whole`` on the card; the others still shrink.
3. Write each asked-for format (:mod:`automtl.formats`: ONNX checked against
   PyTorch within ``onnx_tolerance`` of each task's output scale,
   ``torch.export``, dense and sparse safetensors, optional int8 ONNX) and
   ``card.json`` with everything measured; time every runtime side by side, for
   a bounded time (:data:`LATENCY_BUDGET_S` per runtime) on a batch chosen from
   the model's size (:func:`latency_batch`) unless the export names one.

The output folder is assembled in a temporary sibling and renamed into place
at the end, so a failed export leaves nothing half-written.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch
from optuna.trial import FrozenTrial
from torch import nn

from automtl import checkpoints, pareto, tracking
from automtl.config import SearchConfig
from automtl.errors import UserError
from automtl.formats import ONNX_TOLERANCE, QUANTIZE, RENAMED, WRITERS, Exported, Written, write
from automtl.measure import flops, parameters, time_side_by_side
from automtl.models import task_outputs
from automtl.objectives import metric_names, of_study
from automtl.problems import Problem
from automtl.pruning.shrink import CHECK_SAMPLES, ShrinkFailed, ShrinkReport, compare, shrink
from automtl.records import StudyRecord, TrialRecord
from automtl.rundir import RunDir
from automtl.train import evaluate, predict

log = logging.getLogger(__name__)

FORMATS = tuple(WRITERS)
# The latency batch, unless the export names one: the largest power of two up to LATENCY_MAX_BATCH whose dense
# forward pass takes at most LATENCY_MACS multiply-accumulates (about 0.1 s on two cores), so a tiny network's
# timing is not noise and a large one's rounds stay short.
LATENCY_MACS = 2e9
LATENCY_MAX_BATCH = 2048
LATENCY_BUDGET_S = 2.0  # seconds of timing per runtime (dense and exported, in each format)
METRIC_TOLERANCE = 1e-3  # 0.1 point: exported vs trial test metrics


@dataclass
class ExportResult:
    out_dir: Path
    card: dict


def load_trial_model(run: RunDir, trial: FrozenTrial, problem: Problem | None = None) -> tuple[nn.Module, Problem]:
    """The trial's pruned network (weights verified by checksum) and its problem (``problem`` when the
    search was given a Problem object)."""
    config = run.load_config()
    problem = problem or config.build_problem()
    model = problem.build_model(problem.default_model.override(**config.model.overrides()))
    record = TrialRecord.from_trial(trial)
    if not (run.path / record.result.weights).exists():
        replay = json.dumps({k: v for k, v in record.plan.items() if v is not None})
        raise UserError(f"trial {trial.number}'s weights were not kept: keep_weights: front deletes a trial's "
                        f"weights once another trial dominates it. Replay its plan by adding it to the config's "
                        f"enqueue list (enqueue: [{replay}]) and resuming, or search with keep_weights: all")
    state, _ = checkpoints.load(run.path / record.result.weights)
    model.load_state_dict(state)
    return model.eval(), problem


def shrink_exactly(model: nn.Module, problem: Problem, batch_size: int = 1024) -> tuple[ShrinkReport, float]:
    """Shrink ``model`` in place, then prove it is still the trial's model on the whole test split
    (read in batches of ``batch_size``): outputs within ``1e-4 + 1e-4 * |value|`` and every task metric
    within 0.1 point; refuse otherwise. Returns what was removed and the largest output difference."""
    masked = copy.deepcopy(model)
    try:
        report = shrink(model, problem.val.sample(CHECK_SAMPLES).inputs, problem.task_names)
    except ShrinkFailed as exc:
        raise UserError(f"export refused: {exc}; nothing was written") from None
    expected, targets = predict(lambda x: task_outputs(masked(x), problem.task_names), problem.test, batch_size)
    got, _ = predict(lambda x: task_outputs(model(x), problem.task_names), problem.test, batch_size)
    worst, differing = compare(got, expected)
    now, before = problem.score(got, targets), problem.score(expected, targets)
    moved = {name: (now[name], before[name]) for name in now if abs(now[name] - before[name]) > METRIC_TOLERANCE}
    if differing or moved:
        raise UserError(f"export refused: removing the unused units of {sorted(report.removed) or 'no layer'} "
                        f"changes the model on the test split (outputs of {differing} differ by up to {worst:.2e}; "
                        f"metrics {moved}); nothing was written")
    return report, worst


def latency_batch(dense_macs: int) -> int:
    """The default latency batch for a network of ``dense_macs`` multiply-accumulates per input."""
    fits = max(1, int(LATENCY_MACS // max(dense_macs, 1)))
    return min(LATENCY_MAX_BATCH, 2 ** (fits.bit_length() - 1))


def _check_request(out_dir: Path, formats: list[str], quantize: str | None, register: str | None,
                   onnx_tolerance: float, batch: int | None) -> Path:
    """Refuse what cannot be exported before any work; returns the folder the output is staged in."""
    bad = sorted(set(formats) - set(FORMATS))
    if bad or not formats:
        raise UserError(f"--format {','.join(formats)}: allowed formats are {','.join(FORMATS)}")
    if isinstance(onnx_tolerance, bool) or not isinstance(onnx_tolerance, (int, float)) \
            or not math.isfinite(onnx_tolerance) or onnx_tolerance < 0:
        raise UserError(f"--onnx-tolerance {onnx_tolerance!r}: must be a finite number >= 0 (default "
                        f"{ONNX_TOLERANCE:g}, a share of each task's output scale)")
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise UserError(f"--latency-batch {batch!r}: must be a whole number >= 1 (default: chosen from the "
                        f"model's size, at most {LATENCY_MAX_BATCH})")
    if quantize not in (None, *QUANTIZE):
        raise UserError(f"--quantize {quantize!r}: allowed: {', '.join(QUANTIZE)}")
    if quantize and "onnx" not in formats:
        raise UserError(f"--quantize {quantize} quantises the ONNX model: include onnx in --format")
    if register and "onnx" not in formats:
        raise UserError(f"--register {register} registers the ONNX model in MLflow: include onnx in --format")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UserError(f"-o {out_dir} exists and is not an empty folder; choose a new one")
    parent = out_dir.resolve().parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise UserError(f"-o {out_dir}: cannot write into {parent}")
    return parent


def _prepare(run: RunDir, config: SearchConfig, chosen: FrozenTrial, problem: Problem | None,
             quantize: str | None, onnx_tolerance: float, batch: int | None) -> tuple[Exported, dict]:
    """Load and shrink the chosen trial's model; what the writers share, and the card's measurements."""
    model, problem = load_trial_model(run, chosen, problem)
    dense = problem.build_model(problem.default_model.override(**config.model.overrides())).eval()
    one = problem.test.sample(1).inputs
    dense_flops = flops(dense, one)
    batch = batch or latency_batch(dense_flops)
    sample = problem.test.sample(batch).inputs
    sample = sample[torch.arange(batch) % len(sample)]
    pruned_params, pruned_nonzero = parameters(model)
    shrunk, shrunk_diff = shrink_exactly(model, problem, config.data.batch_size)
    params_after, nonzero_after = parameters(model)
    record = TrialRecord.from_trial(chosen)
    source = {"problem": config.problem.model_dump(mode="json"), "seed": config.seed,
              "model": config.model.overrides()}
    card = {
        "trial": chosen.number, "run_dir": str(run.path.resolve()), "plan": record.plan,
        "sparsity": record.result.sparsity, "compression_ratio": record.result.compression_ratio,
        "parameters": {"dense": parameters(dense)[0], "pruned": pruned_params, "pruned_nonzero": pruned_nonzero,
                       "exported": params_after, "exported_nonzero": nonzero_after},
        "removed_units": shrunk.removed_units, "removed_by_group": shrunk.removed,
        "kept_to_align_channels": shrunk.aligned,
        "kept_whole": shrunk.kept_whole, "shrunk_vs_trial_max_abs_diff": shrunk_diff,
        "flops": {"dense": dense_flops, "exported": flops(model, one)},
        "test_metrics": {"search": record.result.test_metrics,
                         "exported_pytorch": evaluate(model, problem, problem.test, config.data.batch_size)},
        "latency_batch": batch,
    }
    return Exported(model, dense, problem, sample, config.data.batch_size, source, quantize, onnx_tolerance), card


def _write(exported: Exported, card: dict, formats: list[str], staging: Path) -> None:
    """Every format into ``staging``, then the runtimes timed side by side and ``card.json``."""
    files = {}
    runs = {"dense_pytorch": lambda: exported.dense(exported.sample),
            "exported_pytorch": lambda: exported.model(exported.sample)}
    for name in formats:
        written: Written = write(name, exported, staging)
        files |= written.files
        card |= written.card
        card["test_metrics"] |= written.test_metrics
        runs |= written.runs
    # each runtime's dense and exported models are timed together, apart from the other runtimes: PyTorch's
    # OpenMP threads spin on after a call and slowed the onnxruntime call after it by up to 20 %
    timings = {runtime: time_side_by_side({name: run for name, run in runs.items() if _runtime(name) == runtime},
                                          LATENCY_BUDGET_S) for runtime in dict.fromkeys(map(_runtime, runs))}
    card["latency_ms"] = {name: ms for t in timings.values() for name, ms in t.median_ms.items()}
    # dense / exported in each runtime: they differ (onnxruntime folds BatchNorm and blocks channels by 8,
    # PyTorch runs each layer eagerly), so each is reported
    card["speedup"] = {runtime: round(card["latency_ms"][f"dense_{runtime}"] / card["latency_ms"][f"exported_{runtime}"], 3)
                       for runtime in timings}
    card["latency_timing"] = {"rounds": {runtime: t.rounds for runtime, t in timings.items()},
                              "seconds": round(sum(t.seconds for t in timings.values()), 3),
                              "budget_s_per_runtime": LATENCY_BUDGET_S,
                              "quartiles_ms": {name: q for t in timings.values() for name, q in t.quartiles_ms.items()}}
    card["files"] = {kind: {"path": name, "bytes": (staging / name).stat().st_size} for kind, name in files.items()}
    (staging / "card.json").write_text(json.dumps(card, indent=2))


def _runtime(run: str) -> str:
    """The runtime a timed run belongs to: ``dense_onnx`` and ``exported_onnx_int8`` are onnxruntime's."""
    return run.removeprefix("dense_").removeprefix("exported_").split("_")[0]


def export(run_dir: str | Path, out_dir: str | Path, trial: int | None = None, pick: str | None = None,
           constraints: list[str] = (), formats: list[str] = FORMATS, quantize: str | None = None,
           register: str | None = None, alias: str = "candidate", problem: Problem | None = None,
           onnx_tolerance: float = ONNX_TOLERANCE, latency_batch: int | None = None) -> ExportResult:
    """Choose, shrink, write and measure; see the module docstring. ``onnx_tolerance``: how far onnxruntime
    may differ from PyTorch, as a share of each task's output scale (:data:`automtl.formats.ONNX_TOLERANCE`);
    ``latency_batch``: the inputs of one timed forward pass (default: chosen from the dense model's FLOPs)."""
    run, out_dir = RunDir(run_dir).require(), Path(out_dir)
    formats = [RENAMED.get(name, name) for name in formats]
    parent = _check_request(out_dir, formats, quantize, register, onnx_tolerance, latency_batch)
    with run.weights_lock(shared=True, wait=True):  # a search deletes no weights while the trial is chosen and read
        study = run.load_study()
        chosen = pareto.choose(study, trial, pick, list(constraints))
        config = run.load_config()
        exported, card = _prepare(run, config, chosen, problem, quantize, onnx_tolerance, latency_batch)
    card["metric_names"] = metric_names(of_study(study))
    record = StudyRecord.of(study)
    card["dense_reference"] = record.dense_reference
    card["test_metrics"]["dense"] = record.dense_test_metrics
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=parent))
    try:
        _write(exported, card, list(formats), staging)
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if config.tracking.enabled:
        _log_to_mlflow(study, chosen, exported, card, out_dir, register, alias)
    return ExportResult(out_dir, card)


def _log_to_mlflow(study: optuna.Study, chosen: FrozenTrial, exported: Exported, card: dict, out_dir: Path,
                   register: str | None, alias: str) -> None:
    try:
        example = exported.problem.test.sample(2).inputs.numpy()
        card["mlflow"] = tracking.log_exported_model(study, chosen.number, out_dir, example, register, alias)
    except Exception as exc:  # noqa: BLE001 - the export on disk is complete; MLflow is a view
        log.warning("the exported model was not logged to MLflow: %s", exc)
        if register:
            raise UserError(f"the export in {out_dir} is complete, but --register {register} failed: {exc}") from None
    (out_dir / "card.json").write_text(json.dumps(card, indent=2))
