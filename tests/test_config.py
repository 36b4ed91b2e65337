from pathlib import Path

import pytest

from automtl import UserError
from automtl import config as config_mod

BASE = "pruning:\n  strategies:\n    magnitude: {low: 0, high: 0.3}\n"


def load_text(tmp_path, text, overrides=()):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return config_mod.load(path, list(overrides))


def test_defaults_and_name_from_file(tmp_path):
    config = load_text(tmp_path, BASE)
    assert config.name == "space" and config.sampler.name == "tpe" and config.objectives == ["sparsity", "metrics"]
    assert config.pruning.strategies["magnitude"].high == 0.3


def test_yaml_keeps_off_as_a_key(tmp_path):
    config = load_text(tmp_path, BASE + "problem: {name: multidigits, options: {off: 3}}\n")
    assert config.problem.options == {"off": 3}


def test_set_overrides_any_field(tmp_path):
    config = load_text(tmp_path, BASE, ["fine_tune.epochs=7", "sampler.name=nsga2", "pruning.strategies.taylor=null"])
    assert config.fine_tune.epochs == 7 and config.sampler.name == "nsga2"
    assert set(config.pruning.strategies) == {"magnitude", "taylor"}


@pytest.mark.parametrize(
    "text, field, allowed",
    [
        ("pruning: {strategies: {magnitud: null}}", "pruning.strategies", "allowed: ['activation'"),
        ("pruning: {strategies: {magnitude: {low: 0.5, high: 0.1}}}", "pruning.strategies.magnitude", "empty range"),
        ("pruning: {strategies: {magnitude: {low: 0, high: 0.3, log: true}}}", "pruning.strategies.magnitude", "low > 0"),
        ("pruning: {strategies: {magnitude: {low: 0, high: 2}}}", "pruning.strategies", "within [0, 1]"),
        ("pruning: {strategies: {}}", "pruning.strategies", "at least one strategy"),
        (BASE + "sampler: {name: cmaes}", "sampler.name", "'tpe', 'nsga2', 'nsga3', 'gp' or 'random'"),
        (BASE + "trials: 0", "trials", "greater than 0"),
        (BASE + "trials: 1e400", "trials", "trials"),
        (BASE + "workers: many", "workers", "valid integer"),
        (BASE + "colour: red", "colour", "is not a known field"),
        (BASE + "loss_weights: {method: fixed}", "loss_weights", "needs 'weights'"),
        (BASE + "loss_weights: {method: [simplex, magic]}", "loss_weights.method", "'uncertainty'"),
        (BASE + "distillation: {weight: 1.5}", "distillation.weight", "within [0, 1]"),
        (BASE + "objectives: [accuracy]", "objectives", "must contain 'sparsity'"),
        (BASE + "model: {arch: transformer}", "model.arch", "allowed: ['cnn', 'mlp', 'resnet']"),
        (BASE + "model: {arch: resnet, depth: 0}", "model.depth", "greater than 0"),
        (BASE + "pruning: {strategies: {magnitude: null}, min_strategies: 3}", "pruning", "exceeds"),
        (BASE + "fine_tune: {epochs: 3}\nrungs: {min_epochs: 3}", "", "must be below fine_tune.epochs 3"),
        (BASE + "rungs: {reduction: 1}", "rungs.reduction", "greater than or equal to 2"),
        (BASE + "fine_tune: {epochs: 9, gradual: {epochs: 2}}\nrungs: {min_epochs: 1}", "",
         "gradual.epochs 2 must be at most rungs.min_epochs (1)"),
        (BASE + "fine_tune: {epochs: 3, schedule: linear}", "fine_tune.schedule", "'cosine', 'step' or 'onecycle'"),
        (BASE + "focus: {min_relative: 1.5}", "focus.min_relative", "less than or equal to 1"),
        (BASE + "focus: {min_relative: 0.9, ceiling: true}", "", "give seed_front"),
        (BASE + "focus: {min_relative: 0.9, climb: true}", "", "climb goes on from the sparsest seed_front level"),
        (BASE + "seed_front: [0.9]", "", "needs the 'global_magnitude' strategy"),
        ("pruning: {strategies: {global_magnitude: null, taylor: null}, order: fixed}\nseed_front: [0.9]", "",
         "use 'global_magnitude' alone"),
        ("pruning: {strategies: {global_magnitude: {low: 0, high: 0.8}}}\nseed_front: [0.9]", "", "lie outside"),
        ("- just\n- a list", "", "must be a YAML mapping"),
    ],
)
def test_invalid_fields_are_named_with_what_is_allowed(tmp_path, text, field, allowed):
    with pytest.raises(UserError) as info:
        load_text(tmp_path, text)
    message = str(info.value)
    assert field in message and allowed in message, message


SEARCH_SPACES = sorted((Path(__file__).parents[1] / "search_spaces").glob("*.yaml"))


@pytest.mark.parametrize("path", SEARCH_SPACES, ids=lambda p: p.name)
def test_shipped_search_spaces_are_valid(path):
    config = config_mod.load(path)
    assert config.name == path.stem


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        config_mod.load(tmp_path / "nope.yaml")
    with pytest.raises(UserError, match="not valid YAML"):
        load_text(tmp_path, "pruning: [unclosed")
    with pytest.raises(UserError, match="--set expects KEY=VALUE"):
        load_text(tmp_path, BASE, ["fine_tune.epochs"])


def test_task_names_are_checked_against_the_problem(tmp_path):
    config = load_text(tmp_path, BASE + "loss_weights: {method: fixed, weights: {left: 1, middle: 1}}")
    with pytest.raises(UserError, match="names tasks \\['left', 'middle'\\].*has tasks \\['left', 'right'\\]"):
        config.check(["left", "right"])


@pytest.mark.parametrize(
    "plan, message",
    [
        ("{order: [taylor], thresholds: {taylor: 0.1}, loss_weights: {left: 1, right: 1}}", "distinct strategies from ['magnitude']"),
        ("{order: [magnitude], thresholds: {magnitude: 0.9}, loss_weights: {left: 1, right: 1}}", "outside its range [0.0, 0.3]"),
        ("{order: [magnitude], thresholds: {}, loss_weights: {left: 1, right: 1}}", "one value per strategy"),
        ("{order: [magnitude], thresholds: {magnitude: 0.1}}", "loss_weights are needed"),
    ],
)
def test_enqueued_plans_must_fit_the_space(tmp_path, plan, message):
    with pytest.raises(UserError, match=message.replace("[", "\\[").replace("]", "\\]")):
        load_text(tmp_path, BASE + f"enqueue:\n  - {plan}\n")
