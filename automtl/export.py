"""Export a trial as a genuinely smaller model.

1. Load the trial's saved pruned weights (checksummed; no re-training).
2. **Shrink**: physically remove every unit that is empty, silent or unheard
   (:mod:`automtl.pruning.shrink`), as whole dependency groups — a channel with
   its BatchNorm, the channels tied to it by residual adds and the weights
   reading it — then compare the shrunk model with the trial's on the whole
   test split (outputs within 1e-4 + 1e-4·|value|, every task metric within
   0.1 point) and refuse, writing nothing, if they differ.
3. Write ONNX (checked against PyTorch with onnxruntime), ``torch.export``
   (``model.pt2``), safetensors weights, optional dynamic-int8 ONNX
   (onnxruntime's quantiser), and ``card.json`` with everything measured.

The output folder is assembled in a temporary sibling and renamed into place
at the end, so a failed export leaves nothing half-written.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from automtl import checkpoints, pareto, tracking
from automtl.errors import UserError
from automtl.objectives import metric_names, of_study, task_objectives
from automtl.records import TrialRecord
from automtl.measure import flops, latencies_ms, parameters
from automtl.models import task_outputs
from automtl.problems import Problem
from automtl.problems.base import Data
from automtl.pruning.shrink import CHECK_SAMPLES, ShrinkFailed, ShrinkReport, compare, shrink
from automtl.rundir import RunDir
from automtl.train import evaluate, predict

log = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript", "safetensors")
PICKS = ("knee", "sparsest")  # and best-<task>
ONNX_TOLERANCE = 1e-5
LATENCY_BATCH = 2048  # large enough that a tiny network's timing is not noise
METRIC_TOLERANCE = 1e-3  # 0.1 point: exported vs trial test metrics


def choose(study: optuna.Study, trial: int | None, pick: str | None, constraints: list[str]) -> FrozenTrial:
    """The trial to export: an explicit number, or a Pareto point picked by rule under constraints.

    ``knee`` is the balanced point, ``sparsest`` the highest sparsity, ``best-<task>`` the best value of
    the task's metric in its direction (highest accuracy, lowest MSE, …)."""
    objectives = of_study(study)
    if trial is not None:
        found = [t for t in study.trials if t.number == trial]
        if not found:
            raise UserError(f"trial {trial} does not exist; the study has trials 0-{len(study.trials) - 1}")
        if found[0].state != TrialState.COMPLETE:
            raise UserError(f"trial {trial} is {found[0].state.name.lower()}, not complete; only finished trials "
                            f"can be exported (see `automtl pareto`)")
        return found[0]
    pick = pick or "knee"
    columns = {o.name: j for j, o in enumerate(objectives)}
    rules = {"knee": None, "sparsest": objectives[columns["sparsity"]]}
    rules |= {f"best-{task}": objective for task, objective in task_objectives(objectives).items()}
    if pick not in rules:
        raise UserError(f"--pick {pick!r} is unknown; allowed: {list(rules)}")
    front = pareto.front(study)
    if not front:
        raise UserError("the study has no completed trial to export yet")
    candidates = pareto.require(front, constraints, objectives)
    if rules[pick] is None:
        return pareto.knee(study, candidates)
    objective = rules[pick]
    column = columns[objective.name]
    return max(candidates, key=lambda t: t.values[column] if objective.maximize else -t.values[column])


def load_trial_model(run: RunDir, trial: FrozenTrial) -> tuple[nn.Module, Problem]:
    """The trial's pruned network (weights verified by checksum) and its problem."""
    config = run.load_config()
    problem = config.build_problem()
    spec = problem.default_model.override(**config.model.overrides())
    model = problem.build_model(spec)
    state, _ = checkpoints.load(run.path / TrialRecord.from_trial(trial).result.weights)
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


