"""The package's layout (docs/architecture.md): imports point one way, with no circle among gainet's
modules; ``import gainet.core`` stays plain PyTorch; no library module imports a study."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "gainet"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """``{module: gainet modules it imports}``, read from the source: imports inside functions count
    (a lazy import closes a circle as surely as a top-level one once both run); imports under
    ``if TYPE_CHECKING:`` do not (they never run)."""
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}

    def owner(name: str) -> str:  # gainet.core.GAIN -> gainet.core
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name

    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        found: set[str] = set()

        def visit(node: ast.AST) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                    continue
                if isinstance(child, ast.Import):
                    found.update(owner(alias.name) for alias in child.names if alias.name.startswith("gainet"))
                elif isinstance(child, ast.ImportFrom) and child.level == 0:
                    if (child.module or "").startswith("gainet"):
                        found.update(owner(f"{child.module}.{alias.name}") for alias in child.names)
                visit(child)

        visit(ast.parse(path.read_text(encoding="utf-8")))
        graph[module] = found - {module, ""}
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, ()):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return circles


def test_no_import_circle_among_gainet_modules() -> None:
    graph = _imports()
    assert "gainet.training.config" in graph and "gainet.cli" in graph  # the walk found the package
    assert _circles(graph) == []


def test_no_library_module_imports_a_study() -> None:
    graph = _imports()
    importers = sorted(module for module, targets in graph.items()
                       if any(t == "gainet.studies" or t.startswith("gainet.studies.") for t in targets)
                       and not module.startswith(("gainet.studies", "gainet.cli")))
    assert importers == []


def test_the_core_is_plain_pytorch() -> None:
    """``import gainet.core`` loads gainet's core and nothing else of gainet (no CLI, data, training)."""
    code = "import sys, gainet.core; print(' '.join(sorted(m for m in sys.modules if m.startswith('gainet'))))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    loaded = result.stdout.split()
    assert "gainet.core" in loaded
    assert [m for m in loaded if m != "gainet" and not m.startswith("gainet.core")] == []
