"""Write one benchmark's section of docs/BENCHMARKS.md (between its own markers), atomically."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import torch

from automtl.checkpoints import atomic_write_bytes

BENCHMARKS_MD = Path(__file__).resolve().parent.parent / "docs" / "BENCHMARKS.md"
HEADER = "# Benchmarks\n\nFigures written by the scripts in `benchmarks/`; each section says how to reproduce it.\n"


def machine() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads, {gpu}")


def write_section(name: str, markdown: str) -> None:
    """Replace (or append) the section ``name`` of docs/BENCHMARKS.md."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else HEADER
    block = f"{start}\n{markdown.strip()}\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    atomic_write_bytes(BENCHMARKS_MD, text.encode())


def publish(name: str, lines: list[str], command: str, started: float) -> None:
    """Close a section with how to reproduce it (time taken, machine), write it and print it."""
    lines = [*lines, "", f"Run: `{command}` ({(time.perf_counter() - started) / 60:.1f} min on {machine()})."]
    write_section(name, "\n".join(lines))
    print("\n".join(lines))
