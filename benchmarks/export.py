"""Export three Pareto points of a search: size, FLOPs and CPU latency, dense vs exported.

Runs each search — ``multidigits`` (the default MLP) and ``resnet`` (a 1-D
ResNet with BatchNorm and residual adds, search_spaces/resnet-mnist1d.yaml) —
exports the knee, the sparsest trial meeting an accuracy floor on both tasks,
and the most accurate trial on the first task, each with int8, and records
from their cards:

* parameters and FLOPs dense -> exported, and the structural reduction
  dense FLOPs / exported FLOPs (Torch-Pruning's count);
* CPU latency of a batch of 2,048 in onnxruntime, dense vs exported (and int8)
  (target: speed-up >= half the reduction);
* the exported model's test accuracy next to the trial's (target: equal within 0.1 pt);
* ONNX and sparse file sizes next to non-zero parameters x 4 bytes.

    python benchmarks/export.py [--parts multidigits,resnet] [--trials 60]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from _report import publish
from automtl import api
from automtl.rundir import RunDir

SPACES = Path(__file__).resolve().parent.parent / "search_spaces"
SEARCHES = {  # name: (search space, accuracy floor of the "sparsest" point)
    "multidigits": (SPACES / "multidigits.yaml", 0.85),
    "resnet": (SPACES / "resnet-mnist1d.yaml", 0.80),
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
    parser.add_argument("--parts", default=",".join(SEARCHES), help=f"comma-separated, from {list(SEARCHES)}")
    parser.add_argument("--trials", type=int, default=60)
    args = parser.parse_args()
    parts = args.parts.split(",")
    started = time.perf_counter()
    lines = [
        "## Export: smaller and faster (`benchmarks/export.py`)",
        "",
        "Three Pareto points of each search, exported with int8. Latency is the median of 100 runs of a batch of "
        "2,048 in onnxruntime (CPU), dense vs exported, interleaved; reduction = dense FLOPs / exported FLOPs "
        "(Torch-Pruning's count); Δ is the largest difference between the exported model's test accuracy and "
        "the trial's (export refuses anything beyond 0.1 pt or outputs beyond 1e-4 + 1e-4·|value|).",
        "",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for name in parts:
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
    publish("export", lines, f"python benchmarks/export.py --parts {args.parts} --trials {args.trials}", started)


if __name__ == "__main__":
    main()
