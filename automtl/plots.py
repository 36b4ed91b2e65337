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

FRONT, OTHER = "#d62728", "rgba(100,100,100,0.25)"


def _tasks(study: optuna.Study) -> list[str]:
    return study.user_attrs.get("tasks", [])


def _hover(trial) -> str:
    attrs = trial.user_attrs
    order = " → ".join(f"{n} {attrs['thresholds'][n]:.3g}" for n in attrs.get("order", []))
    weights = ", ".join(f"{t} {w:.2f}" for t, w in (attrs.get("loss_weights") or {}).items()) or attrs.get("loss_method")
    return f"trial {trial.number}<br>{order}<br>loss: {weights}"


def tradeoff(study: optuna.Study) -> go.Figure:
    """Sparsity vs validation accuracy, one panel per task; the 2-D front of each panel joined."""
    tasks, trials = _tasks(study), pareto.completed(study)
    on_front = {t.number for t in pareto.front(study)}
    fig = make_subplots(rows=1, cols=max(1, len(tasks)), subplot_titles=[f"task {t}" for t in tasks])
    for col, task in enumerate(tasks, start=1):
        points = [(t.user_attrs["sparsity"], t.user_attrs["accuracy"][task], t) for t in trials]
        for front, colour, name in ((False, OTHER, "dominated"), (True, FRONT, "Pareto (all objectives)")):
            chosen = [p for p in points if (p[2].number in on_front) == front]
            fig.add_trace(go.Scatter(
                x=[p[0] for p in chosen], y=[p[1] for p in chosen], mode="markers", name=name, legendgroup=name,
                showlegend=col == 1, marker={"color": colour, "size": 8 if front else 6},
                text=[_hover(p[2]) for p in chosen], hoverinfo="text+x+y"), row=1, col=col)
        best, line = -1.0, []
        for x, y, _ in sorted(points, key=lambda p: (-p[0], -p[1])):  # 2-D front: sweep from sparsest
            if y > best:
                line.append((x, y))
                best = y
        fig.add_trace(go.Scatter(x=[p[0] for p in line], y=[p[1] for p in line], mode="lines", line={"color": FRONT,
                      "shape": "hv"}, name="2-D front", showlegend=False, hoverinfo="skip"), row=1, col=col)
        fig.update_xaxes(title_text="sparsity", tickformat=".0%", row=1, col=col)
        fig.update_yaxes(title_text="validation accuracy", tickformat=".0%", row=1, col=col)
    fig.update_layout(title="Sparsity vs accuracy per task", height=450)
    return fig


def front_3d(study: optuna.Study) -> go.Figure:
    """Sparsity and the first two tasks' accuracies, coloured by Pareto rank."""
    tasks, trials = _tasks(study), pareto.completed(study)
    a, b = (tasks + tasks)[:2]
    rank = pareto.ranks(study, trials)
    fig = go.Figure(go.Scatter3d(
        x=[t.user_attrs["sparsity"] for t in trials], y=[t.user_attrs["accuracy"][a] for t in trials],
        z=[t.user_attrs["accuracy"][b] for t in trials], mode="markers", text=[_hover(t) for t in trials],
        marker={"size": 5, "color": rank, "colorscale": "Viridis_r", "colorbar": {"title": "Pareto rank"}}))
    fig.update_layout(title=f"Front in 3-D: sparsity, {a}, {b}", height=600, scene={
        "xaxis_title": "sparsity", "yaxis_title": f"accuracy {a}", "zaxis_title": f"accuracy {b}"})
    return fig


def parameters(study: optuna.Study) -> go.Figure:
    """Parallel coordinates of every searched parameter and objective, coloured by Pareto rank.

    A strategy's axis shows its threshold, or -0.1 when the trial did not use it;
    ``first`` names the strategy that ran first and ``steps`` how many ran.
    """
    trials = pareto.completed(study)
    strategies = sorted({s for t in trials for s in t.user_attrs.get("order", [])})
    methods = sorted({t.user_attrs.get("loss_method") for t in trials})
    firsts = [t.user_attrs["order"][0] if t.user_attrs.get("order") else "" for t in trials]
    names = sorted(set(firsts))
    dims = [
        {"label": "first", "values": [names.index(f) for f in firsts], "tickvals": list(range(len(names))),
         "ticktext": names},
        {"label": "steps", "values": [len(t.user_attrs.get("order", [])) for t in trials]},
    ]
    dims += [{"label": s, "values": [t.user_attrs["thresholds"].get(s, -0.1) for t in trials]} for s in strategies]
    if len(methods) > 1:
        dims.append({"label": "loss method", "values": [methods.index(t.user_attrs["loss_method"]) for t in trials],
                     "tickvals": list(range(len(methods))), "ticktext": methods})
    for task in _tasks(study):
        weights = [(t.user_attrs.get("loss_weights") or t.user_attrs.get("final_loss_weights") or {}).get(task, 0.0)
                   for t in trials]
        dims.append({"label": f"weight {task}", "values": weights})
    dims.append({"label": "distillation", "values": [t.user_attrs.get("distillation", 0.0) for t in trials]})
    dims.append({"label": "sparsity", "values": [t.user_attrs["sparsity"] for t in trials]})
    for task in _tasks(study):
        dims.append({"label": f"acc {task}", "values": [t.user_attrs["accuracy"][task] for t in trials]})
    rank = pareto.ranks(study, trials)
    fig = go.Figure(go.Parcoords(dimensions=dims, line={
        "color": rank, "colorscale": "Viridis_r", "showscale": True, "colorbar": {"title": "Pareto rank"}}))
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
    strategies = sorted({t.user_attrs["order"][0] for t in trials if t.user_attrs.get("order")})
    for group, name, colour in ((trials, "all trials", OTHER), (front, "Pareto front", FRONT)):
        counts = Counter(t.user_attrs["order"][0] for t in group if t.user_attrs.get("order"))
        total = max(1, sum(counts.values()))
        fig.add_trace(go.Bar(x=strategies, y=[counts[s] / total for s in strategies], name=name,
                             marker_color=colour), row=1, col=1)
    seen = Counter(" → ".join(t.user_attrs.get("order", [])) for t in front).most_common(15)
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
