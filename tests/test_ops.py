"""Operators: the Grafana dashboard and the alert rules use only metrics a real server serves,
the rules have Prometheus's shape, and `serve --log-format json` writes JSON lines that name
the job and tenant they are about."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cloudpickle
import httpx
import pytest
import yaml
from distributed import Client
from prometheus_client.parser import text_string_to_metric_families

from embedscale.api.server.metrics import GPU_ONLY_METRICS
from embedscale.api.settings import Settings
from tests import faults
from tests.api_server import ROOT, Server, metrics_text
from tests.helpers import wait_done

cloudpickle.register_pickle_by_value(faults)
OPS = ROOT / "ops"
# Series Prometheus makes itself for each scrape target: no exporter serves them.
PROMETHEUS_SERIES = {"up"}
# PromQL words that look like identifiers but select nothing (functions and aggregations are
# told apart by the parenthesis that follows them).
KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers left once strings, Grafana
    variables, label matchers, ranges and label lists (by, on, ...) are taken out, that are
    neither keywords nor functions (an identifier followed by '(') nor numbers (5m, 1e3)."""
    expr = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`', '""', expr)
    expr = re.sub(r"\$\{?\w+\}?", " ", expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for token in re.finditer(r"\d[\w.]*|[A-Za-z_:][\w:]*", expr):
        text = token.group()
        if text[0].isdigit() or text.lower() in KEYWORDS:
            continue
        if expr[token.end() :].lstrip().startswith("("):
            continue
        names.add(text)
    return names


def dashboard_expressions(node) -> list[str]:
    """Every PromQL expression of a dashboard: the panels' targets (rows nest panels) and
    the query variables (label_values(metric, label) names its metric)."""
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                found.append(value)
            elif key == "definition" and isinstance(value, str):
                found += re.findall(r"label_values\(\s*([A-Za-z_:][\w:]*)\s*,", value)
            else:
                found += dashboard_expressions(value)
    elif isinstance(node, list):
        for item in node:
            found += dashboard_expressions(item)
    return found


def alert_rules() -> list[dict]:
    document = yaml.safe_load((OPS / "alerts.yml").read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


# --- without a server --------------------------------------------------------------------


def test_metric_names_reads_promql():
    expr = (
        'histogram_quantile(0.95, sum by (le, model) (rate(a_bucket{status=~"5..", '
        'x="by (y) z"}[5m] offset 1h))) / on (instance) group_left(gpu) b_total and c '
        "unless ignoring(z) d > bool 1e3 or rate(e[$__rate_interval]) * 0.5"
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "c", "d", "e"}


def test_the_dashboard_is_importable_with_a_datasource_variable():
    dashboard = json.loads((OPS / "grafana-dashboard.json").read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len(panels) >= 10 and dashboard["uid"] and dashboard["title"]
    for panel in panels:  # every query goes to the chosen Prometheus
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


def test_alert_rules_have_prometheus_shape():
    document = yaml.safe_load((OPS / "alerts.yml").read_text())
    assert set(document) == {"groups"}
    names = []
    for group in document["groups"]:
        assert set(group) == {"name", "rules"} and group["rules"], group.get("name")
        for rule in group["rules"]:
            assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule
            assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", rule["alert"])
            assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
            assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
            assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]
            assert metric_names(rule["expr"]), rule["alert"]  # it selects something
            names.append(rule["alert"])
    assert len(names) == len(set(names))
    covered = {n for rule in alert_rules() for n in metric_names(rule["expr"])}
    # What an operator on call is woken for: each has a rule.
    assert {
        "embedscale_up",
        "embedscale_workers",
        "embedscale_queue_depth",
        "embedscale_jobs_ended_total",
        "embedscale_quota_refusals_total",
        "embedscale_gpu_utilization_percent",
    } <= covered


def test_log_format_is_a_setting(monkeypatch):
    monkeypatch.setenv("EMBEDSCALE_LOG_FORMAT", "json")
    assert Settings().log_format == "json"
    monkeypatch.setenv("EMBEDSCALE_LOG_FORMAT", "yaml")
    with pytest.raises(ValueError, match="log_format"):
        Settings()
    monkeypatch.delenv("EMBEDSCALE_LOG_FORMAT")
    assert Settings().log_format == "text"


# --- against a real server ---------------------------------------------------------------


@pytest.fixture(scope="module")
def ops_server(tmp_path_factory):
    """`serve --log-format json` with a cluster of its own (one worker): the cluster's worker
    processes write to the server's stderr, so their lines are in its log too."""
    srv = Server(
        tmp_path_factory.mktemp("ops"),
        "--workers",
        "1",
        "--log-format",
        "json",
        "--expose-dashboard",
        "--dashboard-address",
        ":0",
    )
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def exercised(ops_server, tmp_path_factory):
    """What an operator's metrics and logs are about: a job whose partition fails once (a
    worker plugin on the server's cluster) and is retried, a quota refusal, a rate-limit
    refusal, a request with a key in its query. Returns the job's id and the /metrics samples
    afterwards; the server is stopped then, so its log is whole (its shutdown's lines too)."""
    client = ops_server.tenant("ops-runner")
    with Client(client.get("/v1/cluster").json()["scheduler"]) as dask_client:
        dask_client.register_plugin(faults.FailOnce(str(tmp_path_factory.mktemp("fault") / "once")))
        job = client.post("/v1/jobs", json={"table": "t", "texts": ["one", "two", "three"]})
        assert job.status_code == 201, job.text
        assert wait_done(client, job.json()["id"])["status"] == "succeeded"
    thrifty = ops_server.tenant("ops-thrifty", tier="free")
    with ops_server.admin() as admin:
        assert admin.patch("/v1/tenants/ops-thrifty", json={"daily_chunks": 5}).status_code == 200
    texts = [f"text {i}" for i in range(8)]  # 8 chunks needed, 5 left
    assert thrifty.post("/v1/jobs", json={"table": "t", "texts": texts}).status_code == 429
    chatty = ops_server.tenant("ops-chatty", tier="limited")  # 2 job creations a minute
    codes = [
        chatty.post("/v1/jobs", json={"table": "t", "texts": ["x"]}).status_code for _ in range(3)
    ]
    assert codes == [201, 201, 429]
    assert httpx.get(f"{ops_server.url}/v1/jobs?token=leaky-secret-key").status_code == 401
    text = metrics_text(ops_server.url)
    ops_server.stop()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    return job.json()["id"], samples


@pytest.mark.slow
def test_every_metric_of_the_dashboard_and_the_alerts_is_served(exercised):
    _, samples = exercised
    served = {name for name, _ in samples}
    dashboard = json.loads((OPS / "grafana-dashboard.json").read_text())
    used = {name for expr in dashboard_expressions(dashboard) for name in metric_names(expr)}
    used |= {name for rule in alert_rules() for name in metric_names(rule["expr"])}
    assert "embedscale_queue_depth" in used and "embedscale_workers" in used  # parsed at all
    missing = used - served - PROMETHEUS_SERIES
    # GPU metrics exist only where NVML reads a GPU: a name absent here passes only if
    # api/server/metrics.py declares it GPU-only (tests/test_gpu.py checks that gpu_metrics serves
    # exactly those names, and a GPU machine's test run serves them for real).
    assert missing - set(GPU_ONLY_METRICS) == set(), "not in /metrics"
    assert missing <= set(GPU_ONLY_METRICS)


@pytest.mark.slow
def test_refusals_failures_and_latency_are_counted(exercised):
    _, samples = exercised

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0)

    assert value("embedscale_quota_refusals_total", tenant="ops-thrifty") == 1
    assert value("embedscale_quota_refusals_total", tenant="ops-runner") == 0
    assert value("embedscale_rate_limited_total", tenant="ops-chatty", bucket="job creation") == 1
    assert value("embedscale_partition_failures_total", kind="error") >= 1
    assert value("embedscale_jobs_ended_total", status="succeeded", reason="") >= 1
    assert value("embedscale_job_seconds_count", status="succeeded") >= 1
    assert (
        value(
            "embedscale_http_request_seconds_count",
            method="GET",
            route="/v1/jobs/{job_id}",
            status="200",
        )
        >= 1
    )
    assert (
        value(
            "embedscale_http_request_seconds_count", method="POST", route="/v1/jobs", status="429"
        )
        == 2
    )
    for component in ("duckdb", "scheduler", "runner"):
        assert value("embedscale_up", component=component) == 1


@pytest.mark.slow
def test_json_log_lines_name_the_job_and_the_tenant(exercised, ops_server):
    job_id, _ = exercised
    text = (ops_server.data_dir.parent / "server.log").read_text()
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]  # all JSON
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    for line in lines:  # a line whose message names a job carries its id and tenant
        if named := re.search(r"\bjob ([0-9a-f]{32})\b", line["message"]):
            assert line.get("job_id") == named.group(1) and line.get("tenant"), line
    about_job = [line for line in lines if line.get("job_id") == job_id]
    assert all(line["tenant"] == "ops-runner" for line in about_job)
    retried = [line for line in about_job if line["logger"] == "embedscale.jobs.runner.loop"]
    assert retried and "failed" in retried[0]["message"] and retried[0]["level"] == "WARNING"
    access = [line for line in about_job if line["logger"] == "uvicorn.access"]
    assert {(line["method"], line["status"]) for line in access} >= {("POST", 201), ("GET", 200)}
    refused = [
        line
        for line in lines
        if line.get("tenant") == "ops-thrifty" and line["logger"] == "uvicorn.access"
    ]
    assert refused and refused[0]["status"] == 429 and "job_id" not in refused[0]
    assert "leaky-secret-key" not in text and any(
        "token=***" in line.get("path", "") for line in lines
    )


@pytest.mark.slow
def test_every_line_of_a_server_with_its_own_cluster_is_json(exercised, ops_server):
    # The cluster's worker processes write to the server's stderr: their lines (here the
    # worker's error for the partition that failed once) are JSON too.
    job_id, _ = exercised
    lines = [
        json.loads(line)
        for line in (ops_server.data_dir.parent / "server.log").read_text().splitlines()
        if line.strip()
    ]
    assert any(
        line["logger"] == "distributed.worker" and line["level"] == "ERROR" for line in lines
    )
    assert any(
        line["logger"] == "embedscale.jobs.runner.loop"
        and line.get("job_id") == job_id
        and line.get("tenant") == "ops-runner"
        for line in lines
    )


def test_text_stays_the_default_format(tmp_path: Path, monkeypatch):
    from embedscale.api.cli.main import build_parser

    monkeypatch.delenv("EMBEDSCALE_LOG_FORMAT", raising=False)

    args = build_parser().parse_args(["serve", "--data-dir", str(tmp_path)])
    assert Settings.from_args(args).log_format == "text"
    args = build_parser().parse_args(["serve", "--log-format", "json"])
    assert Settings.from_args(args).log_format == "json"
