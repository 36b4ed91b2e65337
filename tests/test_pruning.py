import copy
import dataclasses
import logging
import math
import tempfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from automtl import UserError
from automtl.models import in_mode, task_outputs
from automtl.pruning import STRATEGIES, PruneContext, apply, require
from automtl.pruning.registry import get_strategy
from automtl.pruning.groups import drop_unheard
from automtl.pruning import pipeline
from automtl.pruning.pipeline import describe
from automtl.pruning.probe import unit_activations
from automtl.pruning.layers import discover, effective, make_permanent, present
from automtl.train import TrainConfig, fit
from tests.fixtures.zoo import ZOO

STRUCTURED = sorted(s for s in STRATEGIES if STRATEGIES[s].structured)


def fresh(zoo, name, **ctx_options):
    problem, model = zoo(name)
    model = copy.deepcopy(model)
    return problem, model, PruneContext.create(model, problem, calibration_size=128, **ctx_options)


def masks(model):
    return {name: buf.clone() for name, buf in model.named_buffers() if name.endswith("_mask")}


def grid(strategy, fractions=(0.0, 0.15, 0.5, 1.0)):
    spec = STRATEGIES[strategy].threshold
    return [spec.low + (spec.high - spec.low) * f for f in fractions]


def weights(ctx):
    return {layer.name: effective(layer.module) for layer in ctx.layers}


@pytest.mark.parametrize("name", sorted(ZOO))
@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_every_strategy_prunes_every_zoo_model_more_at_higher_thresholds(zoo, name, strategy):
    sparsities = []
    for value in grid(strategy):
        problem, model, ctx = fresh(zoo, name)
        sparsities.append(apply(model, [(strategy, value)], ctx).sparsity)
        outputs = model(problem.val.inputs[:8])
        assert all(torch.isfinite(o).all() for o in (outputs.values() if isinstance(outputs, dict) else outputs))
    assert all(a <= b for a, b in zip(sparsities, sparsities[1:])), sparsities
    assert sparsities[-1] > sparsities[0], f"{strategy} removed nothing from {name} even at its maximum: {sparsities}"


@pytest.mark.parametrize("name", sorted(ZOO))
@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_removed_weights_and_units_stay_exactly_zero_through_fine_tuning(zoo, name, strategy):
    problem, model, ctx = fresh(zoo, name)
    apply(model, [(strategy, grid(strategy, (0.3,))[0])], ctx)
    removed = {layer: w.eq(0) for layer, w in weights(ctx).items()}
    assert any(r.any() for r in removed.values())
    gone = {group.name: ~group.alive() for group in ctx.groups}
    if STRATEGIES[strategy].structured:
        assert any(g.any() for g in gone.values()), f"{strategy} removed no unit of {name}"
    fit(model, problem, TrainConfig(epochs=1, lr=1e-2), seed=1)
    for layer, w in weights(ctx).items():
        assert torch.all(w[removed[layer]] == 0), layer
    # A removed unit outputs exactly zero wherever it is read, and its BatchNorm entries are zero.
    acts = unit_activations(model, ctx.groups, problem.val.inputs[:64], magnitude=True)  # mean |a| over positions
    for group in ctx.groups:
        assert group.empty()[gone[group.name]].all(), group.name
        for site in acts[group.name]:
            assert torch.all(site[:, gone[group.name]] == 0), group.name


@pytest.mark.parametrize("name", ["user_resnet", "depthwise", "resnet"])
def test_batchnorm_statistics_are_recalibrated_for_the_pruned_network(zoo, name):
    problem, trained = zoo(name)
    model = copy.deepcopy(trained)
    ctx = PruneContext.create(model, problem, calibration_size=512, batch_size=128)  # four batches
    apply(model, [("magnitude", 0.4)], ctx)
    norms = {n: m for n, m in model.named_modules() if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d)}
    seen = {n: [] for n in norms}
    handles = [m.register_forward_pre_hook(lambda _m, args, n=n: seen[n].append(args[0])) for n, m in norms.items()]
    with torch.no_grad():
        model.eval()(ctx.calibration.inputs)
    for h in handles:
        h.remove()
    for n, module in norms.items():
        inputs = torch.cat(seen[n]).transpose(0, 1).flatten(1)
        torch.testing.assert_close(module.running_mean, inputs.mean(1), atol=1e-4, rtol=1e-3)
        # the running variance averages each batch's variance, close to the whole set's for equal batches
        torch.testing.assert_close(module.running_var, inputs.var(1), atol=0.05, rtol=0.1)


