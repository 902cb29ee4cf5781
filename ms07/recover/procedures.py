"""The registry of recovery procedures: name -> ``Options`` type + plan builder + help.

Everything else derives from it: ``ms07 recover <name>`` is generated from the ``Options``
fields (:mod:`ms07.cli.recover`), the resume command is written back from the same fields
(:func:`plan_args`), and a runbook step ``ms07 recover <name> ...`` parses into the same
``Options`` (:mod:`ms07.runbooks.commands`). The options every procedure shares (how it
runs, where the cluster is) are declared here, once.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ms07.errors import UsageError
from ms07.options import Spec, argv, argv_of, opt, specs

if TYPE_CHECKING:
    from ms07.config import Settings
    from ms07.recover.plan import Plan


def timeout() -> Any:
    """The ``timeout`` field of a procedure that waits on Kubernetes."""
    return opt("--timeout", "Seconds each Kubernetes wait may take.", default=300.0, min=1, late=True)


@dataclass
class RunOptions:
    """How any plan runs (the CLI's, not the procedure's)."""

    dry_run: bool = opt("--dry-run", "Print the plan, check its preconditions; change nothing.", default=False)
    yes: bool = opt("--yes", "Run without asking (unattended).", default=False, short="-y")
    from_step: int = opt("--from-step", "Start at step N (the resume command sets it).", default=1, min=1)
    plan_id: str | None = opt("--plan-id", "Continue an earlier run's audit trail (set by the resume).", default=None)
    as_json: bool = opt("--json", "Print the result as JSON (needs --dry-run or --yes).", default=False,
                        param="as_json")


@dataclass
class KubeOptions:
    """Which cluster and workload a procedure that talks to Kubernetes acts on."""

    namespace: str | None = opt("--namespace", "Kubernetes namespace \\[env: MS07_K8S_NAMESPACE]",
                                default=None, short="-n")
    deployment: str | None = opt("--deployment", "Deployment name \\[env: MS07_K8S_DEPLOYMENT]", default=None)
    label_selector: str | None = opt(
        "--selector", "Pod label selector, default app=<deployment> \\[env: MS07_K8S_LABEL_SELECTOR]",
        default=None, short="-l", param="selector")
    kubeconfig: str | None = opt("--kubeconfig", "Default: in-cluster, else ~/.kube/config \\[env: KUBECONFIG]",
                                 default=None)
    context: str | None = opt("--context", "kubeconfig context", default=None)

    def overrides(self) -> dict[str, Any]:
        """What :meth:`ms07.kube.client.Kube.from_settings` takes (only what was set)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v}


@dataclass(frozen=True)
class Procedure:
    name: str
    module: str  # ms07.recover.<module> has ``Options`` and ``build(settings, opts, args)``
    help: str  # the command's help: first line, blank line, details
    cluster: bool  # talks to Kubernetes: takes the KubeOptions
    check: Any = None  # (Options) -> None, raises UsageError: what the fields cannot say alone

    @property
    def impl(self) -> Any:
        return importlib.import_module(f"ms07.recover.{self.module}")

    @property
    def options(self) -> type:
        return self.impl.Options  # type: ignore[no-any-return]

    def make(self, **values: Any) -> Any:
        """The ``Options`` from field values; unknown or bad ones are one clear UsageError."""
        known = {f.name for f in dataclasses.fields(self.options)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UsageError(
                f"recover {self.name}: unknown option {unknown[0]!r}; known: {', '.join(sorted(known))}"
            )
        try:
            opts = self.options(**values)
        except TypeError as exc:
            raise UsageError(f"recover {self.name}: {exc}") from None
        if self.check is not None:
            self.check(opts)
        return opts

    def specs(self) -> list[Spec]:
        """The command line of ``ms07 recover <name>``: its own options, then how it runs,
        then (if it talks to Kubernetes) which cluster, then the late ones (``--timeout``)."""
        own = specs(self.options)
        shared = specs(RunOptions) + (specs(KubeOptions) if self.cluster else [])
        return [s for s in own if not s.opt.late] + shared + [s for s in own if s.opt.late]

    def build(self, settings: Settings, opts: Any, kube: KubeOptions | None = None) -> Plan:
        """The plan, its ``args`` (for the resume command) derived from ``opts`` and ``kube``."""
        return self.impl.build(settings, opts, plan_args(opts, kube))  # type: ignore[no-any-return]


def plan_args(opts: Any, kube: KubeOptions | None = None) -> list[str]:
    """The options the operator set, as the resume command repeats them: the procedure's
    own, then the cluster's, then the late ones (``--timeout``)."""
    out = argv_of(opts, late=False)
    if kube is not None:
        out += argv((s, getattr(kube, s.field)) for s in specs(KubeOptions))
    return out + argv_of(opts, late=True)


def _reclaim_check(opts: Any) -> None:
    if opts.to and opts.requeue:
        raise UsageError("--to and --requeue exclude each other")


PROCEDURES: dict[str, Procedure] = {
    p.name: p
    for p in [
        Procedure(
            "queue-full", "queue_full",
            "Queue full: back up the whole queue, clear exactly what was backed up, scale back.\n\n"
            "Scale to 0 and wait until nothing consumes; back up every stream entry and delayed retry,\n"
            "verified; remove exactly those; scale back; watch the depth. `ms07 queue restore FILE`\n"
            "puts the backed-up entries back.",
            cluster=True,
        ),
        Procedure(
            "db-connection", "db_connection",
            "Database connection lost: check PostgreSQL, then restart the pods so they reconnect.\n\n"
            "SELECT 1 timed, which host answered as primary or standby, pg_stat_replication; then a\n"
            "rollout restart, a wait for Ready pods and for a healthy /health/ready.",
            cluster=True,
        ),
        Procedure(
            "worker-crash", "worker_crash",
            "Worker crash: read why pods crashed, replace them one by one.\n\n"
            "Pods with status, restarts and last termination; the crashed ones' previous logs; delete\n"
            "each and wait for its Ready replacement; the new pods' first log lines.",
            cluster=True,
        ),
        Procedure(
            "reclaim-pending", "reclaim",
            "Pending entries of dead consumers: take them over, then remove those consumers.\n\n"
            "Consumers without a heartbeat: their pending entries go to a live consumer or back into\n"
            "the stream; each dead consumer is removed only while it holds nothing.",
            cluster=False,
            check=_reclaim_check,
        ),
        Procedure(
            "requeue-from-db", "requeue",
            "Enqueue again every job PostgreSQL holds as queued/retrying/processing that Redis lost.",
            cluster=False,
        ),
        Procedure(
            "scale", "scale",
            "Scale the workers horizontally: current -> N, wait for Ready, watch consumers join.",
            cluster=True,
        ),
    ]
}


def procedure(name: str) -> Procedure:
    if name not in PROCEDURES:
        raise UsageError(f"unknown recovery procedure {name!r}; known: {', '.join(PROCEDURES)}")
    return PROCEDURES[name]


__all__ = ["PROCEDURES", "KubeOptions", "Procedure", "RunOptions", "plan_args", "procedure", "timeout"]
