"""One job request: JobSpec defines a job's fields once; `embedscale run`'s and `embedscale
schedules add`'s flags are made from it, `embedscale.run`'s keywords are its fields, and the
HTTP API takes the model itself. These tests fail when the three drift apart. In process: the
parser, the signature and the models, no cluster."""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path

import pytest
from pydantic_core import PydanticUndefined

import embedscale
from embedscale.api.cli import request_flags
from embedscale.api.cli.main import build_parser, main
from embedscale.api.cli.request_flags import (
    NOT_FLAGS,
    flag_fields,
    flag_name,
    request_from_args,
)
from embedscale.jobs.local_run import EmbedRequest
from embedscale.jobs.spec import JobSpec

# The flags users have: a flag renamed or dropped fails here, whatever the model says.
FLAGS = [
    "--table",
    "--model",
    "--provider",
    "--provider-url",
    "--tokenizer",
    "--precision",
    "--chunk-tokens",
    "--overlap-tokens",
    "--mode",
    "--allow-empty",
    "--priority",
    "--text-field",
    "--id-field",
]
# embedscale.run's keywords that are not the request's fields: where it runs and how it shows.
FACADE_ONLY = {"cluster", "progress", "on_progress"}


def subcommand(*path: str) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in path:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return parser


def request_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    fields = set(JobSpec.model_fields)
    return {a.dest: a for a in parser._actions if a.dest in fields}


@pytest.mark.parametrize("command", [("run",), ("schedules", "add")])
def test_every_field_a_command_line_can_give_is_a_flag(command):
    actions = request_actions(subcommand(*command))
    assert list(actions) == flag_fields()  # in the model's order
    assert set(flag_fields()) | NOT_FLAGS == set(JobSpec.model_fields)
    assert set(JobSpec.model_fields) >= NOT_FLAGS  # no stale exclusion
    flags = [s for name, a in actions.items() for s in a.option_strings]
    assert flags == FLAGS and flags == [flag_name(n) for n in flag_fields() if n != "source"]
    assert actions["source"].option_strings == [] and actions["table"].required
    for name, action in actions.items():
        assert action.help and JobSpec.model_fields[name].description, name


def test_the_facade_takes_every_field_as_a_keyword_with_the_models_default():
    params = inspect.signature(embedscale.run).parameters
    # `source` takes a path or the texts; every other field of the request is a keyword.
    assert set(params) == (set(EmbedRequest.model_fields) - {"texts"}) | FACADE_ONLY
    assert set(JobSpec.model_fields) <= set(EmbedRequest.model_fields)
    assert all(p.kind is p.KEYWORD_ONLY for name, p in params.items() if name != "source")
    for name, field in EmbedRequest.model_fields.items():
        if name in ("source", "texts", "data_dir") or field.default is PydanticUndefined:
            continue  # data_dir: $EMBEDSCALE_DATA_DIR first; labels: a factory (None: none)
        assert params[name].default == field.default, name
    assert params["table"].default is inspect.Parameter.empty


def test_run_flags_become_the_spec():
    args = build_parser().parse_args(
        [
            "run",
            "docs/",
            "--table",
            "t",
            "--provider",
            "openai",
            "--provider-url",
            "http://127.0.0.1:9/v1",
            "--chunk-tokens",
            "128",
            "--overlap-tokens",
            "8",
            "--mode",
            "sync",
            "--allow-empty",
            "--priority",
            "high",
            "--text-field",
            "body",
        ]
    )
    spec = JobSpec(**request_from_args(args))
    assert spec == JobSpec(
        table="t",
        source="docs/",
        provider="openai",
        provider_url="http://127.0.0.1:9/v1",
        chunk_tokens=128,
        overlap_tokens=8,
        mode="sync",
        allow_empty=True,
        priority="high",
        text_field="body",
    )
    plain = build_parser().parse_args(["run", "docs/", "--table", "t"])
    assert JobSpec(**request_from_args(plain)) == JobSpec(table="t", source="docs/")
    # The namespace keeps the defaults, as before the flags were made from the model.
    assert (plain.model, plain.mode, plain.priority, plain.allow_empty) == (
        "all-MiniLM-L6-v2",
        "append",
        "normal",
        False,
    )


