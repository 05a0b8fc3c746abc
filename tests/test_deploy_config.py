"""The Prometheus alert rules and the Grafana dashboard under deploy/ parse, and every metric
(and every label matched on) in their expressions is one a live gateway registry exports, so a
renamed metric cannot leave a silent alert or an empty panel behind."""

import asyncio
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import yaml

from ingest.body import refusal_frame
from ingest.codec import Frame, FrameHeader
from ingest.metrics import GatewayMetrics
from ingest.tcp_server import ServerStats
from ledger.errors import Refusal
from ledger.kgd.applications import ApplicationSettings, ApplicationWorker
from ledger.kgd.forwarder import Forwarder, SourceState
from ledger.kgd.metrics import ForwarderMetrics
from ledger.warehouse.loader import DUPLICATES, FRESHNESS, LAG, LOADED
from ledger.wire import Command, ResultCode

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERT_TESTS = DEPLOY / "prometheus" / "alerts_test.yml"
DASHBOARD = DEPLOY / "grafana" / "ofd-gateway.json"
# Series and labels Prometheus itself adds to every scrape.
PROMETHEUS_SERIES = {"up"}
TARGET_LABELS = {"instance", "job"}
PROMQL_WORDS = {
    "by", "without", "and", "or", "unless", "offset", "bool", "on", "ignoring",
    "group_left", "group_right", "inf", "nan",
}  # fmt: skip
SEVERITIES = {"warning", "critical"}

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w$.])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(\s*\()?")


def exported() -> dict[str, set[str]]:
    """Sample name -> label names, from a registry that has seen a request of each transport."""
    metrics = GatewayMetrics("gw-test")
    metrics.watch_tcp(ServerStats())
    metrics.watch_frame_errors("grpc", lambda: 0)
    header = FrameHeader(204, 0, 1, 2, 3)
    answer = refusal_frame(header, Command.TICKET, Refusal(ResultCode.INVALID_TOKEN, "x"))

    async def pipeline(frame: Frame) -> bytes:
        return answer

    async def requests() -> None:
        for transport in ("tcp", "grpc"):
            await metrics.timed(pipeline, transport)(Frame(header, b""))

    asyncio.run(requests())
    names: dict[str, set[str]] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    # The warehouse loader's (`ofd load` serves them): a labelled gauge shows once it has a child.
    for gauge in LAG.values():
        gauge.labels(source="kafka:t:0").set(0)
    try:
        for registered in (FRESHNESS, LOADED, DUPLICATES, *LAG.values()):
            for family in registered.collect():
                for sample in family.samples:
                    names.setdefault(sample.name, set()).update(sample.labels)
    finally:
        for gauge in LAG.values():
            gauge.remove("kafka:t:0")
    # The KGD forwarder's (`ofd forward` serves them), with one source held.
    forwarder = Forwarder(cast(Any, None), cast(Any, None), list)
    forwarder.states["local:gw1"] = SourceState("local:gw1", "bytes", 0)
    kgd = ForwarderMetrics()
    kgd.watch(forwarder, ApplicationWorker(cast(Any, None), cast(Any, None), ApplicationSettings()))
    for family in kgd.registry.collect():
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


def metric_references(expr: str) -> Iterator[tuple[str, set[str]]]:
    """(metric name, label names matched on) for every series an expression selects."""
    bare = _STRING.sub('""', expr)
    for name, matchers in _SELECTOR.findall(bare):
        if name:
            yield name, set(_MATCHER.findall(matchers))
    rest = _GROUPING.sub(" ", _SELECTOR.sub(r"\1 ", bare))
    rest = re.sub(r"\[[^\]]*\]", " ", rest)  # range and subquery durations
    for name, call in _IDENTIFIER.findall(rest):
        if not call and name not in PROMQL_WORDS:
            yield name, set()


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    rules: list[dict[str, Any]] = [rule for group in document["groups"] for rule in group["rules"]]
    return rules


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            # label_values(metric, label): the metric must exist and carry the label.
            match = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", query["query"])
            assert match, query
            exprs.append(f'{match[1]}{{{match[2]}!=""}}')
    return exprs


def test_alert_rules_parse_and_are_complete() -> None:
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert isinstance(rule["expr"], str), rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
    assert {"OfdServiceUnavailableAnswers", "OfdAuthFailureSpike", "OfdCommitFailures"} <= set(
        names
    )
    assert "OfdNoRequests" in names


def test_dashboard_parses_and_has_panels() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "ofd-gateway"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert all(panel["targets"] for panel in dashboard["panels"])


@pytest.mark.parametrize(
    "expr",
    [pytest.param(rule["expr"], id=rule["alert"]) for rule in alert_rules()]
    + [pytest.param(expr, id=f"dashboard-{n}") for n, expr in enumerate(dashboard_exprs())],
)
def test_expression_uses_only_exported_metrics_and_labels(expr: str) -> None:
    names = exported()
    references = list(metric_references(expr))
    assert references, f"no metric found in {expr!r}"
    for name, labels in references:
        if name in PROMETHEUS_SERIES:
            continue
        assert name in names, f"{name} is not exported (in {expr!r})"
        unknown = labels - names[name] - TARGET_LABELS
        assert not unknown, f"{name} has no label {sorted(unknown)} (in {expr!r})"


def test_expression_reader_finds_names_and_labels() -> None:
    expr = (
        'sum by (instance, code) (rate(ofd_auth_failures_total{code="2", x=~"a}b"}[5m]))'
        " / on (instance) ofd_gateway_info unless up == 0"
    )
    assert list(metric_references(expr)) == [
        ("ofd_auth_failures_total", {"code", "x"}),
        ("ofd_auth_failures_total", set()),
        ("ofd_gateway_info", set()),
        ("up", set()),
    ]


def test_promtool_checks_and_unit_tests_the_rules() -> None:
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool is missing: apt-get install prometheus (.ci/run does)"
    for args in (["check", "rules", str(ALERTS)], ["test", "rules", str(ALERT_TESTS)]):
        done = subprocess.run([promtool, *args], capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stdout + done.stderr


SCRAPE_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
SYSTEMD = DEPLOY / "systemd"


def test_promtool_checks_the_scrape_config() -> None:
    """prometheus.yml parses, and its rule file (alerts.yml) with it."""
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool is missing: apt-get install prometheus (.ci/run does)"
    done = subprocess.run(
        [promtool, "check", "config", str(SCRAPE_CONFIG)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "alerts.yml" in done.stdout


def test_scrape_config_reaches_every_gateway_process_and_loader() -> None:
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    assert config["rule_files"] == [ALERTS.name]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    # alerts.yml's OfdGatewayDown watches up{job="ofd-gateway"}.
    assert 'up{job="ofd-gateway"}' in ALERTS.read_text()
    targets = [t for c in jobs["ofd-gateway"]["static_configs"] for t in c["targets"]]
    per_host: dict[str, list[int]] = {}
    for target in targets:
        host, port = target.rsplit(":", 1)
        per_host.setdefault(host, []).append(int(port))
    assert len(per_host) > 1
    for ports in per_host.values():
        # One target per process: ports are instance names of ofd-gateway@.service, distinct.
        assert len(ports) > 1
        assert len(set(ports)) == len(ports)
    loader_env = (SYSTEMD / "ofd-loader.env.example").read_text()
    (loader_port,) = re.findall(r"^OFD_LOADER_METRICS_PORT=(\d+)$", loader_env, re.MULTILINE)
    loaders = [t for c in jobs["ofd-loader"]["static_configs"] for t in c["targets"]]
    assert loaders
    assert {t.rsplit(":", 1)[1] for t in loaders} == {loader_port}
