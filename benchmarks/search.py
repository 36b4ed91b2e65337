"""Search orchestration, sampler quality and the baseline suite (search_spaces/multidigits.yaml).

* overhead = (wall time of the trial loop - sum of trial compute) / wall time,
  one worker; trial compute is pruning + fine-tuning + evaluation;
* speed of 2 workers vs 1 on the same trials;
* hypervolume (pareto.py: normalised objectives, origin reference) of the
  default sampler (multivariate TPE) after N trials vs random search after 2N,
  for several seeds;
* ``ray``: per-trial overhead of the Ray Tune backend vs the local backend,
  both running the same replayed plans two at a time with one thread each;
* ``gpu`` (needs a GPU; ``benchmarks/gpu.sh``): CUDA vs CPU, a ``trial_batch`` sweep on
  CUDA, the ResNet space and an export on CUDA, Ray trials per minute with
  ``--gpus-per-trial 0.25`` (four trials share the GPU) vs ``1``;
* ``batch``: trials per minute at ``trial_batch`` 1, 2, 4, 8, 16 on the CPU, the
  same replayed plans in every row, and the arithmetic rate of the fine-tune (one
  trial at a time and 8 stacked) and of a matmul (one member at a time and batched),
  with all threads and with one;
* ``baseline``: the default search run unchanged on a suite of five problems (``SUITE``)
  against the hand-written peer baseline (``benchmarks/baseline.py``) at two fine-tune
  lengths, each given the same wall-clock, per seed: hypervolume of (sparsity, test
  metric per task relative to dense) at references 0, 0.5 and 0.8, and the highest
  sparsity whose tasks all keep 80, 85, 90 % of dense or stay within 1 point of it;
* ``levers``: on the same suite without the baseline, the default search and the default
  with each lever (``LEVERS``, or ``--lever-names``) switched, at the default's wall-clock.

    python benchmarks/search.py [--parts local,ray,gpu,baseline,batch,levers] [--trials 60] [--seeds 3]
                                [--speed-trials 40] [--problems multidigits,mnist1d-pair,...] [--levers PROBLEM]
                                [--lever-names NAME,...]
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

import moocore
import numpy as np
import torch
import yaml
from optuna.trial import TrialState

import baseline
from _report import publish
from automtl import api, fidelity, pareto, trial
from automtl.config import load, read_yaml
from automtl.measure import flops
from automtl.objectives import of_study
from automtl.records import StudyRecord, TrialRecord, records
from automtl.rundir import RunDir
from automtl.space import TrialPlan

SPACES = Path(__file__).resolve().parent.parent / "search_spaces"
CONFIG = SPACES / "multidigits.yaml"
REFERENCES = (0.0, 0.5, 0.8)
FLOORS = (0.80, 0.85, 0.90)


# Speed runs replay one run's plans: every plan runs to the full fine-tune, none is seeded twice.
REPLAYABLE = ["rungs=null", "seed_front=[]"]
RAY_SECONDS = 90
GPU_SWEEP_TRIALS = 16


# The speed parts count trials: they run the default without its time budget, at a fixed full fine-tune of
# 27 epochs (its rule picks 15-30 on multidigits, with the machine's speed).
BY_TRIALS = ["timeout=null", "fine_tune.epochs=27"]


def search(root: Path, name: str, overrides: list[str], config: Path = CONFIG):
    """Run one search (by trials when ``overrides`` set ``trials`` and not ``timeout``); return its study and
    the wall time of its trial loop."""
    counted = any(o.startswith("trials=") for o in overrides) and not any(o.startswith("timeout=") for o in overrides)
    overrides = [*BY_TRIALS, *overrides] if counted else overrides
    run_dir = root / name
    api.search(config, run_dir=run_dir, overrides=overrides)
    study = RunDir(run_dir).load_study()
    done = [t for t in study.trials if t.state.is_finished()]
    if not done:  # e.g. a run stopped by its timeout before any trial finished
        return study, float("nan")
    loop = max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)
    return study, loop.total_seconds()


def replay_config(root: Path, study) -> Path:
    """multidigits.yaml with every trial of ``study`` enqueued, so another run does the same work."""
    raw = read_yaml(CONFIG.read_text())
    raw["enqueue"] = [TrialRecord.from_trial(t).plan for t in sorted(study.trials, key=lambda t: t.number)]
    raw["rungs"], raw["seed_front"] = None, []
    path = root / "replay.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def compute(study) -> float:
    return sum(r.compute_seconds for r in records(study.trials))


def hv_after(study, n: int) -> float:
    """Hypervolume of the front of the first ``n`` trials (by number)."""
    trials = [t for t in study.trials if t.state == TrialState.COMPLETE and t.number < n]
    front = [t for t in trials if not any(_dominates(o.values, t.values) for o in trials)]
    return pareto.hypervolume(front, of_study(study))


def _dominates(a, b) -> bool:
    return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))


def local_part(root: Path, args: argparse.Namespace) -> None:
    """Overhead, 2 workers vs 1, TPE vs random: section ``search``."""
    started, trials = time.perf_counter(), args.trials or 60
    lines = ["## Search orchestration and sampler quality (`benchmarks/search.py`)", ""]
    base, wall_a = search(root, "speed-a", [f"trials={args.speed_trials}", "workers=1", *REPLAYABLE])
    compute_a = compute(base)
    replay = replay_config(root, base)
    one, wall_b = search(root, "speed-b", [f"trials={args.speed_trials}", "workers=1", "threads=1"], replay)
    two, wall_c = search(root, "speed-c", [f"trials={args.speed_trials}", "workers=2", "threads=1"], replay)
    print(f"A {wall_a:.1f}s B {wall_b:.1f}s C {wall_c:.1f}s", flush=True)
    overhead = (wall_a - compute_a) / wall_a
    lines += [
        f"multidigits.yaml without rungs and seeded plans, {args.speed_trials} trials. "
        "Run A is the default search with one worker; B and C replay A's exact plans (`enqueue`), "
        "so all three do the same work:",
        "",
        "| run | workers x torch threads | trial-loop wall | sum of trial compute | trials / min |",
        "|---|---:|---:|---:|---:|",
        f"| A (sampler) | 1 x 2 | {wall_a:.1f} s | {compute_a:.1f} s | {60 * args.speed_trials / wall_a:.1f} |",
        f"| B (replay) | 1 x 1 | {wall_b:.1f} s | {compute(one):.1f} s | {60 * args.speed_trials / wall_b:.1f} |",
        f"| C (replay) | 2 x 1 | {wall_c:.1f} s | {compute(two):.1f} s | {60 * args.speed_trials / wall_c:.1f} |",
        "",
        f"* Orchestration overhead (run A) = (wall - trial compute) / wall = **{overhead:.1%}**: asking the "
        "multivariate TPE sampler (about 11 ms a trial), storage writes, saving the trial's weights.",
        f"* 2 workers vs 1 worker at one thread each (C vs B): **{wall_b / wall_c:.2f}x**.",
        f"* 2 workers vs the default single worker that already uses both cores (C vs A): "
        f"**{wall_a / wall_c:.2f}x** — one small-MLP trial gains little from a second torch thread.",
        "",
    ]
    rows = []
    for seed in range(args.seeds):
        tpe, _ = search(root, f"tpe-{seed}", [f"trials={trials}", f"seed={seed}", "workers=2"])
        rnd, _ = search(root, f"random-{seed}", [f"trials={2 * trials}", f"seed={seed}", "workers=2",
                                                  "sampler.name=random"])
        rows.append((seed, hv_after(tpe, trials), hv_after(rnd, trials), hv_after(rnd, 2 * trials)))
        print(rows[-1], flush=True)
    n, n2 = trials, 2 * trials
    lines += [
        f"Hypervolume (objectives: sparsity, accuracy of each task on validation; origin reference; higher is "
        f"better), default sampler (multivariate TPE) after {n} trials vs random search after {n} and {n2}:",
        "",
        f"| seed | TPE @ {n} | random @ {n} | random @ {n2} |",
        "|---:|---:|---:|---:|",
        *[f"| {s} | {a:.4f} | {b:.4f} | {c:.4f} |" for s, a, b, c in rows],
        f"| mean | {statistics.mean(r[1] for r in rows):.4f} | {statistics.mean(r[2] for r in rows):.4f} "
        f"| {statistics.mean(r[3] for r in rows):.4f} |",
    ]
    publish("search", lines, f"python benchmarks/search.py --parts local --trials {n} --seeds {args.seeds} "
            f"--speed-trials {args.speed_trials}", started)


def _overhead_ms(study, wall: float, concurrency: int) -> float:
    """Per-trial time not spent in trial compute, with ``concurrency`` trials in flight."""
    trials = len([t for t in study.trials if t.state.is_finished()])
    return 1000 * (wall * concurrency - compute(study)) / trials


def ray_part(root: Path, args: argparse.Namespace) -> None:
    """Ray Tune backend vs local backend on the same replayed plans: section ``search-ray``."""
    started = time.perf_counter()
    n = args.speed_trials
    base, _ = search(root, "ray-base", [f"trials={n}", "workers=1", *REPLAYABLE])
    replay = replay_config(root, base)
    begun = time.perf_counter()
    local, wall_local = search(root, "ray-local", [f"trials={n}", "workers=2", "threads=1"], replay)
    local_startup, begun = time.perf_counter() - begun - wall_local, time.perf_counter()
    on_ray, wall_ray = search(root, "ray-ray", [f"trials={n}", "backend.name=ray", "backend.cpus_per_trial=1"], replay)
    ray_startup = time.perf_counter() - begun - wall_ray
    batched, wall_batched = search(root, "ray-batched", [f"trials={n}", "backend.name=ray", "backend.cpus_per_trial=2",
                                                         "trial_batch=8"], replay)
    local_ms, ray_ms = _overhead_ms(local, wall_local, 2), _overhead_ms(on_ray, wall_ray, 2)
    first = sorted(on_ray.trials, key=lambda t: t.number)[:2]
    first_wait = statistics.mean((t.datetime_complete - t.datetime_start).total_seconds()
                                 - TrialRecord.from_trial(t).result.compute_seconds for t in first)
    lines = [
        "## Ray Tune backend vs local backend (`benchmarks/search.py --parts ray`)", "",
        f"multidigits.yaml, {n} trials replayed from one default search (`enqueue`), so both backends do the same "
        "work, two trials at a time with one torch thread each (local: `workers: 2, threads: 1`; Ray: a local "
        "Ray on this machine's cores, `--cpus-per-trial 1`):", "",
        "| backend | trial-loop wall | sum of trial compute | trials / min | overhead per trial |",
        "|---|---:|---:|---:|---:|",
        f"| local | {wall_local:.1f} s | {compute(local):.1f} s | {60 * n / wall_local:.1f} | {local_ms:.0f} ms |",
        f"| ray | {wall_ray:.1f} s | {compute(on_ray):.1f} s | {60 * n / wall_ray:.1f} | {ray_ms:.0f} ms |",
        f"| ray, batches of 8 in one slot of 2 CPUs | {wall_batched:.1f} s | {compute(batched):.1f} s | "
        f"{60 * n / wall_batched:.1f} | {_overhead_ms(batched, wall_batched, 1):.0f} ms |", "",
        f"* Overhead per trial = (2 x wall - trial compute) / trials: Ray adds **{ray_ms - local_ms:.0f} ms** a "
        f"trial over the local backend (**{ray_ms / max(local_ms, 1e-9):.1f}x** its overhead); trial-loop wall "
        f"ratio ray / local = **{wall_ray / wall_local:.2f}x**. The Ray loop includes starting its two worker "
        f"processes while the first two trials wait ({first_wait:.1f} s each, measured as those trials' time "
        f"beyond their compute): spread over the trials that is {2000 * first_wait / n:.0f} ms of the "
        "difference; the rest is Tune's scheduling and result handling per trial.",
        f"* Everything outside the trial loop (dense model, study, starting workers, final MLflow sync and "
        f"dashboard) takes **{ray_startup:.1f} s** on Ray vs **{local_startup:.1f} s** locally, once per search; "
        "the difference is mostly starting the local Ray and its worker processes.",
        f"* Trial batching on Ray (`--trial-batch 8 --cpus-per-trial 2`: each Ray trial fine-tunes 8 trials "
        f"together with both threads): **{wall_ray / wall_batched:.2f}x** the trials per minute of two one-trial "
        "slots. A batched trial's compute is its share of its batch's time, so the batch counts once.",
    ]
    publish("search-ray", lines, f"python benchmarks/search.py --parts ray --speed-trials {n}", started)


def gpu_part(root: Path, args: argparse.Namespace) -> None:
    """Every CUDA path on one GPU, MLflow off: section ``search-gpu``.

    Local backend on CUDA vs CPU on the same replayed plans; the ResNet search space (BatchNorm, residual
    adds) searched on CUDA and its knee trial exported; then Ray with 1 vs 0.25 GPU per Ray trial, and 1 GPU
    running batches of 8 trials, each given at most ``RAY_SECONDS`` (a Ray run that stalls shows as few
    trials per minute, not as a hang)."""
    import torch

    started, n = time.perf_counter(), args.speed_trials
    quiet = ["tracking.enabled=false"]
    rows = []

    def row(name: str, study, wall: float) -> None:
        finished = sum(t.state.is_finished() for t in study.trials)
        rows.append(f"| {name} | {finished} | {wall:.1f} s | {compute(study):.1f} s | {60 * finished / wall:.1f} |")
        print(rows[-1], flush=True)

    base, wall_cuda = search(root, "gpu-local", [f"trials={n}", "workers=1", "backend.device=cuda", *quiet,
                                                 *REPLAYABLE])
    row("local, CUDA", base, wall_cuda)
    replay = replay_config(root, base)
    cpu, wall_cpu = search(root, "cpu-local", [f"trials={n}", "workers=1", "backend.device=cpu", *quiet], replay)
    row("local, CPU (all cores)", cpu, wall_cpu)
    sweep = batch_sweep(root / "sweep", GPU_SWEEP_TRIALS, "cuda", (1, 4, 16), workers=1)
    resnet_trials = max(8, n // 4)
    resnet, wall_resnet = search(root, "gpu-resnet", [f"trials={resnet_trials}", "backend.device=cuda", *quiet],
                                 SPACES / "resnet-mnist1d.yaml")
    card = api.export(root / "gpu-resnet", root / "gpu-resnet-export", pick="knee").card
    exported = card["test_metrics"]
    resnet_line = (
        f"* resnet-mnist1d.yaml (BatchNorm, residual adds) on CUDA: {resnet_trials} trials in {wall_resnet:.1f} s, "
        f"{sum(t.state == TrialState.COMPLETE for t in resnet.trials)} complete; its knee trial "
        f"{card['trial']} exported: test metrics {_rounded(exported['exported_pytorch'])} (PyTorch), "
        f"{_rounded(exported.get('exported_onnx', {}))} (ONNX), the trial measured "
        f"{_rounded(exported['search'])}.")
    print(resnet_line, flush=True)
    for share, batch in ((1.0, 1), (0.25, 1), (1.0, 8)):
        study, wall = search(root, f"gpu-ray-{share}-{batch}", [
            f"trials={n}", f"timeout={RAY_SECONDS}", "backend.name=ray", "backend.device=cuda",
            f"backend.gpus_per_trial={share}", "backend.cpus_per_trial=1", f"trial_batch={batch}", *quiet], replay)
        row(f"Ray, {share:g} GPU per Ray trial ({int(1 / share)} at once), trial_batch {batch}", study, wall)
    lines = [
        "## On a GPU (`benchmarks/gpu.sh`)", "",
        f"{torch.cuda.get_device_name(0)}, MLflow off. multidigits.yaml, {n} trials replayed from the CUDA run "
        "(`enqueue`, no rungs), so every row does the same work:", "",
        "| backend | trials finished | trial-loop wall | sum of trial compute | trials / min |",
        "|---|---:|---:|---:|---:|",
        *rows, "",
        f"* CUDA vs CPU, one trial at a time: **{wall_cpu / wall_cuda:.2f}x** trials per minute.",
        resnet_line, "", f"Trial batching on CUDA, {GPU_SWEEP_TRIALS} replayed plans, one worker:", "", *BATCH_HEADER, *sweep,
    ]
    publish("search-gpu", lines, f"bash benchmarks/gpu.sh (--speed-trials {n})", started)


def batch_sweep(root: Path, n: int, device: str, sizes: tuple[int, ...], workers: int) -> list[str]:
    """Trials per minute at each ``trial_batch`` in ``sizes``, every run doing the same ``n`` replayed plans
    (full fine-tune, no rungs) with ``workers`` workers on ``device``: markdown table rows, printed as
    measured, the ratio against one trial at a time last."""
    common = [f"trials={n}", f"workers={workers}", f"backend.device={device}", "tracking.enabled=false"]
    rows, first, replay = [], None, None
    for size in sizes:
        if replay is None:
            study, wall = search(root, f"batch-{device}-{size}", [*common, *REPLAYABLE, f"trial_batch={size}"])
            replay = replay_config(root, study)
        else:
            study, wall = search(root, f"batch-{device}-{size}", [*common, f"trial_batch={size}"], replay)
        finished = sum(t.state.is_finished() for t in study.trials)
        per_minute = 60 * finished / wall
        first = first or per_minute
        rows.append(f"| {size} | {workers} | {finished} | {wall:.1f} s | {per_minute:.1f} | "
                    f"**{per_minute / first:.2f}x** |")
        print(rows[-1], flush=True)
    return rows


BATCH_HEADER = ["| trial_batch | workers | trials finished | trial-loop wall | trials / min | vs 1 |",
                "|---:|---:|---:|---:|---:|---:|"]


def arithmetic(root: Path, k: int = 8, epochs: int = 2) -> list[str]:
    """How much there is for batching to win on this CPU: the fine-tune's arithmetic rate one trial at a time
    and ``k`` stacked, and the widest layer's matmul one member at a time and batched, with all threads (one
    worker) and with one thread (what each of two workers has)."""
    config = load(CONFIG, ["tracking.enabled=false", f"fine_tune.epochs={epochs}"])
    bench = trial.Bench.prepare(config, root / "arithmetic")
    weights = {task: 1 / len(bench.task_names) for task in bench.task_names}
    plans = [TrialPlan(["global_magnitude"], {"global_magnitude": 0.5 + 0.4 * i / k}, "simplex", weights, 0.3,
                       config.fine_tune.lr.low) for i in range(k)]
    # the students' forward and backward passes: 6 x MACs a sample (the distillation teacher not counted)
    work = 6 * flops(bench.dense, bench.problem.val.sample(1).inputs) * len(bench.problem.train) * epochs * k
    batch, width = config.fine_tune.batch_size, max(config.model.hidden)
    threads, rows, stacking = torch.get_num_threads(), [], {}
    for n in sorted({threads, 1}, reverse=True):
        torch.set_num_threads(n)
        alone = sum(trial.run(trial.Job(plan, number), bench).fine_tune_seconds for number, plan in enumerate(plans))
        stacked: dict[int, float] = {}
        trial.run_batch([trial.Job(plan, number) for number, plan in enumerate(plans)], bench,
                        lambda index, result: stacked.setdefault(index, result.fine_tune_seconds))
        fine_tune = (work / alone, work / sum(stacked.values()))
        matmul = _matmul_rates(k, batch, width)
        stacking[n] = fine_tune[1] / fine_tune[0]
        rows.append(f"| {n} | {fine_tune[0] / 1e9:.0f} | {fine_tune[1] / 1e9:.0f} | **{stacking[n]:.2f}x** | "
                    f"{matmul[0] / 1e9:.0f} | {matmul[1] / 1e9:.0f} | **{matmul[1] / matmul[0]:.2f}x** |")
        print(rows[-1], flush=True)
    torch.set_num_threads(threads)
    return [f"Arithmetic rate in GFLOP/s, one process: the fine-tune of {k} global-magnitude plans ({epochs} "
            f"epochs, 6 x MACs a sample) one at a time and stacked, and the widest layer's matmul ({batch} x "
            f"{width} x {width}) one member at a time and {k} batched:", "",
            "| threads | fine-tune alone | stacked | ratio | matmul alone | batched | ratio |",
            "|---:|---:|---:|---:|---:|---:|---:|", *rows, "",
            f"With one thread, as each of two workers has, stacking {k} fine-tunes is **{stacking[1]:.2f}x**: the "
            "most a batch can gain over one trial at a time with two workers, since the matmuls already run as "
            "fast one member at a time as batched and the rest of a step grows with the members."]


def _matmul_rates(k: int, batch: int, width: int, rounds: int = 200) -> tuple[float, float]:
    """FLOP/s of ``k`` ``batch x width x width`` matmuls one after another, and as one batched matmul."""
    a, b = torch.randn(k, batch, width), torch.randn(k, width, width)
    rates = []
    for product in (lambda: [a[i] @ b[i] for i in range(k)], lambda: torch.bmm(a, b)):
        product()
        started = time.perf_counter()
        for _ in range(rounds):
            product()
        rates.append(2 * k * batch * width * width * rounds / (time.perf_counter() - started))
    return rates[0], rates[1]


def batch_part(root: Path, args: argparse.Namespace) -> None:
    """Trial batching on this machine's CPU: section ``search-batch``."""
    started, n = time.perf_counter(), args.speed_trials
    rows = batch_sweep(root, n, "cpu", (1, 2, 4, 8, 16), workers=2)
    rows += batch_sweep(root / "one-worker", n, "cpu", (1, 8), workers=1)
    lines = [
        "## Trial batching on the CPU (`benchmarks/search.py --parts batch`)", "",
        f"multidigits.yaml, {n} plans replayed in every row (no rungs: each plan runs the full fine-tune), "
        "MLflow off; with 2 workers each has one thread, one worker has them all:", "",
        *BATCH_HEADER, *rows, "", *arithmetic(root),
    ]
    publish("search-batch", lines, f"python benchmarks/search.py --parts batch --speed-trials {n}", started)


