"""Keep the code base from growing LiteLLM-shaped: module and function size limits,
the wings of gateway/ and the one direction of dependencies between them (providers know
nothing of routing or HTTP)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODULES = sorted((ROOT / "gateway").rglob("*.py"))
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_module_and_function_sizes(path: Path) -> None:
    source = path.read_text()
    assert len(source.splitlines()) <= MAX_MODULE_LINES, f"{path} is over {MAX_MODULE_LINES} lines"
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            assert length <= MAX_FUNCTION_LINES, (
                f"{path}:{node.lineno} {node.name} is {length} lines"
            )


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize(
    "path",
    sorted((ROOT / "gateway" / "providers").rglob("*.py")),
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_providers_know_nothing_of_routing_or_http(path: Path) -> None:
    forbidden = (
        "routers",
        "starlette",
        "fastapi",
        "uvicorn",
        "redis",
        "aiohttp",
        "gateway.pipeline",
        "gateway.routing",
        "gateway.api",
        "gateway.cache",
        "gateway.limits",
        "gateway.redis",
    )
    bad = [m for m in imported_modules(path) if m.startswith(forbidden)]
    assert bad == [], f"{path.name} imports {bad}"


def test_only_config_reads_the_environment() -> None:
    schema = ROOT / "gateway" / "config" / "schema.py"
    readers = [p for p in MODULES if "os.environ" in p.read_text() and p != schema]
    assert readers == []


# The wings of gateway/ (and its top-level modules), highest layer first. A module may
# import anything in its own wing, and the front door (the package itself: `from
# gateway.cache import ...`) of a wing on a lower layer; never a wing on its own layer or
# above, nor another wing's private modules.
LAYERS: list[set[str]] = [
    {"__main__"},
    {"cli"},  # the console script
    {"app"},  # the composition root
    {"api"},  # the HTTP face: the only wing that knows ASGI, Starlette or uvicorn
    {"services", "validate_config"},  # the bag of collaborators; config checks and explain
    {"cache"},
    {"pipeline"},
    {"dialects"},
    {"routing", "providers"},
    {"transport"},
    {"limits"},
    {"keys"},
    {"redis", "records"},  # Redis: what can be rebuilt; SQL: the system of record
    {"telemetry"},
    {"config"},
    {"context"},  # the shared vocabulary, ground floor
    {"errors", "types", "jsonutil", "ids", "__init__"},
]
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}
WINGS = {path.parent.name for path in (ROOT / "gateway").glob("*/__init__.py")}
HTTP_LIBRARIES = ("starlette", "fastapi", "uvicorn")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit_of(module: str) -> str:
    """The wing (or top-level module) a gateway module belongs to."""
    parts = module.split(".")
    return "__init__" if len(parts) == 1 else parts[1]


def is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def gateway_imports(path: Path) -> set[str]:
    """The gateway modules `path` imports (`from gateway.api import chat` counts as
    gateway.api.chat), TYPE_CHECKING imports included."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.split(".")[0] == "gateway"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] != "gateway":
                continue
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                names.add(sub if is_module(sub) else node.module)
    return names


def test_every_module_belongs_to_a_wing_of_the_table() -> None:
    units = {unit_of(module_name(path)) for path in MODULES}
    assert units <= set(RANK), units - set(RANK)
    assert WINGS <= set(RANK), WINGS - set(RANK)
    top_level = [p.stem for p in (ROOT / "gateway").glob("*.py")]
    assert len(top_level) <= 12, top_level


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down_and_through_front_doors(path: Path) -> None:
    me = module_name(path)
    mine = unit_of(me)
    for imported in sorted(gateway_imports(path)):
        theirs = unit_of(imported)
        if theirs == mine:
            continue
        assert RANK[theirs] > RANK[mine], f"{me} imports {imported}: not a lower layer"
        if theirs in WINGS:
            assert imported == f"gateway.{theirs}", (
                f"{me} imports {imported}, private to {theirs}: use gateway.{theirs}"
            )


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_only_the_api_knows_the_web_framework(path: Path) -> None:
    if unit_of(module_name(path)) in ("api", "cli", "__main__", "app"):
        return
    bad = [m for m in imported_modules(path) if m.split(".")[0] in HTTP_LIBRARIES]
    assert bad == [], f"{path} imports {bad}"


def test_no_import_cycle_among_gateway_modules() -> None:
    """Front doors import their wing's modules; a module importing its own front door
    would close a cycle."""
    graph = {module_name(p): gateway_imports(p) for p in MODULES}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        if state.get(module) == 2 or module not in graph:
            return
        assert state.get(module) != 1, " -> ".join([*path, module])
        state[module] = 1
        for imported in sorted(graph[module]):
            visit(imported, [*path, module])
        state[module] = 2

    for module in sorted(graph):
        visit(module, [])
