"""Multi-fidelity rungs, gradual pruning, the focus region and the seeded front."""

import math

import pytest
import torch
from optuna.trial import TrialState

from automtl.pruning import apply
from automtl.pruning.gradual import GradualMasks, cubic_share
from automtl.rundir import RunDir, weights_path
import numpy as np

from automtl.climb import next_level
from automtl.promotion import contributions, ranking
from automtl.rungs import goes_on
from automtl.train import TrainConfig, batches_per_epoch, fit
from tests.test_pruning import fresh, masks
from tests.test_search import FAST, SMOKE, cli, kill_mid_search

MAX, MIN = "maximize", "minimize"
# Smoke search with rungs at 1 and 2 of 4 epochs (halving), gradual pruning over the first epoch, on the
# task "left" alone (two objectives).
RUNGS = ["--set", "fine_tune.epochs=4", "--set", "rungs={min_epochs: 1, reduction: 2}",
         "--set", "fine_tune.gradual={epochs: 1, steps: 4}", "--set", "fine_tune.schedule=cosine",
         "--set", "problem.options.tasks=[left]"]
# Taylor importance at 0.9 leads at every rung; random removal at 0.8 (less sparse, less accurate) is dominated
# there. Sampled plans alone may all lie on one front (sparsity against one task) and none stop.
LEADER = "{order: [taylor], thresholds: {taylor: 0.9}, loss_weights: {left: 1}}"
DOMINATED = "{order: [random], thresholds: {random: 0.8}, loss_weights: {left: 1}}"


def leader_then_dominated(copies: int) -> list[str]:
    """Arguments that enqueue LEADER and then ``copies`` of DOMINATED (after any seeded front)."""
    return ["--set", f"enqueue=[{', '.join([LEADER] + [DOMINATED] * copies)}]"]


def test_a_dominated_plan_is_not_promoted():
    judged = {0: [0.5, 0.90, 0.90], 1: [0.6, 0.91, 0.92], 2: [0.4, 0.80, 0.85]}
    assert not goes_on(0, judged, [MAX, MAX, MAX], reduction=3), "0 is dominated by 1"
    assert goes_on(1, judged, [MAX, MAX, MAX], reduction=3)
    assert not goes_on(2, judged, [MAX, MAX, MAX], reduction=3)


def test_hypervolume_promotion_never_promotes_a_dominated_plan():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(2, 12))
        points = rng.random((n, 3)).round(1)  # rounding makes ties and duplicates
        judged = {i: list(p) for i, p in enumerate(points)}
        for i, p in enumerate(points):
            dominated = any((q >= p).all() and (q > p).any() for q in points)
            if dominated:
                assert not goes_on(i, judged, [MAX, MAX, MAX], reduction=3, promote="hypervolume")


def test_hypervolume_promotion_keeps_the_plans_that_widen_the_front_most():
    # Five non-dominated plans; the cut is ceil(5 / 3) = 2: the two ends' shares are the largest.
    judged = {0: [0.1, 0.99], 1: [0.50, 0.95], 2: [0.52, 0.94], 3: [0.54, 0.93], 4: [0.99, 0.1]}
    shares = contributions(np.array(list(judged.values())))
    assert (shares > 0).all()
    going = [n for n in judged if goes_on(n, judged, [MAX, MAX], reduction=3, promote="hypervolume")]
    assert going == sorted(np.argsort(-shares)[:2].tolist())
    assert len(going) == 2 and all(goes_on(n, judged, [MAX, MAX], reduction=3) for n in judged), \
        "rank promotion lets the whole front on"
    # a minimised objective counts by its direction
    flipped = {n: [v[0], -v[1]] for n, v in judged.items()}
    assert going == [n for n in flipped if goes_on(n, flipped, [MAX, MIN], reduction=3, promote="hypervolume")]


def test_the_first_plan_at_a_rung_goes_on_under_either_promotion():
    for promote in ("rank", "hypervolume"):
        assert goes_on(7, {7: [0.0, 0.0]}, [MAX, MAX], reduction=3, promote=promote)


