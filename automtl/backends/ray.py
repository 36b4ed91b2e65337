"""Ray backend: Ray Tune schedules the trials on a cluster; Optuna still owns the study.

The driver (the calling process) asks and tells: :class:`StudySearcher` is Ray
Tune's ``OptunaSearch`` over the same define-by-run space
(:func:`automtl.space.suggest`), directions and run-directory storage as the
local backend, so ``status``, ``pareto``, ``report`` and ``export`` read a
Ray-made run directory unchanged. It stops asking once the budget (or the
timeout) is spent and records each result, or each failure with its reason.

One Tune trial is a batch of ``trial_batch`` Optuna trials (one when it is 1,
or ``auto`` on the CPU): the searcher asks them together, the worker runs them
with :func:`automtl.trial.run_batch` on the resources Ray gave that Tune trial
(the GPU Ray assigned when there is one: ``--gpus-per-trial`` is per batch),
reports each member as it ends, and the searcher tells that member's Optuna
trial at once. Workers write the trial weights into the run
directory (storage every node mounts, on a multi-node cluster), record a
trial's rungs in the study's storage (:mod:`automtl.rungs`; a stopped trial is
reported back and told as pruned) and create the trial's MLflow child run
under the study's parent run. The prepared bench
(problem + dense model) reaches them once, through Ray's object store.

Tune keeps its own experiment state in ``RUN_DIR/tune``; ``--resume`` restores
it with ``Tuner.restore``: trials that were in flight run again as the same
Optuna trials (a batch's members already told are skipped), and finished
trials are never lost (they live in the study).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import socket
import time
import urllib.parse
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import optuna

# With verbose=0 Tune's legacy reporter prints nothing (the new one still prints tables); ours shows progress.
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
import ray  # noqa: E402
import torch
from optuna.trial import FrozenTrial, TrialState
from ray import tune  # noqa: E402
from ray.tune.search import Searcher  # noqa: E402
from ray.tune.search.optuna import OptunaSearch  # noqa: E402

from automtl import interrupts, objectives, progress, space, study_storage, tracking
from automtl import trial as trial_mod
from automtl.samplers import make_sampler
from automtl.backends.base import failure, mark_interrupted, record_plan, recover, reporting, tell, trials_to_ask
from automtl.config import SearchConfig
from automtl.devices import batch_size
from automtl.records import StudyRecord, TrialRecord, TrialResult
from automtl.errors import TrialFailed, UserError
from automtl.rundir import RunDir
from automtl.rungs import TrialStopped

log = logging.getLogger(__name__)

EXPERIMENT = "tune"  # Tune's experiment directory inside the run directory
BATCH, NUMBER, PLAN = "automtl.batch", "number", "plan"  # what the searcher hands each Tune trial: its members
# what a worker reports back, once per member
MEMBER, RESULT, STOPPED, FAILED = "automtl.member", "automtl.result", "automtl.stopped", "automtl.fail_reason"
MODES = {"maximize": "max", "minimize": "min"}
PENDING = "TUNE_MAX_PENDING_TRIALS_PG"


def _define(trial: optuna.Trial, config: SearchConfig, task_names: list[str]) -> dict[str, Any]:
    """Define-by-run space: sample a plan and record it on the trial; the member handed to Tune."""
    plan = space.suggest(trial, config, task_names)
    record_plan(trial, plan, "ray")
    return {NUMBER: trial.number, PLAN: plan.as_dict()}


class StudySearcher(OptunaSearch):
    """``OptunaSearch`` on a run directory's study, each Tune trial a batch of Optuna trials, with the
    budget, failure reasons and results recorded.

    Pickles as its run directory only: Tune stores the searcher with the
    experiment, and a restored one reloads the study (and the new budget and
    ``trial_batch``) from the run directory; :meth:`save` / :meth:`restore`
    carry the map from Tune trial ids to their members' Optuna trial numbers.
    """

    def __init__(self, run_path: str):
        self._run = RunDir(run_path)
        self._config = self._run.load_config()
        study = self._run.load_study()
        record = StudyRecord.of(study)
        url, name = self._run.location()
        super().__init__(
            space=lambda trial: _define(trial, self._config, record.tasks),
            metric=list(record.objectives),
            mode=[MODES[d] for d in record.directions],
            sampler=make_sampler(self._config.sampler, self._config.seed, 0, salt=len(study.trials)),
            study_name=name,
            storage=self._run.storage(url),
        )
        self._tasks = record.tasks
        self._members: dict[str, list[optuna.Trial]] = {}
        self._deadline: float | None = None
        self._batch: int | None = None

    def __reduce__(self):
        return StudySearcher, (str(self._run.path),)

    def _batch_size(self) -> int:
        """Members per Tune trial: the trials' device is CUDA when each Tune trial gets a GPU; the model's
        size is the one the study recorded when it was created."""
        if self._batch is None:
            config = self._config
            self._batch = batch_size(config, config.backend.gpus_per_trial > 0,
                                     lambda: StudyRecord.of(self._ot_study).total_parameters)
        return self._batch

    def suggest(self, trial_id: str) -> dict | str | None:
        if self._deadline is None:  # the clock starts when Tune first asks, also after a restore
            self._deadline = time.time() + self._config.timeout if self._config.timeout else math.inf
        if trial_id not in self._members:
            size = trials_to_ask(self._ot_study, self._config, self._deadline, self._batch_size(), _slots(self._config))
            if size == 0:
                return Searcher.FINISHED
            self._members[trial_id] = [self._ot_study.ask() for _ in range(size)]
        return {BATCH: [_define(t, self._config, self._tasks) for t in self._members[trial_id]]}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if MEMBER in result:
            self._tell(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self._members or trial_id in self._completed_trials:
            return
        self._completed_trials.add(trial_id)
        if result and MEMBER in result:
            self._tell(trial_id, result)
        died = f"the trial's Ray worker died (Tune trial {trial_id}; see {self._run.path / EXPERIMENT})"
        for member in self._members[trial_id]:
            if not study_storage.is_finished(self._ot_study, member.number):
                tell(self._run, self._ot_study, member, died, self._config)

    def _tell(self, trial_id: str, result: dict) -> None:
        """Tell the member a worker reported on (once: a restored batch reports it again)."""
        member = next((t for t in self._members[trial_id] if t.number == result[MEMBER]), None)
        if member is None or study_storage.is_finished(self._ot_study, member.number):
            return
        if result.get(RESULT):
            payload = json.loads(result[RESULT])
            outcome, worker = TrialResult.from_attrs(payload["values"], payload["attrs"]), payload["worker"]
        elif result.get(STOPPED):
            payload = json.loads(result[STOPPED])
            outcome = TrialStopped(payload["epochs"], [], payload["metrics"], payload["seconds"],
                                   payload.get("ceiling"))
            worker = payload["worker"]
        else:
            outcome, worker = result[FAILED], None
        tell(self._run, self._ot_study, member, outcome, self._config, worker)

    def save(self, checkpoint_path: str) -> None:
        members = {tid: [t.number for t in trials] for tid, trials in self._members.items()}
        state = {"members": members, "completed": sorted(self._completed_trials)}
        Path(checkpoint_path).write_text(json.dumps(state))

    def restore(self, checkpoint_path: str) -> None:
        """Rebind Tune's trials to their members' Optuna trials; mark the study's other running trials
        interrupted."""
        state = json.loads(Path(checkpoint_path).read_text())
        study = self._ot_study
        self._completed_trials = set(state["completed"])
        self._members = {tid: [study_storage.trial(study, n) for n in numbers]
                         for tid, numbers in state["members"].items()}
        live = {t.number for tid, trials in self._members.items() if tid not in self._completed_trials
                for t in trials}
        stale = mark_interrupted(study, keep=live)
        if stale:
            log.warning("marked %d trial(s) Tune will not resume as failed (interrupted)", stale)


@functools.lru_cache(maxsize=4)
def _cached_tracker(identity: str) -> tracking.Tracker | None:
    return tracking.Tracker.from_description(json.loads(identity))


def _tracker(attrs: Mapping[str, Any] | None) -> tracking.Tracker | None:
    """One MLflow client per worker process and study (a new client re-checks the store's schema: slow)."""
    return _cached_tracker(json.dumps(attrs, sort_keys=True)) if attrs else None


@functools.lru_cache(maxsize=4)
def _study(run_path: str) -> optuna.Study:
    """The run directory's study, opened once per worker process (for the rungs' records)."""
    return RunDir(run_path).load_study()


def _trainable(params: dict, bench: trial_mod.Bench, tracking_attrs: Mapping[str, Any] | None) -> None:
    """One Tune trial on a worker: run its members as one batch, report each one's result (or failure) as it
    ends and log its MLflow child run. Members the study already has (a restored batch) are skipped."""
    torch.set_num_threads(trial_threads(bench.config))
    started = datetime.now()
    gpus = ray.get_gpu_ids()  # what Ray gave this trial (it sets CUDA_VISIBLE_DEVICES to them)
    worker = f"{socket.gethostname()}:{os.getpid()}" + (f" gpu {','.join(map(str, gpus))}" if gpus else "")
    members = [(space.TrialPlan(**m[PLAN]), m[NUMBER]) for m in params[BATCH]]
    unfit = _unfit_worker(bench, gpus)
    if unfit:
        for plan, number in members:
            _report(trial_mod.Job(plan, number), unfit, bench, tracking_attrs, worker, started)
        return
    study = _study(str(bench.run_dir))
    jobs = [trial_mod.Job.of(plan, number, study, bench) for plan, number in members  # gate, ceiling: via storage
            if not study_storage.is_finished(study, number)]
    trial_mod.run_batch(jobs, bench, lambda index, outcome: _report(
        jobs[index], outcome, bench, tracking_attrs, worker, started))


def _unfit_worker(bench: trial_mod.Bench, gpus: list) -> TrialFailed | None:
    """Why this worker cannot run the batch: the run directory is not visible here, or Ray gave it a GPU that
    torch cannot see (with ``backend.device: auto`` its trials would silently compute on the CPU)."""
    if not bench.run_dir.is_dir():
        return TrialFailed(f"the run directory {bench.run_dir} is not visible on {socket.gethostname()}; "
                                     "put it on storage every node mounts (docs/cluster.md)")
    if gpus and bench.config.backend.device != "cpu" and not torch.cuda.is_available():
        return TrialFailed(
            f"Ray gave this trial GPU {','.join(map(str, gpus))} (CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES', '')}) but torch on {socket.gethostname()} sees no GPU "
            f"(torch {torch.__version__}, a CPU build or no driver); install a CUDA build of torch there, "
            "or search with --gpus-per-trial 0, or set backend.device: cpu to compute on the CPU anyway")
    return None


def _report(job: trial_mod.Job, outcome: trial_mod.Outcome, bench: trial_mod.Bench,
            tracking_attrs: Mapping[str, Any] | None, worker: str, started: datetime) -> None:
    """Report how one member ended to Tune (the searcher tells its Optuna trial) and log its MLflow child run."""
    plan, number = job.plan, job.number
    metrics = {o.name: math.nan for o in objectives.declared(bench.config, bench.problem)} | {MEMBER: number}
    record = TrialRecord(number, "running", worker=worker, **plan.as_dict())
    if isinstance(outcome, TrialStopped):
        record = replace(record, state="pruned", stopped_at=outcome.epochs, stopped_seconds=outcome.seconds,
                         ceiling=outcome.ceiling)
        tune.report(metrics | {STOPPED: json.dumps({"epochs": outcome.epochs, "metrics": outcome.metrics,
                                                    "seconds": outcome.seconds, "ceiling": outcome.ceiling,
                                                    "worker": worker})})
    elif isinstance(outcome, Exception):  # recorded on the trial, the search goes on
        record = replace(record, state="fail", fail_reason=failure(outcome))
        tune.report(metrics | {FAILED: record.fail_reason})
    else:
        record = replace(record, state="complete", values=tuple(outcome.values), result=outcome)
        payload = {"values": outcome.values, "attrs": outcome.to_attrs(), "worker": worker}
        tune.report(metrics | dict(zip(metrics, outcome.values)) | {RESULT: json.dumps(payload)})
    record = replace(record, rungs=dict(job.gate.recorded) if job.gate else {})
    tracker = _tracker(tracking_attrs)
    if tracker:
        tracker.log_trial(FrozenTrial(
            number=number, state=TrialState[record.state.upper()], value=None,
            values=list(record.values) if record.values else None, datetime_start=started,
            datetime_complete=datetime.now(), params={}, distributions={}, user_attrs=record.to_attrs(),
            system_attrs={}, intermediate_values={}, trial_id=-1,
        ))


def _trial_dirname(trial: tune.experiment.Trial) -> str:
    return f"trial-{trial.config[BATCH][0][NUMBER]:06d}-{trial.trial_id}"


def ships_datasets(config: SearchConfig) -> bool:
    """Ray pickles the bench into its object store: a problem read from Datasets goes without its data."""
    return False


def preflight(config: SearchConfig) -> None:
    """Refuse a cluster address nothing answers at, before anything is written (Ray itself would wait forever)."""
    address = config.backend.address
    if address is None:
        return
    if address == "auto":
        current = Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray" / "ray_current_cluster"
        address = os.environ.get("RAY_ADDRESS") or (current.read_text().strip() if current.exists() else "")
        if not address:
            raise UserError("--address auto: no Ray cluster is running on this node; start one with "
                            "`ray start --head` (docs/cluster.md) or drop --address to run on a local Ray")
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot reach the Ray cluster at {address!r} ({exc}); --address takes auto or HOST:PORT "
                        "of a running head node (`ray start --head`, docs/cluster.md)") from None