def test_a_residual_stream_is_one_group_with_its_batchnorms_and_readers(zoo):
    problem, model, ctx = fresh(zoo, "user_resnet")
    stream = next(g for g in ctx.groups if any(m.name == "stem" for m in g.members))
    roles = {(m.name, m.role) for m in stream.members}
    assert {("stem", "out"), ("conv2", "out"), ("stem_bn", "norm"), ("bn2", "norm"), ("conv1", "in"), ("fc", "in")} <= roles
    remove = torch.zeros(stream.units, dtype=torch.bool)
    remove[3] = True
    assert stream.remove(remove, "test") == 1
    assert effective(model.stem)[3].eq(0).all() and effective(model.conv2)[3].eq(0).all()
    assert effective(model.stem_bn)[3] == 0 and effective(model.bn2, "bias")[3] == 0
    assert effective(model.conv1)[:, 3].eq(0).all()
    assert effective(model.fc)[:, 3 * 25 : 4 * 25].eq(0).all(), "the flattened columns of channel 3 are read by fc"
    assert effective(model.fc)[:, 2 * 25 : 3 * 25].ne(0).any(), "other channels are untouched"


def test_activations_are_measured_after_functional_and_module_nonlinearities(zoo):
    problem, model, ctx = fresh(zoo, "gelu_mlp")
    inputs = problem.val.inputs[:32]
    acts = unit_activations(model, ctx.groups, inputs)
    first = next(g for g in ctx.groups if g.name == "fc1")
    with torch.no_grad():
        expected = F.gelu(model.fc1(inputs.flatten(1)))
    torch.testing.assert_close(acts["fc1"][0], expected)
    assert len(acts[first.name]) == 1
    problem, model, ctx = fresh(zoo, "user_resnet")
    acts = unit_activations(model, ctx.groups, problem.val.inputs[:32])
    for group in ctx.groups:
        assert acts[group.name] and all(site.min() >= 0 for site in acts[group.name]), f"{group.name}: not post-ReLU"


@pytest.mark.parametrize("name", ["mlp", "cnn2d", "user_resnet"])
@pytest.mark.parametrize(
    "first, second",
    [(("magnitude", 0.15), ("random", 0.4)), (("activation", 0.3), ("taylor", 0.5)), (("entropy", 0.5), ("stability", 0.3))],
)
def test_opposite_orders_give_different_masks(zoo, name, first, second):
    _, a, ctx_a = fresh(zoo, name)
    _, b, ctx_b = fresh(zoo, name)
    apply(a, [first, second], ctx_a)
    apply(b, [second, first], ctx_b)
    ma, mb = masks(a), masks(b)
    assert ma.keys() != mb.keys() or any(not torch.equal(ma[k], mb[k]) for k in ma)


@pytest.mark.parametrize("name", ["mlp", "user_resnet", "depthwise"])
@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_no_strategy_empties_a_layer(zoo, name, strategy, caplog):
    problem, model, ctx = fresh(zoo, name)
    high = STRATEGIES[strategy].threshold.high
    with caplog.at_level(logging.WARNING):
        apply(model, [(strategy, high), (strategy, high)], ctx)  # twice: the second sees a nearly empty model
    for layer in ctx.weight_layers:
        assert effective(layer.module).ne(0).any(), f"{strategy} emptied {layer.name}"
    for group in ctx.groups:
        assert group.alive().any(), f"{strategy} removed every unit of {group.name}"
    outputs = model(problem.val.inputs[:8])
    assert all(torch.isfinite(o).all() for o in outputs.values())


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
@pytest.mark.parametrize("value", [math.nan, -0.1, 100.0, math.inf, "0.5", True])
def test_bad_thresholds_are_refused_clearly(zoo, strategy, value):
    _, model, ctx = fresh(zoo, "mlp")
    spec = STRATEGIES[strategy].threshold
    with pytest.raises(UserError, match=f"strategy '{strategy}': threshold {spec.symbol} must be"):
        apply(model, [("magnitude", 0.1), (strategy, value)], ctx)
    assert masks(model) == {}, "nothing may be pruned when any step is invalid"


