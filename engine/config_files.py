"""Configuration files (cluster specs, tiers): YAML read into a mapping, then checked against
the dataclass it describes by pydantic, each mistake told in one line.

The dataclasses stay the values the code passes around (built in Python, unchecked and cheap);
a file is the untrusted input, so it alone goes through pydantic: each dataclass carries a
`__pydantic_config__` refusing unknown keys, and strict types on the fields where YAML's
guesses would slip through (`daily_chunks: 1e4` is the string '1e4' to YAML, `10000.0` a float:
neither is a count).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

T = TypeVar("T")


class ConfigFileError(ValueError):
    """A file that cannot be read, is not YAML, or is not a mapping; the message says which.
    Callers raise their own error type with it (the engine's, or the control plane's)."""


def read_mapping(path: str | os.PathLike, what: str) -> dict[str, Any]:
    """The YAML mapping in `path` (an empty file is an empty mapping). `what` names the kind of
    file in messages: "cluster spec", "tiers file"."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigFileError(f"cannot read {what} {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "not YAML"
        raise ConfigFileError(f"{what} {path}: not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigFileError(f"{what} {path}: expected a mapping of keys to values")
    return data


def unknown_keys(data: dict[str, Any], known: set[str] | frozenset[str]) -> list[str]:
    """Keys of `data` that are not in `known`, sorted as text (YAML keys need not be strings)."""
    return sorted(str(k) for k in data if k not in known)


_ADAPTERS: dict[type, TypeAdapter[Any]] = {}


def validate(kind: type[T], data: dict[str, Any]) -> T:
    """`data` as a `kind` (a dataclass with a __pydantic_config__); ValueError with one line
    naming each bad field (describe_errors) when it does not fit."""
    adapter = _ADAPTERS.get(kind)
    if adapter is None:  # built once per kind: building one costs more than validating
        adapter = _ADAPTERS[kind] = TypeAdapter(kind)
    try:
        return adapter.validate_python(data)
    except ValidationError as exc:
        raise ValueError(describe_errors(exc)) from None


def describe_errors(exc: ValidationError) -> str:
    """Pydantic's errors as `field: must be X, not Y` parts, one per field, joined by '; '.

    A union's alternatives fail together (memory_limit: text or a whole number): they are one
    part, their expectations joined by 'or'."""
    fields: dict[str, list[ErrorDetails]] = {}
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else ""
        fields.setdefault(name, []).append(error)
    return "; ".join(_describe_field(name, errors) for name, errors in fields.items())


_EXPECTED = {
    "a valid integer": "a whole number",
    "a valid number": "a number",
    "a valid string": "a string",
    "a valid boolean": "true or false",
    "a valid dictionary": "a mapping",
}


def _describe_field(name: str, errors: list[ErrorDetails]) -> str:
    prefix = f"{name}: " if name else ""
    expected, others = [], []
    for error in errors:
        message = error["msg"]
        if message.startswith("Input should be "):
            wanted = message.removeprefix("Input should be ")
            expected.append(_EXPECTED.get(wanted, wanted))
        elif error["type"] == "missing":
            others.append("is required")
        elif error["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            others.append("unknown key")
        else:
            others.append(message.removeprefix("Value error, "))
    if others:
        return prefix + "; ".join(dict.fromkeys(others))
    value = errors[0].get("input")
    hint = _hint(value, {error["type"] for error in errors})
    return f"{prefix}must be {' or '.join(dict.fromkeys(expected))}, not {value!r}{hint}"


def _hint(value: Any, types: set[str]) -> str:
    """What to write instead, for the mistakes YAML invites: a count written as 1e4 (text to
    YAML) or 10000.0 (a float), a name or a GPU list that YAML read as a number."""
    if isinstance(value, bool):
        return ""
    if types & {"int_type", "int_parsing", "int_from_float"} and not isinstance(value, int):
        try:
            number = float(value)
        except (TypeError, ValueError):
            return ""
        if math.isfinite(number) and number == int(number):
            return f" (write the whole number {int(number)})"
    elif "string_type" in types and isinstance(value, int):
        return f' (quote it: "{value}")'
    return ""
