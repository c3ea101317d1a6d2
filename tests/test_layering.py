"""The dependency rule of docs/design.md "Layering rule": adapters → core → (wire, codecs) → errors; no I/O below."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "gateway"
PURE = ("core", "wire", "codecs")
# What each layer may import from the gateway package (besides itself).
ALLOWED = {
    "codecs": {"errors", "ids"},
    "wire": {"errors", "ids", "codecs"},
    "core": {"errors", "ids", "codecs", "wire"},
    "adapters": {"errors", "ids", "logs", "codecs", "wire", "core", "settings", "numbers"},
}
CLOCK_CALLS = {("time", "time"), ("time", "monotonic"), ("time", "perf_counter"), ("datetime", "now")}


def _gateway_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "gateway" and len(parts) > 1:
                found.add(parts[1])
    return found


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layer_imports_only_what_the_rule_allows(layer: str) -> None:
    """Each layer imports only the gateway layers below it."""
    offenders = {
        f"{path.relative_to(PACKAGE)} imports gateway.{name}"
        for path in (PACKAGE / layer).rglob("*.py")
        for name in _gateway_imports(path)
        if name != layer and name not in ALLOWED[layer]
    }
    assert offenders == set()


def test_nothing_imports_loadtest() -> None:
    """Only the CLI may reach the load tester."""
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if "loadtest" in _gateway_imports(path) and path.parts[-2] != "loadtest" and path.name != "cli.py"
    ]
    assert offenders == []


def test_pure_layers_load_no_async_or_network_stack() -> None:
    """Importing core, wire and codecs pulls in neither asyncio, aiohttp nor websockets."""
    code = (
        "import sys, gateway.core.call, gateway.wire.evi_codec, gateway.wire.twilio_media, gateway.codecs;"
        "print(sorted(m for m in ('asyncio', 'aiohttp', 'websockets') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("layer", PURE)
def test_pure_layers_read_no_clock(layer: str) -> None:
    """No module in a pure layer reads a clock: time is always passed in."""
    offenders = []
    for path in (PACKAGE / layer).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import) and any(a.name == "time" for a in node.names):
                offenders.append(f"{path.name}: import time")
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and ((node.value.id, node.attr) in CLOCK_CALLS or (node.value.id, node.attr) == ("loop", "time"))
            ):
                offenders.append(f"{path.name}: {node.value.id}.{node.attr}")
    assert offenders == []
