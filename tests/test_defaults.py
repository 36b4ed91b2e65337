"""The default search carries to any problem: no task names, a learning rate relative to the dense
training's, a full fine-tune chosen from the measured cost of an epoch and the time budget."""

import pytest
import yaml

from automtl import api
from automtl.config import load
from automtl.errors import UserError
from automtl.fidelity import FULL_FINE_TUNES, MAX_EPOCHS, full_epochs
from automtl.records import StudyRecord, records
from automtl.rundir import RunDir
from tests.test_search import ROOT

DEFAULT = ROOT / "search_spaces" / "multidigits.yaml"
# The default on a small problem whose tasks are not the ones it was written on: one classification and a
# regression (multidigits' "right" and "sum"), with a short budget.
ELSEWHERE = ["problem.options={off: 2, train_pairs: 1500, eval_pairs: 300, tasks: [right, sum]}", "dense.epochs=2",
             "timeout=6", "workers=1", "tracking.enabled=false", "seed_front=[0.5, 0.9]"]


def test_the_default_names_no_task_and_gives_every_task_an_equal_share_of_its_fixed_plans():
    text = DEFAULT.read_text()
    for task in ("left", "right", "sum"):
        assert task not in yaml.safe_dump(yaml.safe_load(text)["enqueue"])
    config = load(DEFAULT)
    for plan in [*config.enqueue, *config.seed_plans()]:
        assert plan.weights_for(["a", "b", "c"]) == {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}


def test_the_learning_rate_range_follows_the_dense_training():
    base = load(DEFAULT).fine_tune.lr
    assert (base.low, base.high, base.log) == pytest.approx((1e-3, 2e-2, True))
    moved = load(DEFAULT, ["dense.lr=0.01"]).fine_tune.lr
    assert (moved.low, moved.high) == pytest.approx((0.01, 0.2))
    fixed = load(DEFAULT, ["fine_tune.lr={low: 0.001, high: 0.003}"]).fine_tune.lr
    assert (fixed.low, fixed.high) == (0.001, 0.003)


def test_the_full_fine_tune_rule():
    budget = 200.0
    assert full_epochs(budget / (FULL_FINE_TUNES * 27), budget) == 27, "exactly 27 epochs fit: 27"
    assert full_epochs(budget / (FULL_FINE_TUNES * 26.5), budget) == 26, "the most whole epochs that fit"
    assert full_epochs(budget / (FULL_FINE_TUNES * 2.5), budget) == 2
    assert full_epochs(1e6, budget) == 1, "at least one epoch"
    assert full_epochs(1e-9, budget) == MAX_EPOCHS
    slower = [full_epochs(budget / (FULL_FINE_TUNES * 27) * factor, budget) for factor in (1.0, 1.05, 1.1, 1.15)]
    assert slower == [27, 25, 24, 23], "an epoch measured a few per cent slower costs an epoch or two, not a rung"


def test_epochs_auto_needs_a_time_budget():
    with pytest.raises(UserError, match="timeout"):
        load(DEFAULT, ["timeout=null"])


def test_the_default_runs_unedited_on_other_tasks_and_resumes_with_its_chosen_fine_tune(tmp_path):
    run_dir = tmp_path / "elsewhere"
    summary = api.search(DEFAULT, run_dir=run_dir, overrides=[*ELSEWHERE, "rungs.promote=hypervolume"])
    assert summary.status["counts"]["complete"] >= 2
    study = RunDir(run_dir).load_study()
    chosen = StudyRecord.of(study).fidelity
    stored = RunDir(run_dir).load_config()
    assert stored.fine_tune.epochs == chosen["epochs"] >= 1
    assert chosen["budget_seconds"] == 6 and chosen["epoch_seconds"] > 0
    before = len(study.trials)
    first = {r.number: r for r in records(study.trials)}
    assert first[0].loss_weights == {"right": 0.5, "sum": 0.5}, "the seeded front weighs the tasks equally"
    # --resume with the same file (epochs: auto) goes on with the fine-tune chosen at the start, measuring nothing
    api.search(DEFAULT, run_dir=run_dir, overrides=[*ELSEWHERE, "rungs.promote=hypervolume", "timeout=3"],
               resume=True)
    again = RunDir(run_dir).load_study()
    assert StudyRecord.of(again).fidelity == chosen
    assert RunDir(run_dir).load_config().fine_tune.epochs == chosen["epochs"]
    assert len(again.trials) > before
    assert api.status(run_dir)["fine_tune"] == {"epochs": chosen["epochs"], "chosen": chosen}
