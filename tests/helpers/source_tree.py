"""The project's own Python source, parsed: for tests that check rules over the whole tree.

Such tests read code instead of running it (one definition per fact, who may import whom), so they
take a second for the whole tree and name the file and line of every break.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
# What ships (the wheel's packages) and the research harness; tests are not checked.
SOURCE_PACKAGES = ("common", "server", "client", "deploy", "simulations")


def python_files(*packages: str) -> list[Path]:
    """Every .py file of these top-level packages (default: all of SOURCE_PACKAGES), sorted."""
    return sorted(p for package in packages or SOURCE_PACKAGES for p in (REPO / package).rglob("*.py"))


@cache
def parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def module_name(path: Path) -> str:
    """`common/privacy/ledger.py` -> `common.privacy.ledger`; a package's `__init__.py` -> the package."""
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def relative(path: Path) -> str:
    return str(path.relative_to(REPO))


def string_constants(path: Path) -> Iterator[tuple[int, str]]:
    """(line, text) of every string literal in a file, f-string parts included, docstrings excluded."""
    tree = parsed(path)
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value
