"""Exporting a trial as a physically smaller model, checked with onnxruntime."""

import json
import math
import shutil

import numpy as np
import onnxruntime as ort
import optuna
import pytest
import torch

from automtl.records import TrialRecord
from automtl.rundir import RunDir
from tests.fixtures.zoo import ZOO, search_space
from tests.test_search import FAST, SMOKE
from tests.test_tracking import cli

STRUCTURED = "{order: [activation, magnitude], thresholds: {activation: 0.5, magnitude: 0.1}, loss_weights: {left: 0.5, right: 0.5}}"


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("export")
    space = cwd / "space.yaml"
    space.write_text(SMOKE.read_text() + f"enqueue:\n  - {STRUCTURED}\n")
    cli(cwd, "search", space, "--trials", 6, "--run-dir", "runs/smoke", "--json", *FAST,
        "--set", "keep_weights=all")  # trial 0 is exported by number
    return cwd


def problem_for(cwd):
    config = RunDir(cwd / "runs" / "smoke").load_config()
    return config.problem.build(config.seed)


def test_exported_onnx_reproduces_the_trial_and_is_physically_smaller(searched):
    cli(searched, "export", "runs/smoke", "--trial", 0, "--quantize", "int8", "-o", "out0")
    out = searched / "out0"
    card = json.loads((out / "card.json").read_text())
    trial = RunDir(searched / "runs" / "smoke").load_study().trials[0]
    assert card["trial"] == 0 and card["plan"]["order"] == ["activation", "magnitude"]
    assert TrialRecord.from_trial(trial).result.empty_units > 0 and card["removed_units"] > 0
    assert card["parameters"]["exported"] < card["parameters"]["dense"]
    assert card["flops"]["exported"] < card["flops"]["dense"]
    assert card["onnx_vs_pytorch"]["max_diff_vs_scale"] <= 1e-4  # export refuses anything beyond 1e-4 of the scale
    # Re-evaluate the ONNX file ourselves on the test split.
    problem = problem_for(searched)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    outputs = session.run(problem.task_names, {"input": problem.test.inputs.numpy()})
    for task, logits in zip(problem.task_names, outputs):
        accuracy = float((np.argmax(logits, 1) == problem.test.targets[task].numpy()).mean())
        assert accuracy == pytest.approx(TrialRecord.from_trial(trial).result.test_metrics[task], abs=1e-3)
    # torch.export program gives the same outputs.
    program = torch.export.load(str(out / "model.pt2")).module()
    with torch.no_grad():
        reference = program(problem.test.inputs[:32])
    np.testing.assert_allclose(reference[0].numpy(), outputs[0][:32], atol=1e-5)
    int8 = card["test_metrics"]["exported_onnx_int8"]
    assert all(abs(int8[t] - card["test_metrics"]["exported_onnx"][t]) < 0.05 for t in problem.task_names)
    for kind in ("onnx", "onnx_int8", "torch_export", "safetensors"):
        assert (out / card["files"][kind]["path"]).stat().st_size == card["files"][kind]["bytes"]
    assert card["files"]["onnx_int8"]["bytes"] < card["files"]["onnx"]["bytes"]
    # a tiny network is timed on the largest batch, each runtime's median inside its quartiles
    assert card["latency_batch"] == 2048
    assert all(5 <= rounds <= 100 for rounds in card["latency_timing"]["rounds"].values())
    assert set(card["latency_timing"]["rounds"]) == set(card["speedup"]) == {"pytorch", "onnx"}
    for runtime, (low, high) in card["latency_timing"]["quartiles_ms"].items():
        assert low <= card["latency_ms"][runtime] <= high
    lat = card["latency_ms"]
    assert card["speedup"] == {rt: pytest.approx(lat[f"dense_{rt}"] / lat[f"exported_{rt}"], rel=1e-3)
                               for rt in ("pytorch", "onnx")}
    assert set(lat) == {"dense_pytorch", "exported_pytorch", "dense_onnx", "exported_onnx", "exported_onnx_int8"}


def test_pick_rules_and_constraints(searched):
    front = json.loads(cli(searched, "pareto", "runs/smoke", "--json").stdout)
    cli(searched, "export", "runs/smoke", "--pick", "sparsest", "--format", "onnx", "-o", "sparsest")
    assert json.loads((searched / "sparsest" / "card.json").read_text())["trial"] == max(front, key=lambda r: r["sparsity"])["trial"]
    best = max(front, key=lambda r: r["metrics"]["left"])
    cli(searched, "export", "runs/smoke", "--pick", "best-left", "--format", "safetensors", "-o", "best")
    assert json.loads((searched / "best" / "card.json").read_text())["trial"] == best["trial"]
    floor = min(r["metrics"]["right"] for r in front)
    cli(searched, "export", "runs/smoke", "--require", f"right>={floor}", "--format", "onnx", "-o", "knee")
    assert json.loads((searched / "knee" / "card.json").read_text())["trial"] in {r["trial"] for r in front}


