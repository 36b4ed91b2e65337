"""Command line: parses, calls :mod:`automtl.api`, prints. No logic of its own.

Every :class:`~automtl.errors.UserError` becomes a one-line message on
stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from dataclasses import asdict
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from automtl import api
from automtl.objectives import Objective, task_objectives
from automtl.config import DEVICES, read_yaml
from automtl.backends import BACKENDS
from automtl.errors import UserError
from automtl.formats import ONNX_TOLERANCE, QUANTIZE, WRITERS
from automtl.problems import PROBLEMS
from automtl.pruning import STRATEGIES
from automtl.train import TrainConfig

console = Console()
err_console = Console(stderr=True)


def _key_value(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, read_yaml(value)


def _widths(text: str) -> list[int]:
    try:
        return [int(w) for w in text.split(",") if w.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 256,128, got {text!r}") from None


def cmd_problems(args: argparse.Namespace) -> None:
    if args.json:
        print(json.dumps({name: {"tasks": list(e.tasks), "summary": e.summary} for name, e in PROBLEMS.items()}))
        return
    table = Table("problem", "tasks", "description")
    for name, entry in PROBLEMS.items():
        table.add_row(name, ", ".join(entry.tasks), entry.summary)
    console.print(table)
    console.print("User problems: pass 'package.module:function' (it must return automtl.Problem).")


def cmd_strategies(args: argparse.Namespace) -> None:
    listing = {
        name: {
            "threshold": s.threshold.symbol, "low": s.threshold.low, "high": s.threshold.high,
            "meaning": s.threshold.meaning, "structured": s.structured, "calibrated": s.threshold.calibrated,
            "summary": s.summary(),
        }
        for name, s in sorted(STRATEGIES.items())
    }
    if args.json:
        print(json.dumps(listing))
        return
    table = Table("strategy", "kind", "threshold", "range", "scale", "meaning")
    for name, row in listing.items():
        kind = "structured" if row["structured"] else "unstructured"
        scale = "share removed" if row["calibrated"] else "score cut"
        table.add_row(name, kind, row["threshold"], f"[{row['low']:g}, {row['high']:g}]", scale, row["meaning"])
    console.print(table)
    console.print("Higher thresholds never remove less. A 'share removed' threshold is calibrated: it is the share of "
                  "the remaining weights or units removed, on any model; a 'score cut' removes what scores below it. "
                  "Details: docs/strategies.md", soft_wrap=True)


def cmd_train(args: argparse.Namespace) -> None:
    given = {"arch": args.arch, "hidden": args.hidden, "channels": args.channels, "depth": args.depth}
    model = {k: v for k, v in given.items() if v is not None}
    config = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size)
    for name, value in (("--epochs", args.epochs), ("--batch-size", args.batch_size)):
        if value < 1:
            raise UserError(f"{name} must be >= 1, got {value}")
    if not args.lr > 0:
        raise UserError(f"--lr must be > 0, got {args.lr}")
    with err_console.status(f"training the dense {args.problem} model…"):
        report = api.train_dense(args.problem, dict(args.option), model, config, args.seed, args.cache_dir)
    if args.json:
        print(json.dumps(asdict(report)))
        return
    table = Table("task", "metric", "test", "val", title=f"dense {report.problem} ({report.model['arch']})")
    for task, value in report.metrics.items():
        objective = report.objectives[task]
        table.add_row(task, objective.name.split(".")[0], objective.format(value), objective.format(report.val_metrics[task]))
    console.print(table)
    source = "cache" if report.cached else f"trained in {report.train_seconds:.1f}s"
    console.print(f"{report.parameters:,} parameters; checkpoint {report.checkpoint} ({source}); search from it "
                  f"with `dense: {{weights: {report.checkpoint}}}`", soft_wrap=True)


def _front_table(rows: list[dict], objectives: list[Objective], title: str) -> Table:
    tasks = task_objectives(objectives)
    table = Table("trial", "sparsity", *[f"{o.label} val / test" for o in tasks.values()],
                  *[o.label for o in objectives if o.name != "sparsity" and not o.task], title=title)
    table.add_column("order (thresholds)", overflow="fold", ratio=3)
    table.add_column("loss weights", overflow="fold", ratio=1)
    for row in sorted(rows, key=lambda r: -r["sparsity"]):
        steps = " → ".join(f"{n} {row['thresholds'][n]:.3g}" for n in row["order"])
        weights = ", ".join(f"{t}={w:.2f}" for t, w in (row["loss_weights"] or {}).items()) or row["loss_method"]
        metrics = [f"{o.format(row['metrics'][t])} / {o.format(row['test_metrics'][t])}" for t, o in tasks.items()]
        costs = [o.format(row["objectives"][o.name]) for o in objectives if o.name != "sparsity" and not o.task]
        table.add_row(str(row["trial"]), f"{row['sparsity']:.1%}", *metrics, *costs, steps, weights)
    return table


# Search flags that set a field of the config's ``backend`` section.
BACKEND_FLAGS = {"backend": "name", "address": "address", "cpus_per_trial": "cpus_per_trial",
                 "gpus_per_trial": "gpus_per_trial", "max_concurrent": "max_concurrent", "device": "device"}


def cmd_search(args: argparse.Namespace) -> None:
    overrides = list(args.set)
    overrides += [f"trials={args.trials}"] if args.trials is not None else []
    overrides += [f"timeout={args.timeout}"] if args.timeout is not None else []
    overrides += [f"workers={args.workers}"] if args.workers is not None else []
    overrides += [f"trial_batch={args.trial_batch}"] if args.trial_batch is not None else []
    for flag, field in BACKEND_FLAGS.items():
        value = getattr(args, flag)
        overrides += [f"backend.{field}={value}"] if value is not None else []
    columns = [
        SpinnerColumn(), TextColumn("[bold]search"), BarColumn(), TextColumn("{task.fields[trials]} trials"),
        TextColumn("{task.fields[failed]} failed · front {task.fields[front]} · HV {task.fields[hv]:.4f}"),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
    ]
    bar = Progress(*columns, console=err_console, disable=args.json)
    task = bar.add_task("search", total=None, trials="0", failed=0, front=0, hv=0.0)

    def show(snap):  # the bar fills with the budget spent: trials, or time when the timeout comes first
        bar.start()  # only once trials run: validation errors print without a bar
        bar.update(task, total=1.0, completed=snap.done, trials=f"{snap.finished}/{snap.budget}",
                   failed=snap.counts["failed"], front=snap.front_size, hv=snap.hypervolume)

    try:
        with err_console.status("validating, preparing the dense model…"):
            summary = api.search(args.config, run_dir=args.run_dir, overrides=overrides, resume=args.resume,
                                 on_progress=show)
    except api.SearchInterrupted as stop:
        bar.stop()
        flags = "".join(f" --{flag.replace('_', '-')} {getattr(args, flag)}" for flag in BACKEND_FLAGS
                        if getattr(args, flag) is not None)
        err_console.print(f"interrupted; finished trials are kept. Resume with: "
                          f"automtl search {args.config} --resume --run-dir {stop.run_dir}{flags}", soft_wrap=True)
        raise
    finally:
        bar.stop()
    if args.json:
        print(json.dumps(asdict(summary)))
        return
    objectives = [Objective(**o) for o in summary.objectives]
    console.print(_front_table(summary.front, objectives, f"Pareto front ({len(summary.front)} trials)"))
    counts, tasks = summary.status["counts"], task_objectives(objectives)
    console.print(f"{counts['complete']} complete, {counts['stopped_early']} stopped early, {counts['failed']} "
                  f"failed; hypervolume "
                  f"{summary.status['hypervolume']:.4f}; dense model (test) "
                  + ", ".join(f"{tasks[t].label} {tasks[t].format(v)}" for t, v in summary.dense_metrics.items())
                  + f"; run directory {summary.run_dir}", soft_wrap=True)
    if summary.mlflow:
        look = summary.mlflow
        start = f"start the UI with `{look['ui_command']}`, then " if look["ui_command"] else ""
        console.print(f"MLflow: {start}open {look['url']} (the study's runs)", soft_wrap=True)


def cmd_inspect(args: argparse.Namespace) -> None:
    with err_console.status("tracing the model, timing one trial…"):
        found = api.inspect(args.config, overrides=list(args.set))
    if args.json:
        print(json.dumps(found.as_dict()))
        return
    console.print(f"[bold]{found.model}[/] on {found.problem} (tasks {', '.join(found.tasks)}): "
                  f"{found.parameters:,} parameters, {found.flops:,} FLOPs per input; dense model {found.dense}",
                  soft_wrap=True)
    layers = Table("layer", "type", "weight", "parameters", "", title="prunable layers")
    for layer in found.layers:
        layers.add_row(layer.name, layer.type, "x".join(map(str, layer.weight_shape)), f"{layer.parameters:,}",
                       "task head" if layer.head else "")
    console.print(layers)
    groups = Table("group", "units", "produced by", "BatchNorm", "read by", title="removable unit groups")
    for group in found.groups:
        groups.add_row(group.root, f"{group.units} {group.unit}s", ", ".join(group.producers),
                       ", ".join(group.norms), ", ".join(group.readers))
    console.print(groups)
    for root, why in found.refused.items():
        console.print(f"[yellow]refused[/] {root}: {why}", soft_wrap=True)
    if found.untraceable:
        console.print(f"[yellow]no structured pruning[/]: Torch-Pruning cannot trace the model ({found.untraceable})",
                      soft_wrap=True)
    strategies = Table("strategy", "applies to", title="configured strategies")
    for name, where in found.strategies.items():
        strategies.add_row(name, where)
    console.print(strategies)
    cost = found.trial
    console.print(f"one trial (each strategy at the middle of its range, {cost.sparsity:.1%} sparsity): pruning "
                  f"{cost.prune_seconds:.2f} s, {cost.seconds_per_batch * 1000:.1f} ms per fine-tune batch x "
                  f"{cost.batches_per_epoch} batches x {cost.epochs} epochs, evaluation {cost.eval_seconds:.2f} s: "
                  f"about {cost.estimated_seconds:.1f} s; its weights take {cost.weights_bytes / 2**20:.2f} MiB",
                  soft_wrap=True)


def cmd_status(args: argparse.Namespace) -> None:
    status = api.status(args.run_dir)
    if args.json:
        print(json.dumps(status))
        return
    table = Table("state", "trials", title=f"{args.run_dir}")
    for state, count in status["counts"].items():
        table.add_row(state, str(count))
    console.print(table)
    console.print(f"budget {status['budget']}; front {status['front_size']} trials, hypervolume "
                  f"{status['hypervolume']:.4f}; {status['compute_seconds']:.0f}s of trial compute over "
                  f"{status['elapsed_seconds']:.0f}s", soft_wrap=True)
    fine_tune, chosen = status["fine_tune"], status["fine_tune"]["chosen"]
    console.print(f"full fine-tune: {fine_tune['epochs']} epochs" + (
        f" (epochs auto: one epoch took {chosen['epoch_seconds']:.2f} s on {chosen['threads']} thread(s), budget "
        f"{chosen['budget_seconds']:.0f} s)" if chosen else ""), soft_wrap=True)
    disk = status["disk"]
    console.print(f"disk: {disk['bytes'] / 2**20:.1f} MiB, of which {disk['weights_files']} trials' weights "
                  f"{disk['weights_bytes'] / 2**20:.1f} MiB (keep_weights: {disk['keep_weights']})", soft_wrap=True)
    if status["focus"]:
        floors = ", ".join(f"{task} {floor:.4g}" for task, floor in status["focus"].items())
        console.print(f"in focus (floors {floors}): {status['in_focus']} of {status['counts']['complete']} complete "
                      f"trials, {status['front_in_focus']} of {status['front_size']} front trials; hypervolume in "
                      f"focus {status['focus_hypervolume']:.4f}", soft_wrap=True)
    if status["past_ceiling"]:
        console.print(f"{len(status['past_ceiling'])} queued plan(s) not fine-tuned, pruned past the focus ceiling: "
                      f"trials {', '.join(map(str, status['past_ceiling']))}", soft_wrap=True)
    if status["climbed"]:
        console.print(f"global-magnitude levels queued by focus.climb (towards the sparsest that keeps every floor): "
                      f"{', '.join(f'{level:g}' for level in status['climbed'])}", soft_wrap=True)
    if status["failures"]:
        failed = Table("failed trials", "reason", title="failures")
        for reason, numbers in status["failures"].items():
            shown = ", ".join(map(str, numbers[:12])) + (f" … ({len(numbers)})" if len(numbers) > 12 else "")
            failed.add_row(shown, reason)
        console.print(failed)


def cmd_pareto(args: argparse.Namespace) -> None:
    rows = api.pareto_front(args.run_dir, args.where)
    if args.json:
        print(json.dumps(rows))
        return
    console.print(_front_table(rows, api.objectives_of(args.run_dir), f"Pareto front of {args.run_dir} ({len(rows)} trials)"))


def cmd_report(args: argparse.Namespace) -> None:
    if args.sync_mlflow:
        with err_console.status("rebuilding the MLflow runs from the study…"):
            synced = api.sync_mlflow(args.run_dir)
        console.print(f"MLflow experiment {synced['experiment']!r} at {synced['tracking_uri']}: parent run "
                      f"{synced['parent_run_id']}, {synced['created_child_runs']} child runs re-created "
                      f"({synced['trials']} trials in the study)", soft_wrap=True)
    path = api.report_dashboard(args.run_dir, args.output)
    console.print(f"dashboard written to {path}", soft_wrap=True)


def cmd_export(args: argparse.Namespace) -> None:
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    with err_console.status("exporting…"):
        result = api.export(args.run_dir, args.output, trial=args.trial, pick=args.pick, require=args.require,
                            formats=formats, quantize=args.quantize, register=args.register, alias=args.alias,
                            onnx_tolerance=args.onnx_tolerance, latency_batch=args.latency_batch)
    card = result.card
    params, files = card["parameters"], card["files"]
    table = Table("", "dense", "exported", title=f"trial {card['trial']} → {result.out_dir}")
    table.add_row("parameters", f"{params['dense']:,}", f"{params['exported']:,} ({params['exported_nonzero']:,} non-zero)")
    table.add_row("FLOPs", f"{card['flops']['dense']:,}", f"{card['flops']['exported']:,}")
    latency = card["latency_ms"]
    for runtime, speedup in card["speedup"].items():
        table.add_row(f"CPU ms / batch of {card['latency_batch']} ({runtime}, median of "
                      f"{card['latency_timing']['rounds'][runtime]})", f"{latency[f'dense_{runtime}']:.3f}",
                      f"{latency[f'exported_{runtime}']:.3f} ({speedup:.2f}x faster)")
    for task, value in card["test_metrics"]["exported_pytorch"].items():
        table.add_row(f"test {card['metric_names'][task]} {task}", f"(trial {card['test_metrics']['search'][task]:.4g})",
                      f"{value:.4g}")
    console.print(table)
    console.print("files: " + ", ".join(f"{f['path']} ({f['bytes'] / 1024:.0f} KiB)" for f in files.values()), soft_wrap=True)
    if "mlflow" in card:
        console.print(f"logged to MLflow: {card['mlflow']['model_uri']}", soft_wrap=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="automtl", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text, func in (("problems", "list the built-in problems and their tasks", cmd_problems),
                                  ("strategies", "list the pruning strategies and their thresholds", cmd_strategies)):
        sub.add_parser(name, help=help_text).add_argument("--json", action="store_true")
        sub.choices[name].set_defaults(func=func)
    _add_search(sub)
    p = sub.add_parser("inspect", help="what a search-space file's model can prune, before any search")
    p.add_argument("config", help="search-space YAML file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field")
    p.add_argument("--json", action="store_true", help="print the inspection as JSON")
    p.set_defaults(func=cmd_inspect)
    _add_views(sub)
    _add_export(sub)
    _add_train(sub)
    return parser


def _add_search(sub) -> None:
    p = sub.add_parser("search", help="run (or resume) the joint search of a search-space file")
    p.add_argument("config", help="a search-space YAML file, e.g. search_spaces/smoke.yaml")
    p.add_argument("--trials", type=int, help="trial budget (overrides the file)")
    p.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="time budget: no trial starts after it (overrides the file)")
    p.add_argument("--workers", type=int, help="worker processes (overrides the file)")
    p.add_argument("--trial-batch", metavar="K",
                   help="trials each worker fine-tunes together in one vectorised pass (a number, or auto)")
    p.add_argument("--run-dir", help="where the study lives (default runs/<name>)")
    p.add_argument("--resume", action="store_true", help="continue the study in --run-dir")
    ray = p.add_argument_group("backend", "who runs the trials (see docs/cluster.md)")
    ray.add_argument("--backend", choices=list(BACKENDS), help="local worker processes (default) or Ray Tune")
    ray.add_argument("--address", help="ray: join this cluster (auto or HOST:PORT); default starts a local Ray")
    ray.add_argument("--cpus-per-trial", type=float, metavar="C", help="ray: CPUs reserved per trial (default 1)")
    ray.add_argument("--gpus-per-trial", type=float, metavar="G",
                     help="ray: GPUs per trial; fractions share a GPU, e.g. 0.25 (default 0)")
    ray.add_argument("--max-concurrent", type=int, metavar="K", help="ray: at most K trials at once")
    ray.add_argument("--device", choices=DEVICES, help="where trials compute (auto = CUDA when the worker has a GPU)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any field, e.g. --set fine_tune.epochs=2 (repeatable)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON, no progress bar")
    p.set_defaults(func=cmd_search)


def _add_views(sub) -> None:
    """The commands that read a run directory: status, pareto, report."""
    p = sub.add_parser("status", help="trial counts by state and time spent of a run directory")
    p.add_argument("run_dir")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("pareto", help="the Pareto trials of a run directory")
    p.add_argument("run_dir")
    p.add_argument("--where", action="append", default=[], metavar="NAME>=VALUE",
                   help="keep trials meeting a constraint on a task's validation metric (left>=0.92), an "
                        "objective (mse.sum<=1.5, sparsity>=0.9, flops<=1e6) or test.<task> (repeatable)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_pareto)

    p = sub.add_parser("report", help="write the study dashboard; optionally rebuild MLflow from the study")
    p.add_argument("run_dir")
    p.add_argument("-o", "--output", help="dashboard file (default RUN_DIR/dashboard.html)")
    p.add_argument("--sync-mlflow", action="store_true", help="re-create every MLflow run from the study storage")
    p.set_defaults(func=cmd_report)


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="export a trial as a smaller ONNX / torch.export / safetensors model")
    p.add_argument("run_dir")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--trial", type=int, help="an explicit (finished) trial number")
    which.add_argument("--pick", help="knee (default), sparsest, or best-<task>, among the Pareto trials")
    p.add_argument("--require", action="append", default=[], metavar="NAME>=VALUE",
                   help="constraint on the picked trial, as for `pareto --where`: left>=0.9, mse.sum<=1.5, "
                        "sparsity>=0.8 (repeatable)")
    p.add_argument("--format", default=",".join(WRITERS),
                   help=f"comma-separated, from {', '.join(WRITERS)} (default: all)")
    p.add_argument("--quantize", choices=QUANTIZE, help="also write a dynamically quantised ONNX model")
    p.add_argument("--onnx-tolerance", type=float, default=ONNX_TOLERANCE, metavar="SHARE",
                   help="how far onnxruntime may differ from PyTorch, as a share of each task's output scale "
                        f"(default {ONNX_TOLERANCE:g})")
    p.add_argument("--latency-batch", type=int, metavar="N",
                   help="inputs per timed forward pass on the card (default: from the model's FLOPs, <= 2048)")
    p.add_argument("--register", metavar="NAME", help="register the ONNX model in MLflow under NAME")
    p.add_argument("--alias", default="candidate", help="alias of the registered version (default candidate)")
    p.add_argument("-o", "--output", required=True, help="a new (or empty) output folder")
    p.set_defaults(func=cmd_export)


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train and evaluate the dense model of a problem")
    p.add_argument("problem", help="a built-in problem name or 'package.module:function'")
    p.add_argument("-o", "--option", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="problem option, e.g. off=3 (repeatable)")
    p.add_argument("--arch", help="trunk architecture: mlp, cnn or resnet (default: the problem's)")
    p.add_argument("--hidden", type=_widths, help="fully connected widths, e.g. 256,128")
    p.add_argument("--channels", type=_widths, help="convolution widths (cnn, resnet), e.g. 16,32")
    p.add_argument("--depth", type=int, help="residual blocks per stage (resnet)")
    p.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    p.add_argument("--lr", type=float, default=TrainConfig.lr)
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", help="dense checkpoint cache (default $AUTOMTL_CACHE_DIR or ~/.cache/automtl)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_train)


def _terminate(_signum, _frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # SIGINT is set explicitly: a shell script's background job inherits it ignored, and Ctrl-C or `kill -INT`
    # must always stop automtl (a search defers both signals to its next safe point: automtl.interrupts).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False)],
    )
    try:
        args.func(args)
    except UserError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
