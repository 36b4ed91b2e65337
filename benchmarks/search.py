"""Search orchestration and sampler quality on multidigits (search_spaces/multidigits.yaml).

* overhead = (wall time of the trial loop - sum of trial compute) / wall time,
  one worker; trial compute is pruning + fine-tuning + evaluation;
* speed of 2 workers vs 1 on the same trials;
* hypervolume (pareto.py: normalised objectives, origin reference) of the
  default sampler (multivariate TPE) after N trials vs random search after 2N,
  for several seeds.

    python benchmarks/search.py [--trials 60] [--seeds 3] [--speed-trials 40]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from optuna.trial import TrialState

from _report import machine, write_section
from automtl import api, pareto
from automtl.rundir import RunDir

CONFIG = Path(__file__).resolve().parent.parent / "search_spaces" / "multidigits.yaml"


def search(root: Path, name: str, overrides: list[str]):
    """Run one search; return its study and the wall time of its trial loop."""
    run_dir = root / name
    api.search(CONFIG, overrides, run_dir)
    study = RunDir(run_dir).load_study()
    done = [t for t in study.trials if t.state.is_finished()]
    loop = max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)
    return study, loop.total_seconds()


def compute(study) -> float:
    return sum(t.user_attrs.get("compute_seconds", 0.0) for t in study.trials)


def hv_after(study, n: int) -> float:
    """Hypervolume of the front of the first ``n`` trials (by number)."""
    trials = [t for t in study.trials if t.state == TrialState.COMPLETE and t.number < n]
    front = [t for t in trials if not any(_dominates(o.values, t.values) for o in trials)]
    return pareto.hypervolume(front, study.user_attrs["directions"], study.user_attrs["total_parameters"])


def _dominates(a, b) -> bool:
    return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--speed-trials", type=int, default=40)
    args = parser.parse_args()
    started = time.perf_counter()
    lines = ["## Search orchestration and sampler quality (`benchmarks/search.py`)", ""]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        speed = {}
        for workers in (1, 2):
            study, wall = search(root, f"speed-{workers}", [f"trials={args.speed_trials}", f"workers={workers}"])
            speed[workers] = (wall, compute(study))
            print(f"workers={workers}: loop {wall:.1f}s, trial compute {compute(study):.1f}s", flush=True)
        (wall1, compute1), (wall2, compute2) = speed[1], speed[2]
        overhead = (wall1 - compute1) / wall1
        lines += [
            f"multidigits.yaml (all eight strategies, 4 weighting methods, distillation), {args.speed_trials} trials:",
            "",
            "| workers | trial-loop wall | sum of trial compute | overhead | speed vs 1 worker |",
            "|---:|---:|---:|---:|---:|",
            f"| 1 | {wall1:.1f} s | {compute1:.1f} s | {overhead:.1%} | 1.00x |",
            f"| 2 | {wall2:.1f} s | {compute2:.1f} s | {(2 * wall2 - compute2) / (2 * wall2):.1%} (idle share) "
            f"| {wall1 / wall2:.2f}x |",
            "",
            "Overhead is everything in the loop that is not pruning, fine-tuning or evaluation: asking the "
            "sampler, storage writes, saving the trial's weights, copying the dense model. With 2 workers "
            "each worker runs torch on 1 of the 2 cores (1 worker uses both), so the speed-up also reflects "
            "how well one trial uses two threads.",
            "",
        ]
        rows = []
        for seed in range(args.seeds):
            tpe, _ = search(root, f"tpe-{seed}", [f"trials={args.trials}", f"seed={seed}", "workers=2"])
            rnd, _ = search(root, f"random-{seed}", [f"trials={2 * args.trials}", f"seed={seed}", "workers=2",
                                                      "sampler.name=random"])
            rows.append((seed, hv_after(tpe, args.trials), hv_after(rnd, args.trials), hv_after(rnd, 2 * args.trials)))
            print(rows[-1], flush=True)
    n, n2 = args.trials, 2 * args.trials
    lines += [
        f"Hypervolume (objectives: sparsity, accuracy of each task on validation; origin reference; higher is "
        f"better), default sampler (multivariate TPE) after {n} trials vs random search after {n} and {n2}:",
        "",
        f"| seed | TPE @ {n} | random @ {n} | random @ {n2} |",
        "|---:|---:|---:|---:|",
        *[f"| {s} | {a:.4f} | {b:.4f} | {c:.4f} |" for s, a, b, c in rows],
        f"| mean | {statistics.mean(r[1] for r in rows):.4f} | {statistics.mean(r[2] for r in rows):.4f} "
        f"| {statistics.mean(r[3] for r in rows):.4f} |",
        "",
        f"Run: `python benchmarks/search.py --trials {n} --seeds {args.seeds} --speed-trials {args.speed_trials}` "
        f"({(time.perf_counter() - started) / 60:.1f} min on {machine()}).",
    ]
    write_section("search", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
