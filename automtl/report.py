"""The study dashboard page and the MLflow re-sync: views rebuilt from the study storage."""

from __future__ import annotations

import html
import json
from importlib import resources
from pathlib import Path
from string import Template

import optuna
from optuna.trial import TrialState
from plotly.offline import get_plotlyjs

from automtl import pareto, plots, progress, retention, tracking
from automtl.backends.base import budget_used
from automtl.checkpoints import atomic_write_bytes
from automtl.errors import UserError
from automtl.objectives import of_study, task_objectives
from automtl.records import StudyRecord
from automtl.rundir import RunDir


def front_table(study: optuna.Study) -> str:
    """The Pareto trials as an HTML table, sparsest first; the knee highlighted."""
    tasks = task_objectives(of_study(study))
    knee = pareto.knee(study)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in
                   ["trial", "sparsity", "compression", *[f"{o.label} val / test" for o in tasks.values()],
                    "order (thresholds)", "loss weighting", "distillation"])
    rows = []
    for row in sorted(pareto.described_front(study), key=lambda r: -r["sparsity"]):
        order = " → ".join(f"{n} {row['thresholds'][n]:.3g}" for n in row["order"])
        weights = ", ".join(f"{t} {w:.2f}" for t, w in (row["loss_weights"] or {}).items()) or row["loss_method"]
        cells = [str(row["trial"]) + (" (knee)" if knee and knee.number == row["trial"] else ""),
                 f"{row['sparsity']:.1%}", f"{row['compression_ratio']:.1f}x",
                 *[f"{o.format(row['metrics'][t])} / {o.format(row['test_metrics'][t])}" for t, o in tasks.items()],
                 order, weights, f"{row['distillation']:.2f}"]
        numeric = {1, 2, *range(3, 3 + len(tasks))}
        tds = "".join(f"<td class='num'>{html.escape(c)}</td>" if i in numeric else f"<td>{html.escape(c)}</td>"
                      for i, c in enumerate(cells))
        rows.append(f"<tr{' class=knee' if knee and knee.number == row['trial'] else ''}>{tds}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def dashboard(study: optuna.Study, run: RunDir) -> str:
    """The whole page as one HTML string (plotly.js inlined once; no network needed)."""
    config = run.load_config()
    snap = progress.take(study, config.trials)
    tasks = task_objectives(of_study(study))
    dense, disk = StudyRecord.of(study).dense_test_metrics, retention.disk_use(run)
    cards = {
        "complete / stopped early / failed":
            f"{snap.counts['complete']} / {snap.counts['stopped_early']} / {snap.counts['failed']}",
        "Pareto trials": str(snap.front_size),
        **({"in focus (complete · front)": f"{snap.in_focus} · {snap.front_in_focus}",
            "hypervolume in focus": f"{snap.focus_hypervolume:.4f}"} if snap.focus else {}),
        "hypervolume": f"{snap.hypervolume:.4f}",
        "dense model (test)": " · ".join(f"{tasks[t].label} {tasks[t].format(v)}" for t, v in dense.items()
                                         if t in tasks) or "–",
        "sampler": config.sampler.name,
        "disk (trial weights kept)": f"{disk['bytes'] / 2**20:.1f} MiB ({disk['weights_files']} · "
                                     f"keep_weights {config.keep_weights})",
    }
    figures = "".join(
        f"<section>{fig.to_html(full_html=False, include_plotlyjs=False, div_id=f'figure-{name}')}</section>"
        for name, fig in plots.figures(study).items()
    )
    template = Template(resources.files("automtl.dashboards").joinpath("dashboard.html").read_text())
    return template.substitute(
        title=html.escape(f"{config.name} — automtl study"),
        subtitle=html.escape(f"{run.path.resolve()} · problem {config.problem.name} · strategies "
                             f"{', '.join(config.pruning.strategies)}"),
        cards="".join(f"<div class='card'>{html.escape(k)}<b>{html.escape(v)}</b></div>" for k, v in cards.items()),
        table=front_table(study),
        figures=figures,
        plotlyjs=get_plotlyjs(),
    )


def write_dashboard(run_dir: str | Path, output: str | Path | None = None) -> Path:
    """Write the dashboard (default ``RUN_DIR/dashboard.html``) atomically; return its path."""
    run = RunDir(run_dir).require()
    output = Path(output) if output else run.path / "dashboard.html"
    if output.is_dir():
        raise UserError(f"-o {output} is a directory; give a file name such as {output / 'dashboard.html'}")
    if not output.parent.exists():
        raise UserError(f"-o {output}: folder {output.parent} does not exist")
    atomic_write_bytes(output, dashboard(run.load_study(), run).encode())
    return output


def mlflow_artifacts(study: optuna.Study, run: RunDir) -> dict[str, str]:
    """What the parent run carries: the front as JSON; every figure once, in the self-contained dashboard
    (plotly.js inlined once, so MLflow's artifact viewer shows them offline); each figure as Plotly JSON."""
    artifacts = {"pareto_front.json": json.dumps(pareto.described_front(study), indent=1),
                 "dashboard.html": dashboard(study, run)}
    for name, fig in plots.figures(study).items():
        artifacts[f"figures/{name}.plotly.json"] = fig.to_json()
    return artifacts


def sync_mlflow(run_dir: str | Path) -> dict:
    """Rebuild the study's MLflow experiment, parent run, child runs, tags and artifacts from the storage."""
    run = RunDir(run_dir).require()
    config, study = run.load_config(), run.load_study()
    if not config.tracking.enabled:
        raise UserError(f"tracking is disabled in {run.config_file}; nothing to sync")
    tracker = tracking.start(study, config, run.path)
    if tracker is None:
        raise UserError("the MLflow tracking server cannot be reached; start it (or fix tracking.uri) and retry")
    front = {t.number for t in pareto.front(study)}
    created = tracking.sync(study, tracker, front, pareto.hypervolume_history(study), mlflow_artifacts(study, run))
    searching = run.busy()
    ended = budget_used(study) >= config.trials and not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    tracking.set_parent_status(tracker, "RUNNING" if searching else "FINISHED" if ended else "KILLED")
    link = StudyRecord.of(study).mlflow
    return {"experiment": link.experiment, "parent_run_id": tracker.parent_run_id,
            "created_child_runs": created, "trials": len(study.trials), "tracking_uri": link.uri}
