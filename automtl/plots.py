"""Plotly figures of a study. Every function takes the study and returns a ``go.Figure``.

``FIGURES`` maps a file stem to its figure function; the dashboard and the
MLflow parent run show all of them.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable

import optuna
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from automtl import pareto
from automtl.objectives import Objective, of_study, task_objectives
from automtl.records import TrialRecord, records

FRONT, OTHER = "#d62728", "rgba(100,100,100,0.25)"


def _axis_format(objective: Objective) -> dict:
    return {"tickformat": ".0%"} if objective.fraction else {}


def _hover(record: TrialRecord) -> str:
    order = " → ".join(f"{n} {record.thresholds[n]:.3g}" for n in record.order)
    weights = ", ".join(f"{t} {w:.2f}" for t, w in (record.loss_weights or {}).items()) or record.loss_method
    return f"trial {record.number}<br>{order}<br>loss: {weights}"


def tradeoff(study: optuna.Study) -> go.Figure:
    """Sparsity vs each task's validation metric, one panel per task; the 2-D front of each panel joined."""
    tasks, done = task_objectives(of_study(study)), records(pareto.completed(study))
    on_front = {t.number for t in pareto.front(study)}
    fig = make_subplots(rows=1, cols=max(1, len(tasks)), subplot_titles=[f"task {t}" for t in tasks])
    for col, (task, objective) in enumerate(tasks.items(), start=1):
        points = [(r.result.sparsity, r.result.metrics[task], r) for r in done]
        for front, colour, name in ((False, OTHER, "dominated"), (True, FRONT, "Pareto (all objectives)")):
            chosen = [p for p in points if (p[2].number in on_front) == front]
            fig.add_trace(go.Scatter(
                x=[p[0] for p in chosen], y=[p[1] for p in chosen], mode="markers", name=name, legendgroup=name,
                showlegend=col == 1, marker={"color": colour, "size": 8 if front else 6},
                text=[_hover(p[2]) for p in chosen], hoverinfo="text+x+y"), row=1, col=col)
        best, line = None, []
        for x, y, _ in sorted(points, key=lambda p: (-p[0], -p[1] if objective.maximize else p[1])):
            if best is None or objective.better(y, best):  # 2-D front: sweep from the sparsest
                line.append((x, y))
                best = y
        fig.add_trace(go.Scatter(x=[p[0] for p in line], y=[p[1] for p in line], mode="lines", line={"color": FRONT,
                      "shape": "hv"}, name="2-D front", showlegend=False, hoverinfo="skip"), row=1, col=col)
        fig.update_xaxes(title_text="sparsity", tickformat=".0%", row=1, col=col)
        fig.update_yaxes(title_text=f"validation {objective.name.split('.')[0]} ({objective.direction})",
                         row=1, col=col, **_axis_format(objective))
    fig.update_layout(title="Sparsity vs each task's metric", height=450)
    return fig


def front_3d(study: optuna.Study) -> go.Figure:
    """Sparsity and the first two tasks' metrics, coloured by Pareto rank."""
    tasks, trials = list(task_objectives(of_study(study)).values()), pareto.completed(study)
    a, b = (tasks + tasks)[:2]
    done = records(trials)
    fig = go.Figure(go.Scatter3d(
        x=[r.result.sparsity for r in done], y=[r.result.metrics[a.task] for r in done],
        z=[r.result.metrics[b.task] for r in done], mode="markers", text=[_hover(r) for r in done],
        marker={"size": 5, "color": pareto.ranks(study, trials), "colorscale": "Viridis_r",
                "colorbar": {"title": "Pareto rank"}}))
    fig.update_layout(title=f"Front in 3-D: sparsity, {a.label}, {b.label}", height=600, scene={
        "xaxis_title": "sparsity", "yaxis_title": a.label, "zaxis_title": b.label})
    return fig


