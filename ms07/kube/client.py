"""The Kubernetes side of recovery, through the official ``kubernetes`` client.

``kubernetes`` is imported on first use (it is slow to import). Configuration: an explicit
kubeconfig (``--kubeconfig`` / ``KUBECONFIG``) wins; otherwise the in-cluster service
account when running in a pod; otherwise ``~/.kube/config``. Every call is a blocking
urllib3 request, run in a thread so that Ctrl-C stays responsive; waits poll with a
deadline. Responses are read as the API's own JSON (``_preload_content=False``), so the
code reads the field names ``kubectl get -o json`` shows.

Every call names the RBAC verb and resource it needs (deploy/kubernetes/base/role.yaml grants
exactly those, checked by tests/deploy/test_manifests.py); an API error becomes one line
(:class:`KubeError`): a 403 says which permission is missing, a 404 which object.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections.abc import Callable
from typing import Any

from ms07.kube import source
from ms07.kube.types import (
    CRASH_REASONS,
    RESTARTED_AT,
    DeploymentState,
    KubeError,
    KubeNotConfigured,
    KubeNotFound,
    KubeTimeout,
    Permission,
    PodInfo,
    api_error,
    parse_deployment,
    parse_pod,
)
from ms07.logs import clip

__all__ = [
    "CRASH_REASONS",
    "RESTARTED_AT",
    "DeploymentState",
    "Kube",
    "KubeError",
    "KubeNotFound",
    "KubeTimeout",
    "Permission",
    "PodInfo",
    "parse_deployment",
    "parse_pod",
]

_STRATEGIC = "application/strategic-merge-patch+json"
_TIMEOUT = (5, 30)


class Kube:
    """One Deployment and its pods in one namespace."""

    def __init__(
        self,
        namespace: str,
        deployment: str,
        *,
        label_selector: str | None = None,
        kubeconfig: str | None = None,
        context: str | None = None,
        poll_interval: float = 1.0,
    ) -> None:
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
        args = {
            "namespace": settings.k8s_namespace,
            "deployment": settings.k8s_deployment,
            "label_selector": settings.k8s_label_selector,
        }
        args.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**args)

    def configured(self) -> bool:
        """Is there any cluster to ask? (in-cluster account, KUBECONFIG, ~/.kube/config)"""
        return source.configured(self.kubeconfig)

    @property
    def target(self) -> str:
        return f"deployment {self.namespace}/{self.deployment}"

    # ------------------------------------------------------------------ client

    def _client(self) -> Any:
        if self._api is not None:
            return self._api
        from kubernetes import client, config

        cfg = client.Configuration()
        path = source.explicit_kubeconfig(self.kubeconfig)
        try:
            if path:
                config.load_kube_config(
                    config_file=path,
                    context=self.context,
                    client_configuration=cfg,
                    persist_config=False,
                )
                self.source = f"kubeconfig {path}"
            elif source.in_cluster():
                config.load_incluster_config(client_configuration=cfg)
                self.source = "in-cluster service account"
            else:
                default = source.kubeconfig_file()
                config.load_kube_config(
                    config_file=default,
                    context=self.context,
                    client_configuration=cfg,
                    persist_config=False,
                )
                self.source = f"kubeconfig {default}"
        except (config.ConfigException, OSError) as exc:
            raise KubeNotConfigured(
                f"kubernetes: no usable configuration (not in a cluster, and the kubeconfig "
                f"failed: {clip(str(exc).splitlines()[0], 200)}); set KUBECONFIG or --kubeconfig"
            ) from None
        self._api = client.ApiClient(cfg)
        return self._api

    def close(self) -> None:
        if self._api is not None:
            self._api.close()
            self._api = None

    def _call(
        self, perm: Permission, what: str, fn: Callable[[Any], Any], raw: bool = False
    ) -> Any:
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
            raise KubeError(
                f"kubernetes: cannot reach the API server at {host}: {clip(str(reason), 200)}"
            ) from None
        data = resp.data
        if raw:
            return data.decode("utf-8", errors="replace")
        return json.loads(data) if data else {}

    def _error(self, exc: Any, perm: Permission, what: str) -> KubeError:
        err = api_error(exc.status, exc.reason, exc.body, perm, what, self.namespace, self.source)
        err.status = exc.status
        return err

    async def _run(
        self, perm: Permission, what: str, fn: Callable[[Any], Any], raw: bool = False
    ) -> Any:
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
            Permission("get", "deployments/scale", "apps"),
            self.target,
            lambda api: self._apps(api).read_namespaced_deployment_scale(
                self.deployment, self.namespace, _preload_content=False, _request_timeout=_TIMEOUT
            ),
        )
        return int((data.get("spec") or {}).get("replicas") or 0), int(
            (data.get("status") or {}).get("replicas") or 0
        )

    async def scale(self, replicas: int) -> None:
        """``kubectl scale deployment/NAME --replicas=N`` (PATCH of the scale subresource)."""
        body = {"spec": {"replicas": int(replicas)}}
        await self._run(
            Permission("patch", "deployments/scale", "apps"),
            self.target,
            lambda api: self._apps(api).patch_namespaced_deployment_scale(
                self.deployment,
                self.namespace,
                body,
                _content_type=_STRATEGIC,
                _preload_content=False,
                _request_timeout=_TIMEOUT,
            ),
        )

    async def deployment_state(self) -> DeploymentState:
        data = await self._run(
            Permission("get", "deployments", "apps"),
            self.target,
            lambda api: self._apps(api).read_namespaced_deployment(
                self.deployment, self.namespace, _preload_content=False, _request_timeout=_TIMEOUT
            ),
        )
        return parse_deployment(data, self.deployment)

    async def _poll(
        self, check: Callable[[], Any], within: float, describe: Callable[[Any], str]
    ) -> Any:
        deadline = time.monotonic() + within
        interval = min(0.1, self.poll_interval)
        last: Any = None
        while True:
            ok, last = await check()
            if ok:
                return last
            if time.monotonic() >= deadline:
                raise KubeTimeout(f"kubernetes: {self.target}: {describe(last)} after {within:g}s")
            await asyncio.sleep(interval)
            interval = min(self.poll_interval, interval * 1.5)

    async def wait_replicas(self, replicas: int, within: float) -> DeploymentState:
        """Until the deployment has exactly ``replicas`` pods, all ready."""

        async def check() -> tuple[bool, DeploymentState]:
            state = await self.deployment_state()
            return state.scaled_to(replicas), state

        return await self._poll(
            check, within, lambda s: f"not at {replicas} replicas ({s.describe()})"
        )

    async def rollout_restart(self, at: dt.datetime | None = None) -> str:
        """``kubectl rollout restart``: stamp the pod template so every pod is replaced."""
        stamp = (at or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: stamp}}}}}
        await self._run(
            Permission("patch", "deployments", "apps"),
            self.target,
            lambda api: self._apps(api).patch_namespaced_deployment(
                self.deployment,
                self.namespace,
                body,
                _content_type=_STRATEGIC,
                _preload_content=False,
                _request_timeout=_TIMEOUT,
            ),
        )
        return stamp

    async def wait_rollout(self, within: float) -> DeploymentState:
        """``kubectl rollout status``: new template observed, every pod updated and available."""

        async def check() -> tuple[bool, DeploymentState]:
            state = await self.deployment_state()
            return state.rolled_out(), state

        return await self._poll(check, within, lambda s: f"rollout not finished ({s.describe()})")

    # ------------------------------------------------------------------ pods

    async def pods(self) -> list[PodInfo]:
        data = await self._run(
            Permission("list", "pods"),
            f"pods with label {self.selector} in namespace {self.namespace}",
            lambda api: self._core(api).list_namespaced_pod(
                self.namespace,
                label_selector=self.selector,
                _preload_content=False,
                _request_timeout=_TIMEOUT,
            ),
        )
        return sorted((parse_pod(p) for p in data.get("items") or []), key=lambda p: p.name)

    async def pod_log(
        self,
        name: str,
        *,
        previous: bool = False,
        tail: int | None = None,
        limit_bytes: int | None = None,
        container: str | None = None,
    ) -> str | None:
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
                Permission("get", "pods/log"),
                f"pod {self.namespace}/{name}",
                lambda api: self._core(api).read_namespaced_pod_log(
                    name,
                    self.namespace,
                    _preload_content=False,
                    _request_timeout=_TIMEOUT,
                    **kwargs,
                ),
                raw=True,
            )
        except KubeError as exc:
            # 400 "previous terminated container ... not found": it never crashed.
            if previous and exc.status == 400:
                return None
            raise

    async def delete_pod(self, name: str) -> None:
        await self._run(
            Permission("delete", "pods"),
            f"pod {self.namespace}/{name}",
            lambda api: self._core(api).delete_namespaced_pod(
                name, self.namespace, _preload_content=False, _request_timeout=_TIMEOUT
            ),
        )

    async def wait_replacement(self, deleted: str, before: set[str], within: float) -> PodInfo:
        """Until ``deleted`` is gone or terminating and a pod that did not exist before is Ready."""

        async def check() -> tuple[bool, list[PodInfo]]:
            pods = await self.pods()
            old_gone = all(p.deleting for p in pods if p.name == deleted)
            fresh = [p for p in pods if p.name not in before and p.ready and not p.deleting]
            return old_gone and bool(fresh), pods

        pods = await self._poll(
            check,
            within,
            lambda ps: (
                f"no Ready replacement for pod {deleted} "
                f"(pods: {', '.join(f'{p.name} {p.status}' for p in ps or []) or 'none'})"
            ),
        )
        return next(p for p in pods if p.name not in before and p.ready and not p.deleting)

    async def pod_metrics(self) -> list[dict[str, Any]] | None:
        """CPU and memory per pod from metrics.k8s.io; None when no metrics server answers."""

        def call(api: Any) -> Any:
            from kubernetes import client

            return client.CustomObjectsApi(api).list_namespaced_custom_object(
                "metrics.k8s.io",
                "v1beta1",
                self.namespace,
                "pods",
                label_selector=self.selector,
                _preload_content=False,
                _request_timeout=_TIMEOUT,
            )

        try:
            data = await self._run(
                Permission("list", "pods", "metrics.k8s.io"), "metrics.k8s.io pod metrics", call
            )
        except KubeNotFound:
            return None
        return [
            {
                "pod": (i.get("metadata") or {}).get("name"),
                "timestamp": i.get("timestamp"),
                "containers": {
                    c.get("name"): c.get("usage", {}) for c in i.get("containers") or []
                },
            }
            for i in data.get("items") or []
        ]
