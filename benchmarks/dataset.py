"""Searching a problem served as a map-style Dataset larger than what the search holds in memory.

``lazy_pairs`` (also a problem plugin, ``dataset:lazy_pairs``) synthesises
each two-digit image from its index: scikit-learn's 8x8 digits, upscaled to
16x16, placed at positions drawn by a random generator seeded with (seed,
split, index) on a 64x64 canvas, the left digit in the left half and the
right one in the right half (pixel max). Nothing is stored, so the dataset
can be far larger than memory. The benchmark records

* a search on 200,000 training (+ 2 x 10,000 evaluation) samples: wall time,
  mean trial time and the peak resident memory of the process and its
  children (DataLoader workers), against the size of the data materialised;
* the same small problem searched in memory (tensors) and as a Dataset:
  mean trial time of each.

    python benchmarks/dataset.py [--train-pairs 200000] [--eval-pairs 10000] [--trials 3]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import yaml
from sklearn.datasets import load_digits
from torch.utils.data import Dataset

from _report import publish
from automtl import DatasetSplit, Problem, Task, api
from automtl.problems._pairs import split_indices
from automtl.rundir import RunDir

SIDE, DIGIT = 64, 16  # canvas and upscaled digit sides
TASKS = ["left", "right"]
ITEM_BYTES = SIDE * SIDE * 4 + len(TASKS) * 8  # one float32 image and one int64 label per task


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32).repeat(2, axis=1).repeat(2, axis=2)
    return images, digits.target


class LazyPairs(Dataset):
    """``n`` two-digit images, each synthesised from its index (nothing is stored)."""

    def __init__(self, n: int, pool: np.ndarray, seed: tuple[int, int]):
        self.n, self.pool, self.seed = n, pool, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int):
        images, labels = _digits()
        rng = np.random.default_rng((*self.seed, index))
        left, right = rng.choice(self.pool, 2)
        top = rng.integers(0, SIDE - DIGIT + 1, 2)
        across = rng.integers(0, SIDE // 2 - DIGIT + 1, 2) + (0, SIDE // 2)
        canvas = np.zeros((1, SIDE, SIDE), np.float32)
        for digit, y, x in zip((left, right), top, across):
            box = canvas[0, y : y + DIGIT, x : x + DIGIT]
            np.maximum(box, images[digit], out=box)
        return torch.from_numpy(canvas), {"left": int(labels[left]), "right": int(labels[right])}


def lazy_pairs(train_pairs: int = 200_000, eval_pairs: int = 10_000, seed: int = 0,
               in_memory: bool = False) -> Problem:
    """The problem plugin: Dataset splits, or the same samples materialised as tensors (``in_memory``)."""
    pools = split_indices(len(_digits()[1]), (0.6, 0.2, 0.2), np.random.default_rng(seed))
    sizes = (train_pairs, eval_pairs, eval_pairs)
    splits = {name: LazyPairs(n, pool, (seed, i)) for i, (name, n, pool) in enumerate(zip(("train", "val", "test"),
                                                                                            sizes, pools))}
    if in_memory:
        splits = {name: DatasetSplit(data).for_tasks(TASKS).sample(len(data)) for name, data in splits.items()}
    return Problem("lazy-pairs", [Task(name, 10) for name in TASKS], **splits,
                   options={"train_pairs": train_pairs, "eval_pairs": eval_pairs, "in_memory": in_memory})


def search(root: Path, name: str, options: dict, trials: int) -> tuple[float, list[float]]:
    """Run one search; return its wall time and each trial's time."""
    config = {
        "name": name, "seed": 0,
        "problem": {"name": "dataset:lazy_pairs", "options": options, "pythonpath": [str(Path(__file__).parent)]},
        "model": {"arch": "mlp", "hidden": [32]},
        "dense": {"epochs": 1, "batch_size": 256}, "fine_tune": {"epochs": 1, "batch_size": 256},
        "data": {"batch_size": 1024, "num_workers": 1},
        "pruning": {"strategies": {"magnitude": {"low": 0.0, "high": 0.5}, "activation": None},
                    "calibration_size": 256},
        "sampler": {"name": "random"}, "trials": trials, "workers": 1, "tracking": {"enabled": False},
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    start = time.perf_counter()
    api.search(path, run_dir=root / name)
    wall = time.perf_counter() - start
    study = RunDir(root / name).load_study()
    return wall, [(t.datetime_complete - t.datetime_start).total_seconds() for t in study.trials]


def peak_rss_bytes() -> tuple[int, int]:
    """Peak resident memory of this process and of its largest finished child (Linux: ru_maxrss in KiB)."""
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-pairs", type=int, default=200_000)
    parser.add_argument("--eval-pairs", type=int, default=10_000)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--small-pairs", type=int, default=10_000, help="training samples of the comparison")
    args = parser.parse_args()
    started = time.perf_counter()
    samples = args.train_pairs + 2 * args.eval_pairs
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        wall, trial_times = search(root, "large", {"train_pairs": args.train_pairs, "eval_pairs": args.eval_pairs},
                                   args.trials)
        own, children = peak_rss_bytes()  # before the comparison below materialises its small problem
        small = {form: search(root, f"small-{form}", {"train_pairs": args.small_pairs, "eval_pairs": 1000,
                                                      "in_memory": form == "tensors"}, args.trials)[1]
                 for form in ("tensors", "dataset")}
    materialised = samples * ITEM_BYTES
    peak = max(own, children)
    gib = 2**30
    lines = [
        "## Dataset splits: searching data larger than memory (`benchmarks/dataset.py`)",
        "",
        f"A map-style Dataset of {samples:,} two-digit images (1x{SIDE}x{SIDE} float32; {args.train_pairs:,} "
        f"train, {args.eval_pairs:,} validation, {args.eval_pairs:,} test), each synthesised from its index "
        "with a seeded generator, nothing stored. Search: MLP [32], dense 1 epoch, "
        f"{args.trials} trials of 1 fine-tune epoch, `data: {{batch_size: 1024, num_workers: 1}}`, one worker.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| data materialised (images + labels) | {materialised / gib:.2f} GiB |",
        f"| peak RSS, search process | {own / gib:.2f} GiB |",
        f"| peak RSS, largest child (DataLoader worker) | {children / gib:.2f} GiB |",
        f"| peak RSS / data materialised | {peak / materialised:.0%} |",
        f"| search wall time (dense training + trials) | {wall:.0f} s |",
        f"| mean trial time | {statistics.mean(trial_times):.1f} s |",
        "",
        f"The same small problem ({args.small_pairs:,} train, 1,000 validation and test samples), "
        f"{args.trials} trials each: mean trial time in memory (tensors) "
        f"{statistics.mean(small['tensors']):.2f} s, as a Dataset {statistics.mean(small['dataset']):.2f} s "
        f"({statistics.mean(small['dataset']) / statistics.mean(small['tensors']):.1f}x: the Dataset synthesises "
        "and collates every item in every epoch, the tensors are indexed).",
    ]
    publish("dataset", lines, "python benchmarks/dataset.py", started)


if __name__ == "__main__":
    main()
