"""Parameter files and ``-p`` values as YAML: a key given twice is refused (PyYAML keeps the last silently), and so
is a document whose aliases expand beyond ``YAML_VALUES_LIMIT`` values (a few lines can stand for billions); each
refusal is one line naming its source."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import yaml


class _StrictLoader(yaml.SafeLoader):
    """YAML that refuses a key given twice in one mapping (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                problem = "a key must be a name, not a list or a mapping"
                raise yaml.constructor.ConstructorError(None, None, problem, key_node.start_mark)
            if key in first_line:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first on line {first_line[key] + 1})", key_node.start_mark
                )
            first_line[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


YAML_VALUES_LIMIT = 100_000  # values a parameter file may expand to (aliases counted as often as they are used)


def read_yaml(text: str, source: str) -> Any:
    """Parse YAML ``text``; a syntax error, a duplicate key or a document that expands to more than
    ``YAML_VALUES_LIMIT`` values (aliases of aliases: a few lines can stand for billions) becomes one line naming
    ``source`` and where."""
    try:
        value = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ValueError(f"{source}: not valid YAML{where}: {problem}") from None
    if _expanded_size(value, {}) > YAML_VALUES_LIMIT:
        raise ValueError(f"{source}: expands to more than {YAML_VALUES_LIMIT:,} values (aliases of aliases?)")
    return value


def _expanded_size(value: Any, seen: dict[int, int]) -> int:
    """How many values ``value`` holds once every alias is written out, counted once per object (``seen``)."""
    if not isinstance(value, (list, dict)):
        return 1
    if id(value) not in seen:
        seen[id(value)] = 0  # a cycle (a recursive alias) counts as one
        children = value.values() if isinstance(value, dict) else value
        seen[id(value)] = min(1 + sum(_expanded_size(v, seen) for v in children), YAML_VALUES_LIMIT + 1)
    return seen[id(value)]
