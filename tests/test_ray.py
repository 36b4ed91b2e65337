"""The Ray Tune backend on a local Ray (this machine's CPUs): same study, same views, MLflow runs from workers."""

import json
import logging
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from optuna.trial import TrialState

from automtl import pareto
from automtl.backends import ray as ray_backend
from automtl.config import load
from automtl.errors import UserError
from automtl.records import TrialRecord
from automtl.rundir import RunDir
from automtl.devices import AUTO_BATCH
from automtl.trial import Bench
from tests.conftest import FIXTURES
from tests.test_rungs import RUNGS, leader_then_dominated
from tests.test_search import FAST, SMOKE, _completed
from tests.test_search import cli as search_cli
from tests.test_tracking import cli, study_runs

pytestmark = [pytest.mark.ray, pytest.mark.slow]
TRIALS = 8
RAY = ["--backend", "ray", "--cpus-per-trial", 1, "--set", "backend.max_concurrent=2"]  # 2 slots on any runner


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same search on both backends, in one working directory (one MLflow store)."""
    cwd = tmp_path_factory.mktemp("ray")
    outputs = {}
    for name, extra in {"ray": RAY, "local": []}.items():
        result = cli(cwd, "search", SMOKE, "--trials", TRIALS, "--run-dir", f"runs/{name}", "--json", *FAST, *extra)
        outputs[name] = json.loads(result.stdout)
    return cwd, outputs


def _schema(value):
    """The shape of a JSON document: dict keys and element schemas, not values."""
    if isinstance(value, dict):
        # task names and strategy names are data, not schema
        return {k: _schema(v) for k, v in value.items() if k not in ("thresholds",)}
    if isinstance(value, list):
        return [_schema(value[0])] if value and isinstance(value[0], dict) else "list"
    return type(value).__name__ if value is not None else "null"


def test_ray_search_spends_the_budget_with_the_local_result_schema(runs):
    cwd, outputs = runs
    ray_out, local_out = outputs["ray"], outputs["local"]
    assert ray_out["status"]["counts"]["complete"] == TRIALS and ray_out["status"]["counts"]["failed"] == 0
    assert _schema(ray_out) == _schema(local_out)
    front = json.loads(cli(cwd, "pareto", "runs/ray", "--json").stdout)
    assert front and front == ray_out["front"]
    study = RunDir(cwd / "runs/ray").load_study()
    on_front = {t.number for t in pareto.front(study)}
    for trial in study.get_trials(states=(TrialState.COMPLETE,)):
        # keep_weights: front, as on the local backend: a dominated trial's weights went
        assert (cwd / "runs/ray" / trial.user_attrs["weights"]).exists() == (trial.number in on_front)
        local_keys = set(RunDir(cwd / "runs/local").load_study().trials[0].user_attrs)
        assert set(trial.user_attrs) == local_keys


def test_the_searcher_sizes_gpu_batches_from_the_model_the_study_recorded(runs):
    cwd, _ = runs
    searcher = ray_backend.StudySearcher(str(cwd / "runs/ray"))
    config = searcher._config
    searcher._config = config.model_copy(update={"backend": config.backend.model_copy(update={"gpus_per_trial": 1})})
    dense = Bench.prepare(config, cwd / "runs/ray").dense
    assert searcher._ot_study.user_attrs["total_parameters"] == sum(p.numel() for p in dense.parameters())
    assert config.trial_batch == "auto" and searcher._batch_size() == AUTO_BATCH  # a small MLP: the cap


def test_ray_workers_create_the_mlflow_child_runs_under_the_parent(runs):
    cwd, _ = runs
    _, parents, children = study_runs(cwd, "smoke/ray")
    assert len(parents) == 1 and sorted(children) == list(range(TRIALS))
    for run in children.values():
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert run.data.tags["state"] == "complete" and "accuracy.left" in run.data.metrics
        host, _, pid = run.data.params["worker"].rpartition(":")  # logged by the worker process, not the driver
        assert host and pid.isdigit()


def test_views_and_export_work_unchanged_on_a_ray_run_dir(runs):
    cwd, _ = runs
    status = json.loads(cli(cwd, "status", "runs/ray", "--json").stdout)
    assert status["counts"]["complete"] == TRIALS
    cli(cwd, "report", "runs/ray")
    assert (cwd / "runs/ray/dashboard.html").stat().st_size > 10_000
    cli(cwd, "export", "runs/ray", "--pick", "knee", "-o", "exported")
    card = json.loads((cwd / "exported/card.json").read_text())
    assert card["trial"] in {row["trial"] for row in json.loads(cli(cwd, "pareto", "runs/ray", "--json").stdout)}


def test_failing_trials_on_ray_are_recorded_with_their_reason(tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{FIXTURES}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    search_cli("search", SMOKE, "--trials", 9, "--run-dir", tmp_path / "flaky", "--json", *RAY,
               "--set", "problem.name=flaky_problem:make", "--set", "problem.options={}", "--set", "dense.epochs=2",
               "--set", "tracking.enabled=false", env=env)
    study = RunDir(tmp_path / "flaky").load_study()
    reasons = " ".join(t.user_attrs["fail_reason"] for t in study.trials if t.state == TrialState.FAIL)
    assert "RuntimeError: injected failure" in reasons and "non-finite task metric" in reasons
    assert len(study.trials) == 9 and any(t.state == TrialState.COMPLETE for t in study.trials)


def test_rungs_stop_trials_on_ray_workers_and_the_budget_is_exact(tmp_path):
    # reduction 8: one rung, after 1 of 4 epochs, where every plan dominated by an earlier one stops (on 2 slots,
    # the dominated plans that start after the leader reached the rung)
    search_cli("search", SMOKE, "--trials", 10, "--run-dir", tmp_path / "rungs", "--json", *FAST, *RAY, *RUNGS,
               "--set", "rungs={min_epochs: 1, reduction: 8}", "--set", "tracking.enabled=false",
               *leader_then_dominated(4))
    study = RunDir(tmp_path / "rungs").load_study()
    states = [t.state for t in study.trials]
    assert len(states) == 10 and set(states) == {TrialState.COMPLETE, TrialState.PRUNED}
    stopped = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert all(t.user_attrs["stopped_at"] == 1 and "1" in t.user_attrs["rungs"] for t in stopped), "recorded by workers"
    assert all(set(t.user_attrs["rungs"]) == {"1"} for t in study.trials if t.state == TrialState.COMPLETE)


def test_a_ray_trial_slot_fine_tunes_a_batch_and_tells_each_member_with_the_budget_exact(tmp_path):
    run_dir = tmp_path / "batched"
    search_cli("search", SMOKE, "--trials", 10, "--trial-batch", 3, "--run-dir", run_dir, "--json", *FAST, *RAY,
               *RUNGS, "--set", "rungs={min_epochs: 1, reduction: 8}", "--set", "tracking.enabled=false",
               *leader_then_dominated(1))
    study = RunDir(run_dir).load_study()
    assert len(study.trials) == 10 and {t.state for t in study.trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    leader, dominated = study.trials[:2]  # run first, in one batch
    if leader.state == TrialState.PRUNED:  # only where the other slot's plan reached the rung first, dominating it
        # (both judged objectives, sparsity and the accuracy of "left", are maximised)
        at_rung = {t.number: np.array(t.user_attrs["rungs"]["1"]) for t in study.trials
                   if "1" in t.user_attrs.get("rungs", {})}
        assert any((p >= at_rung[0]).all() and (p > at_rung[0]).any() for n, p in at_rung.items() if n > 2)
    else:
        assert leader.state == TrialState.COMPLETE and "weights" in leader.user_attrs
    assert dominated.state == TrialState.PRUNED and dominated.user_attrs["stopped_at"] == 1, "it left its batch"
    batches = [json.loads(p.read_text())[ray_backend.BATCH] for p in (run_dir / "tune").glob("trial-*/params.json")]
    assert sorted(n[ray_backend.NUMBER] for b in batches for n in b) == list(range(10)), "each trial in one batch"
    assert max(map(len, batches)) == 3 and min(map(len, batches)) == 1, "2 slots share the tail of the budget"


@pytest.mark.parametrize("stop, batch", [(signal.SIGINT, 1), (signal.SIGKILL, 1), (signal.SIGKILL, 3)],
                         ids=["ctrl-c", "sigkill", "sigkill-batched"])
def test_an_interrupted_ray_search_resumes_by_restoring_tune_and_loses_nothing(tmp_path, stop, batch):
    run_dir = tmp_path / "interrupted"
    args = [sys.executable, "-m", "automtl", "search", str(SMOKE), "--trials", "24", "--run-dir", str(run_dir),
            "--json", *FAST, *map(str, RAY), "--set", "fine_tune.epochs=6", "--set", "tracking.enabled=false",
            "--trial-batch", str(batch)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while len(_completed(run_dir)) < 4 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    proc.send_signal(stop)
    _, stderr = proc.communicate(timeout=120)
    if stop == signal.SIGINT:
        assert proc.returncode == 130, stderr
        assert "--resume" in stderr and "--backend ray" in stderr
    else:
        assert proc.returncode == -signal.SIGKILL
    before = _completed(run_dir)
    assert 4 <= len(before) < 24
    result = subprocess.run(args + ["--resume"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "restoring the Ray Tune experiment" in result.stderr
    after = _completed(run_dir)
    assert len(after) == 24 and all(after[n] == v for n, v in before.items())
    study = RunDir(run_dir).load_study()
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]
    assert len(study.trials) >= 24 and all(t.state != TrialState.FAIL or t.user_attrs["fail_reason"] == "interrupted"
                                           for t in study.trials)


def test_an_unreachable_cluster_address_is_refused_before_anything_is_written(tmp_path):
    result = cli(tmp_path, "search", SMOKE, "--run-dir", "runs/x", "--backend", "ray", "--address", "127.0.0.1:9",
                 check=False)
    assert result.returncode == 2 and "cannot reach the Ray cluster at '127.0.0.1:9'" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_ray_only_options_need_the_ray_backend(tmp_path):
    result = cli(tmp_path, "search", SMOKE, "--run-dir", "runs/x", "--gpus-per-trial", "0.25", check=False)
    assert result.returncode == 2 and "apply to the ray backend only" in result.stderr


def test_a_trial_request_no_node_can_meet_is_refused(monkeypatch):
    nodes = [{"Alive": True, "Resources": {"CPU": 16.0, "GPU": 1.0}}, {"Alive": True, "Resources": {"CPU": 2.0}}]
    monkeypatch.setattr(ray_backend.ray, "nodes", lambda: nodes)
    fits = load(SMOKE, ["backend.name=ray", "backend.gpus_per_trial=0.25", "backend.cpus_per_trial=4"])
    ray_backend._check_resources(fits)
    with pytest.raises(UserError, match=r"--gpus-per-trial 2: no node .*\(the largest has 1\)"):
        ray_backend._check_resources(load(SMOKE, ["backend.name=ray", "backend.gpus_per_trial=2"]))


def test_a_local_mlflow_store_on_a_multi_node_cluster_is_warned_about(monkeypatch, caplog):
    nodes = [{"Alive": True, "Resources": {}}] * 2
    monkeypatch.setattr(ray_backend.ray, "nodes", lambda: nodes)
    with caplog.at_level(logging.WARNING):
        ray_backend._warn_unreachable_tracking("sqlite:////data/mlflow.db")
        ray_backend._warn_unreachable_tracking("http://head:5000")
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "mlflow server" in warnings[0] and "postgresql" in warnings[0]


def _most_at_once(trials) -> int:
    """The most trials that were computing at the same moment (each from its end back by its compute time;
    Optuna's start is when Tune asked, which may be before a slot was free)."""
    spans = [(t.datetime_complete.timestamp() - TrialRecord.from_trial(t).compute_seconds,
              t.datetime_complete.timestamp()) for t in trials]
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = most = 0
    for _, step in events:
        running += step
        most = max(most, running)
    return most


def test_gpus_ray_declares_pack_fractional_trials_and_a_gpu_torch_cannot_see_fails_clearly(tmp_path):
    """On this CPU machine a local Ray declares 2 GPUs it does not have: --gpus-per-trial 0.5 runs four trials
    at once, two on each GPU id (what CUDA_VISIBLE_DEVICES gives each); what needs a real GPU is in
    docs/cluster.md."""
    import ray

    from automtl import api

    common = ["backend.name=ray", "backend.gpus_per_trial=0.5", "backend.cpus_per_trial=0.5",
              "backend.max_concurrent=4", "trial_batch=1", "tracking.enabled=false", "fine_tune.epochs=8",
              "problem.options.train_pairs=3000", "dense.epochs=6"]
    ray.init(num_cpus=4, num_gpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    try:
        # device cpu: computing on the CPU although Ray gave the trial a GPU is asked for explicitly
        api.search(SMOKE, run_dir=tmp_path / "packed", overrides=[*common, "trials=8", "backend.device=cpu"])
        # device auto: a GPU torch cannot see is a failure with its reason, not a silent CPU run
        api.search(SMOKE, run_dir=tmp_path / "unseen", overrides=[*common, "trials=2"])
    finally:
        ray.shutdown()
    packed = RunDir(tmp_path / "packed").load_study().trials
    assert all(t.state == TrialState.COMPLETE for t in packed) and len(packed) == 8
    assert _most_at_once(packed) == 4
    gpus = [t.user_attrs["worker"].rsplit(" gpu ", 1)[1] for t in packed]
    assert set(gpus) == {"0", "1"}
    unseen = RunDir(tmp_path / "unseen").load_study().trials
    assert [t.state for t in unseen] == [TrialState.FAIL] * 2
    assert all("but torch on" in t.user_attrs["fail_reason"] and "sees no GPU" in t.user_attrs["fail_reason"]
               for t in unseen)
