"""mkdocs hooks: the reference pages that are made from the code at build time, so they cannot
drift from it.

- `<!-- generated: http-api -->` (docs/http-api.md) becomes every route of the FastAPI app, from
  its OpenAPI schema (method, path, summary, description, parameters, request body, responses,
  and the schemas they name), plus its WebSocket routes, which OpenAPI does not describe.
- `<!-- generated: cli -->` (docs/cli.md) becomes every `embedscale` command, from the argparse
  parser the console script runs (`embedscale.api.cli.main.build_parser`).
- `<!-- generated: alerts -->` (docs/operations.md) becomes the alert rules of ops/alerts.yml.

The app is built with `create_app` and never started: its lifespan (the DuckDB file, the Dask
cluster) runs only when a server starts, so reading its schema starts nothing. Its settings are
made without reading EMBEDSCALE_* variables, with an admin key, so that the admin routes (which
exist only when a key is set) are documented too.

Registered in mkdocs.yml (`hooks:`); tests/test_docs.py builds the site and checks the pages.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
HTTP_API_MARKER = "<!-- generated: http-api -->"
CLI_MARKER = "<!-- generated: cli -->"
ALERTS_MARKER = "<!-- generated: alerts -->"
USAGE_WIDTH = 96  # columns of the usage lines (argparse would take the terminal's)
ADMIN_KEY = "documentation-build"  # only so that create_app includes the admin routes


# --- the HTTP API ------------------------------------------------------------------------------


def build_app():
    """The service's FastAPI app, built but not started (nothing runs, nothing is opened)."""
    from embedscale.api.server.app import create_app
    from embedscale.api.settings import Settings

    # model_construct: the defaults, without the EMBEDSCALE_* variables of whoever builds.
    return create_app(Settings.model_construct(admin_key=ADMIN_KEY))


def websocket_routes(app) -> list[tuple[str, Any]]:
    """(path, endpoint) of each WebSocket route of `app`: OpenAPI leaves them out."""
    from starlette.routing import WebSocketRoute

    found = []

    def walk(routes, prefix: str = "") -> None:
        for route in routes:
            if isinstance(route, WebSocketRoute):
                found.append((prefix + route.path, route.endpoint))
            elif hasattr(route, "original_router"):  # FastAPI >= 0.16x keeps included routers
                walk(route.original_router.routes, prefix + route.include_context.prefix)
            elif hasattr(route, "routes"):  # a Mount
                walk(route.routes, prefix + getattr(route, "path", ""))

    walk(app.routes)
    return sorted(set(found), key=lambda r: r[0])


def http_routes(schema: dict) -> list[tuple[str, str]]:
    """(METHOD, path) of every operation in an OpenAPI schema."""
    return [
        (method.upper(), path)
        for path, operations in schema["paths"].items()
        for method in operations
        if method in {"get", "post", "put", "patch", "delete", "head", "options"}
    ]


def _schema_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def _link(name: str) -> str:
    return f"[`{name}`](#schema-{name.lower()})"


def type_of(schema: dict | None) -> str:
    """A short type for a JSON schema: `string`, `list[JobOut]`, `integer | null`, ..."""
    if not schema:
        return "any"
    if "$ref" in schema:
        return _link(_schema_name(schema["$ref"]))
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            return " | ".join(dict.fromkeys(type_of(s) for s in schema[key]))
    if "enum" in schema:
        return " | ".join(f"`{json.dumps(v)}`" for v in schema["enum"])
    if "const" in schema:
        return f"`{json.dumps(schema['const'])}`"
    kind = schema.get("type", "any")
    if isinstance(kind, list):
        return " | ".join(kind)
    if kind == "array":
        return f"list[{type_of(schema.get('items'))}]"
    if kind == "object" and "additionalProperties" in schema:
        values = schema["additionalProperties"]
        return f"object[{type_of(values) if isinstance(values, dict) else 'any'}]"
    return kind


def _limits(schema: dict) -> str:
    """Bounds and defaults worth a reader's eye, from a (possibly nullable) JSON schema."""
    parts = []
    options = [schema] + [s for s in schema.get("anyOf", []) if isinstance(s, dict)]
    for s in options:
        for key, text in (
            ("minimum", "≥ {}"),
            ("exclusiveMinimum", "> {}"),
            ("maximum", "≤ {}"),
            ("exclusiveMaximum", "< {}"),
            ("minLength", "at least {} character(s)"),
            ("maxLength", "at most {} characters"),
            ("maxItems", "at most {} items"),
            ("pattern", "matches `{}`"),
        ):
            if key in s:
                parts.append(text.format(s[key]))
    if "default" in schema and schema["default"] is not None:
        parts.append(f"default `{json.dumps(schema['default'])}`")
    return "; ".join(parts)