def trial_threads(config: SearchConfig) -> int:
    """A Ray trial's torch threads: its CPUs."""
    return max(1, int(config.backend.cpus_per_trial))


def _check_resources(config: SearchConfig) -> None:
    """Refuse a per-trial request no node of the cluster could ever meet (Tune would wait forever)."""
    need = {"CPU": config.backend.cpus_per_trial, "GPU": config.backend.gpus_per_trial}
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    for resource, amount in need.items():
        largest = max((n.get(resource, 0.0) for n in nodes), default=0.0)
        if amount > largest:
            flag = f"--{resource.lower()}s-per-trial"
            raise UserError(f"{flag} {amount:g}: no node of the Ray cluster has that many {resource}s "
                            f"(the largest has {largest:g}); lower {flag} or add such a node")


def _connect(config: SearchConfig) -> bool:
    """Join the configured cluster or start a local Ray on loopback; True when this call started Ray."""
    if ray.is_initialized():
        return False
    pythonpath = [*config.problem.pythonpath, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join(pythonpath)}} if pythonpath else None
    address = config.backend.address
    local = {} if address else {"_node_ip_address": "127.0.0.1"}
    try:
        ray.init(address=address, runtime_env=runtime_env, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING, **local)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UserError(f"cannot join the Ray cluster at {address!r} ({exc}); start one with `ray start --head` "
                        "(docs/cluster.md) or drop --address to run on a local Ray") from None
    return True


