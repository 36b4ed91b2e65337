"""Tasks beyond classification: the Task contract, metrics with a direction, a regression task end to end."""

import json

import pytest
import torch

from automtl import Task, get_problem
from automtl.metrics import METRICS, mae, mse, mse_value, rmse_value
from automtl.records import TrialRecord
from automtl.rundir import RunDir
from automtl.train import Distillation, Teacher, task_losses
from tests.fixtures.zoo import search_space
from tests.test_tracking import cli, client


def test_classification_keeps_its_short_form_and_regression_states_its_metric():
    left = Task("left", 10)
    assert (left.kind, left.outputs, left.metric_name, left.direction, left.objective) == (
        "classification", 10, "accuracy", "maximize", "accuracy.left")
    ink = Task("ink", loss=mse, metric=mse_value, metric_name="mse", direction="minimize")
    assert (ink.kind, ink.outputs, ink.objective) == ("regression", 1, "mse.ink")
    assert Task("ink", loss=mae, metric=rmse_value).direction == "minimize", "a ready metric brings its direction"
    custom = Task("score", loss=mse, metric=lambda o, t: 1.0, metric_name="r2")
    assert (custom.metric_name, custom.direction) == ("r2", "maximize")


@pytest.mark.parametrize("kwargs, message", [
    ({}, "give num_classes .classification. or both loss and metric"),
    ({"loss": mse}, "give num_classes"),
    ({"num_classes": 0}, "num_classes must be a positive integer"),
    ({"loss": mse, "metric": mse_value, "direction": "maximize"}, "metric 'mse' is to minimize, not maximize"),
    ({"loss": mse, "metric": mse_value, "direction": "up"}, "direction must be 'maximize' or 'minimize'"),
    ({"loss": mse, "metric": mse_value, "metric_name": "mean sq"}, "metric_name must be letters"),
])
def test_a_task_that_does_not_add_up_is_refused_clearly(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Task("t", **kwargs)


def test_ready_metrics_line_up_one_output_heads_with_their_targets():
    outputs, targets = torch.tensor([[1.0], [3.0]]), torch.tensor([1.0, 1.0])
    assert METRICS["mse"](outputs, targets) == pytest.approx(2.0)
    assert METRICS["mae"](outputs, targets) == pytest.approx(1.0)
    assert METRICS["rmse"](outputs, targets) == pytest.approx(2.0 ** 0.5)
    assert METRICS["accuracy"](torch.tensor([[0.1, 0.9], [0.8, 0.2]]), torch.tensor([1, 1])) == 0.5
    assert METRICS["f1"](torch.tensor([[2.0, -1.0], [1.0, 1.0]]), torch.tensor([[1, 0], [0, 1]])) == pytest.approx(0.8)


def test_multidigits_offers_the_sum_of_the_digits_as_a_regression_task():
    problem = get_problem("multidigits", train_pairs=50, eval_pairs=20, tasks=["left", "sum"])
    assert [t.objective for t in problem.tasks] == ["accuracy.left", "mse.sum"]
    left, total = problem.train.targets["left"], problem.train.targets["sum"]
    assert total.dtype == torch.float32 and torch.all(total * 18 >= left) and 0 <= total.min() <= total.max() <= 1
    model = problem.build_model()
    assert model(problem.val.inputs[:4])["sum"].shape == (4, 1)


def test_distillation_matches_the_teachers_outputs_on_a_regression_task():
    problem = get_problem("multidigits", train_pairs=50, eval_pairs=20, tasks=["left", "sum"])
    torch.manual_seed(0)
    student, teacher = problem.build_model(), problem.build_model()
    inputs, targets = next(problem.train.batches(16))
    plain = task_losses(student, problem, inputs, targets)
    blended = task_losses(student, problem, inputs, targets, Distillation(Teacher(teacher), weight=1.0))
    with torch.no_grad():
        expected = torch.nn.functional.mse_loss(student(inputs)["sum"], teacher(inputs)["sum"])
    assert blended["sum"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert blended["left"].item() != pytest.approx(plain["left"].item())



class Absent(torch.nn.Module):
    def forward(self, inputs):
        raise AssertionError("the teacher ran although the batch carries its soft targets")


def test_soft_targets_computed_once_give_the_losses_of_the_teacher_run_on_every_batch():
    problem = get_problem("multidigits", train_pairs=50, eval_pairs=20, tasks=["left", "sum"])
    torch.manual_seed(0)
    student, teacher = problem.build_model(), problem.build_model()
    carrying = Teacher(teacher, 4.0).carrying(problem).train
    pairs = zip(problem.train.batches(16, torch.Generator().manual_seed(1)),
                carrying.batches(16, torch.Generator().manual_seed(1)))
    for (inputs, targets), (same_inputs, carried) in pairs:
        assert torch.equal(inputs, same_inputs)
        live = task_losses(student, problem, inputs, targets, Distillation(Teacher(teacher, 4.0), 0.5))
        cached = task_losses(student, problem, inputs, carried, Distillation(Teacher(Absent(), 4.0, carrying), 0.5))
        for task in problem.task_names:
            assert cached[task].item() == pytest.approx(live[task].item(), rel=1e-5)

SPACE = search_space(
    "ink_digits", {"train_pairs": 1500, "eval_pairs": 300}, name="ink", seed=0, dense={"epochs": 4},
    fine_tune={"epochs": 1},
    pruning={"strategies": {"magnitude": {"low": 0.0, "high": 0.4}, "activation": {"low": 0.0, "high": 0.8}},
             "calibration_size": 256},
    loss_weights={"method": "simplex"}, sampler={"name": "tpe", "startup_trials": 4}, trials=10, workers=2)


@pytest.fixture(scope="module")
def ink_search(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("ink")
    (cwd / "ink.yaml").write_text(SPACE)
    summary = json.loads(cli(cwd, "search", "ink.yaml", "--run-dir", "runs/ink", "--json").stdout)
    return cwd, summary


def test_a_minimised_regression_head_goes_through_search_status_pareto_report_and_mlflow(ink_search):
    cwd, summary = ink_search
    assert [o["name"] for o in summary["objectives"]] == ["sparsity", "accuracy.left", "accuracy.right", "mse.ink"]
    ink = summary["objectives"][-1]
    assert ink["direction"] == "minimize" and ink["ideal"] == 0.0 and ink["nadir"] > 0, "nadir: a constant predictor"
    status = json.loads(cli(cwd, "status", "runs/ink", "--json").stdout)
    assert status["counts"]["complete"] == 10 and status["hypervolume"] > 0
    front = json.loads(cli(cwd, "pareto", "runs/ink", "--json").stdout)
    study = RunDir(cwd / "runs" / "ink").load_study()
    values = {t.number: t.values for t in study.trials}
    signs = [1, 1, 1, -1]  # maximise, maximise, maximise, minimise

    def dominates(a, b):
        a, b = [x * s for x, s in zip(a, signs)], [x * s for x, s in zip(b, signs)]
        return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))

    for row in front:
        assert row["directions"]["mse.ink"] == "minimize" and row["objectives"]["mse.ink"] == row["metrics"]["ink"]
        assert not any(dominates(v, values[row["trial"]]) for v in values.values())
    best = min(front, key=lambda r: r["metrics"]["ink"])["metrics"]["ink"]
    kept = json.loads(cli(cwd, "pareto", "runs/ink", "--json", "--where", f"mse.ink<={best}").stdout)
    assert [r["metrics"]["ink"] for r in kept] == [best]
    cli(cwd, "report", "runs/ink")
    assert "mse ink" in (cwd / "runs" / "ink" / "dashboard.html").read_text()
    experiment = client(cwd).get_experiment_by_name("ink/ink")
    runs = client(cwd).search_runs([experiment.experiment_id], "tags.`automtl.role` = 'trial'")
    assert runs and all({"mse.ink", "test.mse.ink", "accuracy.left"} <= set(r.data.metrics) for r in runs)


def test_export_re_measures_the_regression_metric(ink_search, tmp_path):
    cwd, _ = ink_search
    cli(cwd, "export", "runs/ink", "--pick", "knee", "--format", "onnx", "-o", tmp_path / "knee")
    card = json.loads((tmp_path / "knee" / "card.json").read_text())
    trial = RunDir(cwd / "runs" / "ink").load_study().trials[card["trial"]]
    assert card["metric_names"]["ink"] == "mse"
    search = TrialRecord.from_trial(trial).result.test_metrics["ink"]
    assert card["test_metrics"]["exported_onnx"]["ink"] == pytest.approx(search, rel=1e-3)
    cli(cwd, "export", "runs/ink", "--pick", "best-ink", "--format", "onnx", "-o", tmp_path / "best")
    best = json.loads((tmp_path / "best" / "card.json").read_text())["trial"]
    front = json.loads(cli(cwd, "pareto", "runs/ink", "--json").stdout)
    assert best == min(front, key=lambda r: r["metrics"]["ink"])["trial"], "best-<task> follows the direction"
