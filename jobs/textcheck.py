"""Strings a tenant sends: text that UTF-8 can encode, and names and paths without NUL.

JSON may carry a lone surrogate ("\\ud800"), which Python decodes into a str that nothing
downstream can write: DuckDB, Lance, the tokenizer and the JSON of a response all encode UTF-8.
Such a string is refused where it arrives, naming its field, instead of failing later inside a
job or a /metrics scrape. A NUL byte cannot be part of a file path, so names refuse it too.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator


def check_utf8(value: str) -> str:
    """`value` if UTF-8 can encode it; ValueError naming the position of the first bad one."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"not valid Unicode text: a lone surrogate U+{ord(value[exc.start]):04X} at "
            f"character {exc.start}; send UTF-8 text (surrogates only in pairs)"
        ) from None
    return value


def check_name(value: str) -> str:
    """`value` if it is UTF-8 text without NUL: for names, paths and SQL."""
    check_utf8(value)
    if "\x00" in value:
        raise ValueError(
            f"a NUL character at character {value.index(chr(0))}: names, paths "
            "and filters cannot hold one"
        )
    return value


def check_json_texts(value: Any) -> Any:
    """`value` (JSON: dicts, lists, scalars) if every key and string in it is UTF-8 text. Walks
    with a stack: a deeply nested value cannot exhaust the recursion limit."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, str):
            _check_at(where, item)
        elif isinstance(item, dict):
            for key, child in item.items():
                if isinstance(key, str):
                    _check_at(f"{where} key {key[:40]!r}", key)
                stack.append((f"{where}[{str(key)[:40]!r}]", child))
        elif isinstance(item, list):
            stack.extend((f"{where}[{i}]", child) for i, child in enumerate(item))
    return value


def _check_at(where: str, text: str) -> None:
    try:
        check_utf8(text)
    except ValueError as exc:
        raise ValueError(f"{where.strip() or 'value'}: {exc}") from None


Utf8Str = Annotated[str, AfterValidator(check_utf8)]  # any text
NameStr = Annotated[str, AfterValidator(check_name)]  # names, paths, SQL: no NUL either
Utf8Json = AfterValidator(check_json_texts)  # for Annotated[dict[str, Any], Utf8Json]