def test_the_whole_front_goes_on_and_dominated_plans_fill_the_cut_by_crowding():
    assert goes_on(7, {7: [0.1, 0.1]}, [MAX, MAX], reduction=3)
    front = {n: [n / 10, 1 - n / 10] for n in range(3)}
    behind = {n: [n / 10 - 0.5, 0.5 - n / 10] for n in range(3, 9)}  # a second front, each point dominated
    judged = front | behind
    kept = [n for n in judged if goes_on(n, judged, [MAX, MAX], reduction=2)]
    assert kept[:3] == [0, 1, 2] and len(kept) == 5, "3 non-dominated + 2 more to reach ceil(9 / 2)"
    assert {3, 8} <= set(kept), "the second front's ends, by crowding"


def test_minimised_objectives_are_ranked_by_their_direction():
    judged = {0: [0.5, 0.02], 1: [0.5, 0.30]}  # sparsity (max), mse (min)
    assert goes_on(0, judged, [MAX, MIN], reduction=2)
    assert not goes_on(1, judged, [MAX, MIN], reduction=2)
    assert ranking(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.1, 0.1]]).numpy())[-1] == 3


@pytest.mark.parametrize("name", ["mlp", "cnn1d", "resnet", "user_resnet", "gelu_mlp"])
@pytest.mark.parametrize("steps", [[("magnitude", 0.3), ("activation", 0.3)], [("global_magnitude", 0.8)]])
def test_gradual_pruning_ends_exactly_at_the_plans_masks(zoo, name, steps):
    problem, model, ctx = fresh(zoo, name)
    planned = apply(model, steps, ctx)
    final = masks(model)
    config = TrainConfig(epochs=2, batch_size=64, schedule="cosine")
    span = batches_per_epoch(problem, config)
    closing = GradualMasks(model, steps=5, span=span)
    assert all(m.eq(1).all() for m in masks(model).values()), "masks reopen until the schedule closes them"
    shares = []

    def watch(step):
        closing(step)
        if step in closing.schedule:
            removed = sum(int(m.eq(0).sum()) for m in masks(model).values())
            shares.append(removed / sum(int(m.eq(0).sum()) for m in final.values()))

    fit(model, problem, config, seed=0, before_step=watch)
    after = masks(model)
    assert all(torch.equal(after[k], final[k]) for k in final), "the last step restores the plan's masks exactly"
    assert apply(model, [], ctx).sparsity == pytest.approx(planned.sparsity, abs=0)
    assert shares == sorted(shares) and shares[-1] == 1.0
    assert shares[0] == pytest.approx(cubic_share(1, 5), abs=0.02), "the cubic schedule removes most early"


def test_global_magnitude_removes_exactly_its_share_across_layers(zoo):
    problem, model, ctx = fresh(zoo, "mlp")
    report = apply(model, [("global_magnitude", 0.9)], ctx)
    weights = sum(layer.module.weight.numel() for layer in ctx.weight_layers)
    removed = sum(int(layer.module.weight_mask.eq(0).sum()) for layer in ctx.weight_layers)
    assert removed == math.floor(0.9 * weights)
    per_layer = {layer.name: float(layer.module.weight_mask.eq(0).float().mean()) for layer in ctx.weight_layers}
    assert max(per_layer.values()) - min(per_layer.values()) > 0.05, "ranked globally, not per layer"
    assert report.sparsity > 0.85


def _study(run_dir):
    return RunDir(run_dir).load_study()


def test_rungs_with_two_workers_spend_the_budget_exactly_and_only_full_fidelity_forms_the_front(tmp_path):
    run_dir = tmp_path / "rungs"
    cli("search", SMOKE, "--trials", 16, "--workers", 2, "--run-dir", run_dir, "--json", *FAST, *RUNGS,
        "--set", "seed_front=[0.5, 0.9]", "--set", "pruning.strategies.global_magnitude=null",
        "--set", "focus={min_relative: 0.8}", *leader_then_dominated(4))
    study = _study(run_dir)
    states = [t.state for t in study.trials]
    assert len(states) == 16 and set(states) <= {TrialState.COMPLETE, TrialState.PRUNED}
    assert states.count(TrialState.PRUNED) >= 3, "halving at two rungs stops the dominated plans"
    for t in study.trials:
        rungs = t.user_attrs["rungs"]
        if t.state == TrialState.COMPLETE:
            assert set(rungs) == {"1", "2"} and t.user_attrs["sparsity"] == pytest.approx(rungs["1"][0])
        else:
            assert str(t.user_attrs["stopped_at"]) in rungs and t.values is None
            assert t.user_attrs["compute_seconds"] > 0, "a stopped trial's compute counts in status"
        assert set(t.constraints) == {"focus.left"}
    assert [t.user_attrs["order"] for t in study.trials[:2]] == [["global_magnitude"]] * 2, "seeded plans first"
    assert study.trials[1].user_attrs["thresholds"]["global_magnitude"] == pytest.approx(0.9)
    assert set(study.user_attrs["focus"]) == {"left"}
    status = cli("status", run_dir).stdout
    assert "stopped_early" in status and "in focus" in status and "hypervolume in focus" in status


