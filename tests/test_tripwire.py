"""Keep the code base from growing LiteLLM-shaped: module and function size limits,
and the one direction of dependencies (providers know nothing of routing or HTTP)."""

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
    "path", sorted((ROOT / "gateway" / "providers").glob("*.py")), ids=lambda p: p.name
)
def test_providers_know_nothing_of_routing_or_http(path: Path) -> None:
    forbidden = (
        "routers",
        "starlette",
        "fastapi",
        "redis",
        "aiohttp",
        "gateway.pipeline",
        "gateway.api",
        "gateway.cache",
        "gateway.limits",
    )
    bad = [m for m in imported_modules(path) if m.startswith(forbidden)]
    assert bad == [], f"{path.name} imports {bad}"


def test_only_config_reads_the_environment() -> None:
    readers = [p.name for p in MODULES if "os.environ" in p.read_text() and p.name != "config.py"]
    assert readers == []
