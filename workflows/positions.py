"""Where each value of a YAML flow file is written: line and column from PyYAML's composed nodes.

A problem's path (`steps[2].parallel[0].deploy.image`) is looked up in the node tree
the parser built, so the position is the one the parser saw, never a guess from text
search. A path that does not exist in the file (a missing field) resolves to the
mapping where it should have been written. The same walk finds duplicate keys, which
YAML loaders otherwise resolve silently by keeping the last one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml

_SEGMENT = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def path_segments(path: str) -> list[str | int]:
    """`steps[2].deploy.image` -> `["steps", 2, "deploy", "image"]`."""
    return [int(index) if index else name for name, index in _SEGMENT.findall(path)]


@dataclass(frozen=True)
class Where:
    """A 1-based line and column, and the text of the scalar written there (if one)."""

    line: int
    column: int
    exact: bool  # False: the path is not in the file; this is where it belongs
    scalar: str | None = None
    one_line: bool = False


class Positions:
    """The node tree of one YAML document, for looking paths up."""

    def __init__(self, root: yaml.Node | None, text: str = "", *, lazy: bool = False):
        self._root = root
        self._lazy = lazy
        self.text = text
        self.lines = text.splitlines()

    @property
    def root(self) -> yaml.Node | None:
        if self._lazy:  # composed on first use: only a flow with problems needs positions
            self._lazy = False
            self._root = _compose(self.text)
        return self._root

    @classmethod
    def of(cls, text: str) -> Positions:
        """Positions of `text`, composed when first needed; an unparsable text has none."""
        return cls(None, text, lazy=True)

    def find(self, path: str) -> Where | None:
        """Where the value at `path` is written (its key, for a mapping entry)."""
        node = self.root
        if node is None:
            return None
        mark = node.start_mark
        scalar_node: yaml.Node | None = node
        for segment in path_segments(path):
            child, key_mark = _child(node, segment)
            if child is None:
                return Where(mark.line + 1, mark.column + 1, exact=False)
            node = child
            mark = key_mark or child.start_mark
            scalar_node = child
        scalar = scalar_node.value if isinstance(scalar_node, yaml.ScalarNode) else None
        one_line = scalar_node is not None and scalar_node.start_mark.line == scalar_node.end_mark.line
        return Where(mark.line + 1, mark.column + 1, True, scalar, one_line)

    def find_in_value(self, path: str, needle: str) -> Where | None:
        """Where `needle` (e.g. `${args.imge}`) is written inside the scalar at `path`.

        Only for a scalar on one line, written plainly or quoted without escapes before
        the needle: then the needle's column is the scalar's plus its offset.
        """
        node = self.root
        for segment in path_segments(path):
            if node is None:
                return None
            node, _ = _child(node, segment)
        if not isinstance(node, yaml.ScalarNode) or node.start_mark.line != node.end_mark.line:
            return None
        line = node.start_mark.line
        if line >= len(self.lines):
            return None
        written = self.lines[line][node.start_mark.column : node.end_mark.column]
        offset = written.find(needle)
        if offset < 0:
            return None
        return Where(node.start_mark.line + 1, node.start_mark.column + 1 + offset, True)

    def duplicate_keys(self) -> list[tuple[str, Where, int]]:
        """Every key written twice in one mapping: (path, where the repeat is, first line)."""
        found: list[tuple[str, Where, int]] = []
        pending: list[tuple[yaml.Node, str]] = [(self.root, "")] if self.root is not None else []
        visited: set[int] = set()
        while pending:
            node, path = pending.pop()
            if id(node) in visited:  # an alias: its node was walked already (and may be huge)
                continue
            visited.add(id(node))
            if isinstance(node, yaml.MappingNode):
                seen: dict[str, int] = {}
                for key, value in node.value:
                    name = str(key.value)
                    here = f"{path}.{name}" if path else name
                    if name in seen:
                        mark = key.start_mark
                        found.append((here, Where(mark.line + 1, mark.column + 1, True), seen[name]))
                    else:
                        seen[name] = key.start_mark.line + 1
                    pending.append((value, here))
            elif isinstance(node, yaml.SequenceNode):
                for index, item in enumerate(node.value):
                    pending.append((item, f"{path}[{index}]"))
        found.sort(key=lambda item: (item[1].line, item[1].column))
        return found


def _compose(text: str) -> yaml.Node | None:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        return yaml.compose(text, Loader=loader)
    except (yaml.YAMLError, RecursionError):
        return None


def load_with_positions(text: str) -> tuple[Any, Positions]:
    """Parse YAML once: the data (as `yaml.safe_load` gives it) and the positions of its nodes.

    Raises:
        yaml.YAMLError: invalid YAML; RecursionError: nested far too deeply.
    """
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    finally:
        loader.dispose()
    return data, Positions(node, text)


def _child(node: yaml.Node, segment: str | int) -> tuple[yaml.Node | None, yaml.Mark | None]:
    """The child of `node` at `segment`, and the mark of its key (for a mapping entry)."""
    if isinstance(node, yaml.SequenceNode) and isinstance(segment, int):
        if 0 <= segment < len(node.value):
            return node.value[segment], None
        return None, None
    if isinstance(node, yaml.MappingNode):
        for key, value in reversed(node.value):  # the loader keeps the last of a repeat
            if str(key.value) == str(segment):
                return value, key.start_mark
    return None, None