def _finished(run_dir):
    if not RunDir(run_dir).exists():  # not created yet (the journal can appear before the config)
        return {}
    return {t.number: (t.state, t.values, t.user_attrs.get("stopped_at"))
            for t in _study(run_dir).get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))}


def test_a_kill_mid_rung_then_resume_loses_and_reruns_nothing(tmp_path):
    run_dir = tmp_path / "killed"
    kill_mid_search(["search", SMOKE, "--trials", 24, "--workers", 2, "--run-dir", run_dir, "--json", *FAST, *RUNGS],
                    run_dir, _finished, 5)
    before = _finished(run_dir)
    assert 5 <= len(before) < 24, f"the kill must land mid-search: {len(before)} finished"

    cli("search", SMOKE, "--trials", 24, "--run-dir", run_dir, "--resume", "--json", *FAST, *RUNGS)
    after = _finished(run_dir)
    assert all(after[n] == v for n, v in before.items()), "a finished or stopped trial was lost or re-run"
    assert len(after) == 24, "interrupted trials are re-spent, the budget is exact"
    interrupted = [t for t in _study(run_dir).trials if t.state == TrialState.FAIL]
    assert all(t.user_attrs["fail_reason"] == "interrupted" for t in interrupted)


@pytest.mark.parametrize("sampler", ["nsga2", "gp", "random"])
def test_every_sampler_runs_with_rungs_and_focus(tmp_path, sampler):
    run_dir = tmp_path / sampler
    cli("search", SMOKE, "--trials", 8, "--run-dir", run_dir, "--json", *FAST, *RUNGS, "--set", f"sampler.name={sampler}",
        "--set", "sampler.population_size=4", "--set", "focus={min_relative: 0.9}", "--set", "tracking.enabled=false")
    states = {t.state for t in _study(run_dir).trials}
    assert len(_study(run_dir).trials) == 8 and states <= {TrialState.COMPLETE, TrialState.PRUNED}


def test_stopped_trials_reach_mlflow_with_their_rungs(tmp_path):
    from tests.test_tracking import cli as tracked_cli, study_runs

    tracked_cli(tmp_path, "search", SMOKE, "--trials", 8, "--workers", 2, "--run-dir", "runs/smoke", "--json",
                *FAST, *RUNGS)
    c, _, children = study_runs(tmp_path)
    study = _study(tmp_path / "runs" / "smoke")
    assert sorted(children) == list(range(8))
    for t in study.trials:
        run = children[t.number]
        history = {m.step for m in c.get_metric_history(run.info.run_id, "rung.accuracy.left")}
        if t.state == TrialState.PRUNED:
            assert run.info.status == "KILLED" and run.data.tags["state"] == "pruned"
            assert int(run.data.tags["stopped_at"]) == max(history) and "accuracy.left" not in run.data.metrics
        else:
            assert run.info.status == "FINISHED" and history == {1, 2} and "accuracy.left" in run.data.metrics


def test_the_focus_hypervolume_counts_only_what_meets_the_floors():
    from automtl.focus import bounded_by, floors
    from automtl.objectives import Objective
    from automtl.pareto import hypervolume
    from optuna.trial import create_trial

    declared = [Objective("sparsity", MAX, 1.0, 0.0), Objective("accuracy.left", MAX, 1.0, 0.0, task="left"),
                Objective("mse.ink", MIN, 0.0, 1.0, task="ink")]
    floor = floors(0.8, declared, {"left": 0.9, "ink": 0.1})
    assert floor == {"left": 0.72, "ink": 0.125}
    inside = create_trial(values=[0.9, 0.81, 0.05])
    outside = create_trial(values=[0.99, 0.70, 0.05])  # below the accuracy floor
    focused = bounded_by(floor, declared)
    assert hypervolume([outside], focused) == 0.0 < hypervolume([outside], declared)
    assert hypervolume([inside], focused) == pytest.approx(0.9 * (0.81 - 0.72) / 0.28 * (0.125 - 0.05) / 0.125)