def _prose(text: str | None) -> str:
    """Free text (a docstring, a description) as one Markdown line: `<` and `>` outside code
    spans escaped, so that `Bearer <key>` is not taken for an HTML tag."""
    parts = " ".join((text or "").split()).split("`")
    for i in range(0, len(parts), 2):  # the even parts lie outside code spans
        parts[i] = parts[i].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return "`".join(parts)


def _cell(text: str | None) -> str:
    """Text fit for one table cell (already Markdown: links, code spans)."""
    return " ".join((text or "").split()).replace("|", "\\|")


def render_http_api(app=None) -> str:
    """The HTTP reference: the operations by tag, the WebSocket routes, then the schemas."""
    app = app or build_app()
    schema = app.openapi()
    out: list[str] = []
    tags: dict[str, list[tuple[str, str, dict]]] = {}
    for path, operations in schema["paths"].items():
        for method, op in operations.items():
            tags.setdefault((op.get("tags") or ["other"])[0], []).append((method, path, op))
    for tag, operations in tags.items():
        out.append(f"## {tag}\n")
        for method, path, op in operations:
            out += _operation(method, path, op)
    sockets = websocket_routes(app)
    if sockets:
        out.append("## WebSocket\n")
        for path, endpoint in sockets:
            out.append(f"### `WS {path}`\n")
            doc = _prose(endpoint.__doc__)
            if doc:
                out.append(doc + "\n")
    out.append("## Schemas\n")
    for name, body in sorted(schema.get("components", {}).get("schemas", {}).items()):
        out += _schema(name, body)
    return "\n".join(out)


def _operation(method: str, path: str, op: dict) -> list[str]:
    out = [f"### `{method.upper()} {path}`\n"]
    title = op.get("summary", "")
    if op.get("security"):
        schemes = ", ".join(k for s in op["security"] for k in s)
        title += f" · auth: {schemes}"
    out.append(f"**{title}**\n")
    if op.get("description"):
        out.append(_prose(op["description"]) + "\n")
    params = op.get("parameters", [])
    if params:
        out.append("| parameter | in | type | required | description |")
        out.append("|---|---|---|---|---|")
        for p in params:
            s = p.get("schema", {})
            described = p.get("description") or s.get("description")
            text = "; ".join(x for x in (_prose(described), _limits(s)) if x)
            out.append(
                f"| `{p['name']}` | {p['in']} | {_cell(type_of(s))} | "
                f"{'yes' if p.get('required') else 'no'} | {_cell(text)} |"
            )
        out.append("")
    body = op.get("requestBody")
    if body:
        for media, content in body.get("content", {}).items():
            required = " (required)" if body.get("required") else ""
            out.append(f"Request body{required}: {type_of(content.get('schema'))} as `{media}`\n")
    responses = op.get("responses", {})
    if responses:
        out.append("| status | description | body |")
        out.append("|---|---|---|")
        for status, response in responses.items():
            bodies = [type_of(c.get("schema")) for c in response.get("content", {}).values()]
            out.append(
                f"| {status} | {_cell(_prose(response.get('description')))} | "
                f"{_cell(', '.join(b for b in bodies if b != 'any') or '—')} |"
            )
        out.append("")
    return out


def _schema(name: str, body: dict) -> list[str]:
    out = [f"### {name} {{#schema-{name.lower()}}}\n"]
    if body.get("description"):
        out.append(_prose(body["description"]) + "\n")
    properties = body.get("properties", {})
    if not properties:
        out.append(f"Type: {type_of(body)}\n")
        return out
    required = set(body.get("required", []))
    out.append("| field | type | required | description |")
    out.append("|---|---|---|---|")
    for field, s in properties.items():
        text = "; ".join(x for x in (_prose(s.get("description")), _limits(s)) if x)
        out.append(
            f"| `{field}` | {_cell(type_of(s))} | {'yes' if field in required else 'no'} | "
            f"{_cell(text)} |"
        )
    out.append("")
    return out