def test_a_schedules_template_keeps_only_what_was_given():
    args = build_parser().parse_args(
        ["schedules", "add", "@daily", "docs/", "--table", "t", "--overlap-tokens", "8"]
    )
    assert request_from_args(args) == {"table": "t", "source": "docs/", "overlap_tokens": 8}
    assert (args.cron, args.timezone, args.tenant) == ("@daily", "UTC", "local")


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--mode", "bogus", "--mode: Input should be 'append', 'overwrite', 'upsert' or 'sync'"),
        ("--provider", "tensorrt", "--provider: Input should be 'sentence-transformers', 'onnx'"),
        ("--priority", "urgent", "--priority: Input should be 'low', 'normal'"),
        ("--chunk-tokens", "0", "--chunk-tokens: Input should be greater than 0"),
    ],
)
def test_a_bad_value_is_the_models_one_line_error(tmp_path, capsys, flag, value, expected):
    # Checked by JobSpec, before any service or cluster: the same words as the API's.
    argv = ["run", "src", "--table", "t", "--data-dir", str(tmp_path), flag, value]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"embedscale: error: {expected}") and err.count("\n") == 1
    assert not list(tmp_path.iterdir())  # refused before the data dir was opened


def test_schedules_add_refuses_a_bad_value_in_one_line(tmp_path, capsys):
    argv = ["schedules", "add", "@daily", "src", "--table", "t", "--provider", "tensorrt"]
    assert main([*argv, "--data-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("embedscale: error: --provider:") and "'onnx'" in err


@pytest.mark.parametrize("command", [("run",), ("schedules", "add")])
def test_help_lists_the_flags_with_the_models_descriptions(capsys, command):
    with pytest.raises(SystemExit) as done:
        main([*command, "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert all(flag in text for flag in FLAGS)
    assert "{append,overwrite,upsert,sync}" in text and "--provider-url URL" in text
    assert "tokens per chunk, the model's special tokens included" in text
    assert "(default: all-MiniLM-L6-v2)" in text and "(default: normal)" in text
    # A field named in another's description reads as its flag.
    assert "endpoint at --provider-url" in text and "provider_url" not in text


def test_a_field_without_a_flag_form_must_be_excluded_by_name():
    with pytest.raises(TypeError, match="NOT_FLAGS"):
        request_flags._flag_type("texts", list[str] | None)
    assert request_flags._flag_type("chunk_tokens", JobSpec.model_fields["chunk_tokens"].annotation)
    assert request_flags._flag_type("mode", JobSpec.model_fields["mode"].annotation) == (
        str,
        ("append", "overwrite", "upsert", "sync"),
    )


def test_the_python_request_is_the_spec_and_how_this_process_runs_it(tmp_path):
    request = EmbedRequest(
        table="t", texts=("a", "b"), ids=["1", "2"], labels={"k": "v"}, data_dir=tmp_path
    )
    spec = request.spec()
    assert type(spec) is JobSpec and spec.texts == ["a", "b"] and spec.labels == {"k": "v"}
    assert request.data_dir == str(tmp_path) and isinstance(Path(request.data_dir), Path)
    assert set(spec.model_dump()) == set(JobSpec.model_fields)  # no runner field leaks in
    with pytest.raises(ValueError, match="max_attempts"):
        EmbedRequest(table="t", texts=["a"], max_attempts=0)
    with pytest.raises(ValueError, match="chunk_tokens"):
        embedscale.run(["a"], table="t", chunk_tokens=2.5, data_dir=tmp_path)
    assert not list(tmp_path.iterdir())  # refused before anything was opened or started


def test_the_http_api_takes_the_model_itself():
    from embedscale.api.server.routes.jobs import create_job
    from embedscale.api.server.schedule_schemas import ScheduleCreate

    assert inspect.signature(create_job).parameters["spec"].annotation in (JobSpec, "JobSpec")
    assert ScheduleCreate.model_fields["template"].annotation is JobSpec
