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
import multiprocessing
import os
import signal
import threading
import time
from typing import Callable

import torch

from automtl import interrupts, progress, space, tracking
from automtl import trial as trial_mod
from automtl.samplers import make_sampler
from automtl.backends.base import (INTERRUPTED, failure, mark_interrupted, record_plan, recover, reporting, tell,
                                   trials_to_ask)
from automtl.config import SearchConfig
from automtl.devices import resolve_device
from automtl.errors import is_disk_full
from automtl.rundir import RunDir
from automtl.rungs import TrialStopped

log = logging.getLogger(__name__)


def work(run: RunDir, worker: int, deadline: float | None, bench: trial_mod.Bench | None = None) -> int:
    """Ask, run and tell trials (``trial_batch`` at a time) until the budget or the deadline is reached;
    returns trials run."""
    config = run.load_config()
    bench = bench or trial_mod.Bench.prepare(config, run.path)
    study = run.load_study()
    study.sampler = make_sampler(config.sampler, config.seed, worker, salt=len(study.trials))
    tracker = tracking.Tracker.attach(study)
    batch, ran = bench.trial_batch(), 0
    while True:
        interrupts.check()
        with run.asking():
            size = trials_to_ask(study, config, deadline, batch, config.workers)
            if size == 0:
                return ran
            trials = [study.ask() for _ in range(size)]
        untold = dict(enumerate(trials))

        def told(index: int, outcome: trial_mod.Outcome) -> None:
            trial = untold.pop(index)
            if isinstance(outcome, Exception) and not isinstance(outcome, TrialStopped):
                if is_disk_full(outcome):  # not the plan's fault: re-spent on --resume, and the search stops
                    tell(run, study, trial, INTERRUPTED, config)
                    raise outcome
                outcome = failure(outcome)
            finished = tell(run, study, trial, outcome, config)
            if tracker:
                tracker.log_trial(finished)

        jobs = []
        for index, trial in enumerate(trials):
            try:
                plan = space.suggest(trial, config, bench.task_names)
                record_plan(trial, plan, worker)
            except Exception as exc:  # noqa: BLE001 - recorded as the trial's failure
                told(index, exc)
                continue
            jobs.append((index, trial_mod.Job.of(plan, trial.number, study, bench)))
        try:
            trial_mod.run_batch([job for _, job in jobs], bench, lambda i, outcome: told(jobs[i][0], outcome))
        except BaseException:
            for trial in list(untold.values()):  # re-spent on --resume
                tell(run, study, trial, INTERRUPTED, config)
            raise
        ran += len(trials)


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
    on_cuda = resolve_device(config.backend.device).type == "cuda"
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
        with reporting(run_dir, config, on_progress):
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
