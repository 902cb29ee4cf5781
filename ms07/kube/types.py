"""What the Kubernetes API answers, as ms07 reads it: pods, deployment status, errors.

Plain dataclasses over the API's own JSON (the field names ``kubectl get -o json`` shows),
so nothing here imports the ``kubernetes`` package.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from ms07.errors import Ms07Error, NotFound
from ms07.logs import clip

RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
CRASH_REASONS = {
    "CrashLoopBackOff",
    "Error",
    "OOMKilled",
    "RunContainerError",
    "CreateContainerError",
    "ImagePullBackOff",
    "ErrImagePull",
    "ContainerCannotRun",
}


class KubeError(Ms07Error):
    """The Kubernetes API refused or could not be reached (one line, no traceback)."""

    exit_code = 3
    status: int | None = None  # the HTTP status, when the API answered


class KubeNotConfigured(KubeError):
    """No cluster here: not in a pod, and no usable kubeconfig. A plan that needs one says
    so once and what works without it, instead of repeating this on every step."""


class KubeNotFound(KubeError, NotFound):
    """A Kubernetes object does not exist."""

    exit_code = 4


class KubeTimeout(KubeError):
    """A wait on the cluster did not reach its state in time."""


@dataclass(frozen=True)
class Permission:
    verb: str
    resource: str
    group: str = ""

    def __str__(self) -> str:
        return f"{self.verb} {self.resource}" + (f" (apiGroup {self.group})" if self.group else "")


@dataclass
class PodInfo:
    """A pod as ``kubectl get pods`` shows it, plus its last termination."""

    name: str
    phase: str
    ready: bool
    restarts: int
    waiting_reason: str | None = None
    last_reason: str | None = None
    last_exit_code: int | None = None
    last_finished_at: str | None = None
    created: str | None = None
    deleting: bool = False
    node: str | None = None
    containers: list[str] = field(default_factory=list)
    memory_limit_bytes: float | None = None

    @property
    def crashed(self) -> bool:
        """Down now because its container crashed (not merely restarted once and fine)."""
        return (
            self.waiting_reason in CRASH_REASONS
            or self.phase in ("Failed", "Unknown")
            or (self.restarts > 0 and not self.ready and not self.deleting)
        )

    @property
    def status(self) -> str:
        if self.deleting:
            return "Terminating"
        return self.waiting_reason or self.phase

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "crashed": self.crashed, "status": self.status}


@dataclass
class DeploymentState:
    name: str
    generation: int
    observed_generation: int
    replicas: int  # desired (spec)
    current: int  # status.replicas
    updated: int
    ready: int
    available: int
    restarted_at: str | None = None

    def scaled_to(self, n: int) -> bool:
        return self.observed_generation >= self.generation and self.current == n and self.ready == n

    def rolled_out(self) -> bool:
        """What ``kubectl rollout status`` waits for."""
        return (
            self.observed_generation >= self.generation
            and self.updated == self.replicas
            and self.current == self.replicas
            and self.available == self.replicas
        )

    def describe(self) -> str:
        return (
            f"{self.ready}/{self.replicas} ready, {self.updated} updated, {self.current} current, "
            f"{self.available} available"
        )


def _sum_status(status: dict[str, Any], key: str) -> int:
    return int(status.get(key) or 0)


def _memory_limit(spec: dict[str, Any]) -> float | None:
    limits = [((c.get("resources") or {}).get("limits") or {}).get("memory") for c in spec.get("containers") or []]
    if not any(limits):
        return None
    from kubernetes.utils import parse_quantity

    return float(sum(parse_quantity(x) for x in limits if x))


def parse_pod(obj: dict[str, Any]) -> PodInfo:
    meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    statuses = status.get("containerStatuses") or []
    pod = PodInfo(
        name=meta.get("name", "?"),
        phase=status.get("phase", "Unknown"),
        ready=bool(statuses) and all(c.get("ready") for c in statuses),
        restarts=sum(int(c.get("restartCount") or 0) for c in statuses),
        created=meta.get("creationTimestamp"),
        deleting=bool(meta.get("deletionTimestamp")),
        node=spec.get("nodeName"),
        containers=[c.get("name", "?") for c in spec.get("containers") or []],
        memory_limit_bytes=_memory_limit(spec),
    )
    for c in statuses:
        waiting = (c.get("state") or {}).get("waiting")
        if waiting and waiting.get("reason") and not pod.waiting_reason:
            pod.waiting_reason = waiting["reason"]
        term = (c.get("lastState") or {}).get("terminated") or (c.get("state") or {}).get(
            "terminated"
        )
        if term and (
            pod.last_finished_at is None or (term.get("finishedAt") or "") > pod.last_finished_at
        ):
            pod.last_reason = term.get("reason")
            pod.last_exit_code = term.get("exitCode")
            pod.last_finished_at = term.get("finishedAt")
    return pod


def parse_deployment(data: dict[str, Any], name: str) -> DeploymentState:
    meta, spec = data.get("metadata") or {}, data.get("spec") or {}
    status = data.get("status") or {}
    annotations = ((spec.get("template") or {}).get("metadata") or {}).get("annotations") or {}
    return DeploymentState(
        name=meta.get("name", name),
        generation=int(meta.get("generation") or 0),
        observed_generation=int(status.get("observedGeneration") or 0),
        replicas=int(spec["replicas"] if spec.get("replicas") is not None else 1),
        current=_sum_status(status, "replicas"),
        updated=_sum_status(status, "updatedReplicas"),
        ready=_sum_status(status, "readyReplicas"),
        available=_sum_status(status, "availableReplicas"),
        restarted_at=annotations.get(RESTARTED_AT),
    )


def api_error(
    status: int | None,
    reason: Any,
    body: Any,
    perm: Permission,
    what: str,
    namespace: str,
    source: str,
) -> KubeError:
    """One clear line for an API error: a 403 names the missing permission, a 404 the object."""
    message = ""
    try:
        message = json.loads(body or "{}").get("message", "")
    except (ValueError, AttributeError):
        message = clip(body, 200) if isinstance(body, str) else ""
    api = f" (API: {message})" if message else ""
    if status == 403:
        return KubeError(
            f"kubernetes: permission denied to {perm.verb} {perm.resource} in namespace "
            f"{namespace}: the Role needs verb '{perm.verb}' on resource '{perm.resource}' "
            f"in apiGroup '{perm.group}'{api}"
        )
    if status == 404:
        return KubeNotFound(
            f"kubernetes: {what} not found (404)" + (f": {message}" if message else "")
        )
    if status == 401:
        return KubeError(
            f"kubernetes: unauthorized (401): the credentials from {source} were rejected"
        )
    if not status:
        return KubeError(f"kubernetes: {perm.verb} {perm.resource} failed: {clip(str(reason), 200)}")
    return KubeError(
        f"kubernetes: {perm.verb} {perm.resource} ({what}) failed: HTTP {status} {reason}"
        + (f": {message}" if message else "")
    )

