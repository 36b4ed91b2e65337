import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import settings
from hypothesis.configuration import set_hypothesis_home_dir

from automtl.problems import get_problem
from automtl.train import TrainConfig, fit
from tests.fixtures.zoo import ZOO, digits

FIXTURES = Path(__file__).parent / "fixtures"
ROOT = Path(__file__).resolve().parent.parent
# Screenshots and tallies the suite keeps for the docs: never inside the checkout.
ARTIFACTS = Path(os.environ.get("AUTOMTL_TEST_ARTIFACTS") or Path(tempfile.gettempdir()) / "automtl-test-artifacts")
# Written by the tools that run the suite, not by the tests.
TOOL_CACHES = (".venv/", "__pycache__/", ".pytest_cache/", "automtl.egg-info/")
CHECKOUT = pytest.StashKey[frozenset]()
# hypothesis keeps no example database, and draws the same examples every run (a failure in CI replays here)
settings.register_profile("ci", database=None, derandomize=True)
settings.load_profile("ci")
# The session's scratch (hypothesis's caches, the MLflow database), removed when the session ends.
SCRATCH = Path(tempfile.mkdtemp(prefix="automtl-tests-"))
set_hypothesis_home_dir(str(SCRATCH / "hypothesis"))  # nor its caches in the checkout


def _checkout_state() -> frozenset[str] | None:
    """``git status`` of the checkout, untracked and ignored files included (None outside a git checkout)."""
    try:
        listed = subprocess.run(["git", "status", "--porcelain", "--ignored"], cwd=ROOT,
                                capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return frozenset(line for line in listed.splitlines() if not any(c in line for c in TOOL_CACHES))


def pytest_sessionstart(session):
    session.config.stash[CHECKOUT] = _checkout_state()
    # Every search a test starts logs to a database of the session's own, whatever folder it runs in.
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{SCRATCH}/mlflow.db"


def pytest_sessionfinish(session, exitstatus):
    """The suite leaves the checkout as it found it: it fails if any file appeared, changed state or went.
    Its scratch goes (about 30 MB a run)."""
    shutil.rmtree(SCRATCH, ignore_errors=True)
    before, after = session.config.stash.get(CHECKOUT, None), _checkout_state()
    if before is None or after is None or before == after:
        return
    session.config.pluginmanager.get_plugin("terminalreporter").write_line(
        f"FAILED: the tests changed the checkout: {sorted(before ^ after)[:10]}", red=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def small_digits():
    """A small multidigits problem: fast to train, same construction as the default."""
    return get_problem("multidigits", train_pairs=2000, eval_pairs=500, seed=0)


@pytest.fixture(scope="module")
def zoo():
    """Every zoo model (tests/fixtures/zoo.py), briefly trained on its problem (cached per module)."""
    trained = {}

    def get(name):
        if name not in trained:
            layout, regression, factory = ZOO[name]
            problem = digits(layout, regression, train_pairs=800, eval_pairs=200)
            torch.manual_seed(0)
            model = factory(problem)
            fit(model, problem, TrainConfig(epochs=2, lr=3e-3), seed=0)
            trained[name] = (problem, model)
        return trained[name]

    return get


@pytest.fixture
def user_problems(monkeypatch):
    """Make tests/fixtures importable so 'user_problem:...' references resolve."""
    monkeypatch.syspath_prepend(str(FIXTURES))