def test_unknown_strategy_lists_the_allowed_ones(zoo):
    _, model, ctx = fresh(zoo, "mlp")
    with pytest.raises(UserError, match="'prune_all' is unknown; allowed: \\['activation', 'clustering'"):
        apply(model, [("prune_all", 0.1)], ctx)


@pytest.mark.parametrize("name", ["mlp", "user_resnet", "tuple"])
@pytest.mark.parametrize("strategy", STRUCTURED)
def test_structured_strategies_never_remove_classes(zoo, name, strategy):
    problem, model, ctx = fresh(zoo, name, heads="include")
    apply(model, [(strategy, STRATEGIES[strategy].threshold.high)], ctx)
    for layer in ctx.layers:
        if layer.is_output:
            assert present(layer.module, "bias").all(), f"{strategy} removed a class of {layer.name}"
            assert present(layer.module).flatten(1).sum(1).min() > 0, f"{strategy} emptied a class of {layer.name}"


def test_heads_are_pruned_only_when_included(zoo):
    _, excluded, ctx_ex = fresh(zoo, "mlp")
    _, included, ctx_in = fresh(zoo, "mlp", heads="include")
    apply(excluded, [("magnitude", 0.3)], ctx_ex)
    apply(included, [("magnitude", 0.3)], ctx_in)
    assert {l.name for l in ctx_ex.layers if l.is_output} == {"heads.left", "heads.right"}
    assert effective(excluded.heads["left"]).ne(0).all()
    assert effective(included.heads["left"]).eq(0).any()


def test_task_aggregation_rule_changes_what_taylor_keeps(zoo):
    chosen = {}
    for rule in ("max", "mean", "min"):
        _, model, ctx = fresh(zoo, "mlp", aggregate=rule)
        apply(model, [("taylor", 0.5)], ctx)
        chosen[rule] = masks(model)
    assert any(not torch.equal(chosen["max"][k], chosen["min"][k]) for k in chosen["max"])
    _, _, ctx = fresh(zoo, "mlp", aggregate="min")
    a, b = torch.tensor([0.2, 0.9]), torch.tensor([0.5, 0.1])
    assert torch.equal(ctx.combine([a, b]), torch.tensor([0.2, 0.1]))
    with pytest.raises(UserError, match="aggregate 'median' is unknown"):
        fresh(zoo, "mlp", aggregate="median")


def test_pipeline_counts_sparsity_compression_and_empty_units(zoo):
    _, model, ctx = fresh(zoo, "mlp")
    report = apply(model, [("activation", 0.5), ("magnitude", 0.1)], ctx)
    hidden = [model.trunk[1], model.trunk[3]]
    prunable = [t for m in hidden for t in (effective(m), effective(m, "bias"))]
    zeros = sum(int(t.eq(0).sum()) for t in prunable)
    assert report.prunable_parameters == sum(t.numel() for t in prunable)
    assert report.sparsity == pytest.approx(zeros / report.prunable_parameters)
    everything = [effective(m, n) for m in [*hidden, model.heads["left"], model.heads["right"]] for n in ("weight", "bias")]
    assert report.total_parameters == sum(p.numel() for p in model.parameters())
    assert report.compression_ratio == pytest.approx(report.total_parameters / sum(int(t.ne(0).sum()) for t in everything))
    empty = sum(int((effective(m).eq(0).all(1) & effective(m, "bias").eq(0)).sum()) for m in hidden)
    assert report.empty_units == empty > 0
    assert [s.strategy for s in report.steps] == ["activation", "magnitude"]
    assert report.steps[0].sparsity <= report.steps[1].sparsity <= report.sparsity


@pytest.mark.parametrize("name", sorted(ZOO))
def test_units_nothing_reads_lose_their_weights_and_the_outputs_stay_the_same(zoo, name):
    problem, model, ctx = fresh(zoo, name)
    get_strategy("global_magnitude")(model, ctx, 0.97)
    inputs = problem.val.inputs[:64]
    with in_mode(model, False):
        before = task_outputs(model(inputs), problem.task_names)
        nonzero = describe(model, ctx).nonzero_parameters
        dropped = drop_unheard(ctx.groups)
        after = task_outputs(model(inputs), problem.task_names)
    assert all(torch.equal(before[t], after[t]) for t in before), "a unit nothing reads changes no output"
    assert drop_unheard(ctx.groups) == 0, "it cascades until none is left to drop"
    # (only BatchNorm entries may go: a unit whose weight rows are already zero)
    assert (describe(model, ctx).nonzero_parameters < nonzero) == (dropped > 0)
    if name == "mlp":
        assert dropped > 0


