"""MLflow views of a study: an experiment per study, a parent run, a child run per trial.

The study storage stays the source of truth: everything here can be rebuilt
from it with :func:`sync` (``automtl report RUN_DIR --sync-mlflow``). Runs are
found again by tags (``automtl.study``, ``automtl.role``, ``automtl.trial``),
so syncing is idempotent and a resumed search reattaches to its parent run.

Child runs are created by whichever process ran the trial (``Tracker.attach``
reads the experiment and parent run from the study), so this works from any
worker. A tracking server that cannot be reached never stops a search: it is
reported once, tracking is switched off in that process, and the trials stay
in the study for a later sync.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import tempfile
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping

import optuna
from optuna.trial import FrozenTrial, TrialState

from automtl.objectives import STRUCTURAL, Objective, metric_names, of_attrs, of_study
from automtl.records import MlflowLink, StudyRecord, TrialRecord

if TYPE_CHECKING:
    from mlflow.entities import Run

log = logging.getLogger(__name__)

ROLE, STUDY_TAG, TRIAL_TAG = "automtl.role", "automtl.study", "automtl.trial"
# MLflow 3 opens an experiment without this tag in its GenAI view; ours are model training.
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
# Fail fast instead of MLflow's multi-minute retry schedule when a server is down.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
# A database store keeps no pooled connections: forked workers reuse the calling process's cached store, and
# would otherwise share its open SQLite connections.
os.environ.setdefault("MLFLOW_SQLALCHEMYSTORE_POOLCLASS", "NullPool")


def _client(uri: str | None):
    from mlflow.tracking import MlflowClient  # heavy import, only when tracking

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # not its database-migration chatter
    return MlflowClient(tracking_uri=uri)


def reachable(uri: str) -> bool:
    """For http(s) URIs, whether something listens there (3 s); local stores are always reachable."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme not in ("http", "https"):
        return True
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=3):
            return True
    except OSError:
        return False


def absolute_uri(uri: str) -> str:
    """A file-based store's URI with an absolute path, so every process (and later `report`) finds the same store."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "sqlite" and parsed.path.startswith("/") and not parsed.path.startswith("//"):
        return f"sqlite:///{Path(parsed.path[1:]).resolve()}"
    if parsed.scheme in ("", "file") and uri not in ("databricks", "databricks-uc") and not Path(parsed.path).is_absolute():
        return Path(parsed.path).resolve().as_uri()
    return uri


# How a finished trial's run ends in MLflow; a trial a rung stopped is KILLED (tagged state=pruned, stopped_at).
TERMINATED = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "KILLED"}


def rung_names(objectives: list[Objective]) -> list[str]:
    """The objectives a rung records, in order (those fine-tuning changes; see :mod:`automtl.rungs`)."""
    return [o.name for o in objectives if o.name not in STRUCTURAL]


def trial_params(record: TrialRecord) -> dict[str, str]:
    params = {"order": " > ".join(record.order) or "(none)", "loss_method": record.loss_method,
              "distillation": record.distillation, "lr": record.lr, "schedule": record.schedule,
              "worker": record.worker}
    params |= {f"threshold.{k}": v for k, v in record.thresholds.items()}
    params |= {f"loss_weight.{k}": v for k, v in (record.loss_weights or {}).items()}
    return {k: str(v) for k, v in params.items() if v is not None}


def trial_metrics(record: TrialRecord, metric_names: Mapping[str, str]) -> dict[str, float]:
    """A finished trial's MLflow metrics; task metrics are named ``<metric>.<task>`` (``test.<metric>.<task>``)."""
    result = record.result
    if result is None:
        return {}
    metrics = {k: getattr(result, k) for k in ("sparsity", "compression_ratio", "nonzero_parameters", "empty_units",
                                                "fine_tune_seconds", "prune_seconds")}
    metrics |= {f"{metric_names.get(t, 'metric')}.{t}": v for t, v in result.metrics.items()}
    metrics |= {f"test.{metric_names.get(t, 'metric')}.{t}": v for t, v in result.test_metrics.items()}
    metrics |= result.structure
    return {k: float(v) for k, v in metrics.items()}


