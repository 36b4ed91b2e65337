import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import create_trial

from automtl import UserError, pareto, plots
from automtl.objectives import Objective, of_study

POINTS = {  # sparsity, left, right
    0: (0.5, 0.9, 0.9),
    1: (0.9, 0.8, 0.8),
    2: (0.4, 0.85, 0.85),  # dominated by 0
    3: (0.99, 0.2, 0.3),
    4: (0.7, 0.88, 0.87),
}


@pytest.fixture
def study():
    study = optuna.create_study(directions=["maximize"] * 3)
    # The attributes of a study written before objectives had stored bounds (accuracy, origin reference).
    for key, value in {"objectives": ["sparsity", "accuracy.left", "accuracy.right"], "directions": ["maximize"] * 3,
                       "tasks": ["left", "right"], "total_parameters": 1000}.items():
        study.set_user_attr(key, value)
    for number, (s, left, right) in POINTS.items():
        study.add_trial(create_trial(
            values=[s, left, right], params={"x": 0.1}, distributions={"x": FloatDistribution(0, 1)},
            user_attrs={"sparsity": s, "accuracy": {"left": left, "right": right},
                        "test_accuracy": {"left": left - 0.01, "right": right - 0.01}, "compression_ratio": 1 / (1 - s),
                        "order": ["magnitude", "taylor"][: 1 + number % 2], "thresholds": {"magnitude": 0.1, "taylor": 0.2},
                        "loss_method": "simplex", "loss_weights": {"left": 0.5, "right": 0.5}, "distillation": 0.0}))
    return study


def test_front_and_ranks(study):
    assert [t.number for t in pareto.front(study)] == [0, 1, 3, 4]
    ranks = pareto.ranks(study, pareto.completed(study))
    assert list(ranks) == [0, 0, 1, 0, 0]


def test_hypervolume_matches_a_hand_computed_box_and_only_grows(study):
    single = [t for t in pareto.completed(study) if t.number == 0]
    assert pareto.hypervolume(single, of_study(study)) == pytest.approx(0.5 * 0.9 * 0.9)
    history = pareto.hypervolume_history(study)
    assert [n for n, _ in history] == list(POINTS)
    assert all(a <= b for (_, a), (_, b) in zip(history, history[1:]))
    assert history[-1][1] == pytest.approx(pareto.hypervolume(pareto.front(study), of_study(study)))


def test_minimised_objectives_are_normalised_by_their_bounds():
    trial = create_trial(values=[0.5, 250, 3.0], params={}, distributions={})
    objectives = [Objective("sparsity", "maximize", 1.0, 0.0), Objective("nonzero_parameters", "minimize", 0.0, 1000.0),
                  Objective("mse.sum", "minimize", 0.0, 4.0, task="sum")]
    assert pareto.normalised([trial], objectives).tolist() == [[0.5, 0.75, 0.25]]
    worse = create_trial(values=[0.5, 2000, 9.0], params={}, distributions={})
    assert pareto.normalised([worse], objectives).tolist() == [[0.5, 0.0, 0.0]], "beyond the nadir counts as 0"


def test_a_minimised_task_metric_ranks_lower_as_better():
    study = optuna.create_study(directions=["maximize", "minimize"])
    objectives = [Objective("sparsity", "maximize", 1.0, 0.0, fraction=True),
                  Objective("mse.sum", "minimize", 0.0, 8.0, task="sum")]
    study.set_user_attr("objective_specs", [o.__dict__ for o in objectives])
    for s, mse in ((0.5, 1.0), (0.9, 4.0), (0.4, 2.0), (0.95, 9.0)):  # (0.4, 2.0) is dominated by (0.5, 1.0)
        study.add_trial(create_trial(values=[s, mse], params={}, distributions={},
                                     user_attrs={"sparsity": s, "metrics": {"sum": mse}, "test_metrics": {"sum": mse}}))
    assert [t.number for t in pareto.front(study)] == [0, 1, 3]
    assert list(pareto.ranks(study, pareto.completed(study))) == [0, 0, 1, 0]
    assert pareto.hypervolume(pareto.front(study), objectives) > 0
    keep = pareto.parse_constraints(["mse.sum<=2", "sum<=2"], objectives)
    assert [t.number for t in pareto.select(pareto.completed(study), keep)] == [0, 2]
    assert pareto.describe(pareto.front(study)[0], objectives)["directions"]["mse.sum"] == "minimize"


def test_knee_is_the_balanced_point(study):
    # Min-max scaled over the front, trial 1 sits at (0.82, 0.86, 0.83): distance 0.29 to the ideal
    # (1, 1, 1); trial 4 at (0.41, 0.97, 0.95): 0.60; trial 0 at (0, 1, 1): 1.0.
    assert pareto.knee(study).number == 1


def test_constraints_select_and_explain(study):
    objectives = of_study(study)
    constraints = pareto.parse_constraints(["left>=0.85", "sparsity >= 0.6"], objectives)
    assert [t.number for t in pareto.select(pareto.completed(study), constraints)] == [4]
    assert [t.number for t in pareto.select(pareto.completed(study), pareto.parse_constraints(["test.right<=0.3"], objectives))] == [3]
    assert [t.number for t in pareto.select(pareto.completed(study), pareto.parse_constraints(["accuracy.left>=0.9"], objectives))] == [0]
    for bad in ("middle>=0.9", "left>0.9", "left>=high", "mse.left<=1"):
        with pytest.raises(UserError, match="must look like NAME>=VALUE"):
            pareto.parse_constraints([bad], objectives)


def test_every_figure_is_built_from_the_study(study):
    figures = plots.figures(study)
    assert set(figures) == {"tradeoff", "front_3d", "parameters", "hypervolume", "orders"}
    tradeoff = figures["tradeoff"]
    pareto_points = [t for t in tradeoff.data if t.name == "Pareto (all objectives)"]
    assert sum(len(t.x) for t in pareto_points) == 2 * 4  # the 4 front trials in each task's panel
    assert list(figures["hypervolume"].data[0].x) == list(POINTS)
    assert plots.figures(optuna.create_study()) == {}
