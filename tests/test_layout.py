"""The code's layout holds: reading a run directory stays light, and no automtl module imports itself back."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "automtl"


def test_reading_a_run_directory_does_not_import_torch_pruning():
    code = "import sys, automtl.rundir, automtl.config; print(sorted(m for m in sys.modules if m.startswith('torch_pruning')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(name: str, modules: set[str]) -> str | None:
    """The automtl module ``name`` is (or lies in): ``automtl.x.attr`` -> ``automtl.x``."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The automtl modules ``path`` imports at module level, those under ``if TYPE_CHECKING:`` included."""
    tree = ast.parse(path.read_text())
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found = set()
    nodes = [n for stmt in tree.body for n in ([stmt] if not isinstance(stmt, ast.If) else [*stmt.body, *stmt.orelse])]
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {_resolve(alias.name, modules) for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                found.add(_resolve(f"{base}.{alias.name}", modules) or _resolve(base, modules))
    return {m for m in found if m and m.startswith("automtl")} - {_module_name(path)}


def test_no_import_cycle_among_automtl_modules():
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: _imports(path, set(files)) for name, path in files.items()}
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)
