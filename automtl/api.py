"""The public, high-level operations the CLI calls (and users may call directly)."""

from __future__ import annotations

import dataclasses
import logging
import os
import uuid
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import optuna
from torch import nn

from automtl import config as config_mod
from automtl import dense as dense_mod
from automtl import fidelity, focus, interrupts, objectives, pareto, progress, report, retention, space, tracking
from automtl.backends import get_backend
from automtl.config import SearchConfig
from automtl.errors import UserError, is_disk_full
from automtl.problems import Problem, get_problem
from automtl.records import StudyRecord, TrialRecord
from automtl.pruning import PruneContext, require
from automtl.rundir import RunDir, open_storage
from automtl.measure import costs
from automtl.models import task_outputs
from automtl.train import TrainConfig, evaluate, predict
from automtl.trial import Bench

log = logging.getLogger(__name__)
optuna.logging.set_verbosity(optuna.logging.WARNING)
# Multi-objective metric names and TPE's `group` are experimental in Optuna; we use them on purpose.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def default_cache_dir() -> Path:
    """``$AUTOMTL_CACHE_DIR``, else ``~/.cache/automtl``."""
    return Path(os.environ.get("AUTOMTL_CACHE_DIR") or Path.home() / ".cache" / "automtl")


@dataclass
class DenseReport:
    problem: str
    model: dict
    seed: int
    epochs: int
    metrics: dict[str, float]  # test split, per task
    val_metrics: dict[str, float]
    objectives: dict[str, objectives.Objective]  # per task: metric name, direction, how to show it
    parameters: int
    checkpoint: str
    cached: bool
    train_seconds: float


def train_dense(
    problem: str,
    options: dict[str, Any] | None = None,
    model: dict[str, Any] | None = None,
    config: TrainConfig = TrainConfig(),
    seed: int = 0,
    cache_dir: str | Path | None = None,
) -> DenseReport:
    """Train (or load from cache) the dense model of ``problem`` and evaluate it per task.

    Example:
        >>> import tempfile
        >>> dense = train_dense("multidigits", {"train_pairs": 600, "eval_pairs": 200}, config=TrainConfig(epochs=2),
        ...                     cache_dir=tempfile.mkdtemp())
        >>> sorted(dense.metrics), dense.cached
        (['left', 'right'], False)
    """
    prob = get_problem(problem, seed=seed, **(options or {}))
    spec = prob.default_model.override(**(model or {}))
    dense = dense_mod.trained(prob, spec, config, seed, cache_dir or default_cache_dir())
    return DenseReport(
        problem=prob.name,
        model=spec.as_dict(),
        seed=seed,
        epochs=config.epochs,
        metrics=evaluate(dense.model, prob, prob.test),
        val_metrics=evaluate(dense.model, prob, prob.val),
        objectives={task.name: objectives.of_task(task) for task in prob.tasks},
        parameters=sum(p.numel() for p in dense.model.parameters()),
        checkpoint=str(dense.path),
        cached=dense.cached,
        train_seconds=dense.seconds,
    )


class SearchInterrupted(KeyboardInterrupt):
    """The search was stopped (Ctrl-C / SIGTERM); finished trials are safe in the run directory."""

    def __init__(self, run_dir: str):
        super().__init__(run_dir)
        self.run_dir = run_dir


@dataclass
class SearchSummary:
    run_dir: str
    status: dict
    front: list[dict]
    objectives: list[dict]  # automtl.objectives.Objective fields, in the order of the trials' values
    dense_metrics: dict[str, float]
    mlflow: dict[str, str] | None = None  # where the runs are: tracking_uri, experiment_id, url, ui_command


