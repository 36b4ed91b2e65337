"""End-to-end searches through the CLI, in real processes."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from automtl import checkpoints
from automtl.rundir import RunDir
from tests.fixtures.zoo import search_space

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "search_spaces" / "smoke.yaml"
FAST = ["--set", "problem.options.train_pairs=3000", "--set", "dense.epochs=6"]


def cli(*args, check=True, **kwargs):
    result = subprocess.run([sys.executable, "-m", "automtl", *map(str, args)], capture_output=True, text=True, **kwargs)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def dominates(a, b):
    return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "smoke"
    result = cli("search", SMOKE, "--workers", 2, "--trials", 16, "--run-dir", run_dir, "--json", *FAST)
    return run_dir, json.loads(result.stdout)


def test_smoke_search_with_two_workers_gives_a_valid_front(smoke_run):
    run_dir, summary = smoke_run
    front = json.loads(cli("pareto", run_dir, "--json").stdout)
    assert front and front == summary["front"]
    study = RunDir(run_dir).load_study()
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 16
    allowed = {"magnitude", "activation", "taylor", "random"}
    values = {t.number: t.values for t in complete}
    for row in front:
        assert not any(dominates(v, values[row["trial"]]) for v in values.values())
        assert row["order"] and len(set(row["order"])) == len(row["order"]) and set(row["order"]) <= allowed
        assert set(row["thresholds"]) == set(row["order"])
        assert sum(row["loss_weights"].values()) == pytest.approx(1.0)
        assert 0 <= row["sparsity"] <= 1 and set(row["metrics"]) == {"left", "right"}
    # Every non-dominated trial is on the front.
    on_front = {r["trial"] for r in front}
    for number, v in values.items():
        if not any(dominates(w, v) for w in values.values()):
            assert number in on_front


def test_trial_weights_are_saved_compactly_and_reload(smoke_run):
    run_dir, summary = smoke_run
    row = max(summary["front"], key=lambda r: r["sparsity"])
    state, meta = checkpoints.load(run_dir / row["weights"])
    assert meta["trial"] == row["trial"] and meta["plan"]["order"] == row["order"]
    zeros = sum(int((v == 0).sum()) for k, v in state.items() if k.startswith("trunk") and k.endswith("weight"))
    assert zeros > 0
    assert (run_dir / row["weights"]).stat().st_size < 4 * sum(v.numel() for v in state.values())


def test_status_counts_trials_by_state(smoke_run):
    run_dir, _ = smoke_run
    status = json.loads(cli("status", run_dir, "--json").stdout)
    assert status["counts"]["complete"] == 16 and status["counts"]["failed"] == 0 and status["counts"]["running"] == 0
    assert status["front_size"] >= 1 and 0 < status["hypervolume"] <= 1 and status["compute_seconds"] > 0


def test_a_second_search_into_the_same_directory_is_refused(smoke_run):
    run_dir, _ = smoke_run
    result = cli("search", SMOKE, "--run-dir", run_dir, check=False)
    assert result.returncode == 2 and "already holds a search; pass --resume" in result.stderr


def test_resume_with_a_different_config_names_the_difference(smoke_run):
    run_dir, _ = smoke_run
    result = cli("search", SMOKE, "--run-dir", run_dir, "--resume", *FAST, "--set", "fine_tune.epochs=9", check=False)
    message = " ".join(result.stderr.split())
    assert result.returncode == 2 and "'fine_tune.epochs' (1 there, 9 now)" in message
    assert ("only trials, timeout, workers, threads, trial_batch, tracking, backend, data, keep_weights may change"
            in message)


def test_a_concurrent_search_on_a_locked_directory_is_refused(smoke_run):
    run_dir, _ = smoke_run
    with RunDir(run_dir).exclusive():
        result = cli("search", SMOKE, "--run-dir", run_dir, "--resume", "--trials", 20, *FAST, check=False)
    assert result.returncode == 2 and "being searched by another process" in result.stderr


def _completed(run_dir):
    try:
        study = RunDir(run_dir).load_study()
    except Exception:  # not created yet
        return {}
    return {t.number: t.values for t in study.get_trials(states=(TrialState.COMPLETE,))}


def kill_mid_search(args: list, run_dir: Path, finished, at_least: int) -> None:
    """Run ``automtl *args`` and SIGKILL its whole process group once ``finished(run_dir)`` holds
    ``at_least`` trials (or after two minutes)."""
    proc = subprocess.Popen([sys.executable, "-m", "automtl", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while len(finished(run_dir)) < at_least and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_resume_after_sigkill_loses_nothing_and_finishes_the_budget(tmp_path):
    run_dir = tmp_path / "killed"
    kill_mid_search(["search", SMOKE, "--trials", 24, "--workers", 2, "--run-dir", run_dir, "--json", *FAST,
                     "--set", "fine_tune.epochs=3"], run_dir, _completed, 5)
    before = _completed(run_dir)
    assert 5 <= len(before) < 24, "the kill must land mid-search"

    cli("search", SMOKE, "--trials", 24, "--run-dir", run_dir, "--resume", "--json", *FAST, "--set", "fine_tune.epochs=3")
    study = RunDir(run_dir).load_study()
    after = {t.number: t.values for t in study.get_trials(states=(TrialState.COMPLETE,))}
    assert all(after[n] == v for n, v in before.items()), "a finished trial was lost or re-run"
    interrupted = [t for t in study.trials if t.state == TrialState.FAIL]
    assert all(t.user_attrs["fail_reason"] == "interrupted" for t in interrupted)
    assert len(after) == 24, "interrupted trials must be re-spent"
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]


def test_enqueued_plans_run_first_exactly_as_written(tmp_path):
    run_dir = tmp_path / "enqueued"
    plan = "{order: [taylor, magnitude], thresholds: {taylor: 0.5, magnitude: 0.1}, loss_weights: {left: 0.7, right: 0.3}}"
    space = tmp_path / "space.yaml"
    space.write_text(SMOKE.read_text() + f"enqueue:\n  - {plan}\n  - {plan.replace('0.5', '0.6')}\n")
    cli("search", space, "--trials", 2, "--run-dir", run_dir, "--json", *FAST)
    study = RunDir(run_dir).load_study()
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2, "as many plans as trials: all run"
    assert study.trials[1].user_attrs["thresholds"]["taylor"] == pytest.approx(0.6)
    first = study.trials[0]
    assert first.user_attrs["order"] == ["taylor", "magnitude"]
    assert first.user_attrs["thresholds"] == pytest.approx({"taylor": 0.5, "magnitude": 0.1})
    assert first.user_attrs["loss_weights"] == pytest.approx({"left": 0.7, "right": 0.3})


def test_the_study_is_named_after_the_config_and_an_old_run_directory_still_loads(smoke_run, tmp_path):
    run_dir, _ = smoke_run
    assert RunDir(run_dir).load_study().study_name == "smoke"  # what optuna-dashboard shows
    old = tmp_path / "old"  # a run directory from before: its journal's study is "automtl", no study.json
    old.mkdir()
    shutil.copy(run_dir / "config.yaml", old / "config.yaml")
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(old / "study.journal")))
    optuna.create_study(study_name="automtl", storage=storage, directions=["maximize"] * 3)
    assert RunDir(old).load_study().study_name == "automtl"


def test_ctrl_c_keeps_finished_trials_and_says_how_to_resume(tmp_path):
    run_dir = tmp_path / "interrupted"
    args = [sys.executable, "-m", "automtl", "search", str(SMOKE), "--trials", "40", "--workers", "2",
            "--run-dir", str(run_dir), *FAST, "--set", "fine_tune.epochs=3"]
    # started with SIGINT ignored, as a shell script's background job is: Ctrl-C must still stop it
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    deadline = time.time() + 120
    while len(_completed(run_dir)) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends to the foreground group
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert f"--resume --run-dir {run_dir}" in " ".join(stderr.split())
    study = RunDir(run_dir).load_study()
    assert len([t for t in study.trials if t.state == TrialState.COMPLETE]) >= 3
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]
    assert all(t.user_attrs.get("fail_reason") == "interrupted" for t in study.trials if t.state == TrialState.FAIL)


def test_parameter_count_can_be_a_minimised_objective(tmp_path):
    run_dir = tmp_path / "params"
    cli("search", SMOKE, "--trials", 4, "--run-dir", run_dir, "--json", *FAST,
        "--set", "objectives=[sparsity, accuracy, parameters]", "--set", "tracking.enabled=false")
    study = RunDir(run_dir).load_study()
    assert study.user_attrs["objectives"] == ["sparsity", "accuracy.left", "accuracy.right", "nonzero_parameters"]
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MAXIMIZE", "MAXIMIZE", "MINIMIZE"]
    for trial in study.trials:
        assert trial.values[3] == trial.user_attrs["nonzero_parameters"] < trial.user_attrs["total_parameters"]
    status = json.loads(cli("status", run_dir, "--json").stdout)
    assert 0 < status["hypervolume"] <= 1


def test_one_worker_search_repeats_exactly_with_the_same_seed(tmp_path):
    runs = []
    for name in ("first", "second"):
        cli("search", SMOKE, "--trials", 6, "--workers", 1, "--run-dir", tmp_path / name, "--json", *FAST,
            "--set", "tracking.enabled=false")
        study = RunDir(tmp_path / name).load_study()
        runs.append([(t.params, t.values) for t in study.trials])
    assert runs[0] == runs[1]


def test_a_study_in_an_rdb_storage_works_like_the_journal(tmp_path):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    common = ["--json", *FAST, "--set", f"storage={storage}", "--set", "tracking.enabled=false"]
    searches = [cli("search", SMOKE, "--trials", 3, "--workers", 2, "--run-dir", tmp_path / "a", *common),
                cli("search", SMOKE, "--trials", 2, "--run-dir", tmp_path / "b", *common),  # a second study there
                cli("search", SMOKE, "--trials", 5, "--run-dir", tmp_path / "a", "--resume", *common)]
    assert not any("database is locked" in s.stderr for s in searches), "a worker or the progress thread stalled"
    assert not (tmp_path / "a" / "study.journal").exists()
    assert json.loads(cli("status", tmp_path / "a", "--json").stdout)["counts"]["complete"] == 5
    assert json.loads(cli("status", tmp_path / "b", "--json").stdout)["counts"]["complete"] == 2
    assert json.loads(cli("pareto", tmp_path / "a", "--json").stdout)
    names = {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(storage)}
    assert sorted(names.values()) == [2, 5]


def test_an_unreachable_rdb_storage_is_refused_before_anything_is_written(tmp_path):
    result = cli("search", SMOKE, "--run-dir", tmp_path / "run", "--set", "storage=postgresql://u@127.0.0.1:9/x",
                 check=False)
    assert result.returncode == 2 and "cannot open the Optuna storage" in result.stderr
    assert not (tmp_path / "run").exists()


def test_structured_strategies_on_a_model_they_cannot_prune_are_refused_before_anything_is_written(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(search_space("layernorm_digits", pruning={"strategies": {"activation": None, "magnitude": None}},
                                  tracking={"enabled": False}))
    result = cli("search", space, "--run-dir", tmp_path / "run", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    message = " ".join(result.stderr.split())
    assert "structured strategies ['activation'] find no removable unit" in message
    assert "fc: norm (LayerNorm) is coupled to these channels" in message and "unstructured ones" in message
    assert not (tmp_path / "run").exists()
