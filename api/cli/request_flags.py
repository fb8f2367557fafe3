"""The job request's command-line arguments, made from jobs.spec.JobSpec's fields.

A job's fields are defined once, on JobSpec (type, default, constraints, description): the HTTP
API takes the model itself, `embedscale.run` its fields as keywords, and `embedscale run` and
`embedscale schedules add` the flags made here. Each field becomes `--field-name` (its type, its
default, its description as the help; a Literal's values as the metavar), `source` the
positional argument; the fields a command line cannot give are left out by name below, so a
field added to JobSpec is a flag unless it is named here (tests/test_job_request.py keeps the
three in step). The values are checked by JobSpec itself, so an error reads the same from the
command line as from the API: `--mode: Input should be 'append', ...`.
"""

from __future__ import annotations

import argparse
import re
import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic.fields import FieldInfo

from embedscale.jobs.spec import JobSpec

# Inline documents, their ids and metadata, and labels are for the API and Python: a command
# line names a source instead.
NOT_FLAGS = frozenset({"texts", "ids", "metadata", "labels"})
POSITIONAL = "source"
METAVARS = {"provider_url": "URL", "tokenizer": "NAME"}
# Another field named in a description (provider_url) reads as its flag (--provider-url).
_FIELD_NAME = re.compile(
    r"\b(" + "|".join(n for n in JobSpec.model_fields if "_" in n and n not in NOT_FLAGS) + r")\b"
)


def flag_name(field: str) -> str:
    """`chunk_tokens` -> `--chunk-tokens`."""
    return "--" + field.replace("_", "-")


def flag_fields() -> list[str]:
    """JobSpec's fields a command line gives, in the model's order (source among them)."""
    return [name for name in JobSpec.model_fields if name not in NOT_FLAGS]


def add_request_arguments(parser: argparse.ArgumentParser, *, template: bool = False) -> None:
    """The job's arguments on `parser`: `source`, then a flag per field (`--table` required).

    template: for `schedules add`, whose job template keeps only what was given: every flag
    defaults to None, and the help tells the default that applies."""
    for name in flag_fields():
        field = JobSpec.model_fields[name]
        kind, choices = _flag_type(name, field.annotation)
        default = None if field.is_required() else field.get_default(call_default_factory=True)
        options: dict[str, Any] = {"help": _help(field, default)}
        if name == POSITIONAL:
            parser.add_argument(name, **options)
            continue
        if kind is bool:
            if default is not False:
                raise TypeError(f"JobSpec.{name}: a flag switches a False default on")
            options.update(action="store_true", default=None if template else False)
        else:
            # A Literal's values show in the usage but are not argparse choices: JobSpec checks
            # them, so a wrong one is the same one-line error as from the API.
            options.update(
                default=None if template else default,
                metavar=METAVARS.get(name) or ("{" + ",".join(choices) + "}" if choices else None),
            )
            if kind is int:
                options["type"] = int
        if field.is_required():
            options["required"] = True
        parser.add_argument(flag_name(name), **options)


def request_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The job's fields the command line gave (None: not given, the spec's default applies),
    for JobSpec(**...) or a schedule's template."""
    values = {name: getattr(args, name) for name in flag_fields()}
    return {name: value for name, value in values.items() if value is not None}


def _flag_type(name: str, annotation: Any) -> tuple[type, tuple[str, ...]]:
    """The flag's base type (str, int or bool) and a Literal's values."""
    kind = _unwrap(annotation)
    if get_origin(kind) is Literal:
        return str, tuple(str(v) for v in get_args(kind))
    if kind in (str, int, bool):
        return kind, ()
    raise TypeError(
        f"JobSpec.{name} ({annotation}) has no flag form: add it to "
        "api/cli/request_flags.py NOT_FLAGS, or teach this module its type"
    )


def _unwrap(annotation: Any) -> Any:
    """`Annotated[str, ...] | None` -> `str`."""
    if get_origin(annotation) is Annotated:
        return _unwrap(get_args(annotation)[0])
    if get_origin(annotation) in (Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return _unwrap(members[0])
    return annotation


def _help(field: FieldInfo, default: Any) -> str:
    """The field's description as flags name things, and the default where it is one value."""
    text = _FIELD_NAME.sub(lambda m: flag_name(m.group(0)), field.description or "")
    if default not in (None, False, "") and "(default" not in text:
        text += f" (default: {default})"
    return text.replace("%", "%%")  # argparse formats help with %