def _warn_unreachable_tracking(uri: str | None) -> None:
    """On a multi-node cluster, a file-based MLflow store on this node is out of the workers' reach."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if uri and len(nodes) > 1 and urllib.parse.urlparse(uri).scheme in ("", "file", "sqlite"):
        log.warning(
            "MLflow tracking URI %s is a local file but the Ray cluster has %d nodes: workers on other nodes cannot "
            "reach it, so their trials get MLflow runs only at the final sync. Fix: run `mlflow server "
            "--backend-store-uri postgresql://… --artifacts-destination <shared store>` and set tracking.uri to "
            "http://<host>:5000 (docs/cluster.md).", uri, len(nodes))


@contextmanager
def _environ(name: str, value: str) -> Iterator[None]:
    """Set an environment variable for the block, then restore it."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            del os.environ[name]
        else:
            os.environ[name] = before


def _slots(config: SearchConfig) -> int:
    """How many trials the cluster can run at once (at most ``max_concurrent``)."""
    total = ray.cluster_resources()
    need = {"CPU": config.backend.cpus_per_trial, "GPU": config.backend.gpus_per_trial}
    fits = min(int(total.get(r, 0.0) // amount) for r, amount in need.items() if amount > 0)
    return max(1, min(fits, config.backend.max_concurrent or fits))


class _StopRequested(tune.Stopper):
    """Ends Tune's experiment once the search was asked to stop (:mod:`automtl.interrupts`: a SIGTERM, or a
    Ctrl-C that came before Tune took over SIGINT)."""

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return interrupts.requested()


def _tuner(run_dir: RunDir, config: SearchConfig, trainable: Callable) -> tune.Tuner:
    """Restore Tune's experiment in the run directory when there is one, else start a new one."""
    experiment = run_dir.path / EXPERIMENT
    if tune.Tuner.can_restore(str(experiment)):
        log.info("restoring the Ray Tune experiment in %s", experiment)
        return tune.Tuner.restore(str(experiment), trainable, resume_unfinished=True, resume_errored=False)
    recover(run_dir.load_study())
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=StudySearcher(str(run_dir.path)), num_samples=-1,
                                    max_concurrent_trials=config.backend.max_concurrent, reuse_actors=True,
                                    trial_dirname_creator=_trial_dirname),
        run_config=tune.RunConfig(name=EXPERIMENT, storage_path=str(run_dir.path), verbose=0, stop=_StopRequested(),
                                  failure_config=tune.FailureConfig(max_failures=0)),
    )