def test_the_front_keeps_complete_trials_outside_the_focus_region():
    import optuna

    from automtl import pareto
    from automtl.objectives import Objective, to_attrs

    study = optuna.create_study(directions=["maximize", "maximize"])
    declared = [Objective("sparsity", MAX, 1.0, 0.0), Objective("accuracy.left", MAX, 1.0, 0.0, task="left")]
    study.set_user_attr("objectives", [o.name for o in declared])
    study.set_user_attr("objective_specs", to_attrs(declared))
    for values, violation in [([0.5, 0.9], -0.1), ([0.99, 0.3], 0.4), ([0.4, 0.85], -0.05)]:
        trial = study.ask()
        trial.set_constraint("focus.left", violation)
        study.tell(trial, values)
    assert [t.number for t in study.best_trials] == [0], "Optuna's own front drops the infeasible trial"
    assert [t.number for t in pareto.front(study)] == [0, 1], "ours keeps every non-dominated complete trial"


def test_gradual_pruning_leaves_other_mask_buffers_alone(zoo):
    problem, model, ctx = fresh(zoo, "mlp")
    apply(model, [("global_magnitude", 0.5)], ctx)
    model.register_buffer("attn_mask", torch.zeros(3))
    GradualMasks(model, steps=2, span=4).close(1.0)
    assert torch.equal(model.attn_mask, torch.zeros(3))


# Global magnitude alone at 0.5 keeps the floor; at 0.998 it cannot (about 30 weights of the MLP left).
CEILING = ["--set", "problem.options.tasks=[left]", "--set", "pruning.strategies.global_magnitude=null",
           "--set", "seed_front=[0.5, 0.998]", "--set", "focus={min_relative: 0.9, ceiling: true}",
           "--set", "enqueue=[{order: [global_magnitude], thresholds: {global_magnitude: 0.999}, "
                    "loss_weights: {left: 1}}, {order: [global_magnitude], thresholds: {global_magnitude: 0.3}, "
                    "loss_weights: {left: 1}}]"]


def test_the_ceiling_stops_only_plans_pruned_past_a_seed_that_missed_the_floor(tmp_path):
    run_dir = tmp_path / "ceiling"
    cli("search", SMOKE, "--trials", 4, "--run-dir", run_dir, "--json", *FAST, *CEILING)
    study = _study(run_dir)
    kept, missed, past, below = study.trials
    floor = study.user_attrs["focus"]["left"]
    assert kept.state == missed.state == TrialState.COMPLETE
    assert kept.user_attrs["metrics"]["left"] >= floor > missed.user_attrs["metrics"]["left"], "the premise"
    assert past.state == TrialState.PRUNED and past.values is None
    assert past.user_attrs["stopped_at"] == 0 and past.user_attrs["ceiling"] == missed.number
    assert past.constraints == missed.constraints and past.constraints["focus.left"] > 0, "it is taken to miss as much"
    assert "fine_tune_seconds" not in past.user_attrs and not (run_dir / weights_path(past.number)).exists()
    assert below.state == TrialState.COMPLETE, "a plan below the ceiling runs"
    assert "ceiling" not in below.user_attrs
    assert f"not fine-tuned, pruned past the focus ceiling: trials {past.number}" in cli("status", run_dir).stdout


def test_without_a_ceiling_the_same_plan_is_fine_tuned(tmp_path):
    run_dir = tmp_path / "no-ceiling"
    cli("search", SMOKE, "--trials", 3, "--run-dir", run_dir, "--json", *FAST, *CEILING,
        "--set", "focus={min_relative: 0.9}")
    assert [t.state for t in _study(run_dir).trials[:3]] == [TrialState.COMPLETE] * 3


def test_only_queued_plans_are_held_to_the_ceiling():
    from types import SimpleNamespace

    import optuna

    from automtl.ceiling import Ceiling

    study = optuna.create_study()
    study.enqueue_trial({"x": 1.0})
    queued, sampled = study.ask(), study.ask()
    config = SimpleNamespace(focus=SimpleNamespace(ceiling=True))
    assert Ceiling.of(study, queued.number, config) is not None
    assert Ceiling.of(study, sampled.number, config) is None, "the samplers stay free"
    assert Ceiling.of(study, queued.number, SimpleNamespace(focus=SimpleNamespace(ceiling=False))) is None


