"""Helpers for the deployment-artifact tests: paths, YAML, Kubernetes models, PromQL.

The PromQL scanner is deliberately small: it removes what cannot be a metric name
(strings, label matchers, ranges, grouping clauses, Grafana variables, function calls,
keywords) and treats every identifier left as a metric selector. It is strict the safe
way: an unknown identifier fails a test rather than slipping through.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
BASE = K8S / "base"
KEDA = K8S / "components" / "keda"
PRODUCTION = K8S / "overlays" / "production"
PROMETHEUS = DEPLOY / "prometheus"
GRAFANA = DEPLOY / "grafana"

# The runbooks an alert may name (runbooks/<id>.yaml).
RUNBOOK_IDS = {
    "timeouts",
    "high-latency",
    "auth-failures",
    "queue-message-loss",
    "memory-leak",
    "queue-full",
    "db-connection-loss",
    "worker-crash",
    "retention",
}
RUNBOOK_BASE_URL = "https://github.com/ms07/ms07/blob/main/runbooks/"


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


# --------------------------------------------------------------------------- Kubernetes


def model_name(doc: dict[str, Any]) -> str:
    """``apps/v1`` + ``Deployment`` -> ``V1Deployment`` (the kubernetes client's naming)."""
    version = doc["apiVersion"].split("/")[-1]
    return version[0].upper() + version[1:] + doc["kind"]


def deserialize(doc: dict[str, Any]) -> Any:
    """The kubernetes client model of a manifest. Client-side validation rejects a
    missing required field; the round trip back to a dict catches unknown or misspelt
    fields, which deserialisation alone would silently drop."""
    from kubernetes.client import ApiClient

    client = ApiClient()
    obj = client._ApiClient__deserialize(doc, model_name(doc))  # type: ignore[attr-defined]
    back = client.sanitize_for_serialization(obj)
    assert back == doc, (
        f"{doc['kind']} {doc['metadata'].get('name')}: fields the API does not know: "
        + repr(_diff(doc, back))
    )
    return obj


def _diff(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b), key=str):
            if k not in b:
                out.append(f"{path}.{k} (dropped)")
            elif k not in a:
                out.append(f"{path}.{k} (added)")
            else:
                out += _diff(a[k], b[k], f"{path}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [
            d
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for d in _diff(x, y, f"{path}[{i}]")
        ]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


@cache
def kubectl_problem() -> str | None:
    """Why `kubectl kustomize` cannot build these kustomizations here, or None if it can.

    Components and the `labels` field need kustomize >= 4.1; kubectl reports its embedded
    kustomize since 1.24 (Debian's kubernetes-client is 1.20, with kustomize 2)."""
    exe = shutil.which("kubectl")
    if exe is None:
        return "kubectl is not installed (it builds the kustomizations)"
    done = subprocess.run([exe, "version", "--client"], capture_output=True, text=True, timeout=30)
    m = re.search(r"Kustomize Version: v(\d+)\.(\d+)", done.stdout)
    if m is None or (int(m.group(1)), int(m.group(2))) < (4, 1):
        return "kubectl's embedded kustomize is older than 4.1 (components, labels)"
    return None


def kubectl() -> str | None:
    return shutil.which("kubectl") if kubectl_problem() is None else None


def kustomize_build(directory: Path) -> list[dict[str, Any]]:
    exe = kubectl()
    assert exe is not None
    done = subprocess.run(
        [exe, "kustomize", str(directory)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d is not None]


# --------------------------------------------------------------------------- metrics


@cache
def exported_metrics() -> dict[str, frozenset[str]]:
    """Every sample name the engine's /metrics exposes -> its label names.

    Built from a real ``ms07.metrics.Metrics`` registry and its text exposition: each
    labelled metric gets one child so that it shows up, as it would once the engine
    has delivered something. Histograms therefore appear as _bucket/_count/_sum and
    counters as _total, exactly what Prometheus stores."""
    from prometheus_client.metrics import MetricWrapperBase
    from prometheus_client.parser import text_string_to_metric_families

    from ms07.metrics import Metrics

    metrics = Metrics()
    for metric in vars(metrics).values():
        if isinstance(metric, MetricWrapperBase):
            labelnames = metric._labelnames  # no public accessor
            if labelnames:
                metric.labels(*["x"] * len(labelnames))
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    return {k: frozenset(v) for k, v in out.items()}


# Labels Prometheus attaches to every scraped series (target and Kubernetes SD labels).
TARGET_LABELS = {"instance", "job", "pod", "namespace", "container", "service", "endpoint", "node"}

_KEYWORDS = {
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
    "inf",
    "nan",
    "start",
    "end",
}
_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_GRAFANA_VAR = re.compile(r"\$\{[^}]*\}|\$\w+")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*\"")


@dataclass
class Query:
    metrics: set[str]
    matchers: dict[str, set[str]]  # metric -> label names its selectors match on
    grouping: set[str]  # label names in by/without/on/ignoring/group_* clauses


def scan(expr: str) -> Query:
    """Metric names, label matchers and grouping labels of a PromQL expression."""
    text = _GRAFANA_VAR.sub("1", expr)
    matchers: dict[str, set[str]] = {}
    for m in _SELECTOR.finditer(_STRING.sub('""', text).replace('""', '"x"')):
        matchers.setdefault(m.group(1), set()).update(n for n, _ in _MATCHER.findall(m.group(2)))
    text = _STRING.sub(" ", text)
    grouping: set[str] = set()
    for m in _GROUPING.finditer(text):
        grouping.update(x.strip() for x in m.group(2).split(",") if x.strip())
    text = _GROUPING.sub(" ", text)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    names: set[str] = set()
    for m in _IDENT.finditer(text):
        before = text[m.start() - 1] if m.start() else " "
        if before.isalnum() or before in "._":  # 1e3, 5m, 0.5
            continue
        if text[m.end() :].lstrip().startswith("("):  # a function call
            continue
        if m.group(0).lower() in _KEYWORDS:
            continue
        names.add(m.group(0))
    return Query(names, matchers, grouping)


def check_query(expr: str) -> list[str]:
    """Problems of one expression against what the engine exports (empty: fine)."""
    exported = exported_metrics()
    q = scan(expr)
    problems = [
        f"{name} is not exported by the engine" for name in sorted(q.metrics - set(exported))
    ]
    if not q.metrics:
        problems.append("names no metric")
    for name, labels in q.matchers.items():
        known = exported.get(name, frozenset())
        problems += [f"{name} has no label {label!r}" for label in sorted(labels - known)]
    known_labels = set().union(*(exported.get(n, frozenset()) for n in q.metrics)) | TARGET_LABELS
    problems += [
        f"grouping by unknown label {label!r}" for label in sorted(q.grouping - known_labels)
    ]
    return problems


def promtool() -> str | None:
    return shutil.which("promtool")
