"""Config changes as data: an override table maps a dotted field ('plus.eps') to its new value.

Variants, sizes and data presets are such tables, applied by `apply`. A value that depends on other
fields is a function of the config, called when its turn comes; keep those few and visible.
"""
from collections.abc import Mapping
from typing import Any

import ml_collections

Table = Mapping[str, Any]


def apply(c: ml_collections.ConfigDict, table: Table) -> ml_collections.ConfigDict:
    """Set every field of `table` on `c`, in table order; a callable value is replaced by value(c)."""
    for field, value in table.items():
        *sections, name = field.split(".")
        node = c
        for section in sections:
            node = node[section]
        node[name] = value(c) if callable(value) else value
    return c

