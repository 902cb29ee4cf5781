"""The Kubernetes manifests, parsed into the official client's models and checked
against what the code does: routes, port, command, drain grace, config, secrets, RBAC."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from ms07 import keys
from ms07.config import ServiceConfig, Settings, load_settings
from tests.deploy import k8s_calls
from tests.deploy.support import (
    BASE,
    K8S,
    KEDA,
    PRODUCTION,
    deserialize,
    kubectl,
    kubectl_problem,
    kustomize_build,
    load_docs,
)

GUIDE_RESOURCES = {
    "requests": {"cpu": "1000m", "memory": "2Gi"},
    "limits": {"cpu": "2000m", "memory": "4Gi"},
}
STANDALONE = ["secret.example.yaml", "toolbox.yaml", "migrate-job.yaml"]
CRD_KINDS = {"ScaledObject", "TriggerAuthentication"}


def _docs(*paths: Path) -> list[dict[str, Any]]:
    return [d for p in paths for d in load_docs(p)]


def _manifest_files() -> list[Path]:
    files = [p for p in sorted(BASE.glob("*.yaml")) if p.name != "kustomization.yaml"]
    files += [p for p in sorted(KEDA.glob("*.yaml")) if p.name != "kustomization.yaml"]
    return files + [K8S / name for name in STANDALONE]


def _one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def base() -> list[dict[str, Any]]:
    return _docs(*[p for p in BASE.glob("*.yaml") if p.name != "kustomization.yaml"])


@pytest.fixture(scope="module")
def deployment(base: list[dict[str, Any]]) -> Any:
    return deserialize(_one(base, "Deployment", "ms07-distributor"))


@pytest.fixture(scope="module")
def container(deployment: Any) -> Any:
    (c,) = deployment.spec.template.spec.containers
    return c


@pytest.fixture(scope="module")
def settings(base: list[dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> Settings:
    configmap = deserialize(_one(base, "ConfigMap", "ms07-config"))
    path = tmp_path_factory.mktemp("cm") / "config.yaml"
    path.write_text(configmap.data["config.yaml"])
    # environ={}: the test runner's own MS07_* variables must not mask a bad file.
    return load_settings(path, environ={})


def _env(container: Any) -> dict[str, Any]:
    return {e.name: e for e in container.env}


# --------------------------------------------------------------------------- models


@pytest.mark.parametrize("path", _manifest_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_every_manifest_parses_into_the_client_models(path: Path) -> None:
    for doc in load_docs(path):
        if doc["kind"] in CRD_KINDS:
            assert doc["apiVersion"] == "keda.sh/v1alpha1"
            continue
        deserialize(doc)


def test_the_container_runs_ms07_run(container: Any) -> None:
    assert (container.command or []) + (container.args or []) == ["ms07", "run"]


# --------------------------------------------------------------------------- probes and ports


def _engine_routes() -> set[str]:
    from ms07.engine.engine import Engine
    from ms07.engine.server import build_app

    # Constructing an Engine connects to nothing; build_app only reads its settings.
    app = build_app(Engine(Settings()))
    return {r.canonical for r in app.router.resources()}


def test_probes_hit_the_engines_health_routes_on_its_port(
    container: Any, settings: Settings
) -> None:
    routes = _engine_routes()
    port = ServiceConfig().http_port
    assert settings.service.http_port == port
    ports = {p.name: p.container_port for p in container.ports}
    assert ports == {"http": port}
    for probe in (container.liveness_probe, container.startup_probe):
        assert probe.http_get.path == "/health/live" and probe.http_get.path in routes
        assert probe.http_get.port == "http"
    # /health/ready needs the bearer token, which an httpGet probe cannot take from a
    # Secret: the readiness probe is an exec of Python that sends it.
    command = container.readiness_probe._exec.command
    assert command[:2] == ["python", "-c"]
    assert f'"http://127.0.0.1:{port}/health/ready"' in command[2] and "/health/ready" in routes
    assert "MS07_API_TOKEN" in command[2]
    assert container.readiness_probe.timeout_seconds >= 5  # the script's own timeout is 4 s
    assert "MS07_HTTP_PORT" not in _env(container)  # one place sets the port: the config


def test_the_grace_period_covers_prestop_and_the_drain(
    deployment: Any, container: Any, settings: Settings
) -> None:
    pre_stop = container.lifecycle.pre_stop._exec.command
    assert pre_stop[0] == "sleep"
    sleep = float(pre_stop[1])
    grace = deployment.spec.template.spec.termination_grace_period_seconds
    drain = settings.service.drain_grace_seconds
    assert drain == ServiceConfig().drain_grace_seconds
    # preStop runs before SIGTERM and counts against the grace period; the final commit
    # and ack after the drain need a few seconds more.
    assert grace >= sleep + drain + 10
    assert 45 <= grace <= 120


def test_resources_are_the_guides(container: Any) -> None:
    assert container.resources.requests == GUIDE_RESOURCES["requests"]
    assert container.resources.limits == GUIDE_RESOURCES["limits"]


def test_memory_guard_drains_before_the_oom_killer(container: Any, settings: Settings) -> None:
    limit_mib = _mebibytes(container.resources.limits["memory"])
    threshold = settings.memory.threshold_mb
    assert 0.5 * limit_mib <= threshold <= 0.85 * limit_mib, (
        f"memory.threshold_mb {threshold} against a {limit_mib} MiB limit"
    )


def _mebibytes(quantity: str) -> float:
    units = {"Mi": 1, "Gi": 1024, "Ti": 1024 * 1024}
    return float(quantity[:-2]) * units[quantity[-2:]]


# --------------------------------------------------------------------------- security and storage


def test_non_root_read_only_no_privileges(deployment: Any, container: Any) -> None:
    pod = deployment.spec.template.spec
    assert pod.security_context.run_as_non_root is True
    assert pod.security_context.run_as_user == 10001
    assert pod.security_context.seccomp_profile.type == "RuntimeDefault"
    sc = container.security_context
    assert sc.read_only_root_filesystem is True
    assert sc.allow_privilege_escalation is False
    assert sc.capabilities.drop == ["ALL"] and not sc.capabilities.add
    assert sc.privileged is False
    # The engine never talks to the API server; only the toolkit's account has a Role.
    assert pod.service_account_name == "ms07-distributor"
    assert pod.automount_service_account_token is False


def test_writable_paths_are_emptydirs(deployment: Any, container: Any) -> None:
    volumes = {v.name: v for v in deployment.spec.template.spec.volumes}
    mounts = {m.mount_path: m for m in container.volume_mounts}
    env = _env(container)
    for path in (env["MS07_STATE_DIR"].value, "/tmp", env["TMPDIR"].value):
        assert path in mounts, f"{path} is not mounted (the root filesystem is read-only)"
        assert volumes[mounts[path].name].empty_dir is not None
        assert not mounts[path].read_only
    config = env["MS07_CONFIG"].value
    mount = mounts[str(Path(config).parent)]
    assert mount.read_only and volumes[mount.name].config_map.name == "ms07-config"


# --------------------------------------------------------------------------- config and secrets


def test_the_configmap_is_a_valid_config(settings: Settings) -> None:
    assert settings.destinations, "the example config should show a destination"
    assert settings.distribution.claim_idle_seconds > settings.distribution.timeout_seconds


def _secret_env_names(settings: Settings) -> set[str]:
    names: set[str | None] = set()
    for dest in settings.destinations:
        auth = dest.auth
        names |= {auth.token_env, auth.value_env, auth.password_env, auth.client_secret_env}
        if dest.signing:
            names |= {dest.signing.secret_env, dest.signing.previous_secret_env}
    return {n for n in names if n}


def test_every_secret_the_config_names_comes_from_the_secret(
    container: Any, settings: Settings
) -> None:
    env = _env(container)
    for name in _secret_env_names(settings) | {
        "MS07_API_TOKEN",
        "MS07_DATABASE_URL",
        "MS07_REDIS_URL",
    }:
        assert name in env, f"{name} is not set in the Deployment"
        ref = env[name].value_from.secret_key_ref
        assert ref is not None and ref.name == "ms07-secrets", f"{name} must come from the Secret"
        assert env[name].value is None


def test_the_secret_template_has_every_key_and_only_placeholders(container: Any) -> None:
    secret = deserialize(_one(load_docs(K8S / "secret.example.yaml"), "Secret"))
    assert secret.metadata.name == "ms07-secrets"
    assert not secret.data, "use stringData placeholders, never encoded values"
    for value in secret.string_data.values():
        assert value.startswith("<REPLACE"), f"not a placeholder: {value[:12]}..."
    wanted = {
        e.value_from.secret_key_ref.key
        for e in container.env
        if e.value_from and e.value_from.secret_key_ref
    }
    trigger_auth = _one(load_docs(KEDA / "triggerauthentication.yaml"), "TriggerAuthentication")
    wanted |= {ref["key"] for ref in trigger_auth["spec"]["secretTargetRef"]}
    assert wanted <= set(secret.string_data), (
        f"missing from the template: {wanted - set(secret.string_data)}"
    )
    # Applying a kustomization must never overwrite the real Secret with placeholders.
    for directory in (BASE, KEDA, PRODUCTION):
        (kustomization,) = load_docs(directory / "kustomization.yaml")
        assert "secretGenerator" not in kustomization
        assert not [r for r in kustomization.get("resources", []) if "secret" in r]
        assert not [
            d
            for p in directory.glob("*.yaml")
            for d in load_docs(p)
            if isinstance(d, dict) and d.get("kind") == "Secret"
        ]


# --------------------------------------------------------------------------- RBAC


def _granted(role: Any) -> dict[tuple[str, str, str], set[tuple[str, ...]]]:
    """(apiGroup, resource, verb) -> the resourceNames of each rule granting it (() = any)."""
    granted: dict[tuple[str, str, str], set[tuple[str, ...]]] = {}
    for rule in role.rules:
        assert "*" not in rule.verbs and "*" not in rule.resources and "*" not in rule.api_groups
        for group in rule.api_groups:
            for resource in rule.resources:
                for verb in rule.verbs:
                    granted.setdefault((group, resource, verb), set()).add(tuple(rule.resource_names or ()))
    return granted


def test_the_role_grants_exactly_what_the_code_calls(base: list[dict[str, Any]]) -> None:
    """Verbs, resources and names derived from every kubernetes client call in ms07/
    (tests/deploy/k8s_calls.py): the Role grants those and nothing else, and a call on the
    configured Deployment is granted on that one Deployment only."""
    calls = k8s_calls.needs()
    assert calls, "no kubernetes client call found in ms07/: update tests/deploy/k8s_calls.py"
    wanted: dict[tuple[str, str, str], set[str | None]] = {}
    for call in calls:
        wanted.setdefault((call.group, call.resource, call.verb), set()).add(call.name)
    role = deserialize(_one(base, "Role"))
    granted = _granted(role)
    extra = sorted(set(granted) - set(wanted))
    missing = sorted(set(wanted) - set(granted))
    assert not extra, f"the Role grants what no call needs: {extra}"
    assert not missing, f"the Role lacks {missing}"
    deployment = _one(base, "Deployment")["metadata"]["name"]
    for key, names in wanted.items():
        if names == {"self.deployment"}:
            assert granted[key] == {(deployment,)}, f"{key} must be limited to resourceNames [{deployment}]"
        else:
            # Pod names are generated: they cannot be listed in advance.
            assert key[1].startswith("pods"), f"{key} is not limited to one object: {names}"
    # The name in the Role is the one the toolkit is configured with.
    toolbox = deserialize(_one(load_docs(K8S / "toolbox.yaml"), "Pod"))
    (container,) = toolbox.spec.containers
    assert _env(container)["MS07_K8S_DEPLOYMENT"].value == deployment == Settings().k8s_deployment


def test_the_role_is_bound_to_the_toolkit_account_only(base: list[dict[str, Any]]) -> None:
    assert not [d for d in base if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    role = deserialize(_one(base, "Role"))
    binding = deserialize(_one(base, "RoleBinding"))
    assert (binding.role_ref.kind, binding.role_ref.name) == ("Role", role.metadata.name)
    accounts = {d["metadata"]["name"] for d in base if d["kind"] == "ServiceAccount"}
    (subject,) = binding.subjects
    assert subject.kind == "ServiceAccount" and subject.name in accounts
    assert subject.name != "ms07-distributor"
    toolbox = deserialize(_one(load_docs(K8S / "toolbox.yaml"), "Pod"))
    assert toolbox.spec.service_account_name == subject.name


# --------------------------------------------------------------------------- network policy

METADATA_SERVICE = {"169.254.169.254/32", "fd00:ec2::254/128"}


def _port(url: str) -> int:
    parts = urlsplit(url)
    return parts.port or {"https": 443, "http": 80}[parts.scheme]


def test_the_engine_has_a_network_policy(
    base: list[dict[str, Any]], deployment: Any, container: Any, settings: Settings
) -> None:
    policy = deserialize(_one(base, "NetworkPolicy")).spec
    selector = policy.pod_selector.match_labels
    assert selector and selector.items() <= deployment.spec.template.metadata.labels.items()
    assert set(policy.policy_types) == {"Ingress", "Egress"}
    # In: the container's own ports only.
    assert all(rule.ports for rule in policy.ingress), "an ingress rule without ports opens every port"
    assert {p.port for rule in policy.ingress for p in rule.ports} == {p.container_port for p in container.ports}
    # Out: DNS, PostgreSQL, Redis and every destination, health and token URL the config names.
    assert all(rule.ports for rule in policy.egress), "an egress rule without ports opens every port"
    allowed = {(p.protocol, p.port) for rule in policy.egress for p in rule.ports}
    needed = {("UDP", 53), ("TCP", 53), ("TCP", 5432), ("TCP", 6379)}
    for dest in settings.destinations:
        urls = [dest.url, dest.health_url, getattr(dest.auth, "token_url", None)]
        needed |= {("TCP", _port(u)) for u in urls if u}
    assert needed <= allowed, f"not allowed out: {needed - allowed}"
    # ... but never the cloud metadata service, on any port beyond DNS.
    for rule in policy.egress:
        if {p.port for p in rule.ports} <= {53}:
            continue
        assert rule.to, "a rule to everywhere includes the metadata service"
        for peer in rule.to:
            if peer.ip_block is not None:
                assert set(peer.ip_block._except or []) & METADATA_SERVICE, peer.ip_block.cidr
            else:
                assert peer.namespace_selector is not None or peer.pod_selector is not None


# ----------------------------------------------------------------- service, PDB, autoscaling


def test_service_pdb_and_hpa_select_the_deployment(
    base: list[dict[str, Any]], deployment: Any
) -> None:
    labels = deployment.spec.template.metadata.labels
    assert deployment.spec.selector.match_labels.items() <= labels.items()
    assert deployment.spec.replicas is None, "the autoscaler owns the replica count"
    service = deserialize(_one(base, "Service"))
    assert service.spec.selector.items() <= labels.items()
    (port,) = service.spec.ports
    assert (port.name, port.port, port.target_port) == ("http", ServiceConfig().http_port, "http")
    notes = service.metadata.annotations
    assert notes["prometheus.io/scrape"] == "true"
    assert notes["prometheus.io/port"] == str(ServiceConfig().http_port)
    assert notes["prometheus.io/path"] == "/metrics" and "/metrics" in _engine_routes()
    pdb = deserialize(_one(base, "PodDisruptionBudget"))
    assert pdb.spec.selector.match_labels.items() <= labels.items()
    hpa = deserialize(_one(base, "HorizontalPodAutoscaler"))
    assert (hpa.spec.scale_target_ref.kind, hpa.spec.scale_target_ref.name) == (
        "Deployment",
        "ms07-distributor",
    )
    (metric,) = hpa.spec.metrics
    assert metric.resource.name == "cpu" and metric.resource.target.type == "Utilization"
    assert 1 <= hpa.spec.min_replicas < hpa.spec.max_replicas


def test_keda_scales_on_the_workers_group_of_the_default_stream(settings: Settings) -> None:
    docs = _docs(KEDA / "scaledobject.yaml", KEDA / "triggerauthentication.yaml")
    scaled = _one(docs, "ScaledObject")
    auth = _one(docs, "TriggerAuthentication")
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == "ms07-distributor"
    assert 1 <= spec["minReplicaCount"] < spec["maxReplicaCount"]
    redis = [t for t in spec["triggers"] if t["type"] == "redis-streams"]
    pending = [t for t in redis if "pendingEntriesCount" in t["metadata"]]
    assert len(pending) == 1
    meta = pending[0]["metadata"]
    assert meta["stream"] == keys.stream("default") == "distribution:queue:{default}"
    assert meta["consumerGroup"] == keys.GROUP == "workers"
    # A pod holds at most concurrency x prefetch pending entries, of which `concurrency`
    # are in HTTP flight: a target above that could never be reached.
    held = settings.service.concurrency * settings.service.prefetch
    assert settings.service.concurrency <= int(meta["pendingEntriesCount"]) <= held
    for trigger in redis:
        assert all(isinstance(v, str) for v in trigger["metadata"].values()), (
            "KEDA metadata values are strings"
        )
        assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]


# --------------------------------------------------------------------------- kustomize


@pytest.mark.parametrize("directory", [BASE, KEDA], ids=["base", "components/keda"])
def test_the_kustomization_lists_every_file(directory: Path) -> None:
    (kustomization,) = load_docs(directory / "kustomization.yaml")
    listed = set(kustomization["resources"])
    present = {p.name for p in directory.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


def test_the_overlay_uses_every_patch_file() -> None:
    (kustomization,) = load_docs(PRODUCTION / "kustomization.yaml")
    used = {p["path"] for p in kustomization["patches"]}
    present = {p.name for p in PRODUCTION.glob("*.yaml")} - {"kustomization.yaml"}
    assert used == present


needs_kubectl = pytest.mark.skipif(kubectl() is None, reason=str(kubectl_problem()))


@needs_kubectl
def test_the_base_builds() -> None:
    docs = kustomize_build(BASE)
    for doc in docs:
        deserialize(doc)
    assert {d["kind"] for d in docs} >= {
        "Deployment",
        "ConfigMap",
        "Service",
        "HorizontalPodAutoscaler",
    }


@needs_kubectl
def test_the_production_overlay_builds() -> None:
    docs = kustomize_build(PRODUCTION)
    for doc in docs:
        if doc["kind"] not in CRD_KINDS:
            deserialize(doc)
        assert doc["metadata"]["namespace"] == "zenia"
    kinds = {d["kind"] for d in docs}
    assert "HorizontalPodAutoscaler" not in kinds, (
        "KEDA and an HPA must not both drive the Deployment"
    )
    assert {"ScaledObject", "TriggerAuthentication", "Deployment"} <= kinds
    (container,) = _one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    resources = container["resources"]
    for kind in ("requests", "limits"):
        assert GUIDE_RESOURCES[kind].items() <= resources[kind].items()
        assert "ephemeral-storage" in resources[kind]
    assert container["image"].endswith(":0.1.0")
    scaled = _one(docs, "ScaledObject")["spec"]
    assert (scaled["minReplicaCount"], scaled["maxReplicaCount"]) == (5, 20)
    assert all(
        t["metadata"]["address"] != "redis:6379"
        for t in scaled["triggers"]
        if t["type"] == "redis-streams"
    )
