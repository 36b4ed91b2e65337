import pytest
import torch

from automtl import ModelSpec, UserError, build_model
from automtl.models import ResidualBlock

TASKS = {"a": 10, "b": 3, "c": 2}


@pytest.mark.parametrize(
    "spec, shape",
    [
        (ModelSpec("mlp", (32, 16)), (1, 10, 10)),
        (ModelSpec("mlp", (8,)), (2, 40)),
        (ModelSpec("cnn", (16,), (4, 8)), (1, 10, 10)),  # 2-D convolutions
        (ModelSpec("cnn", (16,), (4, 8, 8)), (2, 40)),  # 1-D convolutions
        (ModelSpec("cnn", (16,), (4,)), (1, 36, 36)),
        (ModelSpec("resnet", (16,), (4, 8)), (2, 40)),  # 1-D residual blocks
        (ModelSpec("resnet", (), (4, 8, 8)), (1, 10, 10)),  # 2-D, no dense layer
    ],
)
def test_every_model_returns_one_output_per_task(spec, shape):
    model = build_model(spec, shape, TASKS)
    out = model(torch.randn(5, *shape))
    assert set(out) == set(TASKS)
    for name, classes in TASKS.items():
        assert out[name].shape == (5, classes)
    conv = torch.nn.Conv2d if len(shape) == 3 else torch.nn.Conv1d
    assert any(isinstance(m, conv) for m in model.trunk.modules()) == (spec.arch != "mlp")


def test_heads_share_the_trunk_gradient():
    model = build_model(ModelSpec("mlp", (8,)), (4,), {"a": 2, "b": 2})
    model(torch.randn(3, 4))["a"].sum().backward()
    assert model.trunk[1].weight.grad.abs().sum() > 0
    assert model.heads["b"].weight.grad is None


def test_bad_model_specs_are_refused():
    with pytest.raises(UserError, match="'transformer' is unknown; allowed: \\['cnn', 'mlp', 'resnet'\\]"):
        build_model(ModelSpec("transformer"), (4,), TASKS)
    with pytest.raises(UserError, match="cnn' needs inputs shaped"):
        build_model(ModelSpec("cnn"), (4,), TASKS)
    with pytest.raises(UserError, match="resnet' needs inputs shaped"):
        build_model(ModelSpec("resnet"), (4,), TASKS)
    with pytest.raises(UserError, match="resnet' needs at least one width"):
        build_model(ModelSpec("resnet", channels=()), (2, 40), TASKS)
    with pytest.raises(UserError, match="widths must be >= 1"):
        build_model(ModelSpec("resnet", channels=(8, 0)), (2, 40), TASKS)
    with pytest.raises(UserError, match="depth must be >= 1"):
        build_model(ModelSpec("resnet", depth=0), (2, 40), TASKS)
    with pytest.raises(UserError, match="no field 'width'; allowed: arch, hidden, channels, depth"):
        ModelSpec().override(width=3)


def _blocks(model):
    return [m for m in model.trunk if isinstance(m, ResidualBlock)]


@pytest.mark.parametrize("shape", [(2, 40), (1, 10, 10)])
def test_resnet_stages_downsample_and_use_batchnorm(shape):
    model = build_model(ModelSpec("resnet", (16,), (4, 8)), shape, TASKS)
    stem, stage1, stage2 = model.trunk[0], *_blocks(model)
    norm = torch.nn.BatchNorm1d if len(shape) == 2 else torch.nn.BatchNorm2d
    assert isinstance(model.trunk[1], norm) and stem.bias is None
    assert isinstance(stage1.shortcut, torch.nn.Identity)  # same width, stride 1
    assert stage2.conv1.stride[0] == 2 and isinstance(stage2.shortcut[1], norm)  # 1x1 conv + BN
    features = model.trunk[:4](torch.randn(3, *shape))
    assert features.shape == (3, 4, *shape[1:])
    assert stage2(features).shape == (3, 8, *[(s + 1) // 2 for s in shape[1:]])


def test_resnet_stops_downsampling_at_small_sizes():
    model = build_model(ModelSpec("resnet", (), (4, 4, 4, 4)), (1, 6, 6), TASKS)
    assert [b.conv1.stride[0] for b in _blocks(model)] == [1, 2, 1, 1]  # 6 -> 3, then too small
    assert model(torch.randn(2, 1, 6, 6))["a"].shape == (2, 10)


def test_residual_block_adds_its_input():
    model = build_model(ModelSpec("resnet", (), (4,)), (2, 40), TASKS).eval()
    block = _blocks(model)[0]
    torch.nn.init.zeros_(block.bn2.weight)
    torch.nn.init.zeros_(block.bn2.bias)
    x = torch.randn(3, 4, 40)
    assert torch.equal(block(x), torch.relu(x))  # the residual branch is silent: identity + ReLU


def test_resnet_depth_adds_blocks_per_stage():
    shallow = build_model(ModelSpec("resnet", (8,), (4, 8)), (2, 40), TASKS)
    deep = build_model(ModelSpec("resnet", (8,), (4, 8), depth=2), (2, 40), TASKS)
    assert len(_blocks(shallow)) == 2 and len(_blocks(deep)) == 4
    assert deep(torch.randn(2, 2, 40))["b"].shape == (2, 3)
    assert ModelSpec("resnet", depth=2).as_dict()["depth"] == 2 and "depth" not in ModelSpec("cnn").as_dict()
