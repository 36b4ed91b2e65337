import itertools
import math

import optuna
import pytest

from automtl import config as config_mod
from automtl.errors import UserError
from automtl.space import TrialPlan, encode, lehmer_decode, lehmer_encode, plan_from_params, suggest

TASKS = ["left", "right"]


def make_config(extra=None, **pruning):
    strategies = pruning.pop("strategies", {"magnitude": {"low": 0, "high": 0.3}, "activation": None, "taylor": None})
    return config_mod.validate({"pruning": {"strategies": strategies, **pruning}, **(extra or {})})


def test_lehmer_code_is_a_bijection_on_permutations():
    items = ["a", "b", "c", "d"]
    codes = set()
    for perm in itertools.permutations(items):
        code = lehmer_encode(list(perm), items)
        assert all(0 <= d <= len(items) - 1 - i for i, d in enumerate(code))
        assert lehmer_decode(code, items) == list(perm)
        codes.add(tuple(code))
    assert len(codes) == math.factorial(len(items))


def test_every_ordered_subset_is_reachable_and_orders_never_repeat_a_strategy():
    config = make_config()
    names = list(config.pruning.strategies)
    reached = set()
    for flags in itertools.product([True, False], repeat=3):
        for code in itertools.product(range(3), range(2)):
            params = {f"use.{n}": f for n, f in zip(names, flags)} | {"order.0": code[0], "order.1": code[1]}
            params |= {f"threshold.{n}": 0.1 for n in names} | {f"loss.u.{t}": 0.5 for t in TASKS}
            order = plan_from_params(params, config, TASKS).order
            assert len(order) == len(set(order)) >= 1
            reached.add(tuple(order))
    expected = {p for k in (1, 2, 3) for p in itertools.permutations(names, k)}
    assert reached == expected


@pytest.mark.parametrize("sampler", [optuna.samplers.RandomSampler, optuna.samplers.TPESampler, optuna.samplers.NSGAIISampler])
def test_sampled_plans_round_trip_through_encode(sampler):
    config = make_config(extra={"loss_weights": {"method": ["simplex", "dwa"]}, "distillation": {"weight": {"low": 0, "high": 0.5}}})
    study = optuna.create_study(directions=["maximize"] * 3, sampler=sampler(seed=1))
    for _ in range(25):
        trial = study.ask()
        plan = suggest(trial, config, TASKS)
        study.tell(trial, [0.5, 0.5, 0.5])
        # Thresholds only for included strategies.
        assert {k.split(".", 1)[1] for k in trial.params if k.startswith("threshold.")} <= set(plan.order)
        again = plan_from_params(encode(plan, config, TASKS), config, TASKS)
        assert again.order == plan.order and again.loss_method == plan.loss_method
        assert again.thresholds == pytest.approx(plan.thresholds)
        assert again.distillation == pytest.approx(plan.distillation)
        if plan.loss_weights:
            assert again.loss_weights == pytest.approx(plan.loss_weights)


def test_a_listed_schedule_is_searched_per_plan_and_queued_plans_take_the_first():
    config = make_config(extra={"fine_tune": {"epochs": 2, "schedule": ["constant", "cosine"]}})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    chosen = set()
    for _ in range(12):
        trial = study.ask()
        plan = suggest(trial, config, TASKS)
        study.tell(trial, 0.5)
        chosen.add(plan.schedule)
        assert plan_from_params(encode(plan, config, TASKS), config, TASKS).schedule == plan.schedule
        assert config.fine_tune.recipe(plan.lr, plan.schedule).schedule == plan.schedule
    assert chosen == {"constant", "cosine"}
    queued = TrialPlan(["taylor"], {"taylor": 0.4}, "simplex", {"left": 0.5, "right": 0.5})
    assert encode(queued, config, TASKS)["fine_tune.schedule"] == "constant"
    fixed = {"use.taylor": True, "use.magnitude": False, "use.activation": False, "order.0": 0, "order.1": 0,
             "threshold.taylor": 0.1, "loss.u.left": 0.5, "loss.u.right": 0.5}
    assert suggest(optuna.trial.FixedTrial(fixed), make_config(), TASKS).schedule is None, "one schedule: not searched"


@pytest.mark.parametrize("schedule, plan_schedule, wrong", [
    (["cosine", "cosine"], None, "distinct names"),
    (["constant", "cosine"], "onecycle", "enqueue.0.schedule onecycle needs fine_tune.schedule to be a list"),
    ("cosine", "cosine", "enqueue.0.schedule cosine needs fine_tune.schedule to be a list"),
    (["constant", "triangle"], None, "triangle"),
])
def test_a_searched_schedule_names_what_is_wrong(schedule, plan_schedule, wrong):
    plan = {"order": ["taylor"], "thresholds": {"taylor": 0.4}, "loss_weights": "equal", "schedule": plan_schedule}
    with pytest.raises(UserError, match=wrong):
        make_config(extra={"fine_tune": {"epochs": 2, "schedule": schedule}, "enqueue": [plan]})


def test_encoding_a_hand_written_plan_lets_users_enqueue_it():
    config = make_config()
    plan = TrialPlan(["taylor", "magnitude"], {"taylor": 0.4, "magnitude": 0.1}, "simplex", {"left": 0.8, "right": 0.2})
    study = optuna.create_study(directions=["maximize"])
    study.enqueue_trial(encode(plan, config, TASKS))
    decoded = suggest(study.ask(), config, TASKS)
    assert decoded.order == plan.order and decoded.loss_weights == pytest.approx(plan.loss_weights)


def test_simplex_weights_are_positive_and_sum_to_one():
    config = make_config()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(50):
        weights = suggest(study.ask(), config, TASKS).loss_weights
        assert sum(weights.values()) == pytest.approx(1.0)
        assert all(0 <= w <= 1 for w in weights.values())


def test_fixed_weights_and_fixed_order():
    config = make_config(order="fixed", extra={"loss_weights": {"method": "fixed", "weights": {"left": 3, "right": 1}}})
    trial = optuna.create_study().ask()
    plan = suggest(trial, config, TASKS)
    assert plan.order == ["magnitude", "activation", "taylor"]
    assert plan.loss_weights == {"left": 0.75, "right": 0.25}
    assert not any(k.startswith(("use.", "order.", "loss.")) for k in trial.params)


def test_min_and_max_strategies_bound_the_pipeline_length():
    config = make_config(min_strategies=2, max_strategies=2)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    lengths = {len(suggest(study.ask(), config, TASKS).order) for _ in range(40)}
    assert lengths == {2}
