"""Search filters: one whole SQL condition, or refused.

Lance parses a filter as `SELECT 1 FROM t WHERE <filter>` and takes the first statement the
parser finds, so whatever follows a complete condition is dropped without a word:
`doc_id = 'x' garbage garbage`, `... ORDER BY x`, `...; DROP TABLE t` all filter by
`doc_id = 'x'` (measured with pylance 14). Lance has no strict mode, so the filter is checked
here first with DuckDB (a dependency already; sqlglot is not), by its tokenizer and parser, in
the form Lance then gets:

- parentheses balance within the filter, so the filter cannot close the parenthesis it is
  wrapped in and go on after it; string literals are plain '...' ones (no dollar or E quoting,
  which other SQL dialects would tokenize differently);
- `SELECT 1 FROM t WHERE (<filter>)` parses (a syntax error, a `;` or a second statement
  fails) and gives the syntax tree of `SELECT 1 FROM t WHERE (TRUE)` but for the WHERE clause:
  nothing else (ORDER BY, LIMIT, a parameter) came with it.

Only parsing: nothing is bound or run, so DataFusion's functions, unknown to DuckDB, still pass,
and a column Lance lacks stays Lance's error. Lance then gets the very text DuckDB checked: the
filter in parentheses, each on its own line (a trailing `-- comment` cannot swallow the closing
one). Were Lance's grammar to end the condition earlier than DuckDB's, it meets the closing
parenthesis too early and fails, rather than dropping the rest.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import duckdb

from embedscale.engine.errors import TableError

_PREFIX = "SELECT 1 FROM t WHERE "
_lock = threading.Lock()  # one in-memory connection; a DuckDB connection is not thread-safe
_con = duckdb.connect()


def _wrapped(where: str) -> str:
    return f"(\n{where}\n)"


def _tree(sql: str) -> dict[str, Any]:
    with _lock:
        row = _con.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()
    assert row is not None  # a SELECT without FROM yields exactly one row
    return json.loads(row[0])


def _shape(node: Any) -> Any:
    # The tree without positions (they move with the filter's length) or the WHERE clause.
    if isinstance(node, dict):
        return {
            k: _shape(v)
            for k, v in node.items()
            if k != "where_clause" and not k.startswith("query_location")
        }
    if isinstance(node, list):
        return [_shape(v) for v in node]
    return node


_REFERENCE = _shape(_tree(_PREFIX + _wrapped("TRUE")))


def _tokens_problem(where: str) -> str | None:
    tokens = duckdb.tokenize(where)
    depth = 0
    for i, (start, kind) in enumerate(tokens):
        end = tokens[i + 1][0] if i + 1 < len(tokens) else len(where)
        text = where[start:end].strip()
        if kind == duckdb.token_type.string_const and not text.startswith("'"):
            return f"only plain '...' strings, not {text[:20]!r}"
        if kind == duckdb.token_type.operator:
            depth += text.count("(") - text.count(")")
            if depth < 0:
                return f"a ')' at character {start} closes a '(' the filter did not open"
    return None if depth == 0 else "a '(' is not closed"


def check_filter(where: str) -> str:
    """`where` if it is exactly one SQL condition; TableError saying what is wrong otherwise."""
    if not where.strip():
        raise TableError("empty filter: give a condition, or no filter at all")
    if "\x00" in where:
        raise TableError(f"invalid filter {where!r}: it holds a NUL character")
    problem = _tokens_problem(where)
    if problem is None:
        tree = _tree(_PREFIX + _wrapped(where))
        if tree.get("error"):
            problem = str(tree.get("error_message") or "not one SQL condition").splitlines()[0]
        elif _shape(tree) != _REFERENCE:
            problem = "something follows the condition (ORDER BY, LIMIT, a parameter, ...)"
    if problem is not None:
        raise TableError(
            f"invalid filter {where!r}: {problem}; give one condition on the "
            "table's columns, e.g. source = 'a.md' AND chunk_index < 3"
        )
    return where


def lance_filter(where: str) -> str:
    """`where`, checked, as Lance gets it: the very text check_filter parsed."""
    return _wrapped(check_filter(where))
