"""Export three Pareto points of a search: size, FLOPs and CPU latency, dense vs exported.

Runs each search — ``multidigits`` (the default MLP) and ``resnet`` (a 1-D
ResNet with BatchNorm and residual adds, search_spaces/resnet-mnist1d.yaml) —
exports the knee, the sparsest trial meeting an accuracy floor on both tasks,
and the most accurate trial on the first task, each with int8, and records
from their cards:

* parameters and FLOPs dense -> exported, and the structural reduction
  dense FLOPs / exported FLOPs (Torch-Pruning's count);
* CPU latency in onnxruntime, dense vs exported (and int8)
  (target: speed-up >= half the reduction);
* the exported model's test accuracy next to the trial's (target: equal within 0.1 pt);
* ONNX and sparse file sizes next to non-zero parameters x 4 bytes.

The zoo parts (``resnet18``: ResNet-18's layout and size, 11.2 M parameters;
``mobilenetv2`` and ``vit``: the test zoo's MobileNetV2- and ViT-style models;
all on the two-digit images with heads left, right and the regression ink)
run a short search of their own and export the same three points with every
format, recording the export's wall time, latency in PyTorch and onnxruntime
side by side, and the largest change of a test metric, and the run
directory's size under ``keep_weights: all`` and ``front``. The ``widths`` part
times ResNet-18 and ConvNeXt layouts at dense and shrunk widths, odd channel
counts against multiples of 8, in both runtimes (why shrink aligns channels).

    python benchmarks/export.py [--parts multidigits,resnet,resnet18,mobilenetv2,vit,widths] [--trials 60]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from _report import publish
from automtl import api, retention
from automtl.formats import TaskTuple
from automtl.formats import onnx as onnx_format
from automtl.measure import time_side_by_side
from automtl.records import StudyRecord
from automtl.rundir import RunDir

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.fixtures.zoo import ConvNeXtStyle, ResNet18Style, digits, search_space  # noqa: E402 - the test zoo

SPACES = ROOT / "search_spaces"
SEARCHES = {  # name: (search space, accuracy floor of the "sparsest" point)
    "multidigits": (SPACES / "multidigits.yaml", 0.85),
    "resnet": (SPACES / "resnet-mnist1d.yaml", 0.80),
}
ZOO = {  # name: (plugin of tests/fixtures/zoo.py, its options, dense epochs)
    "resnet18": ("resnet18_digits", {"train_pairs": 1500, "eval_pairs": 300}, 6),
    "mobilenetv2": ("zoo_digits", {"model": "mobilenetv2_style", "train_pairs": 1500, "eval_pairs": 300}, 20),
    "vit": ("zoo_digits", {"model": "vit_style", "train_pairs": 1500, "eval_pairs": 300}, 20),
}
ZOO_FLOOR = 0.02  # the "sparsest" point keeps left and right within 2 pt of dense
WIDTHS = {  # the ``widths`` part: layout -> variant -> widths, timed on 32x32 inputs
    "ResNet-18": (ResNet18Style, {"dense": (64, 128, 256, 512), "shrunk, odd counts": (13, 27, 51, 101),
                                  "shrunk, multiples of 8": (16, 32, 56, 104)}),
    "ConvNeXt": (ConvNeXtStyle, {"dense": (96, 192), "shrunk, odd counts": (37, 75),
                                 "shrunk, multiples of 8": (40, 80)}),
}


def points(tasks: list[str], floor: float) -> dict[str, dict]:
    return {
        "knee": {"pick": "knee"},
        f"sparsest with validation accuracy >= {floor:.0%} on both": {
            "pick": "sparsest", "constraints": [f"{t}>={floor}" for t in tasks]},
        f"most accurate ({tasks[0]})": {"pick": f"best-{tasks[0]}"},
    }


def run_search(name: str, trials: int, tmp: Path) -> list[tuple[str, dict]]:
    space, floor = SEARCHES[name]
    run_dir = tmp / name
    api.search(space, run_dir=run_dir, overrides=[f"trials={trials}", "tracking.enabled=false"])
    tasks = RunDir(run_dir).load_study().user_attrs["tasks"]
    rows = []
    for label, how in points(tasks, floor).items():
        out = tmp / f"{name}-{len(rows)}"
        card = api.export(run_dir, out, pick=how["pick"], require=how.get("constraints", []),
                          quantize="int8").card
        rows.append((label, card))
        print(name, label, json.dumps(card["latency_ms"]), flush=True)
    return rows


def run_zoo_search(name: str, trials: int, tmp: Path) -> tuple[list[tuple[str, dict, float]], dict[str, dict]]:
    """The zoo part's search (every trial's weights kept, then the dominated ones released as ``keep_weights:
    front`` does during a search: the disk each rule leaves) and its three exports."""
    plugin, options, epochs = ZOO[name]
    space, run_dir = tmp / f"{name}.yaml", tmp / name
    space.write_text(search_space(
        plugin, options, name=name, seed=0, dense={"epochs": epochs}, fine_tune={"epochs": 2},
        pruning={"strategies": {"activation": {"low": 0.0, "high": 0.9}, "magnitude": {"low": 0.0, "high": 0.5},
                                "taylor": {"low": 0.0, "high": 0.9}, "stability": {"low": 0.0, "high": 0.6}},
                 "max_strategies": 2, "calibration_size": 256},
        loss_weights={"method": "simplex"}, objectives=["sparsity", "metrics", "flops"],
        sampler={"name": "tpe", "startup_trials": 6}, trials=trials, workers=2, tracking={"enabled": False},
        keep_weights="all"))
    api.search(space, run_dir=run_dir)
    run = RunDir(run_dir)
    disk = {"all": retention.disk_use(run)}
    retention.release_dominated(run, run.load_study(), "front")
    disk["front"] = retention.disk_use(run)
    dense = StudyRecord.of(run.load_study()).dense_test_metrics
    floors = [f"{task}>={dense[task] - ZOO_FLOOR:.4f}" for task in ("left", "right")]
    rows = []
    for label, how in {"knee": {"pick": "knee"},
                       f"sparsest within {100 * ZOO_FLOOR:.0f} pt of dense": {"pick": "sparsest", "constraints": floors},
                       "most accurate (left)": {"pick": "best-left"}}.items():
        started = time.perf_counter()
        card = api.export(run_dir, tmp / f"{name}-{len(rows)}", pick=how["pick"], require=how.get("constraints", [])).card
        rows.append((label, card, time.perf_counter() - started))
        print(name, label, f"{rows[-1][2]:.1f} s", json.dumps(card["latency_ms"]), flush=True)
    return rows, disk


def zoo_table(name: str, trials: int, rows: list[tuple[str, dict, float]], disk: dict[str, dict]) -> list[str]:
    lines = [
        f"### {name} (`{ZOO[name][0]}` {ZOO[name][1].get('model', '')}, {trials} trials)",
        "",
        "| point | trial | sparsity | params dense → exported | FLOPs dense → exported | PyTorch ms dense → "
        "exported | speed-up | onnxruntime ms dense → exported | speed-up | largest Δ test metric | export s "
        "(batch, rounds PyTorch/onnxruntime) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, card, seconds in rows:
        p, lat, fl, acc = card["parameters"], card["latency_ms"], card["flops"], card["test_metrics"]
        delta = max(abs(acc[runtime][t] - acc["search"][t]) for t in acc["search"]
                    for runtime in ("exported_pytorch", "exported_onnx"))
        lines.append(
            f"| {label} | {card['trial']} | {card['sparsity']:.1%} | {p['dense']:,} → {p['exported']:,} | "
            f"{fl['dense'] / 1e6:,.2f}M → {fl['exported'] / 1e6:,.2f}M ({fl['dense'] / fl['exported']:.1f}x) | "
            f"{lat['dense_pytorch']:.2f} → {lat['exported_pytorch']:.2f} | "
            f"{lat['dense_pytorch'] / lat['exported_pytorch']:.2f}x | "
            f"{lat['dense_onnx']:.2f} → {lat['exported_onnx']:.2f} | {lat['dense_onnx'] / lat['exported_onnx']:.2f}x | "
            f"{delta:.1e} | {seconds:.1f} ({card['latency_batch']}, "
            f"{'/'.join(map(str, card['latency_timing']['rounds'].values()))}) |")
    mib = {rule: f"{d['bytes'] / 2**20:.1f} MiB ({d['weights_files']} trials' weights)" for rule, d in disk.items()}
    return lines + ["", f"Run directory after the search: `keep_weights: all` {mib['all']}, `front` {mib['front']}.", ""]


def widths_table(batch: int = 16, size: int = 32) -> list[str]:
    """The same layout at dense and shrunk widths, timed side by side in PyTorch and onnxruntime: why shrink
    keeps multiples of 8 channels."""
    problem, sample = digits("2d", True, 50, 20), torch.randn(batch, 1, size, size)
    lines = ["### Channel counts: the same shrunk widths in PyTorch and onnxruntime (`--parts widths`)", "",
             f"Random weights, a batch of {batch} inputs of {size}x{size}; speed-up = dense / shrunk in the same "
             "runtime.", "",
             "| layout | widths | parameters | PyTorch ms | speed-up | onnxruntime ms | speed-up |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for layout, (architecture, variants) in WIDTHS.items():
        runs, sizes = {}, {}
        for label, widths in variants.items():
            model = TaskTuple(architecture(problem, widths), problem.task_names).eval()
            with tempfile.TemporaryDirectory() as tmp:
                torch.onnx.export(model, (sample,), f"{tmp}/m.onnx", input_names=["input"], dynamo=False)
                runtime = onnx_format.session(Path(tmp) / "m.onnx")
            runs.setdefault("pytorch", {})[f"{label}/pytorch"] = lambda m=model: m(sample)
            runs.setdefault("onnx", {})[f"{label}/onnx"] = lambda r=runtime: r.run(None, {"input": sample.numpy()})
            sizes[label] = sum(p.numel() for p in model.parameters())
        ms = {name: t for group in runs.values() for name, t in time_side_by_side(group, budget_s=2.0).median_ms.items()}
        for label, widths in variants.items():
            lines.append(f"| {layout} | {widths} | {sizes[label]:,} | {ms[f'{label}/pytorch']:.2f} | "
                         f"{ms['dense/pytorch'] / ms[f'{label}/pytorch']:.2f}x | {ms[f'{label}/onnx']:.2f} | "
                         f"{ms['dense/onnx'] / ms[f'{label}/onnx']:.2f}x |")
            print(lines[-1], flush=True)
    return lines + [""]


def table(name: str, trials: int, rows: list[tuple[str, dict]]) -> list[str]:
    lines = [
        f"### {name} ({SEARCHES[name][0].name}, {trials} trials)",
        "",
        "| point | trial | sparsity | test acc exported (Δ vs trial) | params dense → exported (non-zero) | "
        "FLOPs dense → exported | reduction | latency dense → exported (int8) | speed-up | "
        "ONNX / sparse file / non-zero x 4 B |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, card in rows:
        p, files, lat, fl = card["parameters"], card["files"], card["latency_ms"], card["flops"]
        acc = card["test_metrics"]
        delta = max(abs(acc["exported_pytorch"][t] - acc["search"][t]) for t in acc["search"])
        reduction = fl["dense"] / fl["exported"]
        speedup = lat["dense_onnx"] / lat["exported_onnx"]
        nonzero_bytes = 4 * p["exported_nonzero"]
        lines.append(
            f"| {label} | {card['trial']} | {card['sparsity']:.1%} | "
            f"{' / '.join(f'{v:.1%}' for v in acc['exported_onnx'].values())} ({100 * delta:.2f} pt) | "
            f"{p['dense']:,} → {p['exported']:,} ({p['exported_nonzero']:,}) | "
            f"{fl['dense'] / 1e3:,.0f}k → {fl['exported'] / 1e3:,.0f}k | {reduction:.2f}x | "
            f"{lat['dense_onnx']:.3f} → {lat['exported_onnx']:.3f} ({lat['exported_onnx_int8']:.3f}) ms | "
            f"{speedup:.2f}x (≥ {reduction / 2:.2f}) | "
            f"{files['onnx']['bytes'] / 1024:.0f} / {files['sparse']['bytes'] / 1024:.0f} / "
            f"{nonzero_bytes / 1024:.0f} KiB |")
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default=",".join([*SEARCHES, *ZOO, "widths"]),
                        help=f"comma-separated, from {[*SEARCHES, *ZOO, 'widths']}")
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--zoo-trials", type=int, default=12, help="trials of each zoo part's search")
    args = parser.parse_args()
    parts = args.parts.split(",")
    started = time.perf_counter()
    lines = [
        "## Export: smaller and faster (`benchmarks/export.py`)",
        "",
        "Three Pareto points of each search, exported with int8. Latency is the median of the rounds timed "
        "(dense and exported round-robin, each runtime apart from the others, 2 s a runtime, 5 to 100 rounds) "
        "of a batch chosen from the dense model's FLOPs in onnxruntime (CPU), dense vs exported; reduction = dense FLOPs / exported FLOPs "
        "(Torch-Pruning's count); Δ is the largest difference between the exported model's test accuracy and "
        "the trial's (export refuses anything beyond 0.1 pt or outputs beyond 1e-4 + 1e-4·|value|).",
        "",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for name in parts:
            if name == "widths":
                lines += widths_table()
            elif name in ZOO:
                lines += zoo_table(name, args.zoo_trials, *run_zoo_search(name, args.zoo_trials, Path(tmp)))
            else:
                lines += table(name, args.trials, run_search(name, args.trials, Path(tmp)))
    lines += [
        "ONNX stores the weights that survive structural removal densely, so zeros left inside the remaining "
        "layers by unstructured strategies still take 4 bytes each: its size is near non-zero x 4 B only where "
        "the plan's sparsity is mostly structural. The sparse file (`model.sparse.safetensors`) stores such "
        "layers as their non-zero values and a bitmap of 1 bit per weight. The int8 ONNX file stores 1 byte a "
        "weight. ONNX folds each BatchNorm into the convolution before it. onnxruntime's dynamic int8 quantiser "
        "turns convolutions into ConvInteger, which is several times slower than float on this CPU: int8 pays "
        "off for the MLP, not the ResNet.",
    ]
    publish("export", lines, f"python benchmarks/export.py --parts {args.parts} --trials {args.trials} "
                             f"--zoo-trials {args.zoo_trials}", started)


if __name__ == "__main__":
    main()
