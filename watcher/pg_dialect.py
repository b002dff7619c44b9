"""The store's SQLite-dialect statements as PostgreSQL runs them: one set of queries for both backends.

Only mechanical rewrites, each one a rule below; a statement that needs more has its own version in
watcher/store_pg.py. The SQLite backend never comes here (its statements run as written).

- Placeholders: `?` and `?N` become `$N`. A bare `?` after numbered ones takes the largest number so far
  plus one, as SQLite numbers it, so the parameters keep their positions.
- `max(a, b)` / `min(a, b)` (SQLite's scalar forms) become `greatest` / `least`.
- `x IN (SELECT value FROM json_each(?))` (a list passed as one JSON text) becomes `x = ANY($N)` and the
  JSON parameter is decoded into a list: PostgreSQL then types the array by `x`, and an index on `x` is
  used (`json_array_elements_text` would compare text with integers).
- `INSERT OR IGNORE` becomes `INSERT ... ON CONFLICT DO NOTHING`; `temp.` becomes `pg_temp.`;
  `CROSS JOIN t a ON` (SQLite's way of fixing the join order) becomes `JOIN t a ON`; `ifnull(` becomes
  `coalesce(`; `LIKE` becomes `ILIKE` (SQLite's LIKE ignores the case of ASCII letters, PostgreSQL's
  does not).
- A `(VALUES ...)` list in a FROM clause: PostgreSQL types an untyped parameter there as text, so the
  first row's parameters are cast to their Python values' types (the other rows follow the first).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

# PostgreSQL types of the Python values the store passes (bool before int: a bool is an int).
_CASTS: tuple[tuple[type, str], ...] = (
    (bool, "boolean"),
    (int, "bigint"),
    (float, "double precision"),
    (str, "text"),
    (bytes, "bytea"),
)
_JSON_LIST = re.compile(r"\s+(NOT\s+)?IN\s*\(\s*SELECT\s+value\s+FROM\s+json_each\(\$(\d+)\)\s*\)", re.I)
_INSERT_OR_IGNORE = re.compile(r"^\s*INSERT\s+OR\s+IGNORE\s+INTO\b", re.I)
_RETURNING = re.compile(r"\bRETURNING\b", re.I)
_CROSS_JOIN_ON = re.compile(r"\bCROSS\s+JOIN\s+(\w+(?:\s+(?!ON\b)\w+)?)\s+ON\b", re.I)


@dataclass(frozen=True, slots=True)
class Statement:
    """A translated statement: its text, the parameters (0-based) passed as JSON lists, and those of
    the first row of each VALUES list, to be cast by type (`sql_for`)."""

    sql: str
    json_params: frozenset[int] = frozenset()
    values_params: tuple[int, ...] = ()

    def sql_for(self, params: Sequence[Any]) -> str:
        """The text to run with these parameters (VALUES casts by the parameters' types)."""
        if not self.values_params:
            return self.sql
        return _cast_values(self.sql, self.values_params, tuple(type(params[i]) for i in self.values_params))

    def args(self, params: Iterable[Any]) -> list[Any]:
        """The parameters as asyncpg takes them (JSON lists decoded)."""
        args = list(params)
        for i in self.json_params:
            args[i] = json.loads(args[i])
        return args


@lru_cache(maxsize=1024)
def translate(sql: str) -> Statement:
    """The PostgreSQL form of one SQLite-dialect statement (cached: the store's texts repeat)."""
    text, values_params = _placeholders(sql)
    json_params: set[int] = set()

    def json_list(m: re.Match[str]) -> str:
        json_params.add(int(m.group(2)) - 1)
        return f" <> ALL(${m.group(2)})" if m.group(1) else f" = ANY(${m.group(2)})"

    text = _JSON_LIST.sub(json_list, text)
    text = _scalar_extrema(text)
    text = _outside_strings(text, _words)
    if _INSERT_OR_IGNORE.match(text):
        text = _INSERT_OR_IGNORE.sub("INSERT INTO", text, count=1)
        if (r := _RETURNING.search(text)) is not None:
            text = text[: r.start()] + "ON CONFLICT DO NOTHING " + text[r.start() :]
        else:
            text += " ON CONFLICT DO NOTHING"
    return Statement(text, frozenset(json_params), values_params)


def _words(part: str) -> str:
    """The rewrites of words outside string literals (see the module docstring). `CROSS JOIN t a ON` is
    SQLite's way of fixing the join order; PostgreSQL allows no ON there, and plans a plain JOIN itself."""
    part = re.sub(r"\btemp\.", "pg_temp.", part)
    part = re.sub(r"\bifnull\s*\(", "coalesce(", part, flags=re.I)
    part = re.sub(r"\bLIKE\b", "ILIKE", part, flags=re.I)
    return _CROSS_JOIN_ON.sub(r"JOIN \1 ON", part)


@lru_cache(maxsize=1024)
def _cast_values(sql: str, positions: tuple[int, ...], types: tuple[type, ...]) -> str:
    casts = {}
    for position, kind in zip(positions, types, strict=True):
        cast = next((name for t, name in _CASTS if issubclass(kind, t)), None)
        if cast is not None:
            casts[position] = cast
    return re.sub(
        r"\$(\d+)(?!\d)",
        lambda m: m.group(0) + (f"::{casts[n]}" if (n := int(m.group(1)) - 1) in casts else ""),
        sql,
    )


def _placeholders(sql: str) -> tuple[str, tuple[int, ...]]:
    """`?`/`?N` -> `$N` outside string literals; with the (0-based) parameters of the first row of each
    `(VALUES` list."""
    out: list[str] = []
    highest = 0
    values_first: list[int] = []
    i, n = 0, len(sql)
    in_values = False  # inside the first row of a (VALUES list
    depth = 0
    while i < n:
        c = sql[i]
        if c in "'\"":
            end = _string_end(sql, i)
            out.append(sql[i:end])
            i = end
            continue
        if c == "?":
            j = i + 1
            while j < n and sql[j].isdigit():
                j += 1
            number = int(sql[i + 1 : j]) if j > i + 1 else highest + 1
            highest = max(highest, number)
            out.append(f"${number}")
            if in_values:
                values_first.append(number - 1)
            i = j
            continue
        if c == "(" and re.match(r"\(\s*VALUES\s*\(", sql[i:], re.I):
            m = re.match(r"\(\s*VALUES\s*\(", sql[i:], re.I)
            assert m is not None
            out.append(m.group(0))
            i += m.end()
            in_values, depth = True, 1
            continue
        if in_values:
            if c == "(":
                depth += 1
            elif c == ")":
                depth -= 1
                if depth == 0:
                    in_values = False
        out.append(c)
        i += 1
    return "".join(out), tuple(values_first)


def _string_end(sql: str, start: int) -> int:
    """The index after the string literal (or quoted name) starting at `start` (doubled quotes escape)."""
    quote = sql[start]
    i = start + 1
    while i < len(sql):
        if sql[i] == quote:
            if i + 1 < len(sql) and sql[i + 1] == quote:
                i += 2
                continue
            return i + 1
        i += 1
    return i


def _outside_strings(sql: str, change: Any) -> str:
    parts: list[str] = []
    i = start = 0
    while i < len(sql):
        if sql[i] in "'\"":
            parts.append(change(sql[start:i]))
            end = _string_end(sql, i)
            parts.append(sql[i:end])
            i = start = end
            continue
        i += 1
    parts.append(change(sql[start:]))
    return "".join(parts)


def _scalar_extrema(sql: str) -> str:
    """`max(a, b)` -> `greatest(a, b)`, `min(a, b)` -> `least(a, b)`; the aggregates (one argument) stay."""
    out: list[str] = []
    i = 0
    for m in re.finditer(r"\b(max|min)\s*\(", sql, re.I):
        if m.start() < i:
            continue
        if _has_top_level_comma(sql, m.end()):
            out.append(sql[i : m.start()])
            out.append("greatest(" if m.group(1).lower() == "max" else "least(")
            i = m.end()
    out.append(sql[i:])
    return "".join(out)


def _has_top_level_comma(sql: str, start: int) -> bool:
    """Whether the parenthesised list opened just before `start` holds a comma at its own level."""
    depth = 0
    i = start
    while i < len(sql):
        c = sql[i]
        if c in "'\"":
            i = _string_end(sql, i)
            continue
        if c == "(":
            depth += 1
        elif c == ")":
            if depth == 0:
                return False
            depth -= 1
        elif c == "," and depth == 0:
            return True
        i += 1
    return False
