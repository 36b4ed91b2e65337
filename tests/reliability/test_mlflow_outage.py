"""MLflow unreachable from the start, or killed mid-search: the search completes; --sync-mlflow restores every run."""

import os
import signal
import socket
import subprocess
import sys

import pytest

from tests.reliability.conftest import start, wait_until
from tests.test_search import FAST, SMOKE, _completed
from tests.test_tracking import cli

TRIALS = 10


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server(root, port) -> subprocess.Popen:
    """An MLflow tracking server on loopback, on a SQLite store that outlives it."""
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
               "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def up():
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return False

    wait_until(up, timeout=120, proc=proc)
    return proc


def _stop(proc):
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _children(uri):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("smoke/run")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parent = [r for r in runs if r.data.tags.get("automtl.role") == "study"]
    children = [r for r in runs if r.data.tags.get("automtl.role") == "trial"]
    assert len(parent) == 1 and all(r.data.tags["mlflow.parentRunId"] == parent[0].info.run_id for r in children)
    return {int(r.data.tags["automtl.trial"]) for r in children}


@pytest.fixture
def server_root(tmp_path):
    root = tmp_path / "mlflow"
    root.mkdir()
    return root


def test_tracking_server_killed_mid_search_then_every_run_is_restored(tmp_path, server_root, tally):
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    server = _server(server_root, port)
    try:
        proc = start("search", SMOKE, "--trials", TRIALS, "--run-dir", tmp_path / "run", "--json", *FAST,
                     "--set", "fine_tune.epochs=4", "--set", f"tracking.uri={uri}")
        wait_until(lambda: len(_completed(tmp_path / "run")) >= 2, proc=proc)
        _stop(server)
        tally["MLflow servers killed mid-search"] += 1
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        assert len(_completed(tmp_path / "run")) == TRIALS
        assert "automtl report" in err and "--sync-mlflow" in err  # it said how to repair the view
        server = _server(server_root, port)
        assert len(_children(uri)) < TRIALS  # runs were missed while the server was down
        cli(tmp_path, "report", "run", "--sync-mlflow")
        assert _children(uri) == set(range(TRIALS))
    finally:
        _stop(server)


def test_tracking_server_down_from_the_start_then_every_run_is_restored(tmp_path, server_root, tally):
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    result = cli(tmp_path, "search", SMOKE, "--trials", 4, "--run-dir", "run", "--json", *FAST,
                 "--set", f"tracking.uri={uri}")
    assert "cannot be reached; the search runs on" in " ".join(result.stderr.split())
    tally["searches started with MLflow down"] += 1
    server = _server(server_root, port)
    try:
        cli(tmp_path, "report", "run", "--sync-mlflow")
        assert _children(uri) == set(range(4))
    finally:
        _stop(server)
