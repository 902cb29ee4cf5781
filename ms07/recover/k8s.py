"""The Kubernetes side of recovery, through the official ``kubernetes`` client.

``kubernetes`` is imported on first use (it is slow to import). Configuration: an explicit
kubeconfig (``--kubeconfig`` / ``KUBECONFIG``) wins; otherwise the in-cluster service
account when running in a pod; otherwise ``~/.kube/config``. Every call is a blocking
urllib3 request, run in a thread so that Ctrl-C stays responsive; waits poll with a
deadline. Responses are read as the API's own JSON (``_preload_content=False``), so the
code reads the field names ``kubectl get -o json`` shows.

Every call names the RBAC verb and resource it needs; an API error becomes one line
(:class:`KubeError`): a 403 says which permission is missing, a 404 which object.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from ms07.errors import Ms07Error, NotFound

RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
CRASH_REASONS = {"CrashLoopBackOff", "Error", "OOMKilled", "RunContainerError", "CreateContainerError",
                 "ImagePullBackOff", "ErrImagePull", "ContainerCannotRun"}
_STRATEGIC = "application/strategic-merge-patch+json"
_TIMEOUT = (5, 30)


class KubeError(Ms07Error):
    """The Kubernetes API refused or could not be reached (one line, no traceback)."""

    exit_code = 3
    status: int | None = None  # the HTTP status, when the API answered


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
        return (f"{self.ready}/{self.replicas} ready, {self.updated} updated, {self.current} current, "
                f"{self.available} available")


def _sum_status(status: dict[str, Any], key: str) -> int:
    return int(status.get(key) or 0)


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
    )
    for c in statuses:
        waiting = (c.get("state") or {}).get("waiting")
        if waiting and waiting.get("reason") and not pod.waiting_reason:
            pod.waiting_reason = waiting["reason"]
        term = (c.get("lastState") or {}).get("terminated") or (c.get("state") or {}).get("terminated")
        if term and (pod.last_finished_at is None or (term.get("finishedAt") or "") > pod.last_finished_at):
            pod.last_reason = term.get("reason")
            pod.last_exit_code = term.get("exitCode")
            pod.last_finished_at = term.get("finishedAt")
    return pod


class Kube:
    """One Deployment and its pods in one namespace."""

    def __init__(self, namespace: str, deployment: str, *, label_selector: str | None = None,
                 kubeconfig: str | None = None, context: str | None = None,
                 poll_interval: float = 1.0) -> None:
        self.namespace = namespace
        self.deployment = deployment
        self.selector = label_selector or f"app={deployment}"
        self.kubeconfig = kubeconfig
        self.context = context
        self.poll_interval = poll_interval
        self._api: Any = None
        self.source = ""

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> Kube:
        args = {"namespace": settings.k8s_namespace, "deployment": settings.k8s_deployment,
                "label_selector": settings.k8s_label_selector}
        args.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**args)

    @property
    def target(self) -> str:
        return f"deployment {self.namespace}/{self.deployment}"

    # ------------------------------------------------------------------ client

    def _client(self) -> Any:
        if self._api is not None:
            return self._api
        from kubernetes import client, config

        cfg = client.Configuration()
        path = self.kubeconfig or os.environ.get("KUBECONFIG")
        try:
            if path:
                config.load_kube_config(config_file=path, context=self.context,
                                        client_configuration=cfg, persist_config=False)
                self.source = f"kubeconfig {path}"
            elif os.environ.get("KUBERNETES_SERVICE_HOST"):
                config.load_incluster_config(client_configuration=cfg)
                self.source = "in-cluster service account"
            else:
                default = os.path.expanduser("~/.kube/config")
                config.load_kube_config(config_file=default, context=self.context,
                                        client_configuration=cfg, persist_config=False)
                self.source = f"kubeconfig {default}"
        except (config.ConfigException, OSError) as exc:
            raise KubeError(
                f"kubernetes: no usable configuration (not in a cluster, and the kubeconfig "
                f"failed: {str(exc).splitlines()[0][:200]}); set KUBECONFIG or --kubeconfig"
            ) from None
        self._api = client.ApiClient(cfg)
        return self._api

    def close(self) -> None:
        if self._api is not None:
            self._api.close()
            self._api = None

    def _call(self, perm: Permission, what: str, fn: Callable[[Any], Any], raw: bool = False) -> Any:
        """Run one API call; map every failure to one clear line."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        api = self._client()
        try:
            resp = fn(api)
        except ApiException as exc:
            raise self._error(exc, perm, what) from None
        except HTTPError as exc:
            host = getattr(api.configuration, "host", "?")
            reason = getattr(exc, "reason", None) or exc
            raise KubeError(f"kubernetes: cannot reach the API server at {host}: {str(reason)[:200]}") from None
        data = resp.data
        if raw:
            return data.decode("utf-8", errors="replace")
        return json.loads(data) if data else {}

    def _error(self, exc: Any, perm: Permission, what: str) -> KubeError:
        err = self._describe(exc, perm, what)
        err.status = exc.status
        return err

    def _describe(self, exc: Any, perm: Permission, what: str) -> KubeError:
        message = ""
        try:
            message = json.loads(exc.body or "{}").get("message", "")
        except (ValueError, AttributeError):
            message = (exc.body or "")[:200] if isinstance(exc.body, str) else ""
        if exc.status == 403:
            return KubeError(
                f"kubernetes: permission denied to {perm.verb} {perm.resource} in namespace "
                f"{self.namespace}: the Role needs verb '{perm.verb}' on resource '{perm.resource}' "
                f"in apiGroup '{perm.group}'" + (f" (API: {message})" if message else "")
            )
        if exc.status == 404:
            return KubeNotFound(f"kubernetes: {what} not found (404)"
                                + (f": {message}" if message else ""))
        if exc.status == 401:
            return KubeError(f"kubernetes: unauthorized (401): the credentials from {self.source} "
                             "were rejected")
        if not exc.status:
            return KubeError(f"kubernetes: {perm.verb} {perm.resource} failed: {str(exc.reason)[:200]}")
        return KubeError(f"kubernetes: {perm.verb} {perm.resource} ({what}) failed: HTTP {exc.status} "
                         f"{exc.reason}" + (f": {message}" if message else ""))

    async def _run(self, perm: Permission, what: str, fn: Callable[[Any], Any], raw: bool = False) -> Any:
        return await asyncio.to_thread(self._call, perm, what, fn, raw)

    def _apps(self, api: Any) -> Any:
        from kubernetes import client

        return client.AppsV1Api(api)

    def _core(self, api: Any) -> Any:
        from kubernetes import client

        return client.CoreV1Api(api)

    # ------------------------------------------------------------------ deployment

    async def get_scale(self) -> tuple[int, int]:
        """(desired, current) replicas from the scale subresource."""
        data = await self._run(
            Permission("get", "deployments/scale", "apps"), self.target,
            lambda api: self._apps(api).read_namespaced_deployment_scale(
                self.deployment, self.namespace, _preload_content=False, _request_timeout=_TIMEOUT))
        return int((data.get("spec") or {}).get("replicas") or 0), int((data.get("status") or {}).get("replicas") or 0)

    async def scale(self, replicas: int) -> None:
        """``kubectl scale deployment/NAME --replicas=N`` (PATCH of the scale subresource)."""
        body = {"spec": {"replicas": int(replicas)}}
        await self._run(
            Permission("patch", "deployments/scale", "apps"), self.target,
            lambda api: self._apps(api).patch_namespaced_deployment_scale(
                self.deployment, self.namespace, body, _content_type=_STRATEGIC,
                _preload_content=False, _request_timeout=_TIMEOUT))

    async def deployment_state(self) -> DeploymentState:
        data = await self._run(
            Permission("get", "deployments", "apps"), self.target,
            lambda api: self._apps(api).read_namespaced_deployment(
                self.deployment, self.namespace, _preload_content=False, _request_timeout=_TIMEOUT))
        meta, spec, status = data.get("metadata") or {}, data.get("spec") or {}, data.get("status") or {}
        annotations = ((spec.get("template") or {}).get("metadata") or {}).get("annotations") or {}
        return DeploymentState(
            name=meta.get("name", self.deployment),
            generation=int(meta.get("generation") or 0),
            observed_generation=int(status.get("observedGeneration") or 0),
            replicas=int(spec.get("replicas") if spec.get("replicas") is not None else 1),
            current=_sum_status(status, "replicas"),
            updated=_sum_status(status, "updatedReplicas"),
            ready=_sum_status(status, "readyReplicas"),
            available=_sum_status(status, "availableReplicas"),
            restarted_at=annotations.get(RESTARTED_AT),
        )

    async def _poll(self, check: Callable[[], Any], timeout: float, describe: Callable[[Any], str]) -> Any:
        deadline = time.monotonic() + timeout
        interval = min(0.1, self.poll_interval)
        last: Any = None
        while True:
            ok, last = await check()
            if ok:
                return last
            if time.monotonic() >= deadline:
                raise KubeTimeout(f"kubernetes: {self.target}: {describe(last)} after {timeout:g}s")
            await asyncio.sleep(interval)
            interval = min(self.poll_interval, interval * 1.5)

    async def wait_replicas(self, replicas: int, timeout: float) -> DeploymentState:
        """Until the deployment has exactly ``replicas`` pods, all ready."""
        async def check() -> tuple[bool, DeploymentState]:
            state = await self.deployment_state()
            return state.scaled_to(replicas), state

        return await self._poll(check, timeout, lambda s: f"not at {replicas} replicas ({s.describe()})")

    async def rollout_restart(self, at: dt.datetime | None = None) -> str:
        """``kubectl rollout restart``: stamp the pod template so every pod is replaced."""
        stamp = (at or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: stamp}}}}}
        await self._run(
            Permission("patch", "deployments", "apps"), self.target,
            lambda api: self._apps(api).patch_namespaced_deployment(
                self.deployment, self.namespace, body, _content_type=_STRATEGIC,
                _preload_content=False, _request_timeout=_TIMEOUT))
        return stamp

    async def wait_rollout(self, timeout: float) -> DeploymentState:
        """``kubectl rollout status``: the new template observed, every pod updated and available."""
        async def check() -> tuple[bool, DeploymentState]:
            state = await self.deployment_state()
            return state.rolled_out(), state

        return await self._poll(check, timeout, lambda s: f"rollout not finished ({s.describe()})")

    # ------------------------------------------------------------------ pods

    async def pods(self) -> list[PodInfo]:
        data = await self._run(
            Permission("list", "pods"), f"pods with label {self.selector} in namespace {self.namespace}",
            lambda api: self._core(api).list_namespaced_pod(
                self.namespace, label_selector=self.selector, _preload_content=False,
                _request_timeout=_TIMEOUT))
        return sorted((parse_pod(p) for p in data.get("items") or []), key=lambda p: p.name)

    async def pod_log(self, name: str, *, previous: bool = False, tail: int | None = None,
                      limit_bytes: int | None = None, container: str | None = None) -> str | None:
        """A pod's log; with ``previous`` the crashed container's (None when there is none)."""
        kwargs: dict[str, Any] = {"previous": True} if previous else {}
        if tail is not None:
            kwargs["tail_lines"] = tail
        if limit_bytes is not None:
            kwargs["limit_bytes"] = limit_bytes
        if container:
            kwargs["container"] = container
        try:
            return await self._run(
                Permission("get", "pods/log"), f"pod {self.namespace}/{name}",
                lambda api: self._core(api).read_namespaced_pod_log(
                    name, self.namespace, _preload_content=False, _request_timeout=_TIMEOUT, **kwargs),
                raw=True)
        except KubeError as exc:
            # 400 "previous terminated container ... not found": it never crashed.
            if previous and exc.status == 400:
                return None
            raise

    async def delete_pod(self, name: str) -> None:
        await self._run(
            Permission("delete", "pods"), f"pod {self.namespace}/{name}",
            lambda api: self._core(api).delete_namespaced_pod(
                name, self.namespace, _preload_content=False, _request_timeout=_TIMEOUT))

    async def wait_replacement(self, deleted: str, before: set[str], timeout: float) -> PodInfo:
        """Until ``deleted`` is gone or terminating and a pod that did not exist before is Ready."""
        async def check() -> tuple[bool, list[PodInfo]]:
            pods = await self.pods()
            old_gone = all(p.deleting for p in pods if p.name == deleted)
            fresh = [p for p in pods if p.name not in before and p.ready and not p.deleting]
            return old_gone and bool(fresh), pods

        pods = await self._poll(check, timeout, lambda ps: f"no Ready replacement for pod {deleted} "
                                f"(pods: {', '.join(f'{p.name} {p.status}' for p in ps or []) or 'none'})")
        return next(p for p in pods if p.name not in before and p.ready and not p.deleting)

    async def pod_metrics(self) -> list[dict[str, Any]] | None:
        """CPU and memory per pod from metrics.k8s.io; None when no metrics server answers."""
        def call(api: Any) -> Any:
            from kubernetes import client

            return client.CustomObjectsApi(api).list_namespaced_custom_object(
                "metrics.k8s.io", "v1beta1", self.namespace, "pods", label_selector=self.selector,
                _preload_content=False, _request_timeout=_TIMEOUT)

        try:
            data = await self._run(Permission("list", "pods", "metrics.k8s.io"), "metrics.k8s.io pod metrics",
                                   call)
        except KubeNotFound:
            return None
        return [{"pod": (i.get("metadata") or {}).get("name"), "timestamp": i.get("timestamp"),
                 "containers": {c.get("name"): c.get("usage", {}) for c in i.get("containers") or []}}
                for i in data.get("items") or []]


# The RBAC a recovering service account needs, per call above (deploy/ writes the Role).
RBAC = [
    {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "patch"]},
    {"apiGroups": ["apps"], "resources": ["deployments/scale"], "verbs": ["get", "patch"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "delete"]},
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
    {"apiGroups": ["metrics.k8s.io"], "resources": ["pods"], "verbs": ["list"]},
]
