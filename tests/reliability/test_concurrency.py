"""Two `search --resume` on one run directory at once: one runs, the other refuses; the study stays whole."""

import json

from optuna.trial import TrialState

from automtl.rundir import RunDir
from tests.reliability.conftest import start
from tests.test_search import FAST, SMOKE, cli


def test_two_resumes_at_once_never_make_two_writers(tmp_path, tally):
    run_dir = tmp_path / "run"
    base = ["search", SMOKE, "--run-dir", run_dir, "--json", *FAST, "--set", "tracking.enabled=false",
            "--set", "fine_tune.epochs=4"]
    cli(*base, "--trials", 2)
    resume = [*base, "--resume", "--trials", 14, "--workers", 2]
    procs = [start(*resume), start(*resume)]
    results = [(p.wait(timeout=600), *p.communicate()) for p in procs]
    tally["concurrent resumes refused"] += 1
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], [err[-1500:] for _, _, err in results]
    refused = next(err for code, _, err in results if code == 2)
    assert "is being searched by another process" in " ".join(refused.split())
    study = RunDir(run_dir).load_study()
    assert [t.number for t in study.trials] == list(range(14))
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    status = json.loads(cli("status", run_dir, "--json").stdout)
    assert status["counts"]["complete"] == 14 and status["counts"]["running"] == 0
