"""Export a trial as a genuinely smaller model.

1. Load the trial's saved pruned weights (checksummed; no re-training).
2. **Shrink**: physically remove every hidden unit that is *silent* (incoming
   weights all zero and activation(bias) == 0) or *unheard* (every weight
   reading it downstream is zero), with Torch-Pruning's dependency graph,
   which also removes the matching slices of the layers around it. Both are
   exact: outputs do not change. Units that feed a constant into listening
   layers are kept.
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
from automtl.measure import flops, latencies_ms, parameters
from automtl.models import task_outputs
from automtl.problems import Problem, Split
from automtl.pruning.shrink import ShrinkReport, compare, outputs, shrink
from automtl.rundir import RunDir
from automtl.train import evaluate

log = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript", "safetensors")
PICKS = ("knee", "sparsest")  # and best-<task>
ONNX_TOLERANCE = 1e-5
LATENCY_BATCH = 2048  # large enough that a tiny network's timing is not noise
CHECK_SAMPLES = 256  # validation inputs on which each group's removal is checked
METRIC_TOLERANCE = 1e-3  # 0.1 point: exported vs trial test metrics


def choose(study: optuna.Study, trial: int | None, pick: str | None, constraints: list[str]) -> FrozenTrial:
    """The trial to export: an explicit number, or a Pareto point picked by rule under constraints."""
    tasks = study.user_attrs.get("tasks", [])
    if trial is not None:
        found = [t for t in study.trials if t.number == trial]
        if not found:
            raise UserError(f"trial {trial} does not exist; the study has trials 0-{len(study.trials) - 1}")
        if found[0].state != TrialState.COMPLETE:
            raise UserError(f"trial {trial} is {found[0].state.name.lower()}, not complete; only finished trials "
                            f"can be exported (see `automtl pareto`)")
        return found[0]
    pick = pick or "knee"
    rules = {"knee": None, "sparsest": lambda t: t.user_attrs["sparsity"],
             **{f"best-{task}": (lambda t, task=task: t.user_attrs["accuracy"][task]) for task in tasks}}
    if pick not in rules:
        raise UserError(f"--pick {pick!r} is unknown; allowed: {list(rules)}")
    front = pareto.front(study)
    if not front:
        raise UserError("the study has no completed trial to export yet")
    candidates = pareto.require(front, constraints, tasks)
    return pareto.knee(study, candidates) if rules[pick] is None else max(candidates, key=rules[pick])


def load_trial_model(run: RunDir, trial: FrozenTrial) -> tuple[nn.Module, Problem]:
    """The trial's pruned network (weights verified by checksum) and its problem."""
    config = run.load_config()
    problem = config.problem.build(config.seed)
    spec = problem.default_model.override(**config.model.overrides())
    model = problem.build_model(spec)
    state, _ = checkpoints.load(run.path / trial.user_attrs["weights"])
    model.load_state_dict(state)
    return model.eval(), problem


def shrink_exactly(model: nn.Module, problem: Problem) -> tuple[ShrinkReport, float]:
    """Shrink ``model`` in place, then prove it is still the trial's model on the whole test split:
    outputs within ``1e-4 + 1e-4 * |value|`` and every task metric within 0.1 point; refuse otherwise.
    Returns what was removed and the largest output difference."""
    masked = copy.deepcopy(model)
    report = shrink(model, problem.val.inputs[:CHECK_SAMPLES], problem.task_names)
    expected = outputs(masked, problem.test.inputs, problem.task_names)
    got = outputs(model, problem.test.inputs, problem.task_names)
    worst, differing = compare(got, expected)
    metrics = {t.name: (t.metric(got[t.name], problem.test.targets[t.name]),
                        t.metric(expected[t.name], problem.test.targets[t.name])) for t in problem.tasks}
    moved = {name: pair for name, pair in metrics.items() if abs(pair[0] - pair[1]) > METRIC_TOLERANCE}
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


def onnx_accuracy(path: Path, problem: Problem, split: Split) -> dict[str, float]:
    session = _onnx_session(path)
    outputs = session.run(problem.task_names, {"input": split.inputs.numpy()})
    return {t.name: float(t.metric(torch.from_numpy(o), split.targets[t.name])) for t, o in zip(problem.tasks, outputs)}


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
    sample = problem.test.inputs[:64]
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
    sample_batch = problem.test.inputs[torch.arange(LATENCY_BATCH) % len(problem.test)]
    dense_flops = flops(dense, problem.test.inputs)
    shrunk, shrunk_diff = shrink_exactly(model, problem)
    exported_flops = flops(model, problem.test.inputs)
    params_after, nonzero_after = parameters(model)
    accuracy = evaluate(model, problem, problem.test)

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
            "plan": {k: chosen.user_attrs.get(k) for k in ("order", "thresholds", "loss_method", "loss_weights",
                                                           "distillation")},
            "sparsity": chosen.user_attrs["sparsity"], "compression_ratio": chosen.user_attrs["compression_ratio"],
            "parameters": {"dense": dense_params, "pruned": pruned_params, "pruned_nonzero": pruned_nonzero,
                           "exported": params_after, "exported_nonzero": nonzero_after},
            "removed_units": shrunk.removed_units, "removed_by_group": shrunk.removed,
            "kept_whole": shrunk.kept_whole, "shrunk_vs_trial_max_abs_diff": shrunk_diff,
            "flops": {"dense": dense_flops, "exported": exported_flops},
            "test_accuracy": {"search": chosen.user_attrs["test_accuracy"], "exported_pytorch": accuracy},
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
            card["test_accuracy"]["exported_onnx"] = onnx_accuracy(staging / "model.onnx", problem, problem.test)
            session = _onnx_session(staging / "model.onnx")
            feed = {"input": sample_batch.numpy()}
            runs |= {"dense_onnx": lambda: dense_session.run(None, feed), "exported_onnx": lambda: session.run(None, feed)}
        if quantize:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantize_dynamic(staging / "model.onnx", staging / "model.int8.onnx", weight_type=QuantType.QInt8)
            files["onnx_int8"] = "model.int8.onnx"
            card["test_accuracy"]["exported_onnx_int8"] = onnx_accuracy(staging / "model.int8.onnx", problem, problem.test)
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
            example = problem.test.inputs[:2].numpy()
            card["mlflow"] = tracking.log_exported_model(study, chosen.number, model, example, register, alias)
        except Exception as exc:  # noqa: BLE001 - the export on disk is complete; MLflow is a view
            log.warning("the exported model was not logged to MLflow: %s", exc)
            if register:
                raise UserError(f"the export in {out_dir} is complete, but --register {register} failed: {exc}") from None
        (out_dir / "card.json").write_text(json.dumps(card, indent=2))
    return ExportResult(out_dir, card)
