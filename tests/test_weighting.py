import pytest
import torch

from automtl import ModelSpec, TrainConfig, UserError
from automtl.train import fit
from automtl.weighting import DWA, WEIGHTINGS, GradNorm, Static, Uncertainty, make_weighting

TASKS = ["a", "b"]


def test_static_weights_are_normalised_and_validated():
    assert Static(TASKS, {"a": 3, "b": 1}).current() == {"a": 0.75, "b": 0.25}
    assert Static(TASKS).current() == {"a": 0.5, "b": 0.5}
    with pytest.raises(UserError, match="exactly the tasks"):
        Static(TASKS, {"a": 1})
    with pytest.raises(UserError, match=">= 0 with a positive sum"):
        Static(TASKS, {"a": -1, "b": 1})
    with pytest.raises(UserError, match="'magic' is unknown; allowed"):
        make_weighting("magic", TASKS)


def test_uncertainty_learns_to_down_weight_the_noisier_task():
    weighting = Uncertainty(TASKS)
    optimizer = torch.optim.SGD(weighting.parameters(), lr=0.1)
    for _ in range(200):
        optimizer.zero_grad()
        weighting.combine({"a": torch.tensor(0.1), "b": torch.tensor(2.0)}).backward()
        optimizer.step()
    weights = weighting.current()
    assert weights["a"] > 0.8 and sum(weights.values()) == pytest.approx(1.0)


def test_dwa_favours_the_task_whose_loss_falls_slower():
    weighting = DWA(TASKS)
    weighting.after_epoch({"a": 1.0, "b": 1.0})
    assert weighting.current() == pytest.approx({"a": 0.5, "b": 0.5})
    weighting.after_epoch({"a": 0.5, "b": 0.95})  # a halved, b barely moved
    assert weighting.current()["b"] > weighting.current()["a"]
    assert sum(weighting.current().values()) == pytest.approx(1.0)


def test_gradnorm_raises_the_weight_of_the_lagging_task(small_digits):
    torch.manual_seed(0)
    model = small_digits.build_model(ModelSpec("mlp", (32, 16)))
    weighting = GradNorm(small_digits.task_names, lr=0.05)
    weighting.bind(model)
    x, y = small_digits.train.inputs[:256], small_digits.train.targets

    def losses():
        out = model(x)
        return {"left": torch.nn.functional.cross_entropy(out["left"], y["left"][:256]),
                "right": 3 * torch.nn.functional.cross_entropy(out["right"], y["right"][:256])}

    first = losses()
    weighting.combine(first).backward()
    assert weighting.shared is model.trunk[3].weight  # the last layer both tasks reach
    weighting.initial = torch.tensor([first["left"].item(), first["right"].item() / 2])  # right improved less
    for _ in range(20):
        weighting.combine(losses())
        weighting.after_step()
    assert weighting.current()["right"] > 0.5
    assert weighting.weights.detach().sum().item() == pytest.approx(2.0)


@pytest.mark.parametrize("name", sorted(WEIGHTINGS))
def test_every_weighting_trains_a_model(small_digits, name):
    torch.manual_seed(0)
    model = small_digits.build_model(ModelSpec("mlp", (32, 16)))
    history = fit(model, small_digits, TrainConfig(epochs=3), seed=0, weighting=make_weighting(name, small_digits.task_names))
    for task in small_digits.task_names:
        assert history[-1][task] < history[0][task]


def test_gradnorm_finds_the_shared_layer_even_when_pruning_silenced_it(small_digits):
    torch.manual_seed(0)
    model = small_digits.build_model(ModelSpec("mlp", (32, 16)))
    with torch.no_grad():
        model.trunk[1].weight.zero_()
        model.trunk[1].bias.fill_(-1.0)  # every ReLU dead: the trunk's gradients are exactly zero
    history = fit(model, small_digits, TrainConfig(epochs=1), seed=0,
                  weighting=make_weighting("gradnorm", small_digits.task_names))
    assert all(v == v for v in history[-1].values())  # trained without error, finite
