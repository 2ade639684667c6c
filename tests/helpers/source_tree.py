"""The project's own Python source, parsed: for tests that check rules over the whole tree.

Such tests read code instead of running it (one definition per fact, who may import whom), so they
take a second for the whole tree and name the file and line of every break.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
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


@cache
def string_constants(path: Path) -> tuple[tuple[int, str], ...]:
    """(line, text) of every string literal in a file, f-string parts included, docstrings excluded."""
    tree = parsed(path)
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    return tuple((node.lineno, node.value) for node in ast.walk(tree)
                 if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings)


@dataclass(frozen=True)
class Import:
    """One import statement's target in a file: `from a.b import c` gives `a.b.c`."""

    target: str
    line: int
    module_level: bool  # not inside a function (a lazy import runs only when the function does)
    type_checking: bool  # under `if TYPE_CHECKING:`: never runs


def imports(path: Path) -> list[Import]:
    """Every import of the file, with where it runs."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool, type_checking: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend(Import(a.name, child.lineno, not in_function, type_checking) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:  # relative: resolved against the file's package
                    parent = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*parent, base] if base else parent)
                found.extend(Import(f"{base}.{a.name}", child.lineno, not in_function, type_checking)
                             for a in child.names)
            elif isinstance(child, ast.If) and ast.unparse(child.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
                for part in child.body:
                    visit(ast.Module(body=[part], type_ignores=[]), in_function, True)
                for part in child.orelse:
                    visit(ast.Module(body=[part], type_ignores=[]), in_function, type_checking)
            else:
                visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)),
                      type_checking)

    visit(parsed(path), False, False)
    return found
