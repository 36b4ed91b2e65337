from pathlib import Path

import pytest

from automtl.problems import get_problem

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def small_digits():
    """A small multidigits problem: fast to train, same construction as the default."""
    return get_problem("multidigits", train_pairs=2000, eval_pairs=500, seed=0)


@pytest.fixture
def user_problems(monkeypatch):
    """Make tests/fixtures importable so 'user_problem:...' references resolve."""
    monkeypatch.syspath_prepend(str(FIXTURES))
