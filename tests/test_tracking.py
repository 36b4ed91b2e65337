"""MLflow views of a study, the dashboard page, and rebuilding MLflow from the study storage."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ARTIFACTS
from tests.test_search import FAST, SMOKE

TRIALS = 8


def cli(cwd, *args, check=True):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    result = subprocess.run([sys.executable, "-m", "automtl", *map(str, args)], capture_output=True, text=True,
                            cwd=cwd, env=env)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def client(cwd):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{cwd}/mlflow.db")


def study_runs(cwd, experiment="smoke/smoke"):
    c = client(cwd)
    experiment = c.get_experiment_by_name(experiment)
    assert experiment is not None, "the study's experiment is missing"
    runs = c.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("automtl.role") == "study"]
    children = {int(r.data.tags["automtl.trial"]): r for r in runs if r.data.tags.get("automtl.role") == "trial"}
    return c, parents, children


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("tracked")
    cli(cwd, "search", SMOKE, "--trials", TRIALS, "--workers", 2, "--run-dir", "runs/smoke", "--json", *FAST)
    return cwd


def test_search_logs_one_parent_and_one_child_per_trial(tracked):
    c, parents, children = study_runs(tracked)
    assert len(parents) == 1 and sorted(children) == list(range(TRIALS))
    parent = parents[0]
    assert parent.data.params["sampler"] == "tpe" and "magnitude" in parent.data.params["strategies"]
    assert parent.info.status == "FINISHED", "a completed search's run ends"
    assert {"dense.accuracy.left", "dense.accuracy.right"} <= set(parent.data.metrics)
    for number, run in children.items():
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.status == "FINISHED" and run.data.tags["state"] == "complete"
        assert {"order", "loss_method", "distillation"} <= set(run.data.params)
        assert any(k.startswith("threshold.") for k in run.data.params)
        assert {"sparsity", "compression_ratio", "accuracy.left", "accuracy.right"} <= set(run.data.metrics)
    history = c.get_metric_history(parent.info.run_id, "hypervolume")
    assert sorted(m.step for m in history) == list(range(TRIALS))
    assert all(a.value <= b.value for a, b in zip(sorted(history, key=lambda m: m.step), sorted(history, key=lambda m: m.step)[1:]))
    artifacts = {a.path: a.file_size for a in c.list_artifacts(parent.info.run_id)}
    figures = {a.path for a in c.list_artifacts(parent.info.run_id, "figures")}
    assert {"dashboard.html", "pareto_front.json", "figures"} <= set(artifacts)
    assert {f"figures/{name}.plotly.json" for name in ("tradeoff", "front_3d", "parameters", "hypervolume",
                                                       "orders")} <= figures
    assert [path for path in artifacts if path.endswith(".html")] == ["dashboard.html"], "plotly.js goes once"
    experiment = c.get_experiment(parent.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development", "opens in the training view"


def test_pareto_tags_match_the_pareto_command(tracked):
    _, _, children = study_runs(tracked)
    front = {row["trial"] for row in json.loads(cli(tracked, "pareto", "runs/smoke", "--json").stdout)}
    tagged = {n for n, run in children.items() if run.data.tags["pareto"] == "true"}
    assert tagged == front and front


def test_pareto_where_filters_and_explains(tracked):
    front = json.loads(cli(tracked, "pareto", "runs/smoke", "--json").stdout)
    best = max(r["sparsity"] for r in front)
    kept = json.loads(cli(tracked, "pareto", "runs/smoke", "--json", "--where", f"sparsity>={best}").stdout)
    assert [r["sparsity"] for r in kept] == [best]
    none = cli(tracked, "pareto", "runs/smoke", "--where", "left>=1.5", check=False)
    assert none.returncode == 2 and "no Pareto trial meets left>=1.5; closest: trial" in " ".join(none.stderr.split())


def test_deleted_mlflow_database_is_rebuilt_from_the_study(tracked, tmp_path):
    cwd = tmp_path / "copy"
    shutil.copytree(tracked, cwd)
    _, parents_before, children_before = study_runs(cwd)
    (cwd / "mlflow.db").unlink()
    shutil.rmtree(cwd / "mlruns", ignore_errors=True)
    result = cli(cwd, "report", "runs/smoke", "--sync-mlflow")
    assert f"{TRIALS} child runs re-created" in " ".join(result.stdout.split())
    c, parents, children = study_runs(cwd)
    assert len(parents) == 1 and sorted(children) == sorted(children_before)
    for number, run in children.items():
        before = children_before[number]
        assert run.data.params == before.data.params and run.data.tags["pareto"] == before.data.tags["pareto"]
        assert run.data.metrics == pytest.approx(before.data.metrics)
    assert len(c.get_metric_history(parents[0].info.run_id, "hypervolume")) == TRIALS
    # Syncing again changes nothing.
    again = cli(cwd, "report", "runs/smoke", "--sync-mlflow")
    assert "0 child runs re-created" in " ".join(again.stdout.split())
    assert len(study_runs(cwd)[2]) == TRIALS


def test_a_child_run_left_without_metrics_is_completed_by_the_sync(tracked, tmp_path):
    # A worker that stopped between creating a trial's child run and logging to it left the run bare.
    cwd = tmp_path / "bare"
    shutil.copytree(tracked, cwd)
    c, _, children = study_runs(cwd)
    full = children[3]
    c.delete_run(full.info.run_id)
    bare = c.create_run(full.info.experiment_id, run_name=full.info.run_name, tags=full.data.tags).info.run_id
    result = cli(cwd, "report", "runs/smoke", "--sync-mlflow")
    assert "0 child runs re-created" in " ".join(result.stdout.split())
    run = study_runs(cwd)[2][3]
    assert run.info.run_id == bare and run.info.status == full.info.status == "FINISHED"
    assert run.data.params == full.data.params and run.data.metrics == pytest.approx(full.data.metrics)


def test_resumed_search_reattaches_to_its_parent_run(tracked, tmp_path):
    cwd = tmp_path / "resumed"
    shutil.copytree(tracked, cwd)
    result = cli(cwd, "search", SMOKE, "--trials", TRIALS + 3, "--run-dir", "runs/smoke", "--resume", "--json", *FAST)
    _, parents, children = study_runs(cwd)
    assert len(parents) == 1 and sorted(children) == list(range(TRIALS + 3))
    look = json.loads(result.stdout)["mlflow"]  # where the end of a search says to look
    assert look["url"].endswith(f"/#/experiments/{parents[0].info.experiment_id}?workflowType=machine_learning")
    assert look["ui_command"] == f"mlflow ui --backend-store-uri sqlite:///{cwd.resolve()}/mlflow.db"


def test_the_study_run_is_killed_when_interrupted_and_finished_when_resumed_or_repaired(tmp_path):
    from tests.test_search import _completed

    run_dir = tmp_path / "runs" / "smoke"
    args = ["search", str(SMOKE), "--trials", 40, "--run-dir", run_dir, *FAST, "--set", "fine_tune.epochs=3"]
    proc = subprocess.Popen([sys.executable, "-m", "automtl", *map(str, args)], cwd=tmp_path, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                            env={k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")})
    while len(_completed(run_dir)) < 2 and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=60) == 130, proc.stderr.read()
    c, parents, _ = study_runs(tmp_path)
    assert parents[0].info.status == "KILLED"
    cli(tmp_path, "search", SMOKE, "--trials", 4, "--run-dir", run_dir, "--resume", *FAST, "--set", "fine_tune.epochs=3")
    assert study_runs(tmp_path)[1][0].info.status == "FINISHED"
    # a search killed outright (SIGKILL) leaves its run RUNNING; the sync sets what the study says
    c.update_run(parents[0].info.run_id, status="RUNNING")
    cli(tmp_path, "report", "runs/smoke", "--sync-mlflow")
    assert study_runs(tmp_path)[1][0].info.status == "FINISHED"


def test_the_study_run_fails_when_the_search_dies(tmp_path, monkeypatch):
    import automtl
    from automtl.backends import local
    from mlflow.tracking import MlflowClient

    def dies(*_args, **_kwargs):
        raise RuntimeError("a worker's machine went away")

    monkeypatch.setattr(local, "run", dies)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    config = {"name": "dies", "problem": {"name": "multidigits", "options": {"train_pairs": 600, "eval_pairs": 200}},
              "dense": {"epochs": 1}, "trials": 2, "tracking": {"uri": uri},
              "pruning": {"strategies": {"magnitude": None}}}
    with pytest.raises(RuntimeError, match="went away"):
        automtl.search(config, run_dir=tmp_path / "runs" / "dies")
    runs = MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name("dies/dies").experiment_id])
    assert [r.info.status for r in runs if r.data.tags.get("automtl.role") == "study"] == ["FAILED"]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_tracking_server_does_not_stop_the_search(tmp_path):
    uri = f"http://127.0.0.1:{_free_port()}"
    result = cli(tmp_path, "search", SMOKE, "--trials", 4, "--run-dir", "runs/smoke", "--json", *FAST,
                 "--set", f"tracking.uri={uri}")
    assert "cannot be reached; the search runs on" in " ".join(result.stderr.split())
    assert json.loads(result.stdout)["status"]["counts"]["complete"] == 4
    sync = cli(tmp_path, "report", "runs/smoke", "--sync-mlflow", check=False)
    assert sync.returncode == 2 and "cannot be reached" in sync.stderr


def test_dashboard_is_self_contained_with_every_figure_and_the_front(tracked, tmp_path):
    out = tmp_path / "dash.html"
    cli(tracked, "report", "runs/smoke", "-o", out)
    page = out.read_text()
    assert "<script src=" not in page and "cdn" not in page.lower().split("plotly.js v")[0][-200:]
    for name in ("tradeoff", "front_3d", "parameters", "hypervolume", "orders"):
        assert f'id="figure-{name}"' in page
    front = json.loads(cli(tracked, "pareto", "runs/smoke", "--json").stdout)
    assert page.count("<tr") == len(front) + 1
    bad = cli(tracked, "report", "runs/smoke", "-o", tmp_path / "missing" / "d.html", check=False)
    assert bad.returncode == 2 and "does not exist" in bad.stderr


def test_a_wheel_installed_elsewhere_ships_the_dashboard_and_renders_it(tracked, tmp_path):
    """Built from a copy of the checkout (nothing is written into it), installed into a folder of its own."""
    import zipfile

    root = Path(__file__).resolve().parent.parent
    source = tmp_path / "src"
    shutil.copytree(root, source, ignore=shutil.ignore_patterns(".*", "build", "*.egg-info", "__pycache__", "runs",
                                                                  "mlruns", "mlflow.db", "test-artifacts"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path,
                    source], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("automtl-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "automtl/dashboards/dashboard.html" in names
    assert {f"automtl/{p.relative_to(root / 'automtl')}" for p in (root / "automtl").rglob("*.py")} <= set(names)
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", site, wheel], check=True,
                   capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run([sys.executable, "-c", "import automtl; print(automtl.__file__)"], capture_output=True,
                           text=True, cwd=tmp_path, env=env, check=True).stdout
    assert where.startswith(str(site))
    page = tmp_path / "page.html"
    rendered = subprocess.run([sys.executable, "-m", "automtl", "report", tracked / "runs" / "smoke", "-o", page],
                              capture_output=True, text=True, cwd=tmp_path, env=env)
    assert rendered.returncode == 0, rendered.stderr
    assert page.read_text().count('id="figure-') >= 5


def test_dashboard_renders_in_headless_chromium(tracked):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (`make test` installs it)")
    page = (tracked / "runs" / "smoke" / "dashboard.html").as_uri()
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--virtual-time-budget=15000", "--enable-logging=stderr", "--v=0"]
    dom = subprocess.run([*flags, "--dump-dom", page], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count('class="main-svg"') >= 5, "plotly drew no SVG"
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line]
    assert not [line for line in console if "Uncaught" in line or "ERROR" in line], console
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    shot.unlink(missing_ok=True)
    subprocess.run([*flags, "--window-size=1400,2600", f"--screenshot={shot}", page], capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 20_000


def test_artifacts_of_a_sqlite_store_live_beside_its_database(tmp_path, monkeypatch):
    from automtl.tracking import artifact_location

    assert artifact_location(f"sqlite:///{tmp_path}/db/mlflow.db") == (tmp_path / "db" / "mlruns").as_uri()
    monkeypatch.chdir(tmp_path)
    assert artifact_location("sqlite:///mlflow.db") == (tmp_path / "mlruns").as_uri()
    assert artifact_location("http://127.0.0.1:5000") is None
