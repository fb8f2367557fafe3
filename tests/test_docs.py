"""The documentation site builds (`mkdocs build --strict`: no broken link, no missing page) and
its generated references are whole: the HTTP API page names every route the app serves, the
command-line page every `embedscale` command and option, the operations page every alert rule.
The references are made by docs/hooks/reference.py; these checks read the app, the parser and
ops/alerts.yml on their own, so a reference that leaves something out fails here."""

from __future__ import annotations

import argparse
import html
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BUILD_TIMEOUT_S = 120

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None,
    reason="mkdocs and mkdocs-material come with the dev extra",
)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet"]
        + ["--config-file", str(ROOT / "mkdocs.yml"), "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},  # material's banner: not ours to show
    )
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}\n{done.stderr}"
    return out


def page_text(site: Path, page: str) -> str:
    """A built page's text, tags stripped and entities decoded."""
    body = (site / page / "index.html").read_text()
    return html.unescape(re.sub(r"<[^>]+>", "", body))


def app_routes() -> set[str]:
    """'METHOD /path' of every route of the app, admin routes and WebSockets included."""
    from starlette.routing import WebSocketRoute

    from embedscale.api.server.app import create_app
    from embedscale.api.settings import Settings

    app = create_app(Settings.model_construct(admin_key="test"))  # built, never started
    routes = {
        f"{method.upper()} {path}"
        for path, operations in app.openapi()["paths"].items()
        for method in operations
    }

    def walk(candidates, prefix: str = "") -> None:
        for route in candidates:
            if isinstance(route, WebSocketRoute):
                routes.add(f"WS {prefix}{route.path}")
            elif hasattr(route, "original_router"):
                walk(route.original_router.routes, prefix + route.include_context.prefix)
            elif hasattr(route, "routes"):
                walk(route.routes, prefix + getattr(route, "path", ""))

    walk(app.routes)
    return routes


def cli_commands() -> dict[str, list[str]]:
    """Every runnable `embedscale ...` command and its option strings."""
    from embedscale.api.cli.main import build_parser

    found: dict[str, list[str]] = {}

    def walk(parser: argparse.ArgumentParser, name: str) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            found[name] = [
                o
                for a in parser._actions
                if not isinstance(a, argparse._HelpAction)
                for o in a.option_strings
            ]
        for sub in subs:
            for child, child_parser in sub.choices.items():
                walk(child_parser, f"{name} {child}")

    walk(build_parser(), "embedscale")
    return found


def test_http_api_page_names_every_route(site):
    text = page_text(site, "http-api")
    routes = app_routes()
    assert len(routes) >= 25  # the admin routes are there too
    assert "WS /v1/jobs/{job_id}/events" in routes
    missing = sorted(r for r in routes if r not in text)
    assert not missing, f"the HTTP API page does not name {missing}"


def test_cli_page_names_every_command_and_option(site):
    text = page_text(site, "cli")
    commands = cli_commands()
    assert "embedscale jobs resume" in commands
    missing = sorted(c for c in commands if f"usage: {c}" not in text)
    assert not missing, f"the CLI page has no usage of {missing}"
    options = sorted({o for opts in commands.values() for o in opts if o not in text})
    assert not options, f"the CLI page does not name {options}"


def test_operations_page_names_every_alert(site):
    rules = yaml.safe_load((ROOT / "ops" / "alerts.yml").read_text())
    alerts = [r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r]
    text = page_text(site, "operations")
    assert alerts
    assert not [a for a in alerts if a not in text]
