"""``onnx``: the shrunk model as ONNX (``model.onnx``), checked against PyTorch with onnxruntime (every
task's outputs within ``tolerance x (max |pytorch| + |pytorch|)``, :data:`~automtl.formats.ONNX_TOLERANCE`
unless the export says otherwise), timed against the dense network in the same runtime; with
``--quantize int8`` also ``model.int8.onnx`` (onnxruntime's dynamic quantiser)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from automtl.errors import UserError
from automtl.formats import ONNX_TOLERANCE, Exported, TaskTuple, Written
from automtl.problems import Problem
from automtl.problems.base import Data
from automtl.train import predict


def write(exported: Exported, folder: Path) -> Written:
    problem, feed = exported.problem, {"input": exported.sample.numpy()}
    # The dense network in the same runtime is the latency baseline (not kept).
    check(exported.dense, problem, folder / "dense.onnx", exported.onnx_tolerance)
    dense = session(folder / "dense.onnx")
    (folder / "dense.onnx").unlink()
    checked = check(exported.model, problem, folder / "model.onnx", exported.onnx_tolerance)
    written = Written(files={"onnx": "model.onnx"}, card={"onnx_vs_pytorch": checked})
    model = session(folder / "model.onnx")
    written.test_metrics["exported_onnx"] = metrics(model, problem, problem.test, exported.batch_size)
    written.runs = {"dense_onnx": lambda: dense.run(None, feed), "exported_onnx": lambda: model.run(None, feed)}
    if exported.quantize == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(folder / "model.onnx", folder / "model.int8.onnx", weight_type=QuantType.QInt8)
        written.files["onnx_int8"] = "model.int8.onnx"
        int8 = session(folder / "model.int8.onnx")
        written.test_metrics["exported_onnx_int8"] = metrics(int8, problem, problem.test, exported.batch_size)
        written.runs["exported_onnx_int8"] = lambda: int8.run(None, feed)
    return written


def session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    # Idle sessions must not spin on the cores while another one is being timed.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def metrics(runtime, problem: Problem, split: Data, batch_size: int = 1024) -> dict[str, float]:
    """Each task's metric of an onnxruntime session over ``split``, in batches of ``batch_size``."""

    def forward(inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        values = runtime.run(problem.task_names, {"input": inputs.numpy()})
        return {name: torch.from_numpy(value) for name, value in zip(problem.task_names, values)}

    return problem.score(*predict(forward, split, batch_size))


def check(model: nn.Module, problem: Problem, path: Path, tolerance: float = ONNX_TOLERANCE) -> dict:
    """Export, then check onnxruntime against PyTorch on 64 test inputs: every task's outputs within
    ``tolerance x (max |pytorch| of the task + |pytorch|)``. Returns the largest absolute difference, the
    largest as a share of its task's output scale, and the rule."""
    wrapped = TaskTuple(model, problem.task_names).eval()
    sample = problem.test.sample(64).inputs
    try:
        torch.onnx.export(wrapped, (sample,), str(path), input_names=["input"], output_names=problem.task_names,
                          dynamic_axes={"input": {0: "batch"}, **{t: {0: "batch"} for t in problem.task_names}},
                          dynamo=False)
    except (torch.onnx.errors.OnnxExporterError, RuntimeError) as exc:
        raise UserError(f"ONNX cannot express this model ({str(exc).splitlines()[0][:200]}); export it without "
                        "ONNX: --format torch_export,safetensors") from None
    with torch.no_grad():
        expected = [o.numpy() for o in wrapped(sample)]
    got = session(path).run(problem.task_names, {"input": sample.numpy()})
    rule = f"|onnx - pytorch| <= {tolerance:g} x (max |pytorch| of the task + |pytorch|)"
    scales = [max(float(np.abs(a).max()), np.finfo(np.float32).tiny) for a in expected]
    absolute = max(float(np.abs(a - b).max()) for a, b in zip(expected, got))
    relative = max(float(np.abs(a - b).max()) / scale for a, b, scale in zip(expected, got, scales))
    if not all(np.all(np.abs(b - a) <= tolerance * (scale + np.abs(a))) for a, b, scale in zip(expected, got, scales)):
        raise UserError(f"ONNX outputs differ from PyTorch by up to {absolute:.2e} ({relative:.1e} of the output "
                        f"scale), beyond {rule}; export refused (a looser --onnx-tolerance accepts it)")
    return {"max_abs_diff": absolute, "max_diff_vs_scale": relative, "tolerance": tolerance, "rule": rule}
