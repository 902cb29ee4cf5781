"""A small fake Kubernetes API server on 127.0.0.1 for the recover tests.

It serves the real JSON shapes of one namespace's Deployment (apps/v1), its Scale
subresource (autoscaling/v1), the Pods of the Deployment (v1 PodList with
containerStatuses, lastState.terminated), pod logs (``?previous=true``), pod deletion,
strategic-merge / merge patches of the Deployment and the Scale, and metrics.k8s.io
PodMetricsList. A tiny controller is simulated: a scale changes the pod list, a deleted pod
is replaced by a new one that turns Ready a moment later, a changed pod template rolls the
pods. Every request is recorded (method, path, query, body, content type), and any route
can be told to answer 403/404/500.

It runs in a thread (http.server), so sync CLI tests and async tests can both use it; the
controller advances lazily on each request, so clients that poll see it progress.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

CONTAINER = "distributor"
PATCH_TYPES = ("application/strategic-merge-patch+json", "application/merge-patch+json")


def _ts(epoch: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if epoch is None else epoch))


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any
    content_type: str | None
    authorization: str | None


@dataclass
class Rule:
    method: str
    pattern: re.Pattern[str]
    status: int
    times: int | None


@dataclass
class Pod:
    name: str
    template_hash: str
    created: float
    ready_at: float
    restarts: int = 0
    last_terminated: dict[str, Any] | None = None
    waiting: str | None = None  # CrashLoopBackOff keeps the container down
    deleting_at: float | None = None
    announced_ready: bool = False
    logs: str = ""
    previous_logs: str | None = None

    def ready(self, now: float) -> bool:
        return self.waiting is None and self.deleting_at is None and now >= self.ready_at


@dataclass
class FakeKube:
    """One Deployment and its Pods, behind a real HTTP API."""

    namespace: str = "ms07"
    deployment: str = "ms07-distributor"
    replicas: int = 2
    delay: float = 0.15
    metrics_available: bool = True
    requests: list[Request] = field(default_factory=list)
    on_pod_ready: Callable[[str], None] | None = None
    on_pod_gone: Callable[[str], None] | None = None
    new_pod_logs: str = '{"level": "INFO", "component": "engine", "message": "engine started"}\n'

    def __post_init__(self) -> None:
        self.lock = threading.RLock()
        self.rules: list[Rule] = []
        self.generation = 1
        self.observed_generation = 1
        self.template_annotations: dict[str, str] = {}
        self.template_hash = "5d9c7b8f4"
        self.settle_at = 0.0
        self.pods: dict[str, Pod] = {}
        self._names = itertools.count(1)
        self.uid = str(uuid.uuid4())
        now = time.monotonic()
        for _ in range(self.replicas):
            pod = self._new_pod(now)
            pod.ready_at = now
            pod.announced_ready = True
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeKube:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _any(self) -> None:
                fake._handle(self)

            do_GET = do_PATCH = do_PUT = do_DELETE = do_POST = _any

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def kubeconfig(self, path: Path, token: str = "fake-token") -> Path:
        """Write a kubeconfig pointing at this server (token auth) and return its path."""
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
                    "users": [{"name": "tester", "user": {"token": token}}],
                    "contexts": [
                        {
                            "name": "fake",
                            "context": {
                                "cluster": "fake",
                                "user": "tester",
                                "namespace": self.namespace,
                            },
                        }
                    ],
                    "current-context": "fake",
                }
            )
        )
        return path

    # ------------------------------------------------------------------ test controls

    def fail(self, method: str, path_regex: str, status: int, times: int | None = None) -> None:
        """Answer ``status`` to requests matching (method, path regex), ``times`` times."""
        with self.lock:
            self.rules.append(Rule(method.upper(), re.compile(path_regex), status, times))

    def crash(
        self,
        name: str,
        reason: str = "OOMKilled",
        exit_code: int = 137,
        restarts: int = 3,
        previous_logs: str = "",
        waiting: str | None = "CrashLoopBackOff",
    ) -> None:
        with self.lock:
            pod = self.pods[name]
            pod.restarts = restarts
            pod.waiting = waiting
            pod.previous_logs = previous_logs
            pod.last_terminated = {
                "exitCode": exit_code,
                "reason": reason,
                "startedAt": _ts(time.time() - 60),
                "finishedAt": _ts(time.time() - 5),
            }

    def pod_names(self, include_deleting: bool = False) -> list[str]:
        with self.lock:
            self._tick()
            return [p.name for p in self.pods.values() if include_deleting or p.deleting_at is None]

    def ready_pods(self) -> list[str]:
        with self.lock:
            self._tick()
            now = time.monotonic()
            return [p.name for p in self.pods.values() if p.ready(now)]

    def mutations(self) -> list[Request]:
        return [r for r in self.requests if r.method != "GET"]

    def calls(self) -> list[tuple[str, str]]:
        return [(r.method, r.path) for r in self.requests]

    # ------------------------------------------------------------------ controller

    def _new_pod(self, now: float) -> Pod:
        name = f"{self.deployment}-{self.template_hash}-p{next(self._names)}"
        pod = Pod(name, self.template_hash, time.time(), now + self.delay, logs=self.new_pod_logs)
        self.pods[name] = pod
        return pod

    def _changed(self) -> None:
        self.generation += 1
        self.settle_at = time.monotonic() + self.delay

    def _tick(self) -> None:
        now = time.monotonic()
        for pod in list(self.pods.values()):
            if pod.deleting_at is not None and now >= pod.deleting_at + self.delay:
                del self.pods[pod.name]
        if now >= self.settle_at:
            self.observed_generation = self.generation
            live = [p for p in self.pods.values() if p.deleting_at is None]
            current = [p for p in live if p.template_hash == self.template_hash]
            old = [p for p in live if p.template_hash != self.template_hash]
            for _ in range(self.replicas - len(current)):
                current.append(self._new_pod(now))
            for extra in sorted(current, key=lambda p: p.created)[self.replicas :]:
                self._delete(extra, now)
            if old and all(p.ready(now) for p in current[: self.replicas]):
                for p in old:
                    self._delete(p, now)
        for pod in self.pods.values():
            if pod.ready(now) and not pod.announced_ready:
                pod.announced_ready = True
                if self.on_pod_ready:
                    self.on_pod_ready(pod.name)

    def _delete(self, pod: Pod, now: float) -> None:
        if pod.deleting_at is None:
            pod.deleting_at = now
            if self.on_pod_gone:
                self.on_pod_gone(pod.name)

    # ------------------------------------------------------------------ JSON shapes

    def _status(
        self, code: int, reason: str, message: str, details: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code,
        }
        if details:
            out["details"] = details
        return out

    def _deployment_json(self) -> dict[str, Any]:
        now = time.monotonic()
        live = [p for p in self.pods.values() if p.deleting_at is None]
        ready = sum(1 for p in live if p.ready(now))
        status: dict[str, Any] = {"observedGeneration": self.observed_generation}
        counts = {
            "replicas": len(live),
            "updatedReplicas": sum(1 for p in live if p.template_hash == self.template_hash),
            "readyReplicas": ready,
            "availableReplicas": ready,
        }
        status.update({k: v for k, v in counts.items() if v})  # the API omits zero counts
        if len(live) - ready:
            status["unavailableReplicas"] = len(live) - ready
        status["conditions"] = [
            {
                "type": "Available",
                "status": "True" if ready >= self.replicas else "False",
                "reason": "MinimumReplicasAvailable",
                "lastUpdateTime": _ts(),
                "lastTransitionTime": _ts(),
            }
        ]
        labels = {"app": self.deployment}
        template_meta: dict[str, Any] = {"labels": dict(labels)}
        if self.template_annotations:
            template_meta["annotations"] = dict(self.template_annotations)
        return {
            "kind": "Deployment",
            "apiVersion": "apps/v1",
            "metadata": {
                "name": self.deployment,
                "namespace": self.namespace,
                "uid": self.uid,
                "resourceVersion": str(1000 + self.generation),
                "generation": self.generation,
                "creationTimestamp": _ts(time.time() - 86400),
                "labels": labels,
                "annotations": {"deployment.kubernetes.io/revision": str(self.generation)},
            },
            "spec": {
                "replicas": self.replicas,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": template_meta,
                    "spec": {"containers": [{"name": CONTAINER, "image": "ms07:1.0"}]},
                },
                "strategy": {
                    "type": "RollingUpdate",
                    "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"},
                },
                "revisionHistoryLimit": 10,
                "progressDeadlineSeconds": 600,
            },
            "status": status,
        }

    def _scale_json(self) -> dict[str, Any]:
        live = [p for p in self.pods.values() if p.deleting_at is None]
        return {
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {
                "name": self.deployment,
                "namespace": self.namespace,
                "uid": self.uid,
                "resourceVersion": str(1000 + self.generation),
                "creationTimestamp": _ts(time.time() - 86400),
            },
            "spec": {"replicas": self.replicas},
            "status": {"replicas": len(live), "selector": f"app={self.deployment}"},
        }

    def _pod_json(self, pod: Pod) -> dict[str, Any]:
        now = time.monotonic()
        ready = pod.ready(now)
        state: dict[str, Any]
        if pod.waiting:
            state = {
                "waiting": {
                    "reason": pod.waiting,
                    "message": f"back-off restarting failed container {CONTAINER}",
                }
            }
        else:
            state = {"running": {"startedAt": _ts(pod.created)}}
        cstatus: dict[str, Any] = {
            "name": CONTAINER,
            "ready": ready,
            "restartCount": pod.restarts,
            "image": "ms07:1.0",
            "imageID": "docker.io/library/ms07@sha256:0",
            "started": pod.waiting is None,
            "state": state,
            "lastState": {"terminated": pod.last_terminated} if pod.last_terminated else {},
        }
        if pod.waiting is None:
            cstatus["containerID"] = f"containerd://{pod.name}"
        meta: dict[str, Any] = {
            "name": pod.name,
            "namespace": self.namespace,
            "uid": str(uuid.uuid5(uuid.NAMESPACE_DNS, pod.name)),
            "labels": {"app": self.deployment, "pod-template-hash": pod.template_hash},
            "creationTimestamp": _ts(pod.created),
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": f"{self.deployment}-{pod.template_hash}",
                    "uid": self.uid,
                    "controller": True,
                }
            ],
        }
        if pod.deleting_at is not None:
            meta["deletionTimestamp"] = _ts()
            meta["deletionGracePeriodSeconds"] = 30
        return {
            "kind": "Pod",
            "apiVersion": "v1",
            "metadata": meta,
            "spec": {
                "containers": [{"name": CONTAINER, "image": "ms07:1.0", "resources": {
                    "requests": {"cpu": "1000m", "memory": "2Gi"}, "limits": {"cpu": "2000m", "memory": "4Gi"}}}],
                "nodeName": "node-1",
                "restartPolicy": "Always",
            },
            "status": {
                "phase": "Running",
                "podIP": "10.0.0.1",
                "startTime": _ts(pod.created),
                "conditions": [
                    {"type": "Ready", "status": "True" if ready else "False"},
                    {"type": "ContainersReady", "status": "True" if ready else "False"},
                ],
                "containerStatuses": [cstatus],
            },
        }

    # ------------------------------------------------------------------ HTTP

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(h.path)
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        ctype = h.headers.get("Content-Type")
        req = Request(
            h.command,
            parts.path,
            parse_qs(parts.query),
            body,
            ctype,
            h.headers.get("Authorization"),
        )
        with self.lock:
            self.requests.append(req)
            self._tick()
            status, payload = self._route(req)
        data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
        h.send_response(status)
        h.send_header(
            "Content-Type", "text/plain" if isinstance(payload, str) else "application/json"
        )
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _route(self, req: Request) -> tuple[int, Any]:
        ns = re.escape(self.namespace)
        dep = rf"^/apis/apps/v1/namespaces/{ns}/deployments/(?P<name>[^/]+)"
        pods = rf"^/api/v1/namespaces/{ns}/pods"
        routes: list[
            tuple[str, str, str, str, Callable[[Request, dict[str, str]], tuple[int, Any]]]
        ] = [
            ("GET", dep + "$", "get", "deployments.apps", self._get_deployment),
            ("PATCH", dep + "$", "patch", "deployments.apps", self._patch_deployment),
            ("GET", dep + "/scale$", "get", "deployments.apps/scale", self._get_scale),
            ("PATCH", dep + "/scale$", "patch", "deployments.apps/scale", self._patch_scale),
            ("PUT", dep + "/scale$", "update", "deployments.apps/scale", self._patch_scale),
            ("GET", pods + "$", "list", "pods", self._list_pods),
            ("GET", pods + "/(?P<name>[^/]+)$", "get", "pods", self._get_pod),
            ("DELETE", pods + "/(?P<name>[^/]+)$", "delete", "pods", self._delete_pod),
            ("GET", pods + "/(?P<name>[^/]+)/log$", "get", "pods/log", self._pod_log),
            (
                "GET",
                rf"^/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods$",
                "list",
                "pods.metrics.k8s.io",
                self._metrics,
            ),
        ]
        for method, pattern, verb, resource, handler in routes:
            m = re.match(pattern, req.path)
            if method != req.method or not m:
                continue
            for rule in self.rules:
                if rule.method == req.method and rule.pattern.search(req.path) and rule.times != 0:
                    if rule.times is not None:
                        rule.times -= 1
                    return self._rule_answer(rule.status, verb, resource, m.groupdict().get("name"))
            return handler(req, m.groupdict())
        return 404, self._status(
            404, "NotFound", "the server could not find the requested resource"
        )

    def _rule_answer(
        self, status: int, verb: str, resource: str, name: str | None
    ) -> tuple[int, Any]:
        plural, _, rest = resource.partition(".")
        group, _, sub = rest.partition("/")
        if "/" in plural:
            plural, sub = plural.split("/", 1)
        res = f"{plural}/{sub}" if sub else plural
        obj = f'{plural}{"." + group if group else ""} "{name}" ' if name else f"{plural} "
        if status == 403:
            msg = (
                f'{obj}is forbidden: User "system:serviceaccount:{self.namespace}:ms07-recover" '
                "cannot "
                f'{verb} resource "{res}" in API group "{group}" in the namespace '
                f'"{self.namespace}"'
            )
            return 403, self._status(
                403, "Forbidden", msg, {"name": name or "", "group": group, "kind": plural}
            )
        if status == 404:
            return 404, self._status(
                404, "NotFound", f"{obj}not found", {"name": name or "", "kind": plural}
            )
        return status, self._status(
            status, "InternalError", "Internal error occurred: injected by the test"
        )

    def _not_found(self, plural: str, group: str, name: str) -> tuple[int, Any]:
        full = f"{plural}.{group}" if group else plural
        return 404, self._status(
            404,
            "NotFound",
            f'{full} "{name}" not found',
            {"name": name, "group": group, "kind": plural},
        )

    def _get_deployment(self, req: Request, m: dict[str, str]) -> tuple[int, Any]:
        if m["name"] != self.deployment:
            return self._not_found("deployments", "apps", m["name"])
        return 200, self._deployment_json()

    def _get_scale(self, req: Request, m: dict[str, str]) -> tuple[int, Any]:
        if m["name"] != self.deployment:
            return self._not_found("deployments", "apps", m["name"])
        return 200, self._scale_json()

    def _check_patch(self, req: Request) -> tuple[int, Any] | None:
        if req.method == "PATCH" and (req.content_type or "").split(";")[0] not in PATCH_TYPES:
            return 415, self._status(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format - accepted media "
                f"types include: {', '.join(PATCH_TYPES)}",
            )
        if not isinstance(req.body, dict):
            return 400, self._status(400, "BadRequest", "the patch is not a JSON object")
        return None

    def _patch_scale(self, req: Request, m: dict[str, str]) -> tuple[int, Any]:
        if m["name"] != self.deployment:
            return self._not_found("deployments", "apps", m["name"])
        bad = self._check_patch(req)
        if bad:
            return bad
        replicas = (req.body.get("spec") or {}).get("replicas")
        if not isinstance(replicas, int) or replicas < 0:
            return 422, self._status(422, "Invalid", "spec.replicas: Invalid value: must be >= 0")
        if replicas != self.replicas:
            self.replicas = replicas
            self._changed()
        return 200, self._scale_json()

    def _patch_deployment(self, req: Request, m: dict[str, str]) -> tuple[int, Any]:
        if m["name"] != self.deployment:
            return self._not_found("deployments", "apps", m["name"])
        bad = self._check_patch(req)
        if bad:
            return bad
        spec = req.body.get("spec") or {}
        changed = False
        if isinstance(spec.get("replicas"), int) and spec["replicas"] != self.replicas:
            self.replicas = spec["replicas"]
            changed = True
        annotations = ((spec.get("template") or {}).get("metadata") or {}).get("annotations") or {}
        if annotations and any(
            self.template_annotations.get(k) != v for k, v in annotations.items()
        ):
            self.template_annotations.update(annotations)
            self.template_hash = uuid.uuid4().hex[:9]
            changed = True
        if changed:
            self._changed()
        return 200, self._deployment_json()

    def _selected(self, req: Request) -> list[Pod]:
        selector = (req.query.get("labelSelector") or [""])[0]
        labels = {"app": self.deployment}
        for term in filter(None, selector.split(",")):
            key, _, value = term.partition("=")
            if labels.get(key.strip()) != value.strip().lstrip("="):
                return []
        return list(self.pods.values())

    def _list_pods(self, req: Request, m: dict[str, str]) -> tuple[int, Any]:
        return 200, {
            "kind": "PodList",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": "5000"},
            "items": [self._pod_json(p) for p in self._selected(req)],
        }

    def _get_pod(self, req: Request, m: dict[str, str]) -> tuple[int, Any]:
        pod = self.pods.get(m["name"])
        return (200, self._pod_json(pod)) if pod else self._not_found("pods", "", m["name"])

    def _delete_pod(self, req: Request, m: dict[str, str]) -> tuple[int, Any]:
        pod = self.pods.get(m["name"])
        if pod is None:
            return self._not_found("pods", "", m["name"])
        self._delete(pod, time.monotonic())
        self.settle_at = time.monotonic() + self.delay
        return 200, self._pod_json(pod)

    def _pod_log(self, req: Request, m: dict[str, str]) -> tuple[int, Any]:
        pod = self.pods.get(m["name"])
        if pod is None:
            return self._not_found("pods", "", m["name"])
        previous = (req.query.get("previous") or ["false"])[0] == "true"
        if previous and pod.previous_logs is None:
            return 400, self._status(
                400,
                "BadRequest",
                f'previous terminated container "{CONTAINER}" in pod "{pod.name}" not found',
            )
        text = pod.previous_logs if previous else pod.logs
        lines = (text or "").splitlines(keepends=True)
        tail = req.query.get("tailLines")
        if tail:
            lines = lines[-int(tail[0]) :]
        out = "".join(lines)
        limit = req.query.get("limitBytes")
        if limit:
            out = out[: int(limit[0])]
        return 200, out

    def _metrics(self, req: Request, m: dict[str, str]) -> tuple[int, Any]:
        if not self.metrics_available:
            return 404, self._status(
                404, "NotFound", "the server could not find the requested resource"
            )
        items = [
            {
                "metadata": {
                    "name": p.name,
                    "namespace": self.namespace,
                    "creationTimestamp": _ts(),
                    "labels": {"app": self.deployment},
                },
                "timestamp": _ts(),
                "window": "15s",
                "containers": [
                    {"name": CONTAINER, "usage": {"cpu": "12m", "memory": f"{100 + i}Mi"}}
                ],
            }
            for i, p in enumerate(self._selected(req))
            if p.deleting_at is None
        ]
        return 200, {
            "kind": "PodMetricsList",
            "apiVersion": "metrics.k8s.io/v1beta1",
            "metadata": {},
            "items": items,
        }
