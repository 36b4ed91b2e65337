"""Command line: parses, calls :mod:`automtl.api`, prints. No logic of its own.

Every :class:`~automtl.errors.UserError` becomes a one-line message on
stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict
from typing import Any

import yaml
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from automtl import api
from automtl.errors import UserError
from automtl.problems import PROBLEMS
from automtl.pruning import STRATEGIES
from automtl.train import TrainConfig

console = Console()
err_console = Console(stderr=True)


def _key_value(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, yaml.safe_load(value)


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
            "meaning": s.threshold.meaning, "structured": s.structured, "summary": s.summary(),
        }
        for name, s in sorted(STRATEGIES.items())
    }
    if args.json:
        print(json.dumps(listing))
        return
    table = Table("strategy", "kind", "threshold", "range", "meaning")
    for name, row in listing.items():
        kind = "structured" if row["structured"] else "unstructured"
        table.add_row(name, kind, row["threshold"], f"[{row['low']:g}, {row['high']:g}]", row["meaning"])
    console.print(table)
    console.print("Higher thresholds never remove less. Details: docs/strategies.md")


def cmd_train(args: argparse.Namespace) -> None:
    model = {k: v for k, v in {"arch": args.arch, "hidden": args.hidden, "channels": args.channels}.items() if v is not None}
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
    table = Table("task", "test accuracy", "val accuracy", title=f"dense {report.problem} ({report.model['arch']})")
    for task, acc in report.accuracy.items():
        table.add_row(task, f"{acc:.2%}", f"{report.val_accuracy[task]:.2%}")
    console.print(table)
    source = "cache" if report.cached else f"trained in {report.train_seconds:.1f}s"
    console.print(f"{report.parameters:,} parameters; checkpoint {report.checkpoint} ({source})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="automtl", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("problems", help="list the built-in problems and their tasks")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_problems)

    p = sub.add_parser("strategies", help="list the pruning strategies and their thresholds")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_strategies)

    p = sub.add_parser("train", help="train and evaluate the dense model of a problem")
    p.add_argument("problem", help="a built-in problem name or 'package.module:function'")
    p.add_argument("-o", "--option", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="problem option, e.g. off=3 (repeatable)")
    p.add_argument("--arch", help="trunk architecture: mlp or cnn (default: the problem's)")
    p.add_argument("--hidden", type=_widths, help="fully connected widths, e.g. 256,128")
    p.add_argument("--channels", type=_widths, help="convolution widths (cnn), e.g. 16,32")
    p.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    p.add_argument("--lr", type=float, default=TrainConfig.lr)
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", help="dense checkpoint cache (default $AUTOMTL_CACHE_DIR or ~/.cache/automtl)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
