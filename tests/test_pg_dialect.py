"""The SQLite-to-PostgreSQL statement translator (watcher/pg_dialect.py): pure, table-driven. That every
statement of the store runs on PostgreSQL is shown by the store tests run on both backends."""

from __future__ import annotations

import pytest

from watcher.pg_dialect import translate
from watcher.store import _values


@pytest.mark.parametrize(
    ("sqlite", "postgresql"),
    [
        ("SELECT a FROM t WHERE x = ? AND y = ?", "SELECT a FROM t WHERE x = $1 AND y = $2"),
        # numbered: kept; a bare ? after them is the largest so far + 1, as SQLite numbers it
        ("UPDATE t SET a = ?2 WHERE id = ?1 AND b = ?2", "UPDATE t SET a = $2 WHERE id = $1 AND b = $2"),
        ("VALUES ((SELECT ?1 + 1), ?, ?)", "VALUES ((SELECT $1 + 1), $2, $3)"),
        # inside string literals nothing changes, a doubled quote included
        ("SELECT '?', 'it''s ?', ? FROM t", "SELECT '?', 'it''s ?', $1 FROM t"),
        # the scalar max/min of two arguments; the aggregates stay
        ("SELECT max(coalesce(max(id), 0), ?) FROM a", "SELECT greatest(coalesce(max(id), 0), $1) FROM a"),
        ("SELECT min(n), max(n) FROM t", "SELECT min(n), max(n) FROM t"),
        ("SELECT min(a, max(b, c)) FROM t", "SELECT least(a, greatest(b, c)) FROM t"),
        ("SELECT max(f(a, b)) FROM t", "SELECT max(f(a, b)) FROM t"),
        # a JSON list parameter becomes an array comparison
        (
            "SELECT id FROM a WHERE id IN (SELECT value FROM json_each(?)) AND x = ?",
            "SELECT id FROM a WHERE id = ANY($1) AND x = $2",
        ),
        ("SELECT 1 WHERE i NOT IN (SELECT value FROM json_each(?))", "SELECT 1 WHERE i <> ALL($1)"),
        ("INSERT OR IGNORE INTO t (a) VALUES (?)", "INSERT INTO t (a) VALUES ($1) ON CONFLICT DO NOTHING"),
        (
            "INSERT OR IGNORE INTO t (a) VALUES (?) RETURNING id",
            "INSERT INTO t (a) VALUES ($1) ON CONFLICT DO NOTHING RETURNING id",
        ),
        ("SELECT n FROM temp.import_rows i", "SELECT n FROM pg_temp.import_rows i"),
        ("SELECT 'temp.x' FROM t", "SELECT 'temp.x' FROM t"),
        (
            "SELECT 1 FROM v CROSS JOIN addresses a ON a.id = v.column1",
            "SELECT 1 FROM v JOIN addresses a ON a.id = v.column1",
        ),
        ("SELECT 1 FROM v CROSS JOIN d ON d.x = v.column1", "SELECT 1 FROM v JOIN d ON d.x = v.column1"),
        ("SELECT 1 FROM a CROSS JOIN b", "SELECT 1 FROM a CROSS JOIN b"),
        # SQLite's LIKE ignores ASCII case; a LIKE inside a literal stays
        ("SELECT 1 FROM t WHERE a like ? AND b = 'LIKE'", "SELECT 1 FROM t WHERE a ILIKE $1 AND b = 'LIKE'"),
        ("SELECT ifnull(a, 0) FROM t", "SELECT coalesce(a, 0) FROM t"),
    ],
)
def test_statements_translate(sqlite: str, postgresql: str) -> None:
    assert translate(sqlite).sql == postgresql


def test_json_list_parameters_are_decoded_into_lists() -> None:
    statement = translate("SELECT 1 WHERE c = ? AND i IN (SELECT value FROM json_each(?))")
    assert statement.json_params == frozenset({1})
    assert statement.args(["x", "[3, 1]"]) == ["x", [3, 1]]


def test_the_first_row_of_a_values_list_is_cast_by_the_parameters_types() -> None:
    sql = f"SELECT a.id FROM ({_values(2, 3)}) v JOIN a ON a.k = v.column2 WHERE a.n > ?"
    statement = translate(sql)
    assert statement.values_params == (0, 1, 2)
    params = [7, b"\x01", "x", 8, b"\x02", "y", 1.5]
    assert statement.sql_for(params) == (
        "SELECT a.id FROM (VALUES ($1::bigint, $2::bytea, $3::text), ($4, $5, $6)) v"
        " JOIN a ON a.k = v.column2 WHERE a.n > $7"
    )
    # a None is left to the other rows' type; a bool is no bigint
    assert translate("SELECT * FROM (VALUES (?, ?)) v").sql_for([None, True]) == (
        "SELECT * FROM (VALUES ($1, $2::boolean)) v"
    )


def test_a_statement_without_values_runs_as_translated() -> None:
    statement = translate("SELECT x FROM t WHERE y IN (?, ?)")
    assert statement.values_params == () and statement.sql_for([1, 2]) == statement.sql


def test_ten_and_more_parameters_keep_their_numbers() -> None:
    sql = "SELECT " + ", ".join("?" for _ in range(12)) + " FROM (VALUES (?)) v"
    statement = translate(sql)
    assert statement.sql_for([0] * 13).endswith("(VALUES ($13::bigint)) v")
    assert "$1, $2" in statement.sql and "$10, $11, $12" in statement.sql
