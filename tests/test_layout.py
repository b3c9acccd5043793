"""The package's layout: no import cycles, no upward imports, no names that shadow other modules
when ``hftrain/train.py`` runs as a script, and the script form works."""

from __future__ import annotations

import ast
import importlib.metadata
import subprocess
import sys
from pathlib import Path

from conftest import PYTHON, REPO

PACKAGE = REPO / "hftrain"

# what each part may import from hftrain (besides itself); everything else is an upward import
ALLOWED = {
    "data": {"recipe"},
    "models": set(),
    "metrics": set(),
    "health": {"data", "models", "recipe"},
    "report": {"data", "metrics"},
    "recipe": {"models", "metrics", "health"},  # checks: the registry's model names, metric and allocator names
    "engine": {"data", "models", "metrics", "health", "report", "recipe"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """hftrain module -> the hftrain modules it imports (top-level and inside functions)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                candidates = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in candidates:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and target != "hftrain":
                    targets.add(target)
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def part(module: str) -> str:
    pieces = module.split(".")
    if len(pieces) < 2:
        return module
    return pieces[1] if len(pieces) > 2 or (PACKAGE / pieces[1]).is_dir() else module


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_no_part_imports_upward():
    """data/models/metrics below health/report below engine below train.py and tools/."""
    wrong = []
    for module, targets in import_graph().items():
        here = part(module)
        if here not in ALLOWED:
            continue  # train.py, cli.py and tools/ may import anything
        for target in targets:
            there = part(target)
            if there != here and there not in ALLOWED[here]:
                wrong.append(f"{module} -> {target}")
    assert wrong == []


def test_no_name_in_hftrain_shadows_a_module_the_script_form_could_import():
    """``python hftrain/train.py`` puts hftrain/ first on sys.path: a folder or module there named like
    a standard-library or installed top-level module would hide it (``hftrain/datasets/``, say)."""
    installed = set()
    for dist in importlib.metadata.distributions():
        top = dist.read_text("top_level.txt") or ""
        installed.update(line.strip() for line in top.splitlines() if line.strip())
        installed.add((dist.metadata["Name"] or "").replace("-", "_").lower())
    names = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
             if (p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists()))}
    clashes = {n for n in names if n in sys.stdlib_module_names or n.lower() in installed} - {"__init__"}
    assert clashes == set()


def test_the_script_form_runs():
    proc = subprocess.run([PYTHON, "hftrain/train.py", "recipes/shapes_demo.yaml", "--print"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "name: rt_detr" in proc.stdout