# --- the command line --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from embedscale.api.cli.main import build_parser as cli_parser

    return cli_parser()


def commands(
    parser: argparse.ArgumentParser, name: str = "embedscale", help_text: str | None = None
) -> Iterator[tuple[str, argparse.ArgumentParser, str | None, bool]]:
    """(full command, its parser, its one-line help, whether it has subcommands) for the
    parser and every subcommand below it, depth first, in the order they were added."""
    sub = _subparsers(parser)
    yield name, parser, help_text, sub is not None
    if sub is None:
        return
    helps = {a.dest: a.help for a in sub._choices_actions}
    for child, child_parser in sub.choices.items():
        yield from commands(child_parser, f"{name} {child}", helps.get(child))


def leaf_commands(parser: argparse.ArgumentParser | None = None) -> list[str]:
    """Every command that runs something (`embedscale run`, `embedscale jobs list`, ...)."""
    return [name for name, _, _, parent in commands(parser or build_parser()) if not parent]


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def _usage(parser: argparse.ArgumentParser) -> str:
    formatter = argparse.HelpFormatter(parser.prog, width=USAGE_WIDTH)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
    return formatter.format_help().strip()


def _argument(action: argparse.Action) -> str:
    if action.option_strings:
        names = ", ".join(f"`{o}`" for o in action.option_strings)
        if action.nargs != 0:
            metavar = action.metavar or action.dest.upper()
            if action.choices:
                metavar = "{" + ",".join(str(c) for c in action.choices) + "}"
            names += f" `{metavar}`"
    else:
        names = f"`{action.metavar or action.dest}`"
    notes = []
    if action.required and action.option_strings:
        notes.append("required")
    if isinstance(action, argparse._AppendAction):
        notes.append("repeatable")
    help_text = _prose((action.help or "") % {"default": action.default, "prog": ""})
    shown = action.default not in (None, False, argparse.SUPPRESS) and action.nargs != 0
    if shown and "default" not in help_text:
        notes.append(f"default `{action.default}`")
    text = "; ".join(x for x in (_cell(help_text), *notes) if x)
    return f"| {names} | {text} |"


def render_cli(parser: argparse.ArgumentParser | None = None) -> str:
    """Every `embedscale` command: its help, its usage and its arguments."""
    parser = parser or build_parser()
    out: list[str] = []
    for name, command, help_text, has_sub in commands(parser):
        if name == "embedscale":
            continue
        level = "#" * min(2 + name.count(" ") - 1, 4)
        out.append(f"{level} `{name}`\n")
        if help_text:
            out.append(_prose(help_text) + "\n")
        if has_sub:
            continue
        out.append("```text\n" + _usage(command) + "\n```\n")
        arguments = [
            a
            for a in command._actions
            if not isinstance(a, argparse._HelpAction | argparse._SubParsersAction)
        ]
        if arguments:
            out.append("| argument | meaning |")
            out.append("|---|---|")
            out += [_argument(a) for a in arguments]
            out.append("")
    return "\n".join(out)


# --- alert rules -------------------------------------------------------------------------------


def render_alerts(path: Path = ROOT / "ops" / "alerts.yml") -> str:
    """The alert rules of ops/alerts.yml: group, name, severity, for how long, and what each
    means."""
    import yaml

    rules = yaml.safe_load(path.read_text())
    out = ["| alert | severity | for | what it means |", "|---|---|---|---|"]
    for group in rules.get("groups", []):
        for rule in group.get("rules", []):
            if "alert" not in rule:
                continue
            notes = rule.get("annotations", {})
            text = _prose(notes.get("description") or notes.get("summary"))
            out.append(
                f"| `{rule['alert']}` | {rule.get('labels', {}).get('severity', '')} | "
                f"{rule.get('for', '')} | {_cell(text)} |"
            )
    return "\n".join(out) + "\n"


# --- mkdocs ------------------------------------------------------------------------------------

GENERATORS: dict[str, Callable[[], str]] = {
    HTTP_API_MARKER: render_http_api,
    CLI_MARKER: render_cli,
    ALERTS_MARKER: render_alerts,
}


def on_page_markdown(markdown: str, page, config, files, **kwargs) -> str:
    """Put each generated reference where its marker stands."""
    for marker, render in GENERATORS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, render())
    return markdown
