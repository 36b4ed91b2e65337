"""A full disk while writing: the search stops clearly, everything written before stays readable, --resume goes on."""

import json

from optuna.trial import TrialState

from automtl import checkpoints
from automtl.rundir import RunDir
from tests.reliability.conftest import start
from tests.test_search import FAST, SMOKE, _completed, cli

TRIALS = 8


def _args(run_dir):
    return ["search", SMOKE, "--trials", TRIALS, "--run-dir", run_dir, "--json", *FAST,
            "--set", "tracking.enabled=false", "--set", "keep_weights=all"]  # every trial written is checked


def test_disk_full_during_a_trial_stops_the_search_and_keeps_what_was_written(tmp_path, tally):
    run_dir = tmp_path / "run"
    proc = start(*_args(run_dir), env={"AUTOMTL_FAULT_ENOSPC": "*/trials/trial-00000[3-9].pt"})
    _, err = proc.communicate(timeout=600)
    tally["disk-full writes injected"] += 1
    message = " ".join(err.split())
    assert proc.returncode == 2 and "no space left on device" in message.lower() and "Traceback" not in err
    assert "--resume" in message
    done = _completed(run_dir)
    assert sorted(done) == [0, 1, 2]
    for number in done:
        checkpoints.load(run_dir / f"trials/trial-{number:06d}.pt")
    assert not list(run_dir.glob("trials/.*.tmp"))  # the half-written temp file was removed
    status = json.loads(cli("status", run_dir, "--json").stdout)
    assert status["counts"]["complete"] == 3 and status["counts"]["running"] == 0

    # space is free again: resume spends the rest of the budget, the interrupted trial included
    cli(*_args(run_dir), "--resume")
    study = RunDir(run_dir).load_study()
    assert len([t for t in study.trials if t.state == TrialState.COMPLETE]) == TRIALS
    assert all(_completed(run_dir)[n] == v for n, v in done.items())


def test_a_half_written_journal_record_stays_readable_and_is_repaired_on_resume(tmp_path, tally):
    run_dir = tmp_path / "run"
    cli(*_args(run_dir), "--trials", 3)
    before = _completed(run_dir)
    with open(run_dir / "study.journal", "ab") as journal:
        journal.write(b'{"op_code":6,"worker_id":"dead","trial_id":3,"us')  # the write the full disk cut short
    tally["disk-full writes injected"] += 1
    assert json.loads(cli("status", run_dir, "--json").stdout)["counts"]["complete"] == 3
    result = cli(*_args(run_dir), "--resume")
    assert "incomplete last record" in " ".join(result.stderr.split())
    assert len(_completed(run_dir)) == TRIALS and all(_completed(run_dir)[n] == v for n, v in before.items())
    for line in (run_dir / "study.journal").read_bytes().splitlines():
        json.loads(line)
