"""Prometheus alert rules: promtool checks and unit tests, runbook links, and every
metric and label they use is one the engine exports."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from ms07.config import EscalationConfig
from tests.deploy.support import (
    PROMETHEUS,
    ROOT,
    RUNBOOK_BASE_URL,
    RUNBOOK_IDS,
    check_query,
    load_docs,
    promtool,
    scan,
)

ALERTS = PROMETHEUS / "alerts.yaml"
ALERTS_TEST = PROMETHEUS / "alerts_test.yaml"
# The guide's alerts (issue 11; docs/architecture.md, "Guide procedures") -> the metric each must be built on.
REQUIRED = {
    "Ms07HighErrorRate": "zenia_distribution_requests_total",
    "Ms07HighLatencyP95": "zenia_distribution_latency_seconds_bucket",
    "Ms07QueueDepthGrowing": "zenia_distribution_queue_depth",
    "Ms07WorkersStale": "zenia_distribution_active_workers",
    "Ms07DeadLetterQueueGrowing": "zenia_distribution_dlq_size",
    "Ms07CircuitOpen": "zenia_distribution_circuit_state",
    "Ms07DestinationUnhealthy": "zenia_distribution_destination_healthy",
    "Ms07TokenExpiring": "zenia_distribution_token_expiry_seconds",
    "Ms07MemoryNearGuardThreshold": "zenia_distribution_memory_threshold_bytes",
}

needs_promtool = pytest.mark.skipif(
    promtool() is None,
    reason="promtool is not installed (Debian: apt-get install prometheus; .ci/run installs it)",
)


def _rules() -> list[dict[str, Any]]:
    (doc,) = load_docs(ALERTS)
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    exe = promtool()
    assert exe is not None
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120, cwd=PROMETHEUS)


@needs_promtool
def test_promtool_check_rules() -> None:
    done = _run("check", "rules", ALERTS.name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in done.stdout


@needs_promtool
def test_promtool_test_rules() -> None:
    done = _run("test", "rules", ALERTS_TEST.name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_the_guides_alerts_are_all_there() -> None:
    by_name = {r["alert"]: r for r in _rules()}
    for name, metric in REQUIRED.items():
        assert name in by_name, f"missing alert {name}"
        assert metric in scan(by_name[name]["expr"]).metrics


@pytest.mark.parametrize("rule", _rules(), ids=lambda r: r["alert"])
def test_every_metric_and_label_is_exported(rule: dict[str, Any]) -> None:
    assert check_query(rule["expr"]) == []


@pytest.mark.parametrize("rule", _rules(), ids=lambda r: r["alert"])
def test_labels_and_annotations(rule: dict[str, Any]) -> None:
    labels, notes = rule["labels"], rule["annotations"]
    assert labels["severity"] in ("critical", "warning")
    assert labels["severity"] in EscalationConfig().priorities
    assert labels["team"] in set(EscalationConfig().teams.values())
    assert notes["summary"] and notes["description"]
    url = notes["runbook_url"]
    assert url.startswith(RUNBOOK_BASE_URL) and url.endswith(".yaml")
    assert url[len(RUNBOOK_BASE_URL) : -len(".yaml")] in RUNBOOK_IDS


def test_every_alert_has_tests_that_fire_it_and_that_do_not() -> None:
    (doc,) = load_docs(ALERTS_TEST)
    assert doc["rule_files"] == [ALERTS.name]
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in doc["tests"]:
        for check in case["alert_rule_test"]:
            (fired if check["exp_alerts"] else quiet).add(check["alertname"])
    names = {r["alert"] for r in _rules()}
    assert names - fired == set(), "alerts no test fires"
    assert names - quiet == set(), "alerts no test keeps quiet"


def test_the_runbooks_alerts_link_to_exist() -> None:
    present = {p.stem for p in (ROOT / "runbooks").glob("*.yaml")}
    assert present, "runbooks/ holds no runbook: the alerts' runbook links cannot be checked"
    linked = {
        r["annotations"]["runbook_url"][len(RUNBOOK_BASE_URL) : -len(".yaml")] for r in _rules()
    }
    assert linked <= present, f"alerts link to missing runbooks: {sorted(linked - present)}"


CONSOLE_DESTINATION = "/console/destinations/{{ $labels.destination }}"


@pytest.mark.parametrize("rule", _rules(), ids=lambda r: r["alert"])
def test_console_path_leads_to_the_page_of_the_alerts_subject(rule: dict[str, Any]) -> None:
    notes = rule["annotations"]
    path = notes.get("console_path")
    if rule["alert"] == "Ms07RetentionNotRunning":  # no console page shows retention
        assert path is None
    elif "$labels.destination" in notes["summary"]:  # about one destination: its page
        assert path == CONSOLE_DESTINATION
    else:
        assert path in ("/console/", "/console/dlq")
    if rule["alert"] == "Ms07DeadLetterQueueGrowing":
        assert path == "/console/dlq"


def test_the_console_paths_are_console_routes() -> None:
    from ms07.console import views

    app = views.build(None, None)  # type: ignore[arg-type]  # the routes only; nothing is served
    served = {f"{views.PREFIX}{r.canonical}" for r in app.router.resources()}
    for path in {r["annotations"].get("console_path") for r in _rules()} - {None}:
        assert path.replace("{{ $labels.destination }}", "{name}") in served, path
