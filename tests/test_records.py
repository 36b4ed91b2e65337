"""The trial and study records and the objectives: the one reader/writer of what a study stores, old studies
included."""

import optuna
import pytest
from optuna.trial import create_trial

from automtl.objectives import Objective, measured, of_study
from automtl.records import MlflowLink, StudyRecord, TrialRecord, TrialResult

RESULT = TrialResult(
    values=[0.8, 0.9, 1.5], sparsity=0.8, compression_ratio=4.0, empty_units=3, nonzero_parameters=100,
    total_parameters=500, metrics={"left": 0.9, "sum": 1.5}, test_metrics={"left": 0.88, "sum": 1.7},
    final_loss_weights={"left": 0.5, "sum": 0.5}, structure={"flops": 1e4}, prune_seconds=1.0,
    fine_tune_seconds=2.0, eval_seconds=0.5, weights="trials/trial-000003.pt")


def test_a_record_reads_back_what_it_wrote():
    record = TrialRecord(3, "complete", tuple(RESULT.values), ["magnitude"], {"magnitude": 0.1}, "simplex",
                         {"left": 0.5, "sum": 0.5}, 0.2, "host:1", RESULT)
    trial = create_trial(values=RESULT.values, params={}, distributions={}, user_attrs=record.to_attrs())
    trial.number = 3
    assert TrialRecord.from_trial(trial) == record
    assert record.to_attrs()["compute_seconds"] == pytest.approx(3.5)


def test_trials_of_older_run_directories_still_load():
    attrs = {"sparsity": 0.5, "accuracy": {"left": 0.9}, "test_accuracy": {"left": 0.85}, "order": ["taylor"],
             "thresholds": {"taylor": 0.3}, "compression_ratio": 2.0, "weights": "trials/trial-000000.pt"}
    record = TrialRecord.from_trial(create_trial(values=[0.5, 0.9], params={}, distributions={}, user_attrs=attrs))
    assert record.result.metrics == {"left": 0.9} and record.result.test_metrics == {"left": 0.85}
    assert record.result.structure == {} and record.order == ["taylor"]
    failed = TrialRecord.from_trial(create_trial(state=optuna.trial.TrialState.FAIL, user_attrs={"fail_reason": "x"}))
    assert failed.result is None and failed.fail_reason == "x" and failed.state == "fail"


def test_open_bounds_are_measured_once_from_the_dense_model_and_a_constant_predictor():
    declared = [Objective("sparsity", "maximize", 1.0, 0.0), Objective("r2.y", "maximize", task="y"),
                Objective("mse.sum", "minimize", 0.0, None, task="sum"), Objective("flops", "minimize", 0.0)]
    filled = measured(declared, {"r2.y": 0.7, "mse.sum": 0.4, "flops": 5e5}, {"r2.y": 0.0, "mse.sum": 9.0})
    assert [(o.ideal, o.nadir) for o in filled] == [(1.0, 0.0), (0.7, 0.0), (0.0, 9.0), (0.0, 5e5)]


def test_studies_without_stored_bounds_get_the_old_fixed_ones():
    study = optuna.create_study(directions=["maximize", "maximize", "minimize"])
    for key, value in {"objectives": ["sparsity", "accuracy.left", "nonzero_parameters"], "tasks": ["left"],
                       "total_parameters": 800}.items():
        study.set_user_attr(key, value)
    assert [(o.name, o.ideal, o.nadir, o.task) for o in of_study(study)] == [
        ("sparsity", 1.0, 0.0, None), ("accuracy.left", 1.0, 0.0, "left"), ("nonzero_parameters", 0.0, 800.0, None)]


def test_a_study_record_reads_back_what_it_wrote_and_refuses_unknown_fields():
    study = optuna.create_study(directions=["maximize", "maximize"])
    link = MlflowLink("sqlite:///m.db", "demo/run", "7", "abc")
    StudyRecord.write(study, objectives=["sparsity", "accuracy.left"], tasks=["left"], study_uid="u1",
                      dense_test_metrics={"left": 0.9}, focus={"left": 0.8}, mlflow=link, mlflow_active=True)
    record = StudyRecord.of(study)
    assert (record.objectives, record.tasks, record.study_uid) == (["sparsity", "accuracy.left"], ["left"], "u1")
    assert record.mlflow == link and record.mlflow_active and record.focus == {"left": 0.8}
    assert record.dense_reference == {"source": "trained"} and record.fidelity is None
    assert study.user_attrs["mlflow_parent_run_id"] == "abc", "the keys older automtl versions read"
    with pytest.raises(KeyError, match="no field"):
        StudyRecord.write(study, flops=1)


def test_studies_of_older_run_directories_still_read():
    old = {"objectives": ["sparsity", "accuracy.left"], "tasks": ["left"], "dense_test_accuracy": {"left": 0.9},
           "dense_val_accuracy": {"left": 0.91}, "mlflow_uri": "sqlite:///m.db"}
    record = StudyRecord.from_attrs(old)
    assert record.dense_test_metrics == {"left": 0.9} and record.dense_val_metrics == {"left": 0.91}
    assert record.mlflow is None, "a partial MLflow link (an interrupted set-up) is no link"
    assert record.focus is None and record.objective_specs is None