class Tracker:
    """Writes one study's runs; every failure is reported once and then tracking stops quietly."""

    def __init__(self, client, experiment_id: str, parent_run_id: str, study_uid: str,
                 metric_names: Mapping[str, str] | None = None, rung_names: list[str] | None = None):
        self.client, self.experiment_id = client, experiment_id
        self.parent_run_id, self.study_uid = parent_run_id, study_uid
        self.metric_names = dict(metric_names or {})  # task -> metric name, for the child runs' metric keys
        self.rung_names = list(rung_names or [])  # the objectives a rung records, in order
        self.broken = False

    @staticmethod
    def description(study_attrs: Mapping[str, Any]) -> dict[str, Any] | None:
        """What a worker needs to log child runs, as plain data (None if tracking is off or unavailable)."""
        record = StudyRecord.from_attrs(study_attrs)
        if not record.mlflow_active or record.mlflow is None:
            return None
        declared = of_attrs(study_attrs)
        return {"uri": record.mlflow.uri, "experiment_id": record.mlflow.experiment_id,
                "parent_run_id": record.mlflow.parent_run_id, "study_uid": record.study_uid,
                "metric_names": metric_names(declared), "rung_names": rung_names(declared)}

    @classmethod
    def from_description(cls, described: Mapping[str, Any] | None) -> "Tracker | None":
        """The tracker :meth:`description` describes (None when tracking is off)."""
        if not described:
            return None
        return cls(_client(described["uri"]), described["experiment_id"], described["parent_run_id"],
                   described["study_uid"], described["metric_names"], described["rung_names"])

    @classmethod
    def attach(cls, study: optuna.Study) -> "Tracker | None":
        """The tracker a search set up for ``study`` (None if tracking is off or unavailable)."""
        return cls.from_description(cls.description(study.user_attrs))

    def log_trial(self, trial: FrozenTrial, pareto: bool | None = None) -> None:
        """Create (or update) the child run of a finished trial."""
        if self.broken:
            return
        try:
            self._log_trial(trial, pareto, self._child_runs(trial.number).get(trial.number))
        except Exception as exc:  # noqa: BLE001 - tracking must never stop a search
            self.broken = True
            log.warning("MLflow logging failed (%s); tracking is off in this process, trials stay in the study. "
                        "Run `automtl report RUN_DIR --sync-mlflow` later.", exc)

    def _child_runs(self, number: int | None = None) -> dict[int, Run]:
        """The study's child runs by trial number (only trial ``number``'s when given)."""
        only = f" and tags.`{TRIAL_TAG}` = '{number}'" if number is not None else ""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{STUDY_TAG}` = '{self.study_uid}' and tags.`{ROLE}` = 'trial'{only}",
            max_results=50000,
        )
        return {int(r.data.tags[TRIAL_TAG]): r for r in runs}

    def _log_trial(self, trial: FrozenTrial, pareto: bool | None, run: Run | None) -> None:
        """Create the trial's child run, or bring an existing one up to date: its tags, and whatever metrics,
        params and end status it lacks (a process that stopped between creating the run and logging to it)."""
        from mlflow.entities import Metric, Param, RunStatus, RunTag

        record = TrialRecord.from_trial(trial)
        tags = {STUDY_TAG: self.study_uid, ROLE: "trial", TRIAL_TAG: str(trial.number),
                "mlflow.parentRunId": self.parent_run_id, "state": record.state}
        if record.fail_reason is not None:
            tags["fail_reason"] = record.fail_reason
        if record.stopped_at is not None:
            tags["stopped_at"] = str(record.stopped_at)
        if record.ceiling is not None:  # stopped before its fine-tune, at the ceiling this trial set
            tags["ceiling"] = str(record.ceiling)
        if pareto is not None:
            tags["pareto"] = str(pareto).lower()
        if run is None:
            run = self.client.create_run(self.experiment_id, run_name=f"trial-{trial.number}", tags=tags)
        timestamp = int((trial.datetime_complete or trial.datetime_start).timestamp() * 1000)
        logged = run.data.metrics
        metrics = [Metric(k, v, timestamp, 0) for k, v in trial_metrics(record, self.metric_names).items()
                   if k not in logged]
        metrics += [Metric(f"rung.{name}", float(v), timestamp, int(epochs))
                    for epochs, values in record.rungs.items() for name, v in zip(self.rung_names, values)
                    if f"rung.{name}" not in logged]
        params = [Param(k, v) for k, v in trial_params(record).items() if k not in run.data.params]
        changed = [RunTag(k, v) for k, v in tags.items() if run.data.tags.get(k) != v]
        if metrics or params or changed:
            self.client.log_batch(run.info.run_id, metrics=metrics, params=params, tags=changed)
        if not RunStatus.is_terminated(RunStatus.from_string(run.info.status)):
            self.client.set_terminated(run.info.run_id, TERMINATED.get(trial.state, "FAILED"))


@contextlib.contextmanager
def parent_status(tracker: Tracker | None) -> Iterator[None]:
    """The study's parent run is RUNNING while the block runs, then FINISHED, KILLED (interrupted) or FAILED."""
    set_parent_status(tracker, "RUNNING")
    try:
        yield
    except KeyboardInterrupt:
        set_parent_status(tracker, "KILLED")
        raise
    except BaseException:
        set_parent_status(tracker, "FAILED")
        raise
    set_parent_status(tracker, "FINISHED")


def set_parent_status(tracker: Tracker | None, status: str) -> None:
    """Set the parent run's status (best effort: MLflow is a view of the study)."""
    if tracker is None or tracker.broken:
        return
    try:
        if status == "RUNNING":
            tracker.client.update_run(tracker.parent_run_id, status=status)
        else:
            tracker.client.set_terminated(tracker.parent_run_id, status)
    except Exception as exc:  # noqa: BLE001
        log.warning("MLflow: the study's run could not be marked %s (%s)", status, exc)


def where_to_look(link: MlflowLink) -> dict[str, str]:
    """How to open the study's runs: the UI command for a local store, and the runs view's address (the
    ``workflowType`` parameter opens MLflow 3's model-training view, not its GenAI overview)."""
    uri, experiment = link.uri, link.experiment_id
    local = not uri.startswith(("http://", "https://"))
    base = "http://127.0.0.1:5000" if local else uri.rstrip("/")
    return {"tracking_uri": uri, "experiment_id": experiment,
            "ui_command": f"mlflow ui --backend-store-uri {uri}" if local else "",
            "url": f"{base}/#/experiments/{experiment}?workflowType=machine_learning"}


def start(study: optuna.Study, config, run_dir: Path) -> Tracker | None:
    """Set up (or reattach to) the study's experiment and parent run; None when tracking is off
    or the server cannot be reached (said once, the search runs on)."""
    StudyRecord.write(study, mlflow_active=False)
    if not config.tracking.enabled:
        return None
    import mlflow

    uri = absolute_uri(config.tracking.uri or mlflow.get_tracking_uri())
    if not reachable(uri):
        log.warning("MLflow tracking server %s cannot be reached; the search runs on without it (trials stay in "
                    "the study). Run `automtl report %s --sync-mlflow` once it is up.", uri, run_dir)
        return None
    try:
        tracker = _ensure_parent(study, _client(uri), uri, config, run_dir)
    except Exception as exc:  # noqa: BLE001
        log.warning("MLflow tracking at %s failed (%s); the search runs on without it.", uri, exc)
        return None
    StudyRecord.write(study, mlflow_active=True)
    return tracker


def artifact_location(uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: beside a SQLite database (``<its folder>/mlruns``), not in
    whatever folder the search happens to run from; the server's choice for any other store."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlruns").as_uri()


def _ensure_parent(study: optuna.Study, client, uri: str, config, run_dir: Path) -> Tracker:
    record = StudyRecord.of(study)
    name = (record.mlflow.experiment if record.mlflow else None) or config.tracking.experiment or \
        f"{config.name}/{run_dir.resolve().name}"
    experiment = client.get_experiment_by_name(name)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(
        name, artifact_location=artifact_location(uri), tags=EXPERIMENT_TAGS)
    if experiment and any(experiment.tags.get(k) != v for k, v in EXPERIMENT_TAGS.items()):
        for key, value in EXPERIMENT_TAGS.items():
            client.set_experiment_tag(experiment_id, key, value)
    found = client.search_runs(
        [experiment_id], filter_string=f"tags.`{STUDY_TAG}` = '{record.study_uid}' and tags.`{ROLE}` = 'study'"
    )
    if found:
        parent = found[0].info.run_id
    else:
        parent = client.create_run(experiment_id, run_name=config.name, tags={
            STUDY_TAG: record.study_uid, ROLE: "study", "run_dir": str(run_dir.resolve())}).info.run_id
        from mlflow.entities import Param

        params = {"sampler": config.sampler.name, "seed": config.seed, "problem": config.problem.name,
                  "strategies": ", ".join(config.pruning.strategies), "order": config.pruning.order,
                  "loss_methods": ", ".join(config.loss_weights.methods), "objectives": ", ".join(record.objectives),
                  "fine_tune": f"{config.fine_tune.optimizer.name}, {' or '.join(config.fine_tune.schedule_names)}"}
        params |= {f"dense.{key}": value for key, value in record.dense_reference.items() if value is not None}
        client.log_batch(parent, params=[Param(k, str(v)) for k, v in params.items()])
    StudyRecord.write(study, mlflow=MlflowLink(uri, name, experiment_id, parent))
    declared = of_study(study)
    return Tracker(client, experiment_id, parent, record.study_uid, metric_names(declared), rung_names(declared))


def sync(study: optuna.Study, tracker: Tracker, front_numbers: set[int], hypervolumes: Iterable[tuple[int, float]],
         artifacts: dict[str, str]) -> int:
    """Make MLflow match the study: every finished trial has its child run with the right Pareto tag,
    the parent run has the dense reference's metrics (``dense.<metric>.<task>``), the hypervolume history
    (its last value the final one) and the given artifacts ({file name: text}).
    Returns how many child runs were created."""
    from mlflow.entities import Metric

    existing = tracker._child_runs()
    created = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)):
        run = existing.get(trial.number)
        tracker._log_trial(trial, trial.number in front_numbers, run)
        created += run is None
    client, parent = tracker.client, tracker.parent_run_id
    logged = {m.step for m in client.get_metric_history(parent, "hypervolume")}
    new = [Metric("hypervolume", hv, 0, step) for step, hv in hypervolumes if step not in logged]
    names, present = metric_names(of_study(study)), client.get_run(parent).data.metrics
    dense = {f"dense.{names.get(task, 'metric')}.{task}": v
             for task, v in StudyRecord.of(study).dense_test_metrics.items()}
    new += [Metric(key, float(value), 0, 0) for key, value in dense.items() if key not in present]
    for start in range(0, len(new), 900):
        client.log_batch(parent, metrics=new[start:start + 900])
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in artifacts.items():
            path = Path(tmp) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            client.log_artifact(parent, str(path), artifact_path=str(Path(name).parent) if "/" in name else None)
    return created


def log_exported_model(study: optuna.Study, trial_number: int, out_dir: Path, example, register: str | None,
                       alias: str) -> dict:
    """Log the export in ``out_dir`` under the trial's child run: its ONNX model with ``mlflow.onnx``
    (no pickle; servable with MLflow's pyfunc) when it was written, else its files as artifacts; optionally
    register the ONNX model as ``register`` with ``alias``. Returns where it went."""
    import mlflow

    record = StudyRecord.of(study)
    if record.mlflow is None or not reachable(record.mlflow.uri):
        raise RuntimeError("the study has no reachable MLflow tracking (run `automtl report --sync-mlflow` first)")
    tracker = Tracker(_client(record.mlflow.uri), record.mlflow.experiment_id, record.mlflow.parent_run_id,
                      record.study_uid)
    run = tracker._child_runs(trial_number).get(trial_number)
    if run is None:
        raise RuntimeError(f"trial {trial_number} has no MLflow run (run `automtl report --sync-mlflow` first)")
    run_id = run.info.run_id
    onnx_file = out_dir / "model.onnx"
    if not onnx_file.exists():
        tracker.client.log_artifacts(run_id, str(out_dir), "exported")
        return {"run_id": run_id, "model_uri": f"runs:/{run_id}/exported"}  # the files, not an MLflow model
    import onnx
    import onnxruntime
    from mlflow.models import infer_signature

    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    outputs = dict(zip(record.tasks, session.run(record.tasks, {"input": example})))
    mlflow.set_tracking_uri(record.mlflow.uri)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.onnx.log_model(onnx.load(str(onnx_file)), name="model", registered_model_name=register,
                                     signature=infer_signature(example, outputs), save_as_external_data=False)
    logged = {"run_id": run_id, "model_uri": info.model_uri}
    if register:
        version = info.registered_model_version
        tracker.client.set_registered_model_alias(register, alias, version)
        logged |= {"registered_model": register, "version": version, "alias": alias}
    return logged
