"""Pods of the deployment as the Kubernetes API sees them: memory, limits, restarts.

``kubernetes`` is imported here, inside the call, so ``ms07 --help`` stays fast. The
client is synchronous; :func:`pod_memory` is meant to run in a thread.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class NotConfigured(Exception):
    """No in-cluster service account and no kubeconfig: there is no cluster to ask."""


@dataclass
class PodMemory:
    name: str
    phase: str
    restarts: int = 0
    last_termination: str | None = None
    last_termination_at: str | None = None
    limit_bytes: float | None = None
    usage_bytes: float | None = None
    oom_killed: bool = False
    containers: list[str] = field(default_factory=list)


def kubeconfig_path(explicit: str | None) -> str | None:
    path = explicit or os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
    first = path.split(os.pathsep)[0]
    return first if first and Path(first).expanduser().exists() else None


def _client(kubeconfig: str | None) -> Any:
    from kubernetes import client, config

    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        cfg = client.Configuration()
        config.load_incluster_config(client_configuration=cfg)
        return client.ApiClient(cfg)
    path = kubeconfig_path(kubeconfig)
    if path is None:
        raise NotConfigured("no in-cluster config and no kubeconfig (KUBECONFIG or ~/.kube/config)")
    return config.new_client_from_config(config_file=str(Path(path).expanduser()))


def pod_memory(namespace: str, selector: str, kubeconfig: str | None, timeout: float = 5.0) -> tuple[list[PodMemory], str | None]:
    """The pods matching ``selector`` with restarts, last termination reason, memory limit
    and (when metrics-server answers) usage. Returns (pods, note about missing metrics)."""
    from kubernetes import client
    from kubernetes.utils import parse_quantity

    api_client = _client(kubeconfig)
    try:
        core = client.CoreV1Api(api_client)
        listing = core.list_namespaced_pod(namespace, label_selector=selector, _request_timeout=timeout)
        pods: dict[str, PodMemory] = {}
        for pod in listing.items:
            status = pod.status or client.V1PodStatus()
            p = PodMemory(str(pod.metadata.name if pod.metadata else "?"), status.phase or "?")
            containers = pod.spec.containers if pod.spec else []
            limits = [c.resources.limits.get("memory") for c in containers
                      if c.resources and c.resources.limits and c.resources.limits.get("memory")]
            if limits:
                p.limit_bytes = float(sum(parse_quantity(x) for x in limits))
            for cs in status.container_statuses or []:
                p.restarts += cs.restart_count or 0
                p.containers.append(cs.name)
                term = cs.last_state.terminated if cs.last_state else None
                if term is not None:
                    p.last_termination = term.reason
                    p.last_termination_at = str(term.finished_at) if term.finished_at else None
                    p.oom_killed = p.oom_killed or term.reason == "OOMKilled"
            pods[p.name] = p
        note = None
        try:
            metrics: Any = client.CustomObjectsApi(api_client).list_namespaced_custom_object(
                "metrics.k8s.io", "v1beta1", namespace, "pods", label_selector=selector, _request_timeout=timeout
            )
            for item in metrics.get("items", []):
                target = pods.get(item.get("metadata", {}).get("name"))
                if target is not None:
                    target.usage_bytes = float(sum(parse_quantity(c["usage"]["memory"])
                                                   for c in item.get("containers", [])))
        except client.ApiException as exc:
            note = f"metrics.k8s.io answered {exc.status}: pod usage unknown (is metrics-server installed?)"
        return list(pods.values()), note
    finally:
        api_client.close()
