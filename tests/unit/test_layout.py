"""The package's shape (README, "How it works"): every module says what it owns, and the
engine's and the client's functions stay short enough to read. The import layers are
checked by import-linter (``[tool.importlinter]`` in pyproject.toml, run by make lint)."""

from __future__ import annotations

import ast
from pathlib import Path

import tidebase_async

PACKAGE = Path(tidebase_async.__file__).parent
MAX_FUNCTION_LINES = 80


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__main__.py")


def test_every_module_has_a_docstring_saying_what_it_owns() -> None:
    missing = [
        str(p.relative_to(PACKAGE))
        for p in _modules()
        if not (ast.get_docstring(ast.parse(p.read_text())) or "").strip()
    ]
    assert missing == []


def test_no_function_in_engine_or_client_is_over_80_lines() -> None:
    long: list[str] = []
    for layer in ("engine", "client"):
        for path in sorted((PACKAGE / layer).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    assert node.end_lineno is not None
                    # From the first decorator (or the def) to the end of the body.
                    first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                    lines = node.end_lineno - first + 1
                    if lines > MAX_FUNCTION_LINES:
                        long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}")
    assert long == []


def test_the_layers_hold_no_modules_outside_them() -> None:
    """Top-level modules are only the public surface, the errors and the models: all
    other code lives in a layer package."""
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert top == ["__init__.py", "errors.py", "models.py"]