def run(
    run_dir: RunDir,
    config: SearchConfig,
    bench: trial_mod.Bench,
    on_progress: Callable[[progress.Snapshot], None] | None = None,
) -> None:
    """Run the search to its budget on Ray (caller holds the run-dir lock)."""
    run_dir = RunDir(run_dir.path.resolve())  # workers do not share our working directory
    bench = replace(bench, run_dir=run_dir.path)
    study = run_dir.load_study()
    tracking_attrs = tracking.Tracker.description(study.user_attrs)
    started = _connect(config)
    try:
        _check_resources(config)
        _warn_unreachable_tracking(tracking_attrs and tracking_attrs["uri"])
        resources = {"cpu": config.backend.cpus_per_trial, "gpu": config.backend.gpus_per_trial}
        trainable = tune.with_resources(
            tune.with_parameters(_trainable, bench=bench, tracking_attrs=tracking_attrs), resources)
        tune_log = logging.getLogger("ray.tune")
        level, _ = tune_log.level, tune_log.setLevel(logging.ERROR)  # not its "resume with Tuner.restore" hints
        # With a searcher Tune keeps one trial pending; a reused actor then takes it before a second actor is up,
        # and trials run one at a time. Let it keep one pending trial per slot.
        try:
            with _environ(PENDING, str(_slots(config))), reporting(run_dir, config, on_progress):
                _tuner(run_dir, config, trainable).fit()
        finally:
            tune_log.setLevel(level)
    finally:
        if started:
            ray.shutdown()
    # Tune returns normally on Ctrl-C; trials still running in the study tell us it stopped early.
    if run_dir.load_study().get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        raise KeyboardInterrupt
    interrupts.check()
