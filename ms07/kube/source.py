"""Where the cluster's configuration comes from, decided in one place (read without
importing ``kubernetes``): an explicit kubeconfig (``--kubeconfig``, else ``KUBECONFIG``)
wins; otherwise the in-cluster service account when running in a pod; otherwise
``~/.kube/config``. Used by the client (:mod:`ms07.kube.client`), by ``diagnose memory``
through it, and by the default namespace (:func:`ms07.config.default_k8s_namespace`)."""

from __future__ import annotations

import os
from collections.abc import Mapping

DEFAULT_KUBECONFIG = "~/.kube/config"


def in_cluster(environ: Mapping[str, str] = os.environ) -> bool:
    return bool(environ.get("KUBERNETES_SERVICE_HOST"))


def explicit_kubeconfig(kubeconfig: str | None, environ: Mapping[str, str] = os.environ) -> str | None:
    """``--kubeconfig``, else ``KUBECONFIG``; None when neither is set."""
    return kubeconfig or environ.get("KUBECONFIG") or None


def kubeconfig_file(kubeconfig: str | None = None, environ: Mapping[str, str] = os.environ) -> str:
    """The kubeconfig file to read (the first of a ``KUBECONFIG`` list), expanded."""
    path = explicit_kubeconfig(kubeconfig, environ) or DEFAULT_KUBECONFIG
    return os.path.expanduser(path.split(os.pathsep)[0])


def configured(kubeconfig: str | None = None, environ: Mapping[str, str] = os.environ) -> bool:
    """Is there any cluster to ask? (in-cluster account, an explicit or the default kubeconfig)"""
    return in_cluster(environ) or os.path.exists(kubeconfig_file(kubeconfig, environ))
