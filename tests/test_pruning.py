import copy
import logging
import math

import pytest
import torch
from torch import nn

from automtl import ModelSpec, TrainConfig, UserError, get_problem
from automtl.pruning import STRATEGIES, PruneContext, apply
from automtl.pruning.layers import effective, discover
from automtl.train import fit

ARCHS = ["mlp", "cnn"]


@pytest.fixture(scope="module")
def trained():
    """A briefly trained MLP and CNN on a small multidigits problem."""
    problem = get_problem("multidigits", train_pairs=1500, eval_pairs=300, seed=0)
    models = {}
    for arch, spec in (("mlp", ModelSpec("mlp", (48, 24))), ("cnn", ModelSpec("cnn", (24,), (8, 12)))):
        torch.manual_seed(0)
        model = problem.build_model(spec)
        fit(model, problem, TrainConfig(epochs=3), seed=0)
        models[arch] = model
    return problem, models


def fresh(trained, arch, **ctx_options):
    problem, models = trained
    model = copy.deepcopy(models[arch])
    return model, PruneContext.create(model, problem, calibration_size=256, **ctx_options)


def masks(model):
    return {name: buf.clone() for name, buf in model.named_buffers() if name.endswith("_mask")}


def grid(strategy):
    spec = STRATEGIES[strategy].threshold
    return [spec.low + (spec.high - spec.low) * f for f in (0.0, 0.05, 0.15, 0.3, 0.6, 1.0)]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_higher_threshold_never_gives_lower_sparsity(trained, arch, strategy):
    sparsities = []
    for value in grid(strategy):
        model, ctx = fresh(trained, arch)
        sparsities.append(apply(model, [(strategy, value)], ctx).sparsity)
    assert all(a <= b for a, b in zip(sparsities, sparsities[1:])), sparsities
    assert sparsities[-1] > sparsities[0], f"{strategy} removed nothing even at its maximum: {sparsities}"


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_removed_weights_stay_exactly_zero_through_fine_tuning(trained, arch, strategy):
    problem, _ = trained
    model, ctx = fresh(trained, arch)
    value = grid(strategy)[3]
    apply(model, [(strategy, value)], ctx)
    removed = {
        layer.name: effective(layer.module).eq(0) for layer in ctx.layers
    }
    assert any(r.any() for r in removed.values())
    fit(model, problem, TrainConfig(epochs=1, lr=1e-2), seed=1)
    for layer in ctx.layers:
        assert torch.all(effective(layer.module)[removed[layer.name]] == 0), layer.name


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(
    "first, second",
    [(("magnitude", 0.15), ("random", 0.4)), (("activation", 0.3), ("taylor", 0.5)), (("entropy", 0.5), ("stability", 0.3))],
)
def test_opposite_orders_give_different_masks(trained, arch, first, second):
    a, ctx_a = fresh(trained, arch)
    b, ctx_b = fresh(trained, arch)
    apply(a, [first, second], ctx_a)
    apply(b, [second, first], ctx_b)
    ma, mb = masks(a), masks(b)
    assert ma.keys() != mb.keys() or any(not torch.equal(ma[k], mb[k]) for k in ma)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_no_strategy_empties_a_layer(trained, arch, strategy, caplog):
    problem, _ = trained
    model, ctx = fresh(trained, arch)
    high = STRATEGIES[strategy].threshold.high
    with caplog.at_level(logging.WARNING):
        apply(model, [(strategy, high), (strategy, high)], ctx)  # twice: the second sees a nearly empty model
    for layer in ctx.weight_layers:
        assert effective(layer.module).ne(0).any(), f"{strategy} emptied {layer.name}"
    for layer in ctx.hidden_layers:
        weight_rows = effective(layer.module).flatten(1).ne(0).any(1)
        assert weight_rows.any() or effective(layer.module, "bias").ne(0).any(), layer.name
    outputs = model(problem.val.inputs[:8])
    assert all(torch.isfinite(o).all() for o in outputs.values())


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
@pytest.mark.parametrize("value", [math.nan, -0.1, 100.0, math.inf, "0.5", True])
def test_bad_thresholds_are_refused_clearly(trained, strategy, value):
    model, ctx = fresh(trained, "mlp")
    before = masks(model)
    spec = STRATEGIES[strategy].threshold
    with pytest.raises(UserError, match=f"strategy '{strategy}': threshold {spec.symbol} must be"):
        apply(model, [("magnitude", 0.1), (strategy, value)], ctx)
    assert masks(model) == before == {}, "nothing may be pruned when any step is invalid"


