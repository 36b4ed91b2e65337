"""Trial batching: several trials fine-tuned in one vectorised pass give each the result it gets alone."""

import math
import time
from dataclasses import replace

import pytest
import torch
from optuna.trial import TrialState

from automtl import checkpoints
from automtl.config import load
from automtl.space import TrialPlan
from automtl.devices import AUTO_BATCH, batch_size
from automtl.errors import TrialFailed
from automtl.rungs import TrialStopped
from automtl.trial import Bench, Job, run, run_batch
from tests.test_rungs import RUNGS, _finished, _study, leader_then_dominated
from tests.test_search import FAST, SMOKE, cli, kill_mid_search

SETTINGS = ["fine_tune.epochs=2", "fine_tune.batch_size=64", "fine_tune.schedule=cosine",
            "loss_weights.method=[simplex, uncertainty, dwa, gradnorm]"]
# Different strategies, every weighting (GradNorm cannot be stacked: it runs alone within the batch),
# distillation on and off, a learning rate each.
PLANS = [
    TrialPlan(["magnitude"], {"magnitude": 0.1}, "simplex", None, 0.0, 3e-3),
    TrialPlan(["taylor", "activation"], {"taylor": 0.5, "activation": 0.3}, "uncertainty", None, 0.4, 1e-3),
    TrialPlan(["random"], {"random": 0.6}, "dwa", None, 0.2, 5e-3),
    TrialPlan(["activation"], {"activation": 0.4}, "gradnorm", None, 0.0, 2e-3),
]
ZOO_MODELS = ["mlp", "cnn2d", "resnet", "resnet1d", "user_resnet", "tuple", "depthwise", "gelu_mlp"]


def _bench(zoo, name, run_dir, *settings):
    problem, model = zoo(name)
    config = load(SMOKE, [*SETTINGS, "fine_tune.lr={low: 0.0005, high: 0.01}", *settings])
    return Bench(config, problem, problem.default_model, model.eval(), run_dir)


def _plans(problem, plans=PLANS):
    weights = {name: 1 / len(problem.task_names) for name in problem.task_names}
    return [TrialPlan(p.order, p.thresholds, p.loss_method, weights if p.loss_method == "simplex" else None,
                      p.distillation, p.lr) for p in plans]


def _batched(bench, plans, gates=None):
    outcomes = {}
    run_batch([Job(plan, number, (gates or {}).get(number)) for number, plan in enumerate(plans)], bench,
              lambda index, outcome: outcomes.setdefault(index, outcome))
    return [outcomes[i] for i in range(len(plans))]


def _agree(alone, batched):
    assert batched.sparsity == alone.sparsity and batched.nonzero_parameters == alone.nonzero_parameters
    for task, value in alone.metrics.items():
        assert batched.metrics[task] == pytest.approx(value, rel=2e-3, abs=2e-3), task
        assert batched.test_metrics[task] == pytest.approx(alone.test_metrics[task], rel=2e-3, abs=2e-3), task
    for task, weight in alone.final_loss_weights.items():
        assert batched.final_loss_weights[task] == pytest.approx(weight, abs=1e-4)


@pytest.mark.parametrize("name", ZOO_MODELS)
def test_every_batched_trial_matches_the_same_trial_run_alone(zoo, tmp_path, name):
    bench = _bench(zoo, name, tmp_path)
    plans = _plans(bench.problem)
    alone = [run(Job(plan, number), bench) for number, plan in enumerate(plans)]
    batched = _batched(bench, plans)
    for one, together in zip(alone, batched, strict=True):
        _agree(one, together)
    assert all(r.fine_tune_seconds > 0 and r.eval_seconds > 0 for r in batched)


