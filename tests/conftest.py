from pathlib import Path

import pytest
import torch

from automtl.problems import get_problem
from automtl.train import TrainConfig, fit
from tests.fixtures.zoo import ZOO, digits

FIXTURES = Path(__file__).parent / "fixtures"


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