def _rounded(metrics: dict) -> dict:
    return {task: round(value, 4) for task, value in metrics.items()}


def _cell(key: str, value: float) -> str:
    return f"{value:.4g}" if key.startswith("HV") else f"{value:.1%}"


# The suite: the default search space (multidigits.yaml) as shipped, with only the problem and its model (and
# how long that model's dense training is) changed. Nothing else may differ between problems.
SUITE = {
    "multidigits": [],  # 8x8-digit pairs, the MLP
    "mnist1d-pair": ["problem.name=mnist1d-pair", "problem.options={}", "dense.epochs=30",
                     "model={arch: cnn, hidden: [256], channels: [64, 64, 64]}"],  # a 1-D CNN
    "resnet-mnist1d": ["problem.name=mnist1d-pair", "problem.options={}", "dense.epochs=40",
                       "model={arch: resnet, channels: [16, 32], depth: 1, hidden: [64]}"],  # 1-D ResNet, BatchNorm
    "resnet-multidigits": ["model={arch: resnet, channels: [16, 32], depth: 1, hidden: [64]}"],  # a 2-D ResNet
    "multidigits-sum": ["problem.options={off: 2, tasks: [left, right, sum]}"],  # three tasks, one a regression
}


def baseline_part(root: Path, args: argparse.Namespace) -> None:
    """automtl vs the hand-written baseline at equal wall-clock on each problem of the suite (a section per
    problem, ``search-baseline-<problem>``, written as it finishes), then the suite's summary
    (``search-baseline``); on the problems named by ``--levers``, also the default with each lever switched."""
    started = time.perf_counter()
    summary = [_baseline_problem(root, args, name, with_levers=name in args.levers.split(","))
               for name in args.problems.split(",")]
    publish_suite(summary, args, started)


