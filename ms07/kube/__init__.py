"""The Kubernetes side of the toolkit (``ms07 recover`` and ``ms07 diagnose memory``):
one Deployment and its pods, through the official client (:mod:`ms07.kube.client`), and
the API's objects as plain data (:mod:`ms07.kube.types`)."""
