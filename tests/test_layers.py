"""The code's architecture, checked from its imports (docs/architecture.md draws the map).

Every import counts: at module level, inside functions and under `TYPE_CHECKING`. A deferred import that hides a
circle is still a circle, and a type-only import still says which part knows about which.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ("babelroom", "gateway", "pipeline", "workers")
PACKAGES = (*PRODUCT, "benchmarks", "tests")
# The gateway's parts, lowest first: each may import the ones before it, never one after it.
GATEWAY_LAYERS = ("gateway.options", "gateway.validation", "gateway.media", "gateway.rooms", "gateway.bridge")
GATEWAY_TOP = ("gateway.service", "gateway.web")
GATEWAY_TOP_LEVEL_MODULES_MAX = 5


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}


class Import:
    """One edge: `target` is imported, at module level or not (inside a function, or only for type checkers)."""

    def __init__(self, target: str, module_level: bool, line: int) -> None:
        self.target, self.module_level, self.line = target, module_level, line


def imports_of(name: str, path: Path, known: set[str]) -> Iterator[Import]:
    """Every project module `path` imports, and the packages Python runs on the way to it."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node, module_level in walk(tree, True):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        for target in targets:
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                prefix = ".".join(parts[:i])
                if prefix in known and prefix != name:
                    yield Import(prefix, module_level, node.lineno)


def walk(node: ast.AST, module_level: bool) -> Iterator[tuple[ast.AST, bool]]:
    """Every node, and whether it runs when the module is imported: not inside a function, nor under
    `if TYPE_CHECKING:`."""
    yield node, module_level
    inside = module_level and not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
    if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
        for child in node.body:
            yield from walk(child, False)
        for child in node.orelse:
            yield from walk(child, inside)
        return
    for child in ast.iter_child_nodes(node):
        yield from walk(child, inside)


def import_graph() -> dict[str, list[Import]]:
    modules = project_modules()
    known = set(modules)
    return {name: list(imports_of(name, path, known)) for name, path in modules.items()}


def cycles(graph: dict[str, list[Import]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each a circle of imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for edge in graph.get(node, ()):
            if edge.target not in index:
                visit(edge.target)
                low[node] = min(low[node], low[edge.target])
            elif edge.target in on_stack:
                low[node] = min(low[node], index[edge.target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def within(module: str, part: str) -> bool:
    return module == part or module.startswith(part + ".")


def violations(graph: dict[str, list[Import]], importer: str, forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{name}:{edge.line} imports {edge.target}"
        for name, edges in graph.items()
        if within(name, importer)
        for edge in edges
        if any(within(edge.target, part) for part in forbidden)
    ]


@pytest.fixture(scope="module")
def graph() -> dict[str, list[Import]]:
    return import_graph()


def test_no_import_circles(graph: dict[str, list[Import]]) -> None:
    assert cycles(graph) == []


def test_the_checker_finds_a_circle_hidden_in_a_function(tmp_path: Path) -> None:
    """A deferred import is an edge like any other: a -> b at module level, b -> a inside a function."""
    graph = {"a": [Import("b", True, 1)], "b": [Import("a", False, 7)], "c": [Import("a", True, 1)]}
    assert cycles(graph) == [["a", "b"]]
    (tmp_path / "m.py").write_text("def f():\n    import pipeline.bus\n")
    edges = list(imports_of("m", tmp_path / "m.py", {"pipeline", "pipeline.bus"}))
    assert [(e.target, e.module_level) for e in edges] == [("pipeline", False), ("pipeline.bus", False)]


def test_pipeline_is_the_ground_floor(graph: dict[str, list[Import]]) -> None:
    assert violations(graph, "pipeline", ("gateway", "workers", "babelroom", "benchmarks")) == []


def test_workers_do_not_import_the_gateway(graph: dict[str, list[Import]]) -> None:
    assert violations(graph, "workers", ("gateway", "babelroom", "benchmarks")) == []


def test_the_gateway_does_not_import_workers(graph: dict[str, list[Import]]) -> None:
    assert violations(graph, "gateway", ("workers", "babelroom", "benchmarks")) == []


@pytest.mark.parametrize("layer", range(len(GATEWAY_LAYERS)))
def test_gateway_parts_import_only_downward(graph: dict[str, list[Import]], layer: int) -> None:
    above = GATEWAY_LAYERS[layer + 1 :] + GATEWAY_TOP
    assert violations(graph, GATEWAY_LAYERS[layer], above) == []


def test_the_service_does_not_import_the_web_part(graph: dict[str, list[Import]]) -> None:
    assert violations(graph, "gateway.service", ("gateway.web",)) == []


def test_benchmarks_load_only_when_asked(graph: dict[str, list[Import]]) -> None:
    """The product's code imports a benchmark only inside the function that runs it (`babelroom bench`)."""
    eager = [
        f"{name}:{edge.line} imports {edge.target}"
        for name, edges in graph.items()
        if name.split(".")[0] in PRODUCT
        for edge in edges
        if within(edge.target, "benchmarks") and edge.module_level
    ]
    assert eager == []


def test_the_gateway_is_grouped() -> None:
    top = sorted(p.name for p in (ROOT / "gateway").glob("*.py"))
    assert len(top) <= GATEWAY_TOP_LEVEL_MODULES_MAX, top
    stray = sorted(p.name for p in (ROOT / "workers" / "engines").glob("*.py") if p.stem not in ("__init__", "common"))
    assert stray == [], "engines live in one package per stage"
    stages = sorted(p.name for p in (ROOT / "workers" / "engines").iterdir() if (p / "__init__.py").exists())
    assert stages == ["asr", "lipsync", "mt", "tts"]


@pytest.mark.parametrize("stage", ["asr", "mt", "tts", "lipsync"])
def test_engines_import_only_their_stage_kit(graph: dict[str, list[Import]], stage: str) -> None:
    """An engine module imports its stage's base and helpers and `common`, never another engine or the registry;
    only the registry imports the engines."""
    package = f"workers.engines.{stage}"
    registry = f"{package}.registry"
    engines = {n for n in graph if within(n, package) and n not in (package, registry)}
    importers_of_registry = [n for n in engines if any(e.target == registry for e in graph[n])]
    assert importers_of_registry == []
    kit = {f"{package}.{m}" for m in ("base", "guard", "models", "families", "face", "visemes", "render")}
    crossing = [
        f"{name} imports {edge.target}"
        for name in engines - kit
        for edge in graph[name]
        if within(edge.target, "workers.engines")
        and edge.target not in kit | {package, "workers.engines"}
        and edge.target != "workers.engines.common"
    ]
    assert crossing == []
