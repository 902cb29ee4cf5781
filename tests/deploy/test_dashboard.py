"""The Grafana dashboard: every panel query names metrics and labels the engine exports,
parses as PromQL (promtool), and the RED and USE panels are all there."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.support import GRAFANA, check_query, exported_metrics, promtool, scan

DASHBOARD = GRAFANA / "dashboard.json"
RED = {
    "zenia_distribution_requests_total",
    "zenia_distribution_attempts_total",
    "zenia_distribution_errors_total",
    "zenia_distribution_latency_seconds_bucket",
}
USE = {
    "zenia_distribution_active_workers",
    "zenia_distribution_in_flight",
    "zenia_distribution_queue_depth",
    "zenia_distribution_pending",
    "zenia_distribution_delayed",
    "zenia_distribution_dlq_size",
    "zenia_distribution_worker_rss_bytes",
    "zenia_distribution_memory_threshold_bytes",
    "zenia_distribution_circuit_state",
    "zenia_distribution_destination_healthy",
}
# Grafana's variables, replaced by something PromQL accepts for the syntax check.
GRAFANA_VARS = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
    "$destination": ".*",
}


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _panels() -> list[dict[str, Any]]:
    out = []
    for panel in _dashboard()["panels"]:
        out += [panel, *panel.get("panels", [])]
    return [p for p in out if p["type"] != "row"]


def _queries() -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in _panels() for t in p["targets"]]


def test_panels_are_well_formed() -> None:
    dash = _dashboard()
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    assert dash["uid"] and dash["title"]
    for panel in _panels():
        assert panel["targets"], f"{panel['title']} has no query"
        assert panel["datasource"]["uid"] == "${datasource}"
        assert [t["refId"] for t in panel["targets"]] == [
            chr(65 + i) for i in range(len(panel["targets"]))
        ]


@pytest.mark.parametrize("title,expr", _queries(), ids=[f"{i}" for i in range(len(_queries()))])
def test_every_query_uses_exported_metrics_and_labels(title: str, expr: str) -> None:
    assert check_query(expr) == [], title


def test_templating_queries_use_exported_metrics() -> None:
    for var in _dashboard()["templating"]["list"]:
        if var["type"] != "query":
            continue
        m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", var["query"]["query"])
        assert m, var["query"]
        metric, label = m.groups()
        assert label in exported_metrics()[metric]


def test_red_and_use_are_covered() -> None:
    used = set().union(*(scan(expr).metrics for _, expr in _queries()))
    assert RED - used == set()
    assert USE - used == set()
    latency = [
        expr for _, expr in _queries() if "zenia_distribution_latency_seconds_bucket" in expr
    ]
    for q in ("0.5", "0.95", "0.99"):
        assert any(f"histogram_quantile({q}," in e and "destination" in e for e in latency)


@pytest.mark.skipif(
    promtool() is None, reason="promtool is not installed (Debian: apt-get install prometheus)"
)
def test_every_query_parses(tmp_path: Path) -> None:
    rules = []
    for i, (_, expr) in enumerate(_queries()):
        for var, value in sorted(GRAFANA_VARS.items(), key=lambda kv: -len(kv[0])):
            expr = expr.replace(var, value)
        assert "$" not in expr, expr
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard_rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    exe = promtool()
    assert exe is not None
    done = subprocess.run(
        [exe, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