RECIPES = {
    "sgd-step-clipped": ["fine_tune.optimizer={name: sgd, momentum: 0.9, nesterov: true, weight_decay: 0.001}",
                         "fine_tune.schedule=step", "fine_tune.step_epochs=1", "fine_tune.gamma=0.5",
                         "fine_tune.grad_clip=0.5"],
    "adamw-warmup-cosine": ["fine_tune.optimizer={name: adamw, weight_decay: 0.05, betas: [0.8, 0.99]}",
                            "fine_tune.warmup_epochs=0.5"],
    "sgd-onecycle": ["fine_tune.optimizer={name: sgd}", "fine_tune.schedule=onecycle"],
    "adam-constant-warmup": ["fine_tune.schedule=constant", "fine_tune.warmup_epochs=1", "fine_tune.grad_clip=1.0"],
}


@pytest.mark.parametrize("recipe", sorted(RECIPES))
@pytest.mark.parametrize("name", ["mlp", "user_resnet"])
def test_every_optimizer_and_schedule_steps_a_batched_trial_as_it_steps_alone(zoo, tmp_path, name, recipe):
    bench = _bench(zoo, name, tmp_path, *RECIPES[recipe])
    plans = _plans(bench.problem)[:3]  # stacked together (no GradNorm)
    alone = [run(Job(plan, number), bench) for number, plan in enumerate(plans)]
    for one, together in zip(alone, _batched(bench, plans), strict=True):
        _agree(one, together)


@pytest.mark.parametrize("name", ZOO_MODELS)
def test_batched_trials_each_follow_their_own_searched_schedule(zoo, tmp_path, name):
    bench = _bench(zoo, name, tmp_path, "fine_tune.schedule=[constant, cosine, onecycle]")
    plans = [replace(plan, schedule=schedule)
             for plan, schedule in zip(_plans(bench.problem)[:3], ["cosine", "onecycle", "constant"])]
    alone = [run(Job(plan, number), bench) for number, plan in enumerate(plans)]
    for one, together in zip(alone, _batched(bench, plans), strict=True):
        _agree(one, together)
    constant = run(Job(replace(plans[0], schedule="constant"), 7), bench)
    cosine, _ = checkpoints.load(tmp_path / alone[0].weights)
    assert any(not torch.equal(weights, cosine[key])
               for key, weights in checkpoints.load(tmp_path / constant.weights)[0].items()), \
        "the plan's schedule, not the first listed, drives its fine-tune"


def test_a_batch_counts_its_wall_clock_once_in_its_trials_compute(zoo, tmp_path):
    bench = _bench(zoo, "mlp", tmp_path)
    plans = _plans(bench.problem)[:3]  # stacked together (no GradNorm)
    started = time.perf_counter()
    batched = _batched(bench, plans)
    wall = time.perf_counter() - started
    shares = [r.fine_tune_seconds for r in batched]
    assert all(share > 0 for share in shares) and sum(r.compute_seconds for r in batched) <= wall, \
        "each trial's fine-tune is its share of the batch's time, not the whole of it"
    assert max(shares) < 1.5 * min(shares), "members that stay the whole batch share it about equally"


def test_a_diverging_member_fails_alone_and_leaves_the_others_untouched(zoo, tmp_path):
    bench = _bench(zoo, "user_resnet", tmp_path)
    plans = _plans(bench.problem)[:3]
    diverging = TrialPlan(plans[0].order, plans[0].thresholds, "simplex", plans[0].loss_weights, 0.0, math.inf)
    outcomes = _batched(bench, [plans[0], diverging, plans[2]])
    assert isinstance(outcomes[1], TrialFailed) and "diverged" in str(outcomes[1])
    _agree(run(Job(plans[0], 0), bench), outcomes[0])
    _agree(run(Job(plans[2], 2), bench), outcomes[2])


def test_a_member_its_rung_stops_leaves_the_batch_and_the_rest_finish(zoo, tmp_path):
    bench = _bench(zoo, "mlp", tmp_path, "rungs={min_epochs: 1, reduction: 2}")
    plans = _plans(bench.problem)[:3]
    stop_second = {1: lambda epochs, values: False}  # a gate that stops trial 1 at its first rung
    outcomes = _batched(bench, plans, {n: stop_second.get(n, lambda epochs, values: True) for n in range(3)})
    assert isinstance(outcomes[1], TrialStopped) and outcomes[1].epochs == 1 and outcomes[1].seconds > 0
    _agree(run(Job(plans[0], 0), bench), outcomes[0])
    _agree(run(Job(plans[2], 2), bench), outcomes[2])


