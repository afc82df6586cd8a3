"""Lint that bites: definitions a reader would not expect twice in one namespace.

ruff's F811 misses a function redefined after a use of its first definition: the second silently wins, and a test
defined twice never runs. This walks the package, its tests and benchmarks, and fails on any function or class
defined twice in one module or class body, except the pairs Python means to repeat (``@x.setter``, ``@overload``,
``@register``). And the package says once that a bool is no number (``primitives/checks.py``).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("drpo_dspy", "tests", "bench", "notebooks")
PACKAGE = ROOT / "drpo_dspy"
_REPEATABLE = ("setter", "deleter", "getter", "overload", "register")


def _repeatable(node: ast.AST) -> bool:
    for decorator in getattr(node, "decorator_list", []):
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
        if name in _REPEATABLE:
            return True
    return False


def defined_twice(tree: ast.AST) -> list[tuple[str, int]]:
    """``(name, line)`` of each function or class defined again in the same module or class body."""
    found = []
    bodies = [tree] + [node for node in ast.walk(tree) if isinstance(node, ast.ClassDef)]
    for body in bodies:
        seen: dict[str, int] = {}
        for node in body.body:
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) or _repeatable(node):
                continue
            if node.name in seen:
                found.append((node.name, node.lineno))
            seen[node.name] = node.lineno
    return found


def test_the_check_catches_a_function_redefined_after_use():
    source = "def load(p):\n    return 1\n\nx = load(0)\n\ndef load(p):\n    return 2\n"
    assert defined_twice(ast.parse(source)) == [("load", 6)]
    setter = "class A:\n    @property\n    def v(self): ...\n    @v.setter\n    def v(self, x): ...\n"
    assert defined_twice(ast.parse(setter)) == []


def test_no_function_or_class_is_defined_twice_in_one_namespace():
    problems = []
    for path in sorted(p for folder in SOURCES for p in (ROOT / folder).rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        problems += [f"{path.relative_to(ROOT)}:{line}: {name} defined again" for name, line in defined_twice(tree)]
    assert not problems, "\n".join(problems)


_BOOL_INT_CHECK = re.compile(r"isinstance\([^)]*, bool\)\s*(?:or|and)\s*not\s+isinstance|not\s+isinstance\([^)]*\)\s*"
                             r"(?:or|and)\s*(?:not\s+)?isinstance\([^)]*, bool\)")


def test_bool_is_excluded_from_numbers_in_one_place():
    """`primitives/checks.py` (`is_whole`, `is_real`) says once that a bool is no number; nobody writes it again."""
    found = [f"{path.relative_to(PACKAGE)}:{source[:m.start()].count(chr(10)) + 1}"
             for path in PACKAGE.rglob("*.py") if path.name != "checks.py"
             for source in [path.read_text(encoding="utf-8")] for m in _BOOL_INT_CHECK.finditer(source)]
    assert found == []
