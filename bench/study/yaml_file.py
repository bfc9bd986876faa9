"""Reading a YAML file strictly: UTF-8 text only, safe tags only, no duplicate keys.

PyYAML's ``safe_load`` lets a second ``seeds:`` silently replace the first; here the document is
composed first and every mapping checked, so the error names the key's YAML path and both lines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class YamlFileError(ValueError):
    """The file is not readable YAML text; one line that starts with the file's path."""


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
    """The document in ``path``: UTF-8, ``yaml.SafeLoader`` tags only, no duplicate keys.
    Every error is a one-line :class:`YamlFileError` starting with ``path`` (and line:column)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise YamlFileError(f"{path}: cannot read: {e.strerror or e}") from None
    text = decode(path, data)
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        try:
            _check_duplicates(node, "", set())
        except YamlFileError as e:
            raise YamlFileError(f"{path}: {e}") from None
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise YamlFileError(f"{_where(path, getattr(e, 'problem_mark', None))}: invalid YAML: {problem}") from None
    finally:
        loader.dispose()