class ItemForward(torch.nn.Module):
    """A forward pass vmap cannot run (it reads a value out of a tensor): the batch falls back to one at
    a time."""

    def __init__(self, problem):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(100, 32), torch.nn.ReLU())
        self.heads = torch.nn.ModuleDict({t.name: torch.nn.Linear(32, t.outputs) for t in problem.tasks})

    def forward(self, x):
        h = self.body(x)
        h = h * (1.0 if h.abs().max().item() > 0 else 0.0)
        return {name: head(h) for name, head in self.heads.items()}


def test_a_model_vmap_cannot_run_falls_back_to_one_at_a_time(zoo, tmp_path, caplog):
    problem, _ = zoo("mlp")
    torch.manual_seed(0)
    bench = Bench(load(SMOKE, SETTINGS), problem, problem.default_model, ItemForward(problem).eval(), tmp_path)
    plans = _plans(problem)[:2]
    batched = _batched(bench, plans)
    assert "cannot be fine-tuned vectorised" in caplog.text
    for number, plan in enumerate(plans):
        _agree(run(Job(plan, number), bench), batched[number])


def test_batched_search_with_rungs_and_two_workers_spends_the_budget_exactly(tmp_path):
    run_dir = tmp_path / "batched"
    cli("search", SMOKE, "--trials", 14, "--workers", 2, "--trial-batch", 4, "--run-dir", run_dir, "--json",
        *FAST, *RUNGS, "--set", "rungs={min_epochs: 1, reduction: 8}", "--set", "tracking.enabled=false",
        *leader_then_dominated(2))
    study = _study(run_dir)
    states = [t.state for t in study.trials]
    assert len(states) == 14 and set(states) <= {TrialState.COMPLETE, TrialState.PRUNED}
    leader, *copies = study.trials[:3]  # asked in one batch: judged after the leader at the rung, and stopped
    assert leader.state == TrialState.COMPLETE and {c.state for c in copies} == {TrialState.PRUNED}
    assert {t.user_attrs["worker"] for t in study.trials} == {0, 1}


def test_a_kill_mid_batch_then_resume_loses_and_reruns_nothing(tmp_path):
    run_dir = tmp_path / "killed"
    args = ["search", SMOKE, "--trials", 24, "--trial-batch", 4, "--run-dir", run_dir, "--json", *FAST, *RUNGS,
            "--set", "tracking.enabled=false"]
    kill_mid_search(args, run_dir, _finished, 6)
    before = _finished(run_dir)
    assert 6 <= len(before) < 24, f"the kill must land mid-search: {len(before)} finished"
    cli(*args, "--resume")
    after = _finished(run_dir)
    assert all(after[n] == v for n, v in before.items()), "a finished or stopped trial was lost or re-run"
    assert len(after) == 24, "interrupted trials are re-spent, the budget is exact"
    assert all(t.user_attrs["fail_reason"] == "interrupted"
               for t in _study(run_dir).trials if t.state == TrialState.FAIL)


def test_trial_batch_takes_a_size_or_auto_which_is_one_on_the_cpu_and_bounded_on_cuda(tmp_path, zoo):
    bad = cli("search", SMOKE, "--trial-batch", "many", "--run-dir", tmp_path / "many", check=False)
    assert bad.returncode == 2 and "trial_batch" in bad.stderr and not (tmp_path / "many").exists()
    assert _bench(zoo, "mlp", tmp_path, "backend.device=cpu").trial_batch() == 1
    assert _bench(zoo, "mlp", tmp_path, "trial_batch=8").trial_batch() == 8
    auto = load(SMOKE)
    assert batch_size(auto, cuda=False, parameters=lambda: 1 / 0) == 1, "the CPU rule reads no model"
    assert [batch_size(auto, cuda=True, parameters=lambda: n) for n in (10**5, 10**7, 10**9)] == [AUTO_BATCH, 5, 1]
