"""Facts about the code itself: short functions, a trainer that names no objective, and no plug-in's name compared
as a string outside its own file and its registry."""

import ast
import os
import re

from jaxsmooth import objectives
from jaxsmooth.certification import noises

from conftest import ROOT

PACKAGE = os.path.join(ROOT, "jaxsmooth")
MAX_FUNCTION_LINES = 80


def _python_files():
    for folder, _, files in os.walk(PACKAGE):
        for name in sorted(files):
            if name.endswith(".py"):
                yield os.path.join(folder, name)


def test_no_function_in_the_package_is_over_80_lines():
    """Every def (methods and nested functions too), from its `def` line to its last line, docstring included."""
    long = []
    for path in _python_files():
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{os.path.relpath(path, ROOT)}:{node.lineno} {node.name}: {lines} lines")
    assert not long, "functions over 80 lines:\n" + "\n".join(long)


def test_the_length_check_sees_a_long_function():
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    tree = ast.parse(f"def f():\n{body}\n")
    node = tree.body[0]
    assert node.end_lineno - node.lineno + 1 == MAX_FUNCTION_LINES + 1


def _trainer_text() -> str:
    with open(os.path.join(PACKAGE, "trainer.py")) as f:
        return f.read()


def _compared_names(tree: ast.AST) -> list[str]:
    """Objective names that a comparison (``==``, ``in``, ...) in `tree` tests against."""
    names = set(objectives.names())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for operand in [node.left, *node.comparators]:
                items = operand.elts if isinstance(operand, (ast.Tuple, ast.List, ast.Set)) else [operand]
                found += [i.value for i in items if isinstance(i, ast.Constant) and i.value in names]
    return found


def _named(text: str) -> list[str]:
    """Objective names in `text`, in any case: inside words too (HeatSmoothing), as whole words for the short
    ones (``nal`` is in "final"), never ``sigma`` (the noise level's name too)."""
    lower = text.lower()
    return sorted(n for n in objectives.names() if n != "sigma"
                  and (n in lower if len(n) > 3 else re.search(rf"\b{n}\b", lower)))


def test_the_trainer_names_no_objective():
    """No objective's name in trainer.py's code, strings or comments (`_named`), and no comparison with one,
    ``sigma`` included (``name == "sigma"``, ``name in (...)``)."""
    text = _trainer_text()
    assert _named(text) == []
    assert _compared_names(ast.parse(text)) == []
    # the checks find a name when there is one
    assert _named(text + "\n# one HeatSmoothing timestep") == ["heat"] and _named("a NAL step") == ["nal"]
    assert _compared_names(ast.parse('if c.objective.name in ("heat", "sigma"): pass')) == ["heat", "sigma"]


def _string_branches(tree: ast.AST, names) -> list[tuple[int, str]]:
    """(line, name) of each comparison that tests a value against one of `names` as a string: ``x == "heat"``,
    ``x != "lattice"``, ``x in ("heat", "sigma")``. A name on the left of ``in`` (``"sigma" in settings``: a key
    looked up) is not one."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        for op, left, right in zip(node.ops, operands, operands[1:]):
            if isinstance(op, (ast.Eq, ast.NotEq)):  # tuples compared element by element too
                items = [e for side in (left, right)
                         for e in (side.elts if isinstance(side, (ast.Tuple, ast.List)) else [side])]
            elif isinstance(op, (ast.In, ast.NotIn)) and isinstance(right, (ast.Tuple, ast.List, ast.Set)):
                items = right.elts
            else:
                continue
            found += [(node.lineno, i.value) for i in items if isinstance(i, ast.Constant) and i.value in names]
    return found


def _own_files(folder: str, names) -> set[str]:
    """A registry's own files: its __init__.py and one file per plug-in name."""
    return {os.path.join(folder, "__init__.py")} | {os.path.join(folder, f"{n}.py") for n in names}


def test_no_objective_or_noise_kind_name_is_compared_as_a_string_outside_its_file_and_registry():
    plugins = [(set(objectives.names()), _own_files(os.path.join(PACKAGE, "objectives"), objectives.names())),
               (set(noises.names()), _own_files(os.path.join(PACKAGE, "certification", "noises"), noises.names()))]
    branches = []
    for path in _python_files():
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        for names, own in plugins:
            if path not in own:
                branches += [f"{os.path.relpath(path, ROOT)}:{line} {name!r}"
                             for line, name in _string_branches(tree, names)]
    assert not branches, "string comparisons with a plug-in's name:\n" + "\n".join(branches)


def test_the_string_branch_check_finds_each_form():
    names = {"heat", "lattice"}
    code = ('a == "heat"\nif "lattice" != b: pass\nc in ("x", "heat")\nd not in ["lattice"]\n'
            '"heat" in settings\ne == "other"\n(f, g) == ("x", "lattice")\n')
    assert _string_branches(ast.parse(code), names) == [(1, "heat"), (2, "lattice"), (3, "heat"), (4, "lattice"),
                                                        (7, "lattice")]