def test_unknown_strategy_lists_the_allowed_ones(trained):
    model, ctx = fresh(trained, "mlp")
    with pytest.raises(UserError, match="'prune_all' is unknown; allowed: \\['activation', 'clustering'"):
        apply(model, [("prune_all", 0.1)], ctx)


@pytest.mark.parametrize("strategy", sorted(s for s in STRATEGIES if STRATEGIES[s].structured))
def test_structured_strategies_never_remove_classes(trained, strategy):
    model, ctx = fresh(trained, "mlp", heads="include")
    heads = {name: effective(layer.module).clone() for name, layer in ((l.name, l) for l in ctx.layers if l.is_output)}
    apply(model, [(strategy, STRATEGIES[strategy].threshold.high)], ctx)
    for layer in ctx.layers:
        if layer.is_output:
            assert torch.equal(effective(layer.module), heads[layer.name])


def test_heads_are_pruned_only_when_included(trained):
    excluded, ctx_ex = fresh(trained, "mlp")
    included, ctx_in = fresh(trained, "mlp", heads="include")
    apply(excluded, [("magnitude", 0.3)], ctx_ex)
    apply(included, [("magnitude", 0.3)], ctx_in)
    assert {l.name for l in ctx_ex.layers if l.is_output} == {"heads.left", "heads.right"}
    assert effective(excluded.heads["left"]).ne(0).all()
    assert effective(included.heads["left"]).eq(0).any()


def test_task_aggregation_rule_changes_what_taylor_keeps(trained):
    chosen = {}
    for rule in ("max", "mean", "min"):
        model, ctx = fresh(trained, "mlp", aggregate=rule)
        apply(model, [("taylor", 0.5)], ctx)
        chosen[rule] = masks(model)
    assert any(not torch.equal(chosen["max"][k], chosen["min"][k]) for k in chosen["max"])
    _, ctx = fresh(trained, "mlp", aggregate="min")
    a, b = torch.tensor([0.2, 0.9]), torch.tensor([0.5, 0.1])
    assert torch.equal(ctx.combine([a, b]), torch.tensor([0.2, 0.1]))
    with pytest.raises(UserError, match="aggregate 'median' is unknown"):
        fresh(trained, "mlp", aggregate="median")


def test_pipeline_counts_sparsity_compression_and_empty_units(trained):
    model, ctx = fresh(trained, "mlp")
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
    assert report.steps[0].sparsity <= report.steps[1].sparsity == report.sparsity


class TupleNet(nn.Module):
    """A user model: per-task heads returned as a tuple, a hidden layer inside one head."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(100, 32), nn.ReLU())
        self.left = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 10))
        self.right = nn.Linear(32, 10)

    def forward(self, x):
        h = self.body(x)
        return self.left(h), self.right(h)


def test_user_models_returning_tuples_are_understood(trained):
    problem, _ = trained
    model = TupleNet()
    layers = {l.name: l for l in discover(model, problem.val.inputs, problem.task_names)}
    assert {n for n, l in layers.items() if l.is_output} == {"left.2", "right"}
    assert isinstance(layers["left.0"].activation, nn.ReLU)
    ctx = PruneContext.create(model, problem, calibration_size=128)
    report = apply(model, [("activation", 0.5), ("stability", 0.3)], ctx)
    assert report.empty_units > 0
    assert effective(model.right).ne(0).all()
