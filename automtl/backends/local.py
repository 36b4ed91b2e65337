"""Local backend: Optuna ask/tell in N worker processes sharing the run directory's journal storage.

Worker 0 runs in the calling process; workers 1..N-1 are forked from it once
the problem and the dense model are ready, so they start at once (where fork
is unavailable, or trials run on CUDA, which does not survive a fork, they are
spawned and rebuild both from the run directory).
Asking for a trial happens under a file lock after counting the budget, so
the study never runs more trials than asked for. A trial that raises or
yields non-finite numbers is recorded as failed with its reason; a trial
whose process was interrupted is marked failed as ``interrupted`` and does
not count against the budget, so ``--resume`` re-spends it. A trial a rung
stops (:mod:`automtl.rungs`) is told as pruned and counts as one trial.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import signal
import threading
import time
from typing import Callable

import torch
import optuna
from optuna.trial import FrozenTrial, TrialState

from automtl import interrupts, progress, retention, space, tracking
from automtl import trial as trial_mod
from automtl.samplers import make_sampler
from automtl.backends.base import (INTERRUPTED, budget_used, mark_interrupted, record_failure,
                                   record_plan, record_result, record_stop, recover, reporting)
from automtl.config import SearchConfig
from automtl.errors import is_disk_full
from automtl.rundir import RunDir
from automtl.rungs import RungGate

log = logging.getLogger(__name__)


def work(run: RunDir, worker: int, deadline: float | None, bench: trial_mod.Bench | None = None) -> int:
    """Ask, run and tell trials (``trial_batch`` at a time) until the budget or the deadline is reached;
    returns trials run."""
    config = run.load_config()
    bench = bench or trial_mod.Bench.prepare(config, run.path)
    study = run.load_study()
    study.sampler = make_sampler(config, worker, salt=len(study.trials))
    tracker = tracking.Tracker.attach(study)
    batch, ran = bench.trial_batch(), 0
    while True:
        interrupts.check()
        with run.asking():
            left = config.trials - budget_used(study)
            if left <= 0 or (deadline is not None and time.time() >= deadline):
                return ran
            # Near the end of the budget a worker takes at most its share of what is left, so none idles
            # while another runs a full batch.
            trials = [study.ask() for _ in range(min(batch, math.ceil(left / config.workers)))]
        untold = dict(enumerate(trials))

        def tell(index: int, outcome: trial_mod.Outcome) -> None:
            finished = _tell(study, untold.pop(index), outcome)
            if finished.state == TrialState.COMPLETE:
                retention.release_dominated(run, study, config.keep_weights)
            if tracker:
                tracker.log_trial(finished)

        jobs = []
        for index, trial in enumerate(trials):
            try:
                plan = space.suggest(trial, config, bench.task_names)
                record_plan(trial, plan, worker)
            except Exception as exc:  # noqa: BLE001 - recorded as the trial's failure
                tell(index, exc)
                continue
            jobs.append((index, plan, trial.number, RungGate.of(study, trial.number, config, bench.problem)))
        try:
            trial_mod.run_batch([job[1:] for job in jobs], bench, lambda i, outcome: tell(jobs[i][0], outcome))
        except BaseException:
            for trial in untold.values():  # re-spent on --resume
                record_failure(trial, INTERRUPTED)
                study.tell(trial, state=TrialState.FAIL)
            raise
        ran += len(trials)


def _tell(study: optuna.Study, trial: optuna.Trial, outcome: trial_mod.Outcome) -> FrozenTrial:
    """Record how ``trial`` ended and tell the study; a full disk is re-raised (the trial is re-spent on
    ``--resume``: not the plan's fault, and the search must stop)."""
    if isinstance(outcome, trial_mod.TrialStopped):
        record_stop(trial, outcome.epochs, outcome.metrics, outcome.seconds, study.user_attrs)
        return study.tell(trial, state=TrialState.PRUNED)
    if isinstance(outcome, Exception):
        if is_disk_full(outcome):
            record_failure(trial, INTERRUPTED)
            study.tell(trial, state=TrialState.FAIL)
            raise outcome
        reason = f"{type(outcome).__name__}: {outcome}"
        record_failure(trial, reason)
        log.warning("trial %d failed: %s", trial.number, reason)
        return study.tell(trial, state=TrialState.FAIL)
    record_result(trial, outcome, study.user_attrs)
    return study.tell(trial, outcome.values)


def _die_with_parent(parent: int) -> None:
    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _child(path: str, worker: int, deadline: float | None, threads: int, parent: int,
           bench: trial_mod.Bench | None) -> None:
    _die_with_parent(parent)
    interrupts.defer()  # _stop's SIGINT (and the terminal's) stops the worker between batches
    torch.set_num_threads(threads)
    # Handlers inherited through fork may hold locks of threads that did not survive it.
    logging.basicConfig(level=logging.WARNING, format=f"[worker {worker}] %(message)s", force=True)
    try:
        work(RunDir(path), worker, deadline, bench)
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        log.error("stopped: %s", exc)  # the main process stops the search and says what to do


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


def preflight(config: SearchConfig) -> None:
    """Nothing to check before the run directory is written: this machine is always there."""


def ships_datasets(config: SearchConfig) -> bool:
    """Workers are forked (CPU), so they inherit a problem object whose splits are Datasets."""
    return config.workers == 1 or _forks(config)


def trial_threads(config: SearchConfig) -> int:
    """Each worker's torch threads: ``threads``, else this machine's cores shared among the workers."""
    return config.threads or max(1, (os.cpu_count() or 1) // config.workers)


def _forks(config: SearchConfig) -> bool:
    on_cuda = trial_mod.resolve_device(config.backend.device).type == "cuda"
    return "fork" in multiprocessing.get_all_start_methods() and not on_cuda


def run(
    run_dir: RunDir,
    config: SearchConfig,
    bench: trial_mod.Bench,
    on_progress: Callable[[progress.Snapshot], None] | None = None,
) -> None:
    """Run the search to its budget with ``config.workers`` workers (caller holds the run-dir lock)."""
    recover(run_dir.load_study())
    deadline = time.time() + config.timeout if config.timeout else None
    threads = trial_threads(config)
    # Forked workers inherit the prepared bench (problem + dense model); spawned ones get it pickled
    # (Bench.__getstate__: a problem read from Datasets is rebuilt there from the config).
    ctx = multiprocessing.get_context("fork" if _forks(config) else "spawn")
    children = [
        ctx.Process(target=_child, args=(str(run_dir.path), w, deadline, threads, os.getpid(), bench))
        for w in range(1, config.workers)
    ]
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        # Fork before the progress thread starts: a child forked while that thread is inside SQLite (an RDB
        # storage) inherits SQLite's locks in the state that thread left them, and the storage stalls.
        for child in children:
            child.start()
        with reporting(run_dir, config.trials, on_progress):
            work(run_dir, 0, deadline, bench)
            for child in children:
                while child.is_alive():  # a stop requested while waiting is passed on to the children
                    child.join(timeout=0.5)
                    interrupts.check()
    except BaseException:
        _stop(children)
        raise
    finally:
        torch.set_num_threads(previous_threads)
        mark_interrupted(run_dir.load_study())
