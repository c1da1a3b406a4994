"""The package's shape: layers you can see, no import circles, a light command line.

The layer contract itself (a module imports only from layers below its own) is
``lint-imports`` (pyproject.toml ``[tool.importlinter]``), run by .ci/run. These tests check what
that contract does not: circles between any two modules (type-only imports included), the
number of loose modules at the top, where imports inside functions are allowed, and that
``mamlpp --help`` / ``--version`` never import torch.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "mamlpp"

# Imports that may sit inside a function, and why: optional extras (tensorboard, matplotlib, the
# serve extra), and fcntl, which Windows lacks. Command modules (mamlpp.cli.*) import the library
# inside their handlers so that `mamlpp --help` skips torch (about 1.5 s on a 2-core CPU).
OPTIONAL_OR_PLATFORM = (
    "torch.utils.tensorboard",
    "matplotlib",
    "fastapi",
    "uvicorn",
    "fcntl",
    "onnx",
)


def _import_graph() -> dict[str, set[str]]:
    grimp = pytest.importorskip("grimp", reason="pip install import-linter (a dev extra)")
    graph = grimp.build_graph("mamlpp")  # TYPE_CHECKING imports included
    return {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), or a self-import."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1 or node in edges.get(node, ()):
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles_type_only_imports_included() -> None:
    assert _cycles(_import_graph()) == []


def test_at_most_eight_modules_sit_directly_in_the_package() -> None:
    loose = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(loose) <= 8, loose


def test_every_layer_is_a_subpackage_of_its_own() -> None:
    layers = {"util", "nn", "core", "engine", "data", "run", "studies", "cli"}
    assert layers <= {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}


def _function_level_imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for sub in ast.walk(node):
                if isinstance(sub, ast.ImportFrom):
                    found.append((sub.lineno, sub.module or "."))
                elif isinstance(sub, ast.Import):
                    found.extend((sub.lineno, alias.name) for alias in sub.names)
    return found


def test_imports_inside_functions_only_for_start_up_cost_or_optional_dependencies() -> None:
    offending = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.parent.name == "cli":
            continue  # handlers import the library: `mamlpp --help` stays light
        for line, module in _function_level_imports(path):
            if not module.startswith(OPTIONAL_OR_PLATFORM):
                offending.append(f"{path.relative_to(PACKAGE)}:{line}: {module}")
    assert offending == []


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["train", "--help"]])
@pytest.mark.slow
def test_the_command_line_does_not_import_torch_for_help_and_version(argv: list[str]) -> None:
    code = (
        "import sys\n"
        "from mamlpp.cli.main import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = sorted(m for m in ('torch', 'numpy', 'PIL') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert "HEAVY []" in result.stdout, result.stdout[-500:] + result.stderr[-500:]