def test_registering_the_model_in_mlflow(searched):
    cli(searched, "export", "runs/smoke", "--trial", 0, "--format", "onnx", "--register", "smoke-model",
        "--alias", "staging", "-o", "registered")
    from mlflow.tracking import MlflowClient

    version = MlflowClient(f"sqlite:///{searched}/mlflow.db").get_model_version_by_alias("smoke-model", "staging")
    card = json.loads((searched / "registered" / "card.json").read_text())
    assert card["mlflow"]["version"] == version.version and card["mlflow"]["run_id"] == version.run_id


def test_bad_exports_exit_2_and_leave_nothing_behind(searched, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(searched / "runs" / "smoke", copy)
    study = RunDir(copy).load_study()
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    failed = len(study.trials) - 1
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    (tmp_path / "a-file").write_text("x")
    cases = [
        (["export", tmp_path / "nowhere", "-o", tmp_path / "o1"], "not an automtl run directory"),
        (["export", copy, "--trial", failed, "-o", tmp_path / "o2"], f"trial {failed} is fail, not complete"),
        (["export", copy, "--trial", 999, "-o", tmp_path / "o3"], "trial 999 does not exist"),
        (["export", copy, "--require", "left>=1.5", "-o", tmp_path / "o4"], "no Pareto trial meets left>=1.5; closest: trial"),
        (["export", copy, "--pick", "best-middle", "-o", tmp_path / "o5"], "--pick 'best-middle' is unknown; allowed"),
        (["export", copy, "--format", "tflite", "-o", tmp_path / "o6"], "allowed formats are onnx,torch_export,safetensors"),
        (["export", copy, "--format", "safetensors", "--quantize", "int8", "-o", tmp_path / "o7"], "include onnx"),
        (["export", copy, "--latency-batch", 0, "-o", tmp_path / "o8"], "--latency-batch 0: must be a whole number >= 1"),
        (["export", copy, "-o", tmp_path / "full"], "exists and is not an empty folder"),
        (["export", copy, "-o", tmp_path / "a-file" / "out"], "cannot write into"),
    ]
    for args, message in cases:
        result = cli(tmp_path, *args, check=False)
        assert result.returncode == 2, (args, result.stderr)
        assert message in " ".join(result.stderr.split()), result.stderr
        assert "Traceback" not in result.stderr
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert leftovers == ["a-file", "copy", "full"], leftovers
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"


def test_shrink_removes_silent_and_unheard_units_exactly(small_digits):
    from automtl import ModelSpec
    from automtl.pruning.shrink import shrink

    torch.manual_seed(0)
    model = small_digits.build_model(ModelSpec("mlp", (16, 8))).eval()
    with torch.no_grad():
        model.trunk[1].weight[3] = 0      # unit 3: no input ...
        model.trunk[1].bias[3] = -0.5     # ... and ReLU(-0.5) = 0: silent
        model.trunk[1].weight[5] = 0      # unit 5: no input but ReLU(bias) > 0: a constant the next layer hears
        model.trunk[1].bias[5] = 0.7
        model.trunk[3].weight[:, 9] = 0   # unit 9: nothing reads it: unheard
        model.trunk[3].weight[:, 5] *= 1  # unit 5 stays heard
    x = small_digits.val.inputs[:64]
    with torch.no_grad():
        before = model(x)
    report = shrink(model, x, small_digits.task_names)
    assert report.removed == {"trunk.1": 2} and not report.kept_whole
    assert model.trunk[1].out_features == 14 and model.trunk[3].in_features == 14
    with torch.no_grad():
        after = model(x)
    for task in before:
        torch.testing.assert_close(after[task], before[task])


ZOO_SPACE = search_space(
    "resnet_digits", {"train_pairs": 1500, "eval_pairs": 300}, name="zoo", seed=0, dense={"epochs": 3},
    fine_tune={"epochs": 1},
    pruning={"strategies": {"magnitude": {"low": 0.0, "high": 0.3}, "activation": {"low": 0.0, "high": 0.8},
                            "stability": {"low": 0.0, "high": 0.6}, "entropy": None},
             "calibration_size": 256},
    loss_weights={"method": "simplex"}, objectives=["sparsity", "accuracy", "flops", "latency_ms"],
    latency={"batch_size": 64, "rounds": 3}, sampler={"name": "tpe", "startup_trials": 8},
    tracking={"enabled": False}, trials=8,
    enqueue=[{"order": ["activation", "magnitude"], "thresholds": {"activation": 0.5, "magnitude": 0.1},
              "loss_weights": {"left": 0.5, "right": 0.5}},
             {"order": ["stability"], "thresholds": {"stability": 0.4},
              "loss_weights": {"left": 0.5, "right": 0.5}}])


@pytest.fixture(scope="module")
def resnet_search(tmp_path_factory):
    """A smoke search on the user ResNet (BatchNorm, residual add, F.relu, dict heads)."""
    cwd = tmp_path_factory.mktemp("resnet")
    space = cwd / "zoo.yaml"
    space.write_text(ZOO_SPACE)
    cli(cwd, "search", space, "--run-dir", "runs/zoo", "--json")
    return cwd / "runs" / "zoo"


def test_every_pareto_trial_of_a_resnet_search_exports_as_exactly_the_trial_model(resnet_search, tmp_path):
    from automtl import pareto
    from automtl.exporting import export, load_trial_model
    from automtl.objectives import of_study

    run = RunDir(resnet_search)
    study = run.load_study()
    assert study.user_attrs["objectives"][-2:] == ["flops", "latency_ms"]
    dense_flops = {o.name: o for o in of_study(study)}["flops"].nadir
    front = pareto.front(study)
    assert front and any(TrialRecord.from_trial(t).result.empty_units > 0 for t in front)
    for trial in front:
        card = export(resnet_search, tmp_path / f"t{trial.number}", trial=trial.number, formats=["onnx"]).card
        model, problem = load_trial_model(run, trial)
        with torch.no_grad():
            expected = model(problem.test.inputs)
        session = ort.InferenceSession(str(tmp_path / f"t{trial.number}" / "model.onnx"), providers=["CPUExecutionProvider"])
        got = session.run(problem.task_names, {"input": problem.test.inputs.numpy()})
        for task, values in zip(problem.task_names, got):
            np.testing.assert_allclose(values, expected[task].numpy(), rtol=1e-4, atol=1e-4)
            assert card["test_metrics"]["exported_pytorch"][task] == pytest.approx(
                TrialRecord.from_trial(trial).result.test_metrics[task], abs=1e-3)
        assert card["removed_units"] + sum(card["kept_to_align_channels"].values()) >= \
            TrialRecord.from_trial(trial).result.empty_units, "every empty unit goes"
        if card["removed_units"]:
            assert card["parameters"]["exported"] < card["parameters"]["dense"]
            assert card["flops"]["exported"] < card["flops"]["dense"] == dense_flops
        assert trial.values[-2] == card["flops"]["exported"], "the flops objective is the exported model's"


def test_a_unit_whose_zero_is_not_silent_keeps_its_layer_whole(small_digits):
    from automtl.pruning.shrink import shrink

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(100, 8), torch.nn.Sigmoid(), torch.nn.Linear(8, 10))

    class Heads(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = model

        def forward(self, x):
            out = self.body(x)
            return {"left": out, "right": -out}

    net = Heads().eval()
    with torch.no_grad():
        model[1].weight[2] = 0
        model[1].bias[2] = 0  # every producing entry is zero, yet sigmoid(0) = 0.5 reaches the next layer
    x = small_digits.val.inputs[:64]
    before = net(x)
    report = shrink(net, x, small_digits.task_names)
    assert report.removed == {} and "body.1" in report.kept_whole
    assert model[1].out_features == 8
    torch.testing.assert_close(net(x)["left"], before["left"])


def test_an_export_that_would_change_the_model_is_refused_and_writes_nothing(searched, tmp_path, monkeypatch):
    from automtl import exporting as export_mod
    from automtl.errors import UserError
    from automtl.pruning.shrink import ShrinkReport

    def careless(model, _inputs, _tasks):
        import torch_pruning as tp

        graph = tp.DependencyGraph().build_dependency(model, example_inputs=_inputs[:2])
        alive = model.trunk[1].weight.abs().sum(1).topk(3).indices.tolist()  # units the trial uses
        graph.get_pruning_group(model.trunk[1], tp.prune_linear_out_channels, idxs=alive).prune()
        return ShrinkReport(removed={"trunk.1": 3})

    monkeypatch.setattr(export_mod, "shrink", careless)
    with pytest.raises(UserError, match=r"export refused: removing the unused units of \['trunk.1'\] changes the model"):
        export_mod.export(searched / "runs" / "smoke", tmp_path / "out", trial=0, formats=["onnx"])
    assert list(tmp_path.iterdir()) == []


ARCHITECTURES = ["vit_style", "mobilenetv2_style", "efficientnet_style"]  # attention, inverted residuals, SE


def _architecture_space(model: str) -> str:
    tasks = ["left", "right", *(["ink"] if ZOO[model][1] else [])]
    return search_space(
        "zoo_digits", {"model": model, "train_pairs": 600, "eval_pairs": 150}, name=model, seed=0,
        dense={"epochs": 2}, fine_tune={"epochs": 1},
        pruning={"strategies": {"activation": {"low": 0.2, "high": 0.8}, "stability": {"low": 0.1, "high": 0.5},
                                "magnitude": {"low": 0.0, "high": 0.5}}, "calibration_size": 128},
        loss_weights={"method": "simplex"}, objectives=["sparsity", "accuracy", "flops"],
        sampler={"name": "tpe", "startup_trials": 3}, tracking={"enabled": False}, trials=3,
        enqueue=[{"order": ["activation", "magnitude"], "thresholds": {"activation": 0.6, "magnitude": 0.3},
                  "loss_weights": {task: 1 / len(tasks) for task in tasks}}])


@pytest.fixture(scope="module")
def architecture_searches(tmp_path_factory):
    """A three-trial search on each architecture laid out like torchvision's / timm's."""
    cwd = tmp_path_factory.mktemp("architectures")
    for model in ARCHITECTURES:
        (cwd / f"{model}.yaml").write_text(_architecture_space(model))
        cli(cwd, "search", cwd / f"{model}.yaml", "--run-dir", f"runs/{model}", "--json")
    return cwd / "runs"


@pytest.mark.parametrize("model", ARCHITECTURES)
def test_every_pareto_trial_of_a_torchvision_or_timm_style_search_exports_with_onnx(architecture_searches, model,
                                                                                     tmp_path, monkeypatch):
    from automtl import pareto
    from automtl.exporting import export

    run = architecture_searches / model
    front = pareto.front(RunDir(run).load_study())
    assert front
    for trial in front:
        card = export(run, tmp_path / f"t{trial.number}", trial=trial.number,
                      formats=["onnx", "torchscript", "sparse"], latency_batch=64).card
        record = TrialRecord.from_trial(trial).result
        assert card["onnx_vs_pytorch"]["max_diff_vs_scale"] <= card["onnx_vs_pytorch"]["tolerance"] == 1e-4
        assert card["removed_units"] + sum(card["kept_to_align_channels"].values()) >= record.empty_units, \
            card["kept_whole"]
        for task, value in card["test_metrics"]["exported_onnx"].items():
            assert value == pytest.approx(record.test_metrics[task], abs=1e-3)
        assert trial.values[-1] == card["flops"]["exported"], "the flops objective is the exported model's"
    assert any(TrialRecord.from_trial(t).result.empty_units > 0 for t in front)


def _perturbed_sessions(monkeypatch, share: float):
    """onnxruntime sessions whose outputs are off by ``share`` of each output's scale."""
    from automtl.formats import onnx as onnx_format

    real = onnx_format.session

    class Off:
        def __init__(self, path):
            self.inner = real(path)

        def run(self, names, feed):
            return [out + share * np.abs(out).max() for out in self.inner.run(names, feed)]

    monkeypatch.setattr(onnx_format, "session", Off)


def test_onnx_is_checked_relative_to_the_output_scale_and_the_tolerance_is_configurable(zoo, tmp_path, monkeypatch):
    from automtl.errors import UserError
    from automtl.formats.onnx import check

    problem, model = zoo("resnet18_style")
    _perturbed_sessions(monkeypatch, 5e-5)  # what float32 through BatchNorm folding gave on real networks
    checked = check(model, problem, tmp_path / "a.onnx")
    assert checked["max_diff_vs_scale"] == pytest.approx(5e-5, rel=0.05) and checked["tolerance"] == 1e-4
    with pytest.raises(UserError, match=r"ONNX outputs differ from PyTorch by up to .* of the output scale\), beyond "
                                        r"\|onnx - pytorch\| <= 1e-05 x"):
        check(model, problem, tmp_path / "b.onnx", tolerance=1e-5)


def test_a_bad_onnx_tolerance_is_refused_before_any_work(searched, tmp_path):
    from automtl.errors import UserError
    from automtl.exporting import export

    for bad in (-1e-4, math.nan, "0.1"):
        with pytest.raises(UserError, match="--onnx-tolerance .* must be a finite number >= 0"):
            export(searched / "runs" / "smoke", tmp_path / "out", trial=0, formats=["onnx"], onnx_tolerance=bad)
    assert list(tmp_path.iterdir()) == []
