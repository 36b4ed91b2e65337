"""Local backend: Optuna ask/tell in N worker processes sharing the run directory's journal storage.

Worker 0 runs in the calling process; workers 1..N-1 are forked from it once
the problem and the dense model are ready, so they start at once (where fork
is unavailable they are spawned and rebuild both from the run directory).
Asking for a trial happens under a file lock after counting the budget, so
the study never runs more trials than asked for. A trial that raises or
yields non-finite numbers is recorded as failed with its reason; a trial
whose process was interrupted is marked failed as ``interrupted`` and does
not count against the budget, so ``--resume`` re-spends it.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
import warnings
from dataclasses import asdict
from typing import Callable

import optuna
import torch
from optuna.trial import TrialState

from automtl import progress, space, tracking
from automtl import trial as trial_mod
from automtl.config import SearchConfig
from automtl.rundir import RunDir

log = logging.getLogger(__name__)
# TPE's `group` (conditional spaces) and metric names are experimental in Optuna; we use them on purpose.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

INTERRUPTED = "interrupted"

SAMPLERS: dict[str, Callable[[SearchConfig, int], optuna.samplers.BaseSampler]] = {
    "tpe": lambda c, seed: optuna.samplers.TPESampler(
        seed=seed, multivariate=True, group=True, constant_liar=True,
        n_startup_trials=c.sampler.startup_trials,
    ),
    "nsga2": lambda c, seed: optuna.samplers.NSGAIISampler(seed=seed, population_size=c.sampler.population_size),
    "nsga3": lambda c, seed: optuna.samplers.NSGAIIISampler(seed=seed, population_size=c.sampler.population_size),
    "gp": lambda c, seed: optuna.samplers.GPSampler(seed=seed, n_startup_trials=c.sampler.startup_trials),
    "random": lambda c, seed: optuna.samplers.RandomSampler(seed=seed),
}


def make_sampler(config: SearchConfig, worker: int, salt: int) -> optuna.samplers.BaseSampler:
    """The configured sampler, seeded per worker and per (re)start so no two draw the same stream."""
    return SAMPLERS[config.sampler.name](config, config.seed * 1_000_003 + worker * 7919 + salt)


def budget_used(study: optuna.Study) -> int:
    """Trials that count against the budget: started ones, except those failed as interrupted
    (enqueued trials still waiting do not count until they start)."""
    return sum(
        1 for t in study.get_trials(deepcopy=False)
        if t.state != TrialState.WAITING
        and not (t.state == TrialState.FAIL and t.user_attrs.get("fail_reason") == INTERRUPTED)
    )


def mark_interrupted(study: optuna.Study) -> int:
    """Mark every RUNNING trial failed as interrupted (call only while holding the run-dir lock)."""
    storage = study._storage
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in stale:
        storage.set_trial_user_attr(t._trial_id, "fail_reason", INTERRUPTED)
        storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
    return len(stale)


def _record(trial: optuna.Trial, plan: space.TrialPlan, worker: int) -> None:
    for key, value in plan.as_dict().items():
        trial.set_user_attr(key, value)
    trial.set_user_attr("worker", worker)


def _record_result(trial: optuna.Trial, result: trial_mod.TrialResult) -> None:
    for key, value in asdict(result).items():
        if key != "values":
            trial.set_user_attr(key, value)
    trial.set_user_attr("compute_seconds", result.compute_seconds)


def work(run: RunDir, worker: int, deadline: float | None, bench: trial_mod.Bench | None = None) -> int:
    """Ask, run and tell trials until the budget or the deadline is reached; returns trials run."""
    config = run.load_config()
    bench = bench or trial_mod.Bench.prepare(config, run.path)
    study = run.load_study()
    study.sampler = make_sampler(config, worker, salt=len(study.trials))
    tracker = tracking.Tracker.attach(study)
    ran = 0
    while True:
        with run.asking():
            if budget_used(study) >= config.trials or (deadline is not None and time.time() >= deadline):
                return ran
            trial = study.ask()
        try:
            plan = space.suggest(trial, config, bench.task_names)
            _record(trial, plan, worker)
            result = trial_mod.run(plan, bench, trial.number)
        except KeyboardInterrupt:
            trial.set_user_attr("fail_reason", INTERRUPTED)
            study.tell(trial, state=TrialState.FAIL)
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of one trial is recorded, the search goes on
            reason = f"{type(exc).__name__}: {exc}"
            trial.set_user_attr("fail_reason", reason)
            log.warning("trial %d failed: %s", trial.number, reason)
            finished = study.tell(trial, state=TrialState.FAIL)
        else:
            _record_result(trial, result)
            finished = study.tell(trial, result.values)
        if tracker:
            tracker.log_trial(finished)
        ran += 1


def _die_with_parent(parent: int) -> None:
    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _child(path: str, worker: int, deadline: float | None, threads: int, parent: int,
           bench: trial_mod.Bench | None) -> None:
    _die_with_parent(parent)
    torch.set_num_threads(threads)
    # Handlers inherited through fork may hold locks of threads that did not survive it.
    logging.basicConfig(level=logging.WARNING, format=f"[worker {worker}] %(message)s", force=True)
    try:
        work(RunDir(path), worker, deadline, bench)
    except KeyboardInterrupt:
        pass


def _stop(children: list[multiprocessing.Process]) -> None:
    """Ask children to stop (they mark their trial interrupted), then make sure they are gone."""
    for child in children:
        if child.is_alive():
            os.kill(child.pid, signal.SIGINT)
    for child in children:
        child.join(timeout=15)
        if child.is_alive():
            child.kill()
            child.join()


def run(
    run_dir: RunDir,
    config: SearchConfig,
    bench: trial_mod.Bench,
    on_progress: Callable[[progress.Snapshot], None] | None = None,
) -> None:
    """Run the search to its budget with ``config.workers`` workers (caller holds the run-dir lock)."""
    started = time.time()
    deadline = started + config.timeout if config.timeout else None
    threads = config.threads or max(1, (os.cpu_count() or 1) // config.workers)
    # Forked workers inherit the prepared bench (problem + dense model); spawned ones rebuild it.
    forking = "fork" in multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if forking else "spawn")
    inherited = bench if forking else None
    children = [
        ctx.Process(target=_child, args=(str(run_dir.path), w, deadline, threads, os.getpid(), inherited))
        for w in range(1, config.workers)
    ]
    stop = threading.Event()

    def monitor():
        study = run_dir.load_study()
        while not stop.wait(1.0):
            on_progress(progress.take(study, config.trials, started))
        on_progress(progress.take(study, config.trials, started))

    watcher = threading.Thread(target=monitor, daemon=True) if on_progress else None
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for child in children:
            child.start()
        if watcher:
            watcher.start()
        work(run_dir, 0, deadline, bench)
        for child in children:
            child.join()
    except BaseException:
        _stop(children)
        raise
    finally:
        torch.set_num_threads(previous_threads)
        stop.set()
        if watcher:
            watcher.join()
        mark_interrupted(run_dir.load_study())