def parameters(study: optuna.Study) -> go.Figure:
    """Parallel coordinates of every searched parameter and objective, coloured by Pareto rank.

    A strategy's axis shows its threshold, or -0.1 when the trial did not use it;
    ``first`` names the strategy that ran first and ``steps`` how many ran.
    """
    trials = pareto.completed(study)
    done, objectives = records(trials), of_study(study)
    strategies = sorted({s for r in done for s in r.order})
    methods = sorted({r.loss_method for r in done})
    firsts = [r.order[0] if r.order else "" for r in done]
    names = sorted(set(firsts))
    dims = [
        {"label": "first", "values": [names.index(f) for f in firsts], "tickvals": list(range(len(names))),
         "ticktext": names},
        {"label": "steps", "values": [len(r.order) for r in done]},
    ]
    dims += [{"label": s, "values": [r.thresholds.get(s, -0.1) for r in done]} for s in strategies]
    if len(methods) > 1:
        dims.append({"label": "loss method", "values": [methods.index(r.loss_method) for r in done],
                     "tickvals": list(range(len(methods))), "ticktext": methods})
    for task in task_objectives(objectives):
        dims.append({"label": f"weight {task}", "values": [r.weight_of(task) for r in done]})
    dims.append({"label": "distillation", "values": [r.distillation for r in done]})
    dims += [{"label": o.label, "values": [r.values[j] for r in done]} for j, o in enumerate(objectives)]
    fig = go.Figure(go.Parcoords(dimensions=dims, line={
        "color": pareto.ranks(study, trials), "colorscale": "Viridis_r", "showscale": True,
        "colorbar": {"title": "Pareto rank"}}))
    fig.update_layout(title="Searched parameters and objectives (colour: Pareto rank, 0 = front)", height=550)
    return fig


def hypervolume(study: optuna.Study) -> go.Figure:
    """Hypervolume of the completed trials up to each trial number."""
    history = pareto.hypervolume_history(study)
    fig = go.Figure(go.Scatter(x=[n for n, _ in history], y=[h for _, h in history], mode="lines+markers"))
    fig.update_layout(title="Hypervolume history (normalised objectives, origin reference)",
                      xaxis_title="trial", yaxis_title="hypervolume", height=400)
    return fig


def orders(study: optuna.Study) -> go.Figure:
    """Which strategy runs first, on the front vs over all trials; and the orders on the front."""
    trials, front = pareto.completed(study), pareto.front(study)
    fig = make_subplots(rows=1, cols=2, column_widths=[0.4, 0.6],
                        subplot_titles=["first strategy: share of trials", "orders on the front"])
    trials, front = records(trials), records(front)
    strategies = sorted({r.order[0] for r in trials if r.order})
    for group, name, colour in ((trials, "all trials", OTHER), (front, "Pareto front", FRONT)):
        counts = Counter(r.order[0] for r in group if r.order)
        total = max(1, sum(counts.values()))
        fig.add_trace(go.Bar(x=strategies, y=[counts[s] / total for s in strategies], name=name,
                             marker_color=colour), row=1, col=1)
    seen = Counter(" → ".join(r.order) for r in front).most_common(15)
    fig.add_trace(go.Bar(y=[o for o, _ in seen][::-1], x=[c for _, c in seen][::-1], orientation="h",
                         marker_color=FRONT, showlegend=False), row=1, col=2)
    fig.update_yaxes(tickformat=".0%", row=1, col=1)
    fig.update_layout(title="Strategy orders", barmode="group", height=450)
    return fig


FIGURES: dict[str, Callable[[optuna.Study], go.Figure]] = {
    "tradeoff": tradeoff,
    "front_3d": front_3d,
    "parameters": parameters,
    "hypervolume": hypervolume,
    "orders": orders,
}


def figures(study: optuna.Study) -> dict[str, go.Figure]:
    """Every figure, or none when the study has no completed trial yet."""
    return {name: make(study) for name, make in FIGURES.items()} if pareto.completed(study) else {}
