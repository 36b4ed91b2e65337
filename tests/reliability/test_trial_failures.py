"""A trial that raises, returns NaN or runs out of memory is recorded as failed with its reason; the study goes on."""

import json
import os

from optuna.trial import TrialState

from automtl.rundir import RunDir
from tests.conftest import FIXTURES
from tests.test_search import SMOKE, cli


def test_raising_nan_and_out_of_memory_trials_are_recorded_and_the_search_goes_on(tmp_path, tally):
    run_dir = tmp_path / "flaky"
    env = {**os.environ, "PYTHONPATH": f"{FIXTURES}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cli("search", SMOKE, "--trials", 12, "--run-dir", run_dir, "--json", "--set", "problem.name=flaky_problem:make",
        "--set", "problem.options={}", "--set", "dense.epochs=2", "--set", "tracking.enabled=false", env=env)
    study = RunDir(run_dir).load_study()
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    reasons = [t.user_attrs["fail_reason"] for t in failed]
    assert any(r == "RuntimeError: injected failure" for r in reasons)
    assert any(r.startswith("TrialFailed: non-finite task metric") for r in reasons)
    assert any(r.startswith("OutOfMemoryError: CUDA out of memory") for r in reasons)
    assert len(study.trials) == 12 and any(t.state == TrialState.COMPLETE for t in study.trials)
    tally["failing trials injected"] += len(failed)
    status = json.loads(cli("status", run_dir, "--json").stdout)
    assert status["counts"]["failed"] == len(failed) >= 3
    table = cli("status", run_dir).stdout
    assert "failed" in table and "OutOfMemoryError" in table