def test_a_drop_that_would_change_the_outputs_is_undone(zoo, monkeypatch, caplog):
    problem, model, ctx = fresh(zoo, "mlp")
    missed = lambda groups: groups[0].remove(groups[0].alive(), "a coupling the graph missed")  # noqa: E731
    monkeypatch.setattr(pipeline, "drop_unheard", missed)
    with caplog.at_level(logging.WARNING):
        report = apply(model, [("magnitude", 0.1)], ctx)
    assert "still changed the outputs" in caplog.text
    assert report.sparsity == report.steps[-1].sparsity and all(group.alive().sum() > 1 for group in ctx.groups)


def test_user_models_returning_tuples_are_understood(zoo):
    problem, model, ctx = fresh(zoo, "tuple")
    layers = {l.name: l for l in discover(model, problem.val.inputs, problem.task_names)}
    assert {n for n, l in layers.items() if l.is_output} == {"left.2", "right"}
    assert {g.name for g in ctx.groups} == {"body.1", "left.0"}
    report = apply(model, [("activation", 0.5), ("stability", 0.3)], ctx)
    assert report.empty_units > 0
    assert effective(model.right).flatten(1).ne(0).any(1).all()


class LayerNormNet(nn.Module):
    """A LayerNorm between two Linear layers: its units cannot be removed exactly."""

    def __init__(self):
        super().__init__()
        self.fc1, self.norm, self.fc2 = nn.Linear(100, 32), nn.LayerNorm(32), nn.Linear(32, 16)
        self.heads = nn.ModuleDict({"left": nn.Linear(16, 10), "right": nn.Linear(16, 10)})

    def forward(self, x):
        h = F.relu(self.fc2(F.relu(self.norm(self.fc1(x.flatten(1))))))
        return {k: head(h) for k, head in self.heads.items()}


class Detached(nn.Module):
    """The hidden layer's output leaves autograd (through numpy): nothing couples it to the heads."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(100, 32)
        self.heads = nn.ModuleDict({"left": nn.Linear(32, 10), "right": nn.Linear(32, 10)})

    def forward(self, x):
        h = torch.from_numpy(F.relu(self.fc1(x.flatten(1))).detach().numpy())
        return {k: head(h) for k, head in self.heads.items()}


def test_a_model_with_no_removable_unit_refuses_structured_strategies_only(zoo):
    problem, _ = zoo("mlp")
    model = Detached()
    ctx = PruneContext.create(model, problem, calibration_size=64)
    assert ctx.untraceable is None and not ctx.groups
    with pytest.raises(UserError, match=r"structured strategies \['activation'\] find no removable unit"):
        require(model, ctx, ["activation", "magnitude"])
    require(model, ctx, ["magnitude", "taylor"])
    assert apply(model, [("magnitude", 0.3)], ctx).sparsity > 0


def test_a_model_torch_pruning_cannot_trace_keeps_the_unstructured_strategies(zoo, monkeypatch):
    problem, trained = zoo("mlp")
    model = copy.deepcopy(trained)

    def untraceable(*_args):
        raise RuntimeError("unsupported operator aten::weird")

    monkeypatch.setattr("automtl.pruning.context.removable_groups", untraceable)
    ctx = PruneContext.create(model, problem, calibration_size=64)
    assert ctx.untraceable == "RuntimeError: unsupported operator aten::weird"
    with pytest.raises(UserError, match=r"cannot trace this model \(RuntimeError: unsupported operator aten::weird\).*"
                                        r"\['entropy'\] need its dependency graph.*unstructured ones \['global_magnitude', 'magnitude'"):
        require(model, ctx, ["entropy", "magnitude"])
    with pytest.raises(UserError, match="strategy 'entropy' needs the model's dependency graph"):
        apply(model, [("entropy", 0.5)], ctx)
    require(model, ctx, ["magnitude", "random"])
    assert apply(model, [("magnitude", 0.3), ("random", 0.2)], ctx).sparsity > 0


def test_a_model_without_prunable_layers_is_refused_by_name(zoo):
    problem, _ = zoo("mlp")

    class Bilinear(nn.Module):
        def __init__(self):
            super().__init__()
            self.mix = nn.Bilinear(100, 100, 10)

        def forward(self, x):
            x = x.flatten(1)
            return {"left": self.mix(x, x), "right": self.mix(x, x)}

    model = Bilinear()
    ctx = PruneContext.create(model, problem, calibration_size=8)
    with pytest.raises(UserError, match="no Linear/Conv1d/Conv2d layer to prune.*Bilinear"):
        require(model, ctx, ["magnitude"])


class GroupedConvNet(nn.Module):
    """A grouped (not depthwise) convolution: its channels are tied across the groups' slices."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.heads = nn.ModuleDict({"left": nn.Linear(8, 10), "right": nn.Linear(8, 10)})

    def forward(self, x):
        h = F.relu(self.grouped(F.relu(self.conv(x)))).mean((2, 3))
        return {k: head(h) for k, head in self.heads.items()}


