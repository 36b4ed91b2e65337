"""Weights retention: under ``keep_weights: front`` only the trials that may still be exported keep weights."""

import json
import shutil

import optuna
import pytest

from automtl import pareto, retention
from automtl.records import TrialRecord
from automtl.rundir import RunDir, weights_path
from tests.test_search import FAST, SMOKE, cli


@pytest.fixture(scope="module")
def kept_all(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("retention") / "run"
    cli("search", SMOKE, "--trials", 4, "--run-dir", run_dir, "--json", *FAST, "--set", "tracking.enabled=false",
        "--set", "keep_weights=all")
    return run_dir


def _kept(run_dir) -> set[int]:
    return {int(path.stem.split("-")[1]) for path in (run_dir / "trials").glob("*.pt")}


def _with_dominated_trials(run_dir, tmp_path):
    """A copy of the run plus two trials its sparsest trial dominates, each with a weights file."""
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    study = RunDir(copy).load_study()
    leader = max(pareto.completed(study), key=lambda t: t.values[0])
    for step in (0.01, 0.02):
        number = len(study.trials)
        study.add_trial(optuna.trial.create_trial(
            values=[v - step for v in leader.values], distributions=leader.distributions, params=leader.params,
            user_attrs=leader.user_attrs | {"weights": weights_path(number)}))
        shutil.copy(copy / leader.user_attrs["weights"], copy / weights_path(number))
    return RunDir(copy), study


def test_keep_all_keeps_every_trial_and_front_only_the_front(kept_all, tmp_path):
    run, study = _with_dominated_trials(kept_all, tmp_path)
    everyone, front = {t.number for t in pareto.completed(study)}, {t.number for t in pareto.front(study)}
    assert _kept(run.path) == everyone and len(everyone - front) >= 2
    with run.weights_lock(shared=True, wait=True):  # an export reading weights: nothing goes meanwhile
        assert retention.release_dominated(run, study, "front") == 0
    assert retention.release_dominated(run, study, "all") == 0 and _kept(run.path) == everyone
    before = retention.disk_use(run)
    assert retention.release_dominated(run, study, "front") == len(everyone - front)
    assert _kept(run.path) == front
    disk = json.loads(cli("status", run.path, "--json").stdout)["disk"]
    assert disk["weights_files"] == len(front) and disk["weights_bytes"] < before["weights_bytes"]
    assert disk["bytes"] > disk["weights_bytes"] > 0 and disk["keep_weights"] == "all"


def test_exporting_a_trial_whose_weights_went_says_how_to_get_it(kept_all, tmp_path):
    run, study = _with_dominated_trials(kept_all, tmp_path)
    retention.release_dominated(run, study, "front")
    gone = next(t for t in pareto.completed(study) if t.number not in _kept(run.path))
    result = cli("export", run.path, "--trial", gone.number, "-o", tmp_path / "out", check=False)
    message = " ".join(result.stderr.split())
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"trial {gone.number}'s weights were not kept" in message and "keep_weights: all" in message
    plan = TrialRecord.from_trial(gone).plan
    assert "enqueue" in message and json.dumps(plan["order"]) in message  # the plan to replay
    assert not (tmp_path / "out").exists()