def _first_difference(old: Any, new: Any, path: str = "") -> tuple[str, Any, Any] | None:
    """The dotted path of the first leaf where two config trees differ, with both values."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in [*old, *(k for k in new if k not in old)]:
            found = _first_difference(old.get(key), new.get(key), f"{path}.{key}" if path else key)
            if found:
                return found
        return None
    return None if old == new else (path, old, new)


def _prepare_run_dir(config: SearchConfig, run: RunDir, resume: bool) -> SearchConfig:
    """Check what may be done with ``run``; on resume, return the stored config with the new budget."""
    if resume:
        run.require()
        stored = run.load_config()
        if config.fine_tune.epochs == "auto" and stored.fine_tune.epochs != "auto":  # the rule chose at the start
            config = config.model_copy(update={"fine_tune": config.fine_tune.model_copy(
                update={"epochs": stored.fine_tune.epochs}), "rungs": stored.rungs})
        difference = _first_difference(stored.study_identity(), config.study_identity())
        if difference:
            field, old, new = difference
            raise UserError(
                f"--resume: the config differs from the one {run.path} was started with in {field!r} "
                f"({old!r} there, {new!r} now); only {', '.join(config_mod.RESUMABLE)} may change"
            )
        # given dense weights are read from where they are now (their digest must match the study's)
        dense = stored.dense.model_copy(update={"weights": config.dense.weights})
        return stored.model_copy(update={k: getattr(config, k) for k in config_mod.RESUMABLE} | {"dense": dense})
    if run.exists():
        raise UserError(f"{run.path} already holds a search; pass --resume to continue it or choose another --run-dir")
    leftovers = {p.name for p in run.path.iterdir()} - {"config.yaml", ".lock", ".ask.lock", "dense"} if run.path.is_dir() else set()
    if leftovers:
        raise UserError(f"{run.path} exists and holds other files ({sorted(leftovers)[:3]}…); choose an empty or new --run-dir")
    return config


def _check_model(config: SearchConfig, problem: Problem) -> int:
    """Build the model and refuse, before anything is written, one that cannot be built, run or pruned
    by the configured strategies. Returns its parameter count."""
    spec = config.model_spec(problem)
    try:
        model = problem.build_model(spec)
        ctx = PruneContext.create(model, problem, calibration_size=8, heads=config.pruning.heads,
                                  aggregate=config.pruning.aggregate)
    except UserError:
        raise
    except (RuntimeError, MemoryError, ValueError, TypeError) as exc:
        raise UserError(f"model: cannot build and run {spec.as_dict()} on problem {problem.name!r} "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    require(model, ctx, list(config.pruning.strategies))
    return sum(p.numel() for p in model.parameters())


def _checked(config: SearchConfig, problem: Problem | None, model: nn.Module | None
             ) -> tuple[Problem, int, dense_mod.DenseModel | None]:
    """The problem (built from the config unless given), the model's parameter count and the given dense
    reference, after every check a search makes before it writes anything."""
    problem = problem if problem is not None else config.build_problem()
    config.check(problem.task_names)
    total_parameters = _check_model(config, problem)
    reference = dense_mod.given(problem, config.model_spec(problem), config.seed, config.dense.weights,
                                config.dense.train is not False, model)
    return problem, total_parameters, reference


def inspect(config: SearchConfig | Mapping[str, Any] | str | Path, problem: Problem | None = None, *,
            overrides: list[str] = (), model: nn.Module | None = None):
    """What a search of ``config`` can prune in its model, before any search: layers, unit groups (and the
    refused ones, with why), heads, where each strategy applies, one trial's measured cost
    (:class:`automtl.inspection.Inspection`). Refuses what the search refuses, with the same messages.

    Example:
        >>> import automtl
        >>> problem = automtl.get_problem("multidigits", train_pairs=600, eval_pairs=200)
        >>> found = automtl.inspect({"pruning": {"strategies": {"activation": None}}}, problem)
        >>> sorted(g.root for g in found.groups), found.strategies["activation"]
        (['trunk.1', 'trunk.3'], '384 units in 2 groups')
    """
    from automtl import inspection

    config = config_mod.coerce(config, list(overrides))
    problem, _, reference = _checked(config, problem, model)
    if reference is not None:
        described = f"given ({reference.source}{f' {reference.path}' if reference.path else ''}, digest {reference.digest[:12]})"
        network = reference.model
    else:
        described = f"trained by automtl at the search's start ({config.dense.epochs} epochs); shown untrained"
        network = problem.build_model(config.model_spec(problem)).eval()
    return inspection.inspect(config, problem, network, described)


def _create_study(run: RunDir, config: SearchConfig, problem: Problem, total_parameters: int,
                  reference: dense_mod.DenseModel | None) -> optuna.Study:
    """A new study in the run directory, with its objectives and dense reference described and enqueued
    plans queued; a given dense reference is kept in the run directory."""
    declared = objectives.declared(config, problem)
    study = run.create_study(config.storage, config.name, [o.direction for o in declared])
    study.set_metric_names([o.name for o in declared])
    if reference is not None:
        dense_mod.keep(reference, run.path)
    else:  # left by an earlier attempt in this folder that was given weights
        (run.path / dense_mod.REFERENCE).unlink(missing_ok=True)
    StudyRecord.write(study, objectives=[o.name for o in declared], directions=[o.direction for o in declared],
                      objective_specs=objectives.to_attrs(declared), tasks=problem.task_names,
                      total_parameters=total_parameters, study_uid=uuid.uuid4().hex[:12],
                      dense_reference=reference.record() if reference else {"source": "trained"})
    for plan in [*config.seed_plans(), *config.enqueue]:
        space.enqueue(study, plan, config, problem.task_names)
    return study


def _resumed_reference(study: optuna.Study, run: RunDir, config: SearchConfig, problem: Problem,
                       reference: dense_mod.DenseModel | None) -> dense_mod.DenseModel | None:
    """On ``--resume``: the dense reference the study was started with (None: automtl trained it), refusing
    given weights whose digest differs from the recorded one."""
    recorded = StudyRecord.of(study).dense_reference
    if recorded["source"] == "trained":
        if reference is not None:
            raise UserError(f"--resume: {run.path} was started with a dense model automtl trained; it cannot go "
                            f"on from given weights ({reference.source}); start a new --run-dir for them")
        return None
    kept = dense_mod.stored(problem, config.model_spec(problem), run.path)
    reference = reference or kept
    if reference is None:
        raise UserError(f"--resume: the dense model {run.path} was given is missing from {run.path / dense_mod.REFERENCE}; "
                        "pass it again (model=...)")
    if reference.digest != recorded["digest"]:
        raise UserError(f"--resume: the dense weights given now ({reference.source}, digest {reference.digest[:12]}) "
                        f"differ from those {run.path} was started with (digest {recorded['digest'][:12]}); resume "
                        "with the same weights, or start a new --run-dir")
    return reference


def _describe_dense(study: optuna.Study, bench: Bench) -> None:
    """Once per study: store the dense model's metrics and the focus floors, measure the objectives' open
    bounds."""
    record = StudyRecord.of(study)
    if record.dense_test_metrics:
        if bench.config.focus and record.focus is None:  # cut off between the two writes
            _set_focus(study, bench, record.dense_val_metrics)
        return
    problem, batch = bench.problem, bench.config.data.batch_size
    dense_val = evaluate(bench.dense, problem, problem.val, batch)
    StudyRecord.write(study, dense_test_metrics=evaluate(bench.dense, problem, problem.test, batch),
                      dense_val_metrics=dense_val)
    declared = objectives.of_study(study)
    if bench.config.focus:
        _set_focus(study, bench, dense_val)
    if record.objective_specs is None or objectives.bounded(declared):
        return
    try:
        measured = objectives.measured(declared, *_reference_values(bench, dense_val))
    except Exception as exc:  # noqa: BLE001 - a user's metric may fail here: the search goes on without those bounds
        log.warning("the objectives' open bounds could not be measured (%s: %s); until they are, those objectives "
                    "count 0 in the hypervolume", type(exc).__name__, exc)
        return
    StudyRecord.write(study, objective_specs=objectives.to_attrs(measured))


def _reference_values(bench: Bench, dense_val: dict[str, float]) -> tuple[dict[str, float], dict[str, float]]:
    """The dense model's value of every objective (``dense_val``: its validation metric per task), and a
    constant predictor's value of every task metric (the dense model's mean validation output, for every
    input): how :mod:`automtl.objectives` bounds them."""
    problem, dense, config = bench.problem, bench.dense.eval(), bench.config
    outputs, targets = predict(lambda x: task_outputs(dense(x), problem.task_names), problem.val, config.data.batch_size)
    constant = problem.score({task: value.mean(0, keepdim=True).expand_as(value) for task, value in outputs.items()},
                             targets)
    dense_values = {t.objective: dense_val[t.name] for t in problem.tasks}
    dense_values |= costs(dense, problem, config) | {"nonzero_parameters": sum(p.numel() for p in dense.parameters())}
    return dense_values, {t.objective: constant[t.name] for t in problem.tasks}


def _set_focus(study: optuna.Study, bench: Bench, dense_val: dict[str, float]) -> None:
    floors = focus.floors(bench.config.focus.min_relative, objectives.of_study(study), dense_val)
    StudyRecord.write(study, focus=floors)


@contextmanager
def _stop_when_disk_full(run: RunDir) -> Iterator[None]:
    """A full disk ends the search with a clear message; what was written before stays readable."""
    try:
        yield
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        raise UserError(f"no space left on device while writing {exc.filename or 'to ' + str(run.path)}; every "
                        f"trial finished before is kept in {run.path}. Free some space, then continue with "
                        "--resume") from None


def search(
    config: SearchConfig | Mapping[str, Any] | str | Path,
    problem: Problem | None = None,
    run_dir: str | Path | None = None,
    *,
    overrides: list[str] = (),
    resume: bool = False,
    on_progress=None,
    model: nn.Module | None = None,
) -> SearchSummary:
    """Run (or resume) a joint search; everything is validated before anything is written.

    ``config`` is a :class:`~automtl.config.SearchConfig`, a mapping shaped like a search-space file, or
    such a file's path; ``overrides`` (``key.sub=value``) apply first. ``problem`` searches that
    :class:`~automtl.Problem` object instead of the config's: the run records its name only, so pass it
    again to resume or export. ``model`` is a trained module to compress: its weights (``state_dict``) are
    loaded into the problem's architecture and are the dense reference, never retrained (as
    ``dense.weights`` in the config). ``run_dir`` defaults to ``runs/<name>``.

    Example:
        >>> import tempfile, automtl
        >>> problem = automtl.get_problem("multidigits", train_pairs=600, eval_pairs=200)
        >>> config = {"dense": {"epochs": 2}, "fine_tune": {"epochs": 1}, "trials": 3,
        ...           "pruning": {"strategies": {"global_magnitude": None}}, "tracking": {"enabled": False}}
        >>> summary = automtl.search(config, problem, run_dir=tempfile.mkdtemp() + "/demo")
        >>> summary.status["counts"]["complete"]
        3
    """
    config = config_mod.coerce(config, list(overrides))
    given = problem is not None
    if given:
        config = config.model_copy(update={"problem": config_mod.ProblemConfig.given(problem)})
    run = RunDir(run_dir or Path("runs") / config.name)
    config = _prepare_run_dir(config, run, resume)
    problem, total_parameters, reference = _checked(config, problem, model)
    backend = get_backend(config.backend.name)
    backend.preflight(config)
    if given and not problem.in_memory and not backend.ships_datasets(config):
        raise UserError(f"problem {problem.name!r} reads Dataset splits, which {config.backend.name} workers "
                        "cannot receive as an object; run it with the local backend on CPU, or name its factory "
                        "in the config (problem.name: package.module:function) so every worker builds it")
    if config.storage and not resume:
        open_storage(config.storage)  # reachable, driver installed: checked before anything is written
    with run.exclusive(), _stop_when_disk_full(run), interrupts.deferred():
        study = _open_study(run, config, problem, total_parameters, resume, reference)
        if resume:
            reference = _resumed_reference(study, run, config, problem, reference)
        run.write_config(config)
        tracker = tracking.start(study, config, run.path)
        with tracking.parent_status(tracker):  # RUNNING now; FINISHED, KILLED or FAILED as it ends
            bench = Bench.prepare(config, run.path, problem, reference)
            if config.fine_tune.epochs == "auto":
                config = fidelity.resolve(config, study, bench.problem, bench.dense, backend.trial_threads(config))
                run.write_config(config)
                bench = dataclasses.replace(bench, config=config)
            _describe_dense(study, bench)
            try:
                backend.run(run, config, bench, on_progress)
            except KeyboardInterrupt:
                raise SearchInterrupted(str(run.path)) from None
            return _finish(run, config, tracker)


def _finish(run: RunDir, config: SearchConfig, tracker) -> SearchSummary:
    """The dashboard, the final MLflow sync (best effort) and the summary of a finished search."""
    study = run.load_study()
    report.write_dashboard(run.path)
    if tracker:
        try:
            tracking.sync(study, tracker, {t.number for t in pareto.front(study)},
                          pareto.hypervolume_history(study), report.mlflow_artifacts(study, run))
        except Exception as exc:  # noqa: BLE001 - the study is complete; MLflow is only a view
            log.warning("final MLflow sync failed (%s); run `automtl report %s --sync-mlflow` later", exc, run.path)
    record = StudyRecord.of(study)
    return SearchSummary(
        run_dir=str(run.path),
        status=progress.take(study, config.trials).as_dict(),
        front=pareto.described_front(study),
        objectives=objectives.to_attrs(objectives.of_study(study)),
        dense_metrics=record.dense_test_metrics,
        mlflow=tracking.where_to_look(record.mlflow) if tracker else None,
    )


def _open_study(run: RunDir, config: SearchConfig, problem: Problem, total_parameters: int,
                resume: bool, reference: dense_mod.DenseModel | None) -> optuna.Study:
    if not resume:
        return _create_study(run, config, problem, total_parameters, reference)
    cut = run.repair_journal()
    if cut:
        log.warning("study.journal ended in an incomplete last record (%d bytes, from a crash or a full disk); "
                    "removed it, every finished trial before it is kept", cut)
    return run.load_study()


def status(run_dir: str | Path) -> dict:
    """Trial counts by state, budget, front size, hypervolume, time spent, disk use (``disk``: bytes of the
    run directory, of them the kept trial weights', their count, and the ``keep_weights`` rule) and the full
    fine-tune (``fine_tune``: its ``epochs``, and ``chosen``: what the rule measured, when it chose them)."""
    run = RunDir(run_dir).require()
    config, study = run.load_config(), run.load_study()
    disk = retention.disk_use(run) | {"keep_weights": config.keep_weights}
    fine_tune = {"epochs": config.fine_tune.epochs, "chosen": StudyRecord.of(study).fidelity}
    return progress.take(study, config.trials).as_dict() | {"disk": disk, "fine_tune": fine_tune}


def pareto_front(run_dir: str | Path, where: list[str] = ()) -> list[dict]:
    """The Pareto trials of a run, decoded; ``where`` keeps those meeting constraints like ``left>=0.92``."""
    study = RunDir(run_dir).require().load_study()
    declared = objectives.of_study(study)
    return [pareto.describe(t, declared) for t in pareto.require(pareto.front(study), list(where), declared)]


def objectives_of(run_dir: str | Path) -> list[objectives.Objective]:
    """The objectives of a run: names, directions, bounds, in the order of the trials' values."""
    return objectives.of_study(RunDir(run_dir).require().load_study())


def report_dashboard(run_dir: str | Path, output: str | Path | None = None) -> Path:
    """Write the study dashboard page; returns its path."""
    return report.write_dashboard(run_dir, output)


def sync_mlflow(run_dir: str | Path) -> dict:
    """Rebuild every MLflow run of a study from its storage."""
    return report.sync_mlflow(run_dir)


def export(run_dir: str | Path, out_dir: str | Path, *, trial: int | None = None, pick: str | None = None,
           require: list[str] = (), formats: list[str] | None = None, quantize: str | None = None,
           register: str | None = None, alias: str = "candidate", problem: Problem | None = None,
           onnx_tolerance: float | None = None, latency_batch: int | None = None):
    """Export one trial of a run as a genuinely smaller model into the new folder ``out_dir``.

    The trial is ``trial``, or the Pareto point ``pick`` (``knee`` by default, ``sparsest``,
    ``best-<task>``) among those meeting ``require`` (``left>=0.9``). ``formats`` are names from
    :data:`automtl.formats.WRITERS` (all by default). ``onnx_tolerance`` is how far onnxruntime may differ
    from PyTorch, as a share of each task's output scale (default :data:`automtl.formats.ONNX_TOLERANCE`).
    ``latency_batch`` is the batch the card's latencies are timed on (default: chosen from the model's
    FLOPs, :func:`automtl.exporting.latency_batch`). Pass ``problem`` when the search was given a Problem
    object. Returns the folder and ``card.json``'s contents.

    Example:
        >>> import automtl
        >>> result = automtl.export(run_dir, run_dir + "-knee", pick="knee", formats=["sparse"], problem=problem)
        >>> model = automtl.load_pruned(result.out_dir, problem)
        >>> model(problem.test.sample(2).inputs)["left"].shape
        torch.Size([2, 10])
    """
    from automtl import exporting

    return exporting.export(run_dir, out_dir, trial, pick, list(require), formats or list(exporting.FORMATS),
                            quantize, register, alias, problem,
                            onnx_tolerance=exporting.ONNX_TOLERANCE if onnx_tolerance is None else onnx_tolerance,
                            latency_batch=latency_batch)


def load_study(run_dir: str | Path) -> optuna.Study:
    """The Optuna study of a run (read-only use: trials, values, user attributes)."""
    return RunDir(run_dir).require().load_study()


def front(run_dir: str | Path, where: list[str] = ()) -> list[TrialRecord]:
    """The Pareto trials of a run as typed records (plan, result, metrics), by trial number; ``where``
    keeps those meeting constraints like ``left>=0.92``.

    Example:
        >>> import automtl
        >>> best = max(automtl.front(run_dir), key=lambda r: r.result.sparsity)
        >>> 0 < best.result.sparsity < 1
        True
    """
    study = load_study(run_dir)
    kept = pareto.require(pareto.front(study), list(where), objectives.of_study(study))
    return [TrialRecord.from_trial(t) for t in sorted(kept, key=lambda t: t.number)]