def test_a_grouped_convolutions_units_are_channel_positions_in_every_group(zoo, monkeypatch):
    from automtl.pruning.shrink import shrink

    monkeypatch.setattr("automtl.pruning.shrink.CHANNEL_MULTIPLE", 1)  # 8 channels: aligned, none would go
    problem, _ = zoo("mlp")
    torch.manual_seed(0)
    model = GroupedConvNet().eval()
    ctx = PruneContext.create(model, problem, calibration_size=64)
    assert {g.name: g.units for g in ctx.groups} == {"conv": 4, "grouped": 4} and not ctx.refused
    conv = next(g for g in ctx.groups if g.name == "conv")
    assert conv.root_channels([2]) == [2, 6], "channel 2 of each of the two groups"
    x = problem.val.inputs[:32]
    with torch.no_grad():
        model.conv.weight[2] = 0  # one group's channel only: the groups would differ in size
        model.conv.bias[2] = 0
    assert shrink(copy.deepcopy(model), x, problem.task_names).removed == {}
    with torch.no_grad():
        model.conv.weight[6] = 0
        model.conv.bias[6] = 0
        before = model(x)
    report = shrink(model, x, problem.task_names)
    assert report.removed == {"conv": 1} and model.grouped.weight.shape == (8, 3, 3, 3)
    with torch.no_grad():
        after = model(x)
    for task in before:
        torch.testing.assert_close(after[task], before[task])


def test_shrinking_a_model_torch_pruning_cannot_trace_removes_nothing(zoo, monkeypatch):
    from automtl.pruning.shrink import shrink

    problem, trained = zoo("mlp")
    model = copy.deepcopy(trained)
    monkeypatch.setattr("automtl.pruning.shrink.find_groups", lambda *_: (_ for _ in ()).throw(RuntimeError("no")))
    report = shrink(model, problem.val.inputs[:32], problem.task_names)
    assert report.removed == {} and "cannot trace" in report.kept_whole["model"]


def _shrunk(model, problem):
    """A shrunk copy of the (masks baked) ``model`` and its report."""
    from automtl.pruning.shrink import shrink

    shrunk = copy.deepcopy(model).eval()
    make_permanent(shrunk)
    return shrunk, shrink(shrunk, problem.val.inputs[:128], problem.task_names)


@pytest.mark.parametrize("name", sorted(ZOO))
@pytest.mark.parametrize("strategy", STRUCTURED)
def test_every_zoo_model_pruned_by_a_structured_strategy_shrinks_to_the_same_outputs(zoo, name, strategy):
    problem, model, ctx = fresh(zoo, name)
    apply(model, [(strategy, grid(strategy, (0.5,))[0])], ctx)
    empty = sum(int(group.empty().sum()) for group in ctx.groups)
    shrunk, report = _shrunk(model, problem)
    assert not set(report.removed) & set(ctx.refused), "a refused group lost units"
    assert report.removed_units + report.aligned_units >= empty, f"every empty unit goes: {report.kept_whole}"
    assert (sum(p.numel() for p in shrunk.parameters()) < sum(p.numel() for p in model.parameters())) == (
        report.removed_units > 0)
    inputs = problem.test.inputs[:128]
    with torch.no_grad(), in_mode(model, False):
        expected, got = task_outputs(model(inputs), problem.task_names), task_outputs(shrunk(inputs), problem.task_names)
    for task in problem.task_names:
        torch.testing.assert_close(got[task], expected[task], atol=1e-4, rtol=1e-4)


