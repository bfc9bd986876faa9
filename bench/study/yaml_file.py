"""Reading a YAML file strictly: UTF-8 text only, safe tags only, no duplicate keys, and bounded.

PyYAML's ``safe_load`` lets a second ``seeds:`` silently replace the first; here the document is
composed first and every mapping checked, so the error names the key's YAML path and both lines.

A study file is a few KB, so what is read is bounded before it can cost time or memory: the
file's size (:data:`MAX_BYTES`), how deep its collections nest (:data:`MAX_DEPTH`; PyYAML composes
recursively), and how many nodes its aliases stand for (:data:`MAX_ALIAS_NODES`; nested anchors,
each aliased nine times, make a few lines stand for billions of values, the "billion laughs").
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

#: The largest study file read, in bytes (a study file is a few KB).
MAX_BYTES = 1_000_000
#: The deepest nesting of collections (a study nests 5 or 6 levels).
MAX_DEPTH = 64
#: The most nodes all aliases together may stand for (each alias counts the nodes of what it names).
MAX_ALIAS_NODES = 100_000


class YamlFileError(ValueError):
    """The file is not readable YAML text; one line that starts with the file's path."""


class _LimitError(yaml.YAMLError):
    """A limit passed while composing, at ``problem_mark`` (reported as a :class:`YamlFileError`)."""

    def __init__(self, problem: str, mark: Any):
        super().__init__(problem)
        self.problem, self.problem_mark = problem, mark


def _size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """How many nodes ``node`` stands for with every alias below it expanded (memoised by node)."""
    known = sizes.get(id(node))
    if known is not None:
        return known
    sizes[id(node)] = 1  # a node reached again while it is counted (not composed so: see _BoundedLoader)
    if isinstance(node, yaml.SequenceNode):
        n = 1 + sum(_size(item, sizes) for item in node.value)
    elif isinstance(node, yaml.MappingNode):
        n = 1 + sum(_size(k, sizes) + _size(v, sizes) for k, v in node.value)
    else:
        n = 1
    sizes[id(node)] = n
    return n


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses, while composing, a document nested deeper than
    :data:`MAX_DEPTH`, an alias inside the node it names, and aliases that together stand for
    more than :data:`MAX_ALIAS_NODES` nodes."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._open_anchors: list[str | None] = []  # the anchors of the collections being composed
        self._alias_nodes = 0
        self._sizes: dict[int, int] = {}

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            if event.anchor in self._open_anchors:
                raise _LimitError(
                    f"alias *{event.anchor} inside the node &{event.anchor} it names (a recursive value)",
                    event.start_mark,
                )
            node = super().compose_node(parent, index)
            self._alias_nodes += _size(node, self._sizes)
            if self._alias_nodes > MAX_ALIAS_NODES:
                raise _LimitError(
                    f"alias *{event.anchor}: aliases expand to more than {MAX_ALIAS_NODES:,} values "
                    "(nested anchors and aliases, a 'billion laughs'); write the values out",
                    event.start_mark,
                )
            return node
        if len(self._open_anchors) >= MAX_DEPTH:
            raise _LimitError(f"nested deeper than {MAX_DEPTH} levels (a study nests a few)", event.start_mark)
        self._open_anchors.append(getattr(event, "anchor", None))
        try:
            return super().compose_node(parent, index)
        finally:
            self._open_anchors.pop()


def _where(path: Path, mark: Any) -> str:
    return f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)


def decode(path: Path, data: bytes) -> str:
    """UTF-8 text (a byte-order mark is allowed); anything else is a :class:`YamlFileError`."""
    nul = data.find(b"\x00", 0, 8192)
    if nul >= 0:
        raise YamlFileError(f"{path}: a binary file, not YAML text (NUL byte at offset {nul})")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise YamlFileError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); save the file as UTF-8"
        ) from None


def _check_duplicates(node: yaml.Node, path: str, seen_nodes: set[int]) -> None:
    """Raise on a key that appears twice in one mapping, anywhere below ``node``."""
    if id(node) in seen_nodes:  # an alias: checked where it was defined
        return
    seen_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key, value in node.value:
            name = str(key.value) if isinstance(key, yaml.ScalarNode) else None
            child = f"{path}.{name}" if path else str(name)
            if name is not None and name != "<<":
                line = key.start_mark.line + 1
                if name in first:
                    raise YamlFileError(f"{child}: duplicate key (lines {first[name]} and {line}); keep one")
                first[name] = line
            _check_duplicates(value, child, seen_nodes)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_duplicates(item, f"{path}[{i}]", seen_nodes)


def read_yaml(path: Path) -> Any:
    """The document in ``path``: UTF-8, ``yaml.SafeLoader`` tags only, no duplicate keys, within
    :data:`MAX_BYTES`, :data:`MAX_DEPTH` and :data:`MAX_ALIAS_NODES`. Every error is a one-line :class:`YamlFileError` starting with ``path`` (and line:column)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
            size = os.fstat(f.fileno()).st_size
    except OSError as e:
        raise YamlFileError(f"{path}: cannot read: {e.strerror or e}") from None
    if len(data) > MAX_BYTES:
        raise YamlFileError(
            f"{path}: {max(size, len(data)):,} bytes, more than a study file may have ({MAX_BYTES:,}; a study file is a few KB)"
        )
    text = decode(path, data)
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        try:
            _check_duplicates(node, "", set())
        except YamlFileError as e:
            raise YamlFileError(f"{path}: {e}") from None
        return loader.construct_document(node)
    except _LimitError as e:
        raise YamlFileError(f"{_where(path, e.problem_mark)}: {e.problem}") from None
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise YamlFileError(f"{_where(path, getattr(e, 'problem_mark', None))}: invalid YAML: {problem}") from None
    finally:
        loader.dispose()