def publish_suite(summary: list[str], args: argparse.Namespace, started: float) -> None:
    """Write the suite's summary (``search-baseline``) from each problem's row."""
    lines = [
        "## automtl vs the hand-written baseline: the suite (`benchmarks/search.py --parts baseline`)", "",
        "The default search (`search_spaces/multidigits.yaml`) run unchanged on each problem (only the problem and "
        "its model differ) against `benchmarks/baseline.py` given the same wall-clock, in two variants: the "
        "baseline fine-tuning as long as automtl's full fine-tune (E), and a third as long. Means over seeds, test "
        "metrics; the ratio and the differences are against the better variant (by HV@0.8). Targets: HV@0.8 "
        "ratio ≥ 1.5x, dense − 1 pt ≥ +5 pts, ahead at every floor on every seed.", "",
        "| problem | E by seed (epochs) | HV@0.8 ratio | dense − 1 pt (automtl / baseline) | floors ahead | targets met |",
        "|---|---:|---:|---:|---:|---|",
        *summary,
    ]
    publish("search-baseline", lines, f"python benchmarks/search.py --parts baseline --problems {args.problems} "
            f"--seeds {args.seeds}", started)


# The baseline's two fine-tune lengths: as long as automtl's full fine-tune (E epochs), and a third of it.
LENGTHS = {"E": lambda full: full, "E/3": lambda full: max(1, full // 3)}


def _baseline_problem(root: Path, args: argparse.Namespace, name: str, with_levers: bool) -> str:
    """One problem of the suite, measured: its section, and its summary row."""
    started, overrides = time.perf_counter(), [*SUITE[name], *args.set]
    rows, levers = [], {}
    for seed in range(args.seeds):
        run = f"{name}-{seed}"
        study, wall = search(root, run, [*overrides, f"seed={seed}", "tracking.enabled=false"])
        config = RunDir(root / run).load_config()
        full = config.fine_tune.epochs
        dense, directions = StudyRecord.of(study).dense_test_metrics, _task_directions(study)
        by_epochs = {}
        for epochs in dict.fromkeys(length(full) for length in LENGTHS.values()):
            points = baseline.run(root / run, wall, seed, epochs)
            by_epochs[epochs] = (len(points), quality([(p.sparsity, p.test_metrics) for p in points], dense, directions))
        variants = {role: by_epochs[length(full)] for role, length in LENGTHS.items()}
        complete = len(pareto.completed(study))
        stopped = sum(t.state == TrialState.PRUNED for t in study.trials)
        rows.append((seed, wall, full, complete + stopped, complete, _front_quality(study, dense, directions), variants))
        print(name, rows[-1], flush=True)
        if with_levers:
            _switch_levers(root, run, [*overrides, f"seed={seed}"], wall, config, dense, directions, args, levers)
    return publish_problem(name, rows, levers, args, started)


def _switch_levers(root: Path, run: str, overrides: list[str], wall: float, config, dense: dict[str, float],
                   directions: dict[str, str], args: argparse.Namespace, levers: dict) -> None:
    """The default search of ``run`` (its ``config``) again with each lever of ``--lever-names`` switched, given
    its wall-clock and full fine-tune; each variant's front quality appended to ``levers[lever]``."""
    def flow(rungs) -> str:
        return yaml.safe_dump(rungs and rungs.model_dump(), default_flow_style=True).strip()

    third = fidelity.with_epochs(config, max(1, config.fine_tune.epochs // 3))
    fixed, fills = [f"fine_tune.epochs={config.fine_tune.epochs}", f"rungs={flow(config.rungs)}"], {
        "middle_lr": f"{config.fine_tune.middle_lr:g}", "third": third.fine_tune.epochs,
        "third_rungs": flow(third.rungs)}
    chosen = {k: v for k, v in LEVERS.items() if not args.lever_names or k in args.lever_names.split(",")}
    for lever, switched in chosen.items():
        variant, _ = search(root, f"{run}-{'-'.join(lever.split()[1:])}", [
            *overrides, "tracking.enabled=false", f"timeout={wall}", *fixed, *(o.format_map(fills) for o in switched)])
        levers.setdefault(lever, []).append(_front_quality(variant, dense, directions))
        print(run, lever, levers[lever][-1], flush=True)


def levers_part(root: Path, args: argparse.Namespace) -> None:
    """The default search and each lever switched, on every problem of ``--problems`` (no baseline): one table
    of means over seeds, section ``search-levers-<the levers>``."""
    started, lines = time.perf_counter(), []
    for name in args.problems.split(","):
        default, levers = [], {}
        for seed in range(args.seeds):
            run, overrides = f"{name}-{seed}", [*SUITE[name], *args.set, f"seed={seed}"]
            study, wall = search(root, run, [*overrides, "tracking.enabled=false"])
            dense, directions = StudyRecord.of(study).dense_test_metrics, _task_directions(study)
            default.append(_front_quality(study, dense, directions))
            _switch_levers(root, run, overrides, wall, RunDir(root / run).load_config(), dense, directions, args,
                           levers)
        keys = list(default[0])
        for search_name, results in {"default": default, **levers}.items():
            means = {k: statistics.mean(r[k] for r in results) for k in keys}
            lines.append(f"| {name} | {search_name} | " + " | ".join(_cell(k, means[k]) for k in keys) + " |")
    chosen = args.lever_names.split(",") if args.lever_names else ["all"]
    slug = "-".join(w for name in chosen for w in name.split() if w not in ("with", "without", "a", "the"))
    publish(f"search-levers-{slug}", [  # a section per set of levers, so one study does not overwrite another
        f"## What each lever contributes: {', '.join(chosen)} (`benchmarks/search.py --parts levers`)", "",
        "The default search, and the default with one lever switched given the default run's wall-clock and full "
        "fine-tune, on each problem of the suite (as in the sections above: only the problem and model differ); "
        f"means over {args.seeds} seeds, test metrics relative to dense (columns as above).", "",
        "| problem | search | " + " | ".join(keys) + " |", "|---|---|" + "---:|" * len(keys), *lines,
    ], f"python benchmarks/search.py --parts levers --problems {args.problems} --seeds {args.seeds}"
       + (f" --lever-names '{args.lever_names}'" if args.lever_names else ""), started)


def publish_problem(name: str, rows: list, levers: dict, args: argparse.Namespace, started: float) -> str:
    """Write the section of one problem from its measured ``rows`` (seed, wall, E, trials, complete, automtl's
    quality, {length: (baseline trials, quality)}) and ``levers``; return its row of the suite's summary."""
    overrides = [*SUITE[name], *args.set]
    keys = list(rows[0][5])
    ours = {k: statistics.mean(r[5][k] for r in rows) for k in keys}
    theirs = {role: {k: statistics.mean(r[6][role][1][k] for r in rows) for k in keys} for role in LENGTHS}
    better = max(LENGTHS, key=lambda role: theirs[role]["HV@0.8"])
    floors = [k for k in keys if not k.startswith("HV")]
    ahead = sum(r[5][k] > r[6][better][1][k] for r in rows for k in floors)
    judged = len(rows) * len(floors)
    ratio = (ours["HV@0.8"] / theirs[better]["HV@0.8"] if theirs[better]["HV@0.8"] > 0
             else math.inf if ours["HV@0.8"] > 0 else math.nan)
    gain = 100 * (ours["dense-1pt"] - theirs[better]["dense-1pt"])
    changed = "as shipped" if not overrides else "with " + ", ".join(f"`{o}`" for o in overrides)
    lines = [
        f"## automtl vs the hand-written baseline on {name} (`benchmarks/search.py --parts baseline`)", "",
        f"The default search ({changed}) against `benchmarks/baseline.py` (multivariate TPE over a global-magnitude "
        "amount, task weights and the learning rate; Adam with a cosine schedule) given the automtl search's "
        "trial-loop wall-clock, on the same data and dense model, fine-tuning E epochs (automtl's full fine-tune, "
        "chosen by its rule from the epoch it measured) or E / 3. Test metrics relative to the dense model's (a "
        "regression task: dense error / error). trials: automtl's (complete of them, the rest stopped early by "
        "rungs) / the baseline's at E / at E / 3. HV@r: hypervolume of (sparsity, each task's relative metric) "
        "above (r, r, …); a floor column: the highest sparsity whose tasks all keep that share of the dense "
        "metric; dense-1pt: every task within 1 point of dense (a regression task: within 1 %). Every cell is "
        "automtl / baseline at E / at E / 3.",
        "",
        "| seed | wall | E | trials | " + " | ".join(keys) + " |",
        "|---:|---:|---:|---:|" + "---:|" * len(keys),
        *[f"| {s} | {w:.0f} s | {e} | {a} ({c}) / {' / '.join(str(vs[role][0]) for role in LENGTHS)} | " + " | ".join(
            " / ".join([_cell(k, q[k]), *(_cell(k, vs[role][1][k]) for role in LENGTHS)]) for k in keys) + " |"
          for s, w, e, a, c, q, vs in rows],
        "| mean | | | | " + " | ".join(
            "**" + " / ".join([_cell(k, ours[k]), *(_cell(k, theirs[role][k]) for role in LENGTHS)]) + "**"
            for k in keys) + " |",
        "", f"* Against the better baseline (fine-tuning {better}): HV@0.8 **{_times(ratio)}**; sparsity with every "
        f"task within 1 pt of dense **{gain:+.1f} pts**; ahead at {ahead} of {judged} floors (seeds x floor columns).",
    ]
    if levers:
        lines += ["", "What each lever contributes: the default search with one lever switched, given the same "
                  "wall-clock (`timeout`) and full fine-tune as the default, same seeds; means over seeds.", "",
                  "| search | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys),
                  "| default | " + " | ".join(_cell(k, ours[k]) for k in keys) + " |",
                  *[f"| {lever} | " + " | ".join(_cell(k, statistics.mean(r[k] for r in results)) for k in keys) + " |"
                    for lever, results in levers.items()]]
    command = f"python benchmarks/search.py --parts baseline --problems {name} --seeds {args.seeds}"
    command += f" --levers {name}" + (f" --lever-names '{args.lever_names}'" if args.lever_names else "") if levers else ""
    publish(f"search-baseline-{name}", lines, command, started)
    met = ratio >= 1.5 and gain >= 5 and ahead == judged
    return (f"| {name} | {'/'.join(str(r[2]) for r in rows)} | {_times(ratio)} | {100 * ours['dense-1pt']:.1f} % "
            f"/ {100 * theirs[better]['dense-1pt']:.1f} % ({gain:+.1f} pts) | {ahead} / {judged} | "
            f"{'yes' if met else 'no'} |")


def _times(ratio: float) -> str:
    """An HV ratio as "1.23x", or what it is when the baseline's hypervolume is 0 (no plan above the reference)."""
    if math.isnan(ratio):
        return "both 0"
    return f"{ratio:.2f}x" if math.isfinite(ratio) else "baseline 0"


def _task_directions(study) -> dict[str, str]:
    return {o.task: o.direction for o in of_study(study) if o.task}


def _relative(metrics: dict[str, float], dense: dict[str, float], directions: dict[str, str]) -> dict[str, float]:
    """Each task's metric as a share of the dense model's (higher is better: dense / error for an error)."""
    return {t: (m / dense[t] if directions[t] == "maximize" else dense[t] / max(m, 1e-12)) for t, m in metrics.items()}


def quality(points: list[tuple[float, dict[str, float]]], dense: dict[str, float], directions: dict[str, str]
            ) -> dict[str, float]:
    """Hypervolumes at REFERENCES and the highest sparsity at each floor (test metrics relative to dense)."""
    relative = [(s, _relative(m, dense, directions)) for s, m in points]
    values = np.array([[s, *(m[t] for t in dense)] for s, m in relative]).reshape(len(points), 1 + len(dense))
    measured = {}
    for ref in REFERENCES:
        above = values[(values > ref).all(axis=1)]
        measured[f"HV@{ref:g}"] = float(moocore.hypervolume(above, ref=np.full(values.shape[1], ref), maximise=True)
                                         ) if len(above) else 0.0
    for floor in FLOORS:
        measured[f"{floor:.0%}"] = max((s for s, m in relative if all(m[t] >= floor for t in dense)), default=0.0)
    within = [s for s, m in points if all(
        m[t] >= dense[t] - 0.01 if directions[t] == "maximize" else m[t] <= dense[t] * 1.01 for t in dense)]
    measured["dense-1pt"] = max(within, default=0.0)
    return measured


# What each lever contributes: the default search with one lever switched off (or, for the levers the
# default leaves off, on), given the same wall-clock and full fine-tune.
LEVERS = {
    "without rungs": ["rungs=null"],
    "without the seeded front": ["seed_front=[]"],
    "without the enqueued plans": ["enqueue=[]"],  # the global magnitude -> Taylor family
    "without the focus region": ["focus=null"],
    "without a searched learning rate": ["fine_tune.lr={middle_lr}"],  # the range's geometric middle, fixed
    "with hypervolume promotion": ["rungs.promote=hypervolume"],  # rungs let on the largest hypervolume shares
    "without the ceiling": ["focus.ceiling=false"],  # queued plans past a seed below the floor fine-tuned too
    "without the climb": ["focus.climb=false"],  # no global-magnitude levels queued past the seeded front
    "with a cosine fine-tune": ["fine_tune.schedule=cosine"],  # the learning rate decays to 0 (constant shipped)
    "with a searched schedule": ["fine_tune.schedule=[constant, cosine]"],  # each plan's, a categorical
    "with gradual pruning": ["fine_tune.gradual={{epochs: 1, steps: 8}}"],  # masks closed over the first epoch
    # as if the budget held 90 full fine-tunes, not 30 (rungs dropped where none is left before the end)
    "with a third of the full fine-tune": ["fine_tune.epochs={third}", "rungs={third_rungs}"],
}


def _front_quality(study, dense: dict[str, float], directions: dict[str, str]) -> dict[str, float]:
    return quality([(r.result.sparsity, r.result.test_metrics) for r in records(pareto.completed(study))], dense,
                   directions)


PARTS = {"local": local_part, "ray": ray_part, "gpu": gpu_part, "baseline": baseline_part, "batch": batch_part,
         "levers": levers_part}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="local,ray", help=f"comma-separated, from {', '.join(PARTS)}")
    parser.add_argument("--trials", type=int, default=None, help="trials per search (default: the search space's)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--speed-trials", type=int, default=40)
    parser.add_argument("--problems", default=",".join(SUITE), help="problems of the baseline part's suite")
    parser.add_argument("--lever-names", default="", help=f"the levers to switch (default all: {', '.join(LEVERS)})")
    parser.add_argument("--set", action="append", default=[], help="override the default in the baseline part "
                        "(a quick check of the script, e.g. --set timeout=10; published figures use none)")
    parser.add_argument("--levers", default="", help="problems of the baseline part on which to switch each "
                        f"lever off in turn ({', '.join(LEVERS)})")
    args = parser.parse_args()
    parts = args.parts.split(",")
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; choose from {', '.join(PARTS)}")
    with tempfile.TemporaryDirectory() as tmp:
        for part in parts:
            PARTS[part](Path(tmp), args)


if __name__ == "__main__":
    main()