def test_attention_heads_are_units_removed_whole_and_the_module_keeps_its_head_count(zoo, tmp_path):
    from automtl import formats, load_pruned
    from automtl.formats import Exported

    problem, model, ctx = fresh(zoo, "vit_headwise_style")
    heads = next(g for g in ctx.groups if g.name == "blocks.0.attn.qkv")
    assert heads.heads is not None and heads.units == 3
    assert {(m.name, m.role, len(m.index)) for m in heads.members} == {("blocks.0.attn.qkv", "out", 72),
                                                                       ("blocks.0.attn.proj", "in", 24)}
    remove = torch.tensor([False, True, False])
    assert heads.remove(remove, "test") == 1
    qkv = effective(model.blocks[0].attn.qkv).view(3, 3, 8, 24)  # (q/k/v, head, head_dim, in)
    assert qkv[:, 1].eq(0).all() and qkv[:, [0, 2]].ne(0).any(-1).all(), "q, k and v rows of head 1 only"
    assert effective(model.blocks[0].attn.proj)[:, 8:16].eq(0).all()
    inputs = problem.test.inputs[:64]
    with torch.no_grad():
        expected = model.eval()(inputs)
    shrunk, report = _shrunk(model, problem)
    assert report.removed["blocks.0.attn.qkv"] == 1 and shrunk.blocks[0].attn.num_heads == 2
    assert shrunk.blocks[0].attn.qkv.out_features == 48 and shrunk.blocks[0].attn.proj.in_features == 16
    with torch.no_grad():
        got = shrunk(inputs)
    for task in problem.task_names:
        torch.testing.assert_close(got[task], expected[task], atol=1e-5, rtol=1e-5)
    rebuildable = dataclasses.replace(problem, model_factory=lambda _spec: ZOO["vit_headwise_style"][2](problem))
    formats.write("sparse", Exported(shrunk, model, problem, inputs, 64, {"model": {}}), tmp_path)
    restored = load_pruned(tmp_path, rebuildable)
    assert [block.attn.num_heads for block in restored.blocks] == [2, 3]
    with torch.no_grad():
        loaded = restored(inputs)
    for task in problem.task_names:
        assert torch.equal(loaded[task], got[task])


def test_heads_of_an_attention_reshaping_to_its_input_width_are_refused_but_its_mlp_is_pruned(zoo):
    problem, model, ctx = fresh(zoo, "vit_style")  # timm's Attention: reshape(B, N, C)
    assert {g.name for g in ctx.groups} == {"blocks.0.mlp.fc1", "blocks.1.mlp.fc1"}
    for block in ("blocks.0", "blocks.1"):
        assert "reshape(B, N, -1)" in ctx.refused[f"{block}.attn.qkv"], ctx.refused
    assert "LayerNorm" in ctx.refused["blocks.1.mlp.fc2"], "the residual stream runs through LayerNorms"
    assert apply(model, [("activation", 0.5)], ctx).empty_units > 0


def test_torchvisions_multihead_attention_is_left_whole_and_its_mlp_pruned(zoo):
    from tests.fixtures.zoo import EncoderBlock, ViTStyle

    problem, _ = zoo("vit_style")
    torch.manual_seed(0)
    model = ViTStyle(problem, block=EncoderBlock)
    fit(model, problem, TrainConfig(epochs=1, lr=3e-3), seed=0)
    ctx = PruneContext.create(model, problem, calibration_size=128)
    assert {g.name for g in ctx.groups} == {"blocks.0.mlp.0", "blocks.1.mlp.0"} and ctx.refused
    require(model, ctx, ["activation", "magnitude"])
    apply(model, [("activation", 0.5), ("magnitude", 0.3)], ctx)
    shrunk, report = _shrunk(model, problem)
    assert report.removed_units > 0 and set(report.removed) <= {"blocks.0.mlp.0", "blocks.1.mlp.0"}
    inputs = problem.test.inputs[:64]
    with torch.no_grad():
        expected, got = model.eval()(inputs), shrunk(inputs)
    for task in problem.task_names:
        torch.testing.assert_close(got[task], expected[task], atol=1e-4, rtol=1e-4)


def test_channels_behind_a_channel_shuffle_are_refused_and_the_branches_inner_channels_kept(zoo):
    problem, model, ctx = fresh(zoo, "shufflenet_style")
    assert {"stage2.0.branch2.3", "stage2.1.branch2.3"} <= {g.name for g in ctx.groups}
    assert any("channel shuffle" in why for why in ctx.refused.values()), ctx.refused