# Global magnitude alone keeps a floor of half the dense accuracy at 0.5 and 0.9 of the MLP's weights.
CLIMB = ["--set", "problem.options.tasks=[left]", "--set", "pruning.strategies.global_magnitude=null",
         "--set", "seed_front=[0.5, 0.9]", "--set", "focus={min_relative: 0.5, climb: true}"]


def test_the_seeded_front_climbs_while_its_sparsest_level_keeps_the_floors(tmp_path):
    run_dir = tmp_path / "climb"
    cli("search", SMOKE, "--trials", 3, "--run-dir", run_dir, "--json", *FAST, *CLIMB)
    study = _study(run_dir)
    low, top, climbed = study.trials[:3]
    floor = study.user_attrs["focus"]["left"]
    assert top.user_attrs["metrics"]["left"] >= floor, "the premise: 0.9 keeps the floor"
    assert climbed.user_attrs["order"] == ["global_magnitude"], "the next trial runs the next level, not a sample"
    assert climbed.user_attrs["thresholds"]["global_magnitude"] == pytest.approx(0.95), "half the rest removed"
    assert study.user_attrs["climbed"][0] == pytest.approx(0.95)
    assert "levels queued by focus.climb" in cli("status", run_dir).stdout


def test_the_climb_narrows_between_the_sparsest_kept_level_and_the_first_missed(tmp_path):
    run_dir = tmp_path / "narrow"
    cli("search", SMOKE, "--trials", 3, "--run-dir", run_dir, "--json", *FAST, *CLIMB,
        "--set", "seed_front=[0.5, 0.998]", "--set", "focus={min_relative: 0.9, climb: true}")
    study = _study(run_dir)
    low, top, narrowed = study.trials[:3]
    floor = study.user_attrs["focus"]["left"]
    assert low.user_attrs["metrics"]["left"] >= floor > top.user_attrs["metrics"]["left"], "the premise"
    assert narrowed.user_attrs["order"] == ["global_magnitude"]
    assert narrowed.user_attrs["thresholds"]["global_magnitude"] == pytest.approx(1 - (0.5 * 0.002) ** 0.5), \
        "midway in remaining weights, not past the level that missed"


@pytest.mark.parametrize("known, expected", [
    ({0.5: True, 0.9: None}, None),                      # a sparser level still running decides first
    ({0.5: False, 0.9: False}, None),                    # nothing kept: nothing to go on from
    ({0.8: True, 0.9: False, 0.95: None}, 0.858578643763),  # a level past the missed one does not wait
    ({0.88: True, 0.9: False}, None),                    # within 1.25x of the missed level: done
    ({0.9: True, 0.95: False, 0.93: True}, 0.940839202169),  # between the sparsest kept and the next miss
    ({0.5: True, 0.8: False, 0.9: True}, 0.683772233983),  # the least sparse miss counts, as for the ceiling
    ({0.99: True}, None),                                # past the strategy's range (high 0.994)
])
def test_the_next_climb_level(known, expected):
    assert next_level(known, total_parameters=10_000, high=0.994) == expected


def test_the_climb_stops_where_less_than_one_weight_would_remain():
    assert next_level({0.9996: True}, total_parameters=10_000, high=1.0) == 0.9998
    assert next_level({0.99995: True}, total_parameters=10_000, high=1.0) is None


def test_the_climb_reads_each_queued_level_as_the_samplers_see_it():
    import optuna

    from automtl.climb import levels
    from automtl.config.files import load
    from automtl.space import enqueue
    from tests.test_defaults import DEFAULT

    config = load(DEFAULT, ["focus={min_relative: 0.85, climb: true}"])
    study = optuna.create_study(directions=["maximize"])
    for share in (0.5, 0.8, 0.9, 0.95):
        enqueue(study, config.seed_plan(share), config, ["left", "right"])
    study.enqueue_trial({"threshold.global_magnitude": 0.7})  # parameters the config does not decode: not a level
    kept, missed, stopped, running = (study.ask() for _ in range(4))
    kept.set_constraint("focus.left", -0.1)
    missed.set_constraint("focus.left", 0.2)
    stopped.set_constraint("focus.left", 0.0)  # stopped at a rung, meeting the floor there
    study.tell(kept, [1.0])
    study.tell(missed, [1.0])
    study.tell(stopped, state=TrialState.PRUNED)
    assert levels(study, config, ["left", "right"]) == {0.5: True, 0.8: False, 0.9: True, 0.95: None}