def _onnx_session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    # Idle sessions must not spin on the cores while another one is being timed.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_metrics(path: Path, problem: Problem, split: Data, batch_size: int = 1024) -> dict[str, float]:
    """Each task's metric of the ONNX model at ``path`` over ``split``, in batches of ``batch_size``."""
    session = _onnx_session(path)

    def forward(inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        values = session.run(problem.task_names, {"input": inputs.numpy()})
        return {name: torch.from_numpy(value) for name, value in zip(problem.task_names, values)}

    return problem.score(*predict(forward, split, batch_size))


class _Outputs(nn.Module):
    """Wraps a multi-task model so it returns a tuple in task order (for ONNX / torch.export)."""

    def __init__(self, model: nn.Module, task_names: list[str]):
        super().__init__()
        self.model, self.task_names = model, task_names

    def forward(self, x):
        out = task_outputs(self.model(x), self.task_names)
        return tuple(out[t] for t in self.task_names)


def write_onnx(model: nn.Module, problem: Problem, path: Path) -> dict:
    """Export, then check onnxruntime against PyTorch: every output within
    ``1e-5 + 1e-5 * |pytorch|`` (numpy's allclose). Returns the largest absolute difference and the rule."""
    wrapped = _Outputs(model, problem.task_names).eval()
    sample = problem.test.sample(64).inputs
    try:
        torch.onnx.export(wrapped, (sample,), str(path), input_names=["input"], output_names=problem.task_names,
                          dynamic_axes={"input": {0: "batch"}, **{t: {0: "batch"} for t in problem.task_names}},
                          dynamo=False)
    except (torch.onnx.errors.OnnxExporterError, RuntimeError) as exc:
        raise UserError(f"ONNX cannot express this model ({str(exc).splitlines()[0][:200]}); export it without "
                        "ONNX: --format torchscript,safetensors") from None
    with torch.no_grad():
        expected = [o.numpy() for o in wrapped(sample)]
    got = _onnx_session(path).run(problem.task_names, {"input": sample.numpy()})
    absolute = max(float(np.abs(a - b).max()) for a, b in zip(expected, got))
    if not all(np.allclose(b, a, rtol=ONNX_TOLERANCE, atol=ONNX_TOLERANCE) for a, b in zip(expected, got)):
        raise UserError(f"ONNX outputs differ from PyTorch by up to {absolute:.2e} (beyond 1e-5 + 1e-5 x |value|); "
                        "export refused")
    return {"max_abs_diff": absolute, "rule": "|onnx - pytorch| <= 1e-5 + 1e-5 * |pytorch|"}


@dataclass
class ExportResult:
    out_dir: Path
    card: dict


def export(run_dir: str | Path, out_dir: str | Path, trial: int | None = None, pick: str | None = None,
           constraints: list[str] = (), formats: list[str] = FORMATS, quantize: str | None = None,
           register: str | None = None, alias: str = "candidate") -> ExportResult:
    """Choose, shrink, write and measure; see the module docstring."""
    run = RunDir(run_dir).require()
    out_dir = Path(out_dir)
    bad = sorted(set(formats) - set(FORMATS))
    if bad or not formats:
        raise UserError(f"--format {','.join(formats)}: allowed formats are {','.join(FORMATS)}")
    if quantize not in (None, "int8"):
        raise UserError(f"--quantize {quantize!r}: allowed: int8")
    if quantize and "onnx" not in formats:
        raise UserError("--quantize int8 quantises the ONNX model: include onnx in --format")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UserError(f"-o {out_dir} exists and is not an empty folder; choose a new one")
    parent = out_dir.resolve().parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise UserError(f"-o {out_dir}: cannot write into {parent}")
    study = run.load_study()
    chosen = choose(study, trial, pick, list(constraints))
    model, problem = load_trial_model(run, chosen)
    dense = problem.build_model(problem.default_model.override(**run.load_config().model.overrides())).eval()
    dense_params, _ = parameters(dense)
    pruned_params, pruned_nonzero = parameters(model)
    batch_size = run.load_config().data.batch_size
    sample = problem.test.sample(LATENCY_BATCH).inputs
    sample_batch = sample[torch.arange(LATENCY_BATCH) % len(sample)]
    dense_flops = flops(dense, sample_batch)
    shrunk, shrunk_diff = shrink_exactly(model, problem, batch_size)
    exported_flops = flops(model, sample_batch)
    params_after, nonzero_after = parameters(model)
    exported_metrics = evaluate(model, problem, problem.test, batch_size)
    record = TrialRecord.from_trial(chosen)

    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=parent))
    try:
        files = {}
        if "safetensors" in formats:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(staging / "model.safetensors"))
            files["safetensors"] = "model.safetensors"
        if "torchscript" in formats:
            program = torch.export.export(_Outputs(model, problem.task_names).eval(), (sample_batch[:256],),
                                          dynamic_shapes=({0: torch.export.Dim("batch")},))
            torch.export.save(program, str(staging / "model.pt2"))
            files["torch_export"] = "model.pt2"
        card = {
            "trial": chosen.number, "run_dir": str(run.path.resolve()),
            "plan": record.plan,
            "sparsity": record.result.sparsity, "compression_ratio": record.result.compression_ratio,
            "parameters": {"dense": dense_params, "pruned": pruned_params, "pruned_nonzero": pruned_nonzero,
                           "exported": params_after, "exported_nonzero": nonzero_after},
            "removed_units": shrunk.removed_units, "removed_by_group": shrunk.removed,
            "kept_whole": shrunk.kept_whole, "shrunk_vs_trial_max_abs_diff": shrunk_diff,
            "flops": {"dense": dense_flops, "exported": exported_flops},
            "metric_names": metric_names(of_study(study)),
            "test_metrics": {"search": record.result.test_metrics, "exported_pytorch": exported_metrics},
            "latency_batch": LATENCY_BATCH,
        }
        runs = {"dense_pytorch": lambda: dense(sample_batch), "exported_pytorch": lambda: model(sample_batch)}
        if "onnx" in formats:
            # The dense network in the same runtime is the latency baseline (not kept).
            write_onnx(dense, problem, staging / "dense.onnx")
            dense_session = _onnx_session(staging / "dense.onnx")
            (staging / "dense.onnx").unlink()
            card["onnx_vs_pytorch"] = write_onnx(model, problem, staging / "model.onnx")
            files["onnx"] = "model.onnx"
            card["test_metrics"]["exported_onnx"] = onnx_metrics(staging / "model.onnx", problem, problem.test,
                                                                 batch_size)
            session = _onnx_session(staging / "model.onnx")
            feed = {"input": sample_batch.numpy()}
            runs |= {"dense_onnx": lambda: dense_session.run(None, feed), "exported_onnx": lambda: session.run(None, feed)}
        if quantize:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantize_dynamic(staging / "model.onnx", staging / "model.int8.onnx", weight_type=QuantType.QInt8)
            files["onnx_int8"] = "model.int8.onnx"
            card["test_metrics"]["exported_onnx_int8"] = onnx_metrics(staging / "model.int8.onnx", problem,
                                                                      problem.test, batch_size)
            session8 = _onnx_session(staging / "model.int8.onnx")
            runs["exported_onnx_int8"] = lambda: session8.run(None, feed)
        card["latency_ms"] = latencies_ms(runs)
        card["files"] = {kind: {"path": name, "bytes": (staging / name).stat().st_size} for kind, name in files.items()}
        (staging / "card.json").write_text(json.dumps(card, indent=2))
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if run.load_config().tracking.enabled:
        try:
            example = problem.test.sample(2).inputs.numpy()
            card["mlflow"] = tracking.log_exported_model(study, chosen.number, model, example, register, alias)
        except Exception as exc:  # noqa: BLE001 - the export on disk is complete; MLflow is a view
            log.warning("the exported model was not logged to MLflow: %s", exc)
            if register:
                raise UserError(f"the export in {out_dir} is complete, but --register {register} failed: {exc}") from None
        (out_dir / "card.json").write_text(json.dumps(card, indent=2))
    return ExportResult(out_dir, card)
