"""Shared by the fault-injection suite: real ``automtl`` processes, and a tally of the faults survived.

The tally is written to ``reliability.json`` in the test artifacts folder (``tests.conftest.ARTIFACTS``)
at the end of the run; docs/reliability.md quotes it.
"""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import ARTIFACTS

ROOT = Path(__file__).resolve().parents[2]
FAULTY = Path(__file__).with_name("faulty.py")
_TALLY: Counter = Counter()


def pytest_collection_modifyitems(items):
    for item in items:
        if "reliability" in item.nodeid:
            item.add_marker(pytest.mark.reliability)


@pytest.fixture(scope="session")
def tally():
    """Count faults injected (kills, fuzz cases, failing trials, …) for docs/reliability.md."""
    yield _TALLY
    if _TALLY:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "reliability.json").write_text(json.dumps(dict(sorted(_TALLY.items())), indent=2) + "\n")


def start(*args, env: dict | None = None) -> subprocess.Popen:
    """``automtl ARGS`` (through the fault injector) in its own process group, output kept for failures."""
    command = [sys.executable, str(FAULTY), *map(str, args)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})}, start_new_session=True)


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL the process and every worker it forked."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.communicate()


def wait_until(condition, timeout: float = 120, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended early ({proc.returncode}): {proc.communicate()[1][-2000:]}")
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)