def test_a_shufflenet_torch_pruning_cannot_trace_refuses_structured_strategies_and_exports_unstructured(zoo):
    from automtl.formats.onnx import check
    from tests.fixtures.zoo import ShuffleNetStyle

    problem, _ = zoo("shufflenet_style")
    torch.manual_seed(0)
    model = ShuffleNetStyle(problem, units=3)  # two shuffles in a row, as in every real ShuffleNetV2 stage
    ctx = PruneContext.create(model, problem, calibration_size=64)
    assert ctx.untraceable and not ctx.groups
    with pytest.raises(UserError, match=r"cannot trace this model.*channel shuffle.*unstructured ones \['global"):
        require(model, ctx, ["activation", "magnitude"])
    require(model, ctx, ["magnitude", "taylor"])
    assert apply(model, [("magnitude", 0.5), ("taylor", 0.3)], ctx).sparsity > 0.3
    shrunk, report = _shrunk(model, problem)
    assert report.removed == {} and "cannot trace" in report.kept_whole["model"]
    assert check(shrunk, problem, Path(tempfile.mkdtemp()) / "model.onnx")["max_diff_vs_scale"] <= 1e-4


def test_a_group_whose_cut_fails_stays_whole_and_the_others_still_shrink(zoo):
    problem, trained = zoo("vit_style")
    model = copy.deepcopy(trained).eval()
    with torch.no_grad():
        model.blocks[0].attn.qkv.weight.view(3, 3, 8, 24)[:, 0] = 0  # head 0 of block 0: every row zero
        model.blocks[0].attn.qkv.bias.view(3, 3, 8)[:, 0] = 0
        model.blocks[1].mlp.fc1.weight[:5] = 0
        model.blocks[1].mlp.fc1.bias[:5] = 0
    shrunk, report = _shrunk(model, problem)
    assert report.removed == {"blocks.1.mlp.fc1": 5}
    assert "removing its units fails (RuntimeError" in report.kept_whole["blocks.0.attn.qkv"]
    assert shrunk.blocks[1].mlp.fc1.out_features == 43 and shrunk.blocks[0].attn.qkv.out_features == 72


def test_a_convolution_keeps_a_multiple_of_eight_channels_and_linear_layers_shrink_fully(small_digits):
    """onnxruntime's CPU convolutions run channel counts that are multiples of 8 much faster: shrink keeps the
    strongest removable channels up to the next multiple (never more than the layer had)."""
    from automtl import ModelSpec
    from automtl.pruning.shrink import CHANNEL_MULTIPLE, shrink

    torch.manual_seed(0)
    problem = small_digits
    model = problem.build_model(ModelSpec("cnn", (40,), (20, 12))).eval()
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    fc = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    with torch.no_grad():
        for layer, silenced in ((convs[0], 11), (convs[1], 1), (fc, 13)):
            layer.weight[:silenced] = 0
            layer.bias[:silenced] = -1.0  # ReLU of a negative constant: silent units
    shrunk = copy.deepcopy(model)
    report = shrink(shrunk, problem.val.inputs[:128], problem.task_names)
    convs_after = [m for m in shrunk.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs_after] == [16, 12]  # 9 left -> 16; 11 left -> all 12
    assert report.aligned[next(n for n, m in model.named_modules() if m is convs[0])] == 7
    assert all(c.out_channels % CHANNEL_MULTIPLE == 0 or c.out_channels == 12 for c in convs_after)
    assert next(m for m in shrunk.modules() if isinstance(m, torch.nn.Linear)).out_features == 40 - 13
    with torch.no_grad():
        inputs = problem.test.inputs[:64]
        for name in problem.task_names:
            torch.testing.assert_close(shrunk(inputs)[name], model(inputs)[name], rtol=1e-4, atol=1e-4)


def test_a_grouped_convolution_keeps_a_multiple_of_eight_channels_across_its_groups(zoo):
    from automtl.pruning.shrink import shrink

    problem, _ = zoo("mlp")
    model = GroupedConvNet().eval()  # "conv": 8 channels in 2 groups of 4 positions
    x = problem.val.inputs[:32]
    with torch.no_grad():
        for channel in (2, 6):  # position 2 in both groups: 6 channels would be left
            model.conv.weight[channel] = 0
            model.conv.bias[channel] = 0
    report = shrink(model, x, problem.task_names)
    assert report.removed == {} and report.aligned == {"conv": 1} and model.conv.out_channels == 8
