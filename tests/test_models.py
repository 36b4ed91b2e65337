import pytest
import torch

from automtl import ModelSpec, UserError, build_model

TASKS = {"a": 10, "b": 3, "c": 2}


@pytest.mark.parametrize(
    "spec, shape",
    [
        (ModelSpec("mlp", (32, 16)), (1, 10, 10)),
        (ModelSpec("mlp", (8,)), (2, 40)),
        (ModelSpec("cnn", (16,), (4, 8)), (1, 10, 10)),  # 2-D convolutions
        (ModelSpec("cnn", (16,), (4, 8, 8)), (2, 40)),  # 1-D convolutions
        (ModelSpec("cnn", (16,), (4,)), (1, 36, 36)),
    ],
)
def test_every_model_returns_one_output_per_task(spec, shape):
    model = build_model(spec, shape, TASKS)
    out = model(torch.randn(5, *shape))
    assert set(out) == set(TASKS)
    for name, classes in TASKS.items():
        assert out[name].shape == (5, classes)
    conv = torch.nn.Conv2d if len(shape) == 3 else torch.nn.Conv1d
    assert any(isinstance(m, conv) for m in model.trunk) == (spec.arch == "cnn")


def test_heads_share_the_trunk_gradient():
    model = build_model(ModelSpec("mlp", (8,)), (4,), {"a": 2, "b": 2})
    model(torch.randn(3, 4))["a"].sum().backward()
    assert model.trunk[1].weight.grad.abs().sum() > 0
    assert model.heads["b"].weight.grad is None


def test_bad_model_specs_are_refused():
    with pytest.raises(UserError, match="'transformer' is unknown; allowed: \\['cnn', 'mlp'\\]"):
        build_model(ModelSpec("transformer"), (4,), TASKS)
    with pytest.raises(UserError, match="cnn' needs inputs shaped"):
        build_model(ModelSpec("cnn"), (4,), TASKS)
    with pytest.raises(UserError, match="no field 'depth'"):
        ModelSpec().override(depth=3)
