"""One error module: every exception class of the package lives in gateway/errors.py, drawn in its docstring."""

from __future__ import annotations

import ast
import builtins
import inspect
import re
from pathlib import Path

import pytest

from gateway import errors

PACKAGE = Path(__file__).resolve().parent.parent / "gateway"
_NODE = re.compile(r"^(?P<indent>[\s│]*)(?:[├└]── )?(?P<name>[A-Z]\w+)\b")


def parse_tree(text: str) -> dict[str, str | None]:
    """Map each class drawn in a ``::`` tree to its parent (None for the root), by indentation."""
    block = text.split("::", 1)[1]
    parents: dict[str, str | None] = {}
    stack: list[tuple[int, str]] = []
    for line in block.splitlines():
        if parents and line.strip() and not line.startswith(" "):
            break  # prose after the drawing
        match = _NODE.match(line)
        if match is None:
            continue
        depth = match.start("name")
        name = match.group("name")
        while stack and stack[-1][0] >= depth:
            stack.pop()
        if name in parents:
            raise ValueError(f"{name} is drawn twice")
        parents[name] = stack[-1][1] if stack else None
        stack.append((depth, name))
    return parents


def real_tree() -> dict[str, str | None]:
    """Each exception class defined in gateway.errors mapped to its first gateway.errors base."""
    tree: dict[str, str | None] = {}
    for name, cls in vars(errors).items():
        if inspect.isclass(cls) and issubclass(cls, BaseException) and cls.__module__ == errors.__name__:
            ours = [b.__name__ for b in cls.__bases__ if b.__module__ == errors.__name__]
            tree[name] = ours[0] if ours else None
    return tree


def test_the_docstring_draws_exactly_the_error_classes() -> None:
    """The tree in errors.py's docstring names every class once, under its real parent, and nothing else."""
    assert errors.__doc__ is not None
    assert parse_tree(errors.__doc__) == real_tree()


def test_the_tree_parser_notices_a_wrong_drawing() -> None:
    """A class drawn under the wrong parent, or one missing, makes the trees differ."""
    wrong = "::\n\n    GatewayError\n    ├── ConfigError\n    │   └── SignatureError\n    └── CallStateError\n"
    parsed = parse_tree(wrong)
    assert parsed == {"GatewayError": None, "ConfigError": "GatewayError", "SignatureError": "ConfigError",
                      "CallStateError": "GatewayError"}  # fmt: skip
    assert parsed != real_tree()
    with pytest.raises(ValueError, match="drawn twice"):
        parse_tree("::\n\n    GatewayError\n    ├── ConfigError\n    └── ConfigError\n")


def _exception_names() -> set[str]:
    builtin = {n for n, v in vars(builtins).items() if inspect.isclass(v) and issubclass(v, BaseException)}
    return builtin | set(real_tree())


def exception_classes_outside_errors(root: Path) -> list[str]:
    """``file:line class`` for every class under ``root`` (but errors.py) whose base is an exception."""
    names = _exception_names()
    found = []
    for path in sorted(root.rglob("*.py")):
        if path == root / "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                bases = {ast.unparse(b).rsplit(".", 1)[-1] for b in node.bases}
                if bases & names:
                    found.append(f"{path.relative_to(root.parent)}:{node.lineno} {node.name}")
    return found


def test_no_other_module_defines_an_exception() -> None:
    """No module but gateway/errors.py defines an exception class."""
    assert exception_classes_outside_errors(PACKAGE) == []


def test_the_scan_finds_an_exception_defined_elsewhere(tmp_path: Path) -> None:
    """The scan reports a class deriving from an exception outside errors.py."""
    (tmp_path / "errors.py").write_text("class GatewayError(Exception): ...\n")
    (tmp_path / "other.py").write_text("class Oops(ValueError):\n    pass\n")
    assert exception_classes_outside_errors(tmp_path) == [f"{tmp_path.name}/other.py:1 Oops"]
