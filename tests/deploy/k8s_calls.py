"""The Kubernetes API requests ms07's code makes, read from its source: the RBAC it needs.

Every call on a ``kubernetes.client`` API class (``AppsV1Api``, ``CoreV1Api``,
``CustomObjectsApi``, ...) anywhere under ``ms07/`` is found by an AST walk. The HTTP
method and the resource path of that call are read from the client's own generated code
(``method='PATCH', resource_path='/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale'``),
the call's literal arguments are put into the path, and the path and method give the RBAC
verb, resource and apiGroup, as the API server itself authorizes them. A call whose
``name`` is ``self.deployment`` touches only the configured Deployment: its rule must
carry ``resourceNames``.
"""

from __future__ import annotations

import ast
import inspect
import re
from dataclasses import dataclass
from pathlib import Path

from tests.deploy.support import ROOT

_HTTP = re.compile(r"""(?:method\s*=\s*)?['"](GET|PUT|PATCH|POST|DELETE)['"]""")
_PATH = re.compile(r"""['"](/apis?/[^'"]+)['"]""")


@dataclass(frozen=True)
class Need:
    """One permission a call needs; ``name`` is set when the call names one object."""

    group: str
    resource: str
    verb: str
    name: str | None  # "self.deployment", or None (any object / a collection)
    where: str  # file:line of the call


def _api_classes(trees: dict[Path, ast.AST]) -> dict[str, type]:
    """The ``kubernetes.client`` API classes the code names (``client.AppsV1Api``)."""
    from kubernetes import client

    names = {
        n.attr
        for tree in trees.values()
        for n in ast.walk(tree)
        if isinstance(n, ast.Attribute) and re.fullmatch(r"[A-Z]\w*Api", n.attr)
    }
    return {n: getattr(client, n) for n in names if isinstance(getattr(client, n, None), type)}


def _endpoint(cls: type, method: str) -> tuple[str, str]:
    """(HTTP method, resource path template) of an API method, from the client's code."""
    source = inspect.getsource(inspect.getmodule(cls))  # type: ignore[arg-type]
    # Newer clients build the request in _<method>_serialize, older ones in <method>_with_http_info.
    for helper in (f"_{method}_serialize", f"{method}_with_http_info"):
        m = re.search(rf"\n    def {helper}\(.*?(?=\n    def |\Z)", source, re.S)
        if m and _PATH.search(m.group(0)) and _HTTP.search(m.group(0)):
            return _HTTP.search(m.group(0)).group(1), _PATH.search(m.group(0)).group(1)  # type: ignore[union-attr]
    raise AssertionError(f"cannot find the endpoint of {cls.__name__}.{method} in the kubernetes client")


def _arg_text(node: ast.expr) -> str:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return "{" + ast.unparse(node) + "}"


def _need(cls: type, call: ast.Call, where: str) -> Need:
    method = call.func.attr  # type: ignore[attr-defined]
    http, template = _endpoint(cls, method)
    params = [p for p in inspect.signature(getattr(cls, method)).parameters if p not in ("self", "kwargs")]
    values = {params[i]: _arg_text(a) for i, a in enumerate(call.args)}
    values.update({k.arg: _arg_text(k.value) for k in call.keywords if k.arg})
    # Literal arguments (a CustomObjectsApi group or plural) fill the template.
    path = re.sub(
        r"\{(\w+)\}", lambda m: "{name}" if m.group(1) == "name" else values.get(m.group(1), m.group(0)), template
    )
    parts = path.strip("/").split("/")
    group = "" if parts[0] == "api" else parts[1]
    rest = parts[parts.index("namespaces") + 2 :] if "namespaces" in parts else parts[2 if parts[0] == "api" else 3 :]
    named = len(rest) > 1 and rest[1] == "{name}"
    resource = rest[0] + (f"/{rest[2]}" if named and len(rest) > 2 else "")
    watch = any(k.arg == "watch" and isinstance(k.value, ast.Constant) and k.value.value for k in call.keywords)
    verb = {
        "GET": "get" if named else ("watch" if watch else "list"),
        "PATCH": "patch",
        "PUT": "update",
        "POST": "create",
        "DELETE": "delete" if named else "deletecollection",
    }[http]
    name_node = _name_arg(call, params) if named else None
    name = ast.unparse(name_node) if name_node is not None else None
    return Need(group, resource, verb, name, where)


def _name_arg(call: ast.Call, params: list[str]) -> ast.expr | None:
    for k in call.keywords:
        if k.arg == "name":
            return k.value
    return call.args[params.index("name")] if "name" in params and params.index("name") < len(call.args) else None


def needs(package: Path = ROOT / "ms07") -> list[Need]:
    """Every Kubernetes API permission the code under ``package`` needs, with where."""
    trees = {p: ast.parse(p.read_text(), str(p)) for p in sorted(package.rglob("*.py"))}
    classes = _api_classes(trees)
    found: list[Need] = []
    for path, tree in trees.items():
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            owners = [c for c in classes.values() if callable(getattr(c, node.func.attr, None))]
            if owners and not node.func.attr.startswith("_") and node.func.attr not in ("close",):
                where = f"{path.relative_to(ROOT)}:{node.lineno}"
                found.append(_need(owners[0], node, where))
    return found
