"""Every tag and attribute name the harness writes or reads is spelled in bench/records.py alone."""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

import bench.records as records

BENCH = Path(records.__file__).parent
TAG_LITERAL = re.compile(r"(^|tags\.|`)bench\.[a-z_]")
ATTR_ACCESS = re.compile(r"""(user_attrs(\.get)?[\[(]|set_user_attr\()\s*f?["']""")


def _is_module(text: str) -> bool:
    try:
        return importlib.util.find_spec(text) is not None
    except (ImportError, ValueError):
        return False


def _sources():
    for path in sorted(BENCH.rglob("*.py")):
        if path.name != "records.py":
            yield path, path.read_text()


def _docstrings(tree: ast.AST) -> set[int]:
    kinds = (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    return {
        id(n.body[0].value)
        for n in ast.walk(tree)
        if isinstance(n, kinds)
        and n.body
        and isinstance(n.body[0], ast.Expr)
        and isinstance(n.body[0].value, ast.Constant)
    }


def test_no_tag_name_is_spelled_outside_the_vocabulary():
    found = []
    for path, text in _sources():
        tree = ast.parse(text)
        skip = _docstrings(tree)
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
                s = str(node.values[0].value)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                s = node.value
            else:
                continue
            if TAG_LITERAL.search(s) and not _is_module(s):
                found.append(f"{path.relative_to(BENCH.parent)}:{node.lineno}: {s!r}")
    assert not found, "tag names spelled outside bench/records.py:\n" + "\n".join(found)


def test_no_attribute_name_is_spelled_outside_the_vocabulary():
    found = [
        f"{path.relative_to(BENCH.parent)}:{n}: {line.strip()}"
        for path, text in _sources()
        for n, line in enumerate(text.splitlines(), 1)
        if ATTR_ACCESS.search(line)
    ]
    assert not found, "Optuna user attributes named by a literal outside bench/records.py:\n" + "\n".join(found)


def test_the_vocabulary_spells_each_name_once():
    tags = [v for k, v in vars(records.Tag).items() if k.isupper()]
    attrs = [v for k, v in vars(records.Attr).items() if k.isupper()]
    assert len(tags) == len(set(tags)) and all(t.startswith("bench.") for t in tags)
    assert len(attrs) == len(set(attrs))
    assert records.stage_of("confirm|top1|trial=3|seed=0") == records.Stage.CONFIRM
    assert records.stage_of(None) == records.stage_of("search|trial=1") == records.Stage.SEARCH
    assert records.stage_of("tkp|seed=0") == records.Stage.GRID
